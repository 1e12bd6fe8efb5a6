"""The earlier run a new run continues (`method.from_run`): its adapter is the starting point.

Shared by both ways of continuing a LoRA adapter: preference tuning (DPO/KTO, where the parent
is also the reference model) and supervised training on more rows (`kind: lora` or `qlora` with
`from_run`; the loop's `retrain --from-parent`), so that both check the parent the same way and
inherit the same settings from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specialize.config import RunConfig
from specialize.errors import ConfigError, RunError
from specialize.run_dir import RunDir, open_run


@dataclass(frozen=True)
class ParentRun:
    """The earlier run a run starts from (`method.from_run`)."""

    run: RunDir
    config: RunConfig
    adapter: Path


def parent_run(path: str | Path) -> ParentRun:
    """The `from_run` directory, checked: a finished run with a LoRA adapter."""
    try:
        run = open_run(path)
    except RunError as exc:
        raise ConfigError(f"method.from_run: {exc}") from None
    if not run.finished:
        raise ConfigError(f"method.from_run: {run.path} has not finished training (no run.json)")
    adapter = run.weights_dir()
    if adapter != run.adapter:
        raise ConfigError(
            f"method.from_run: {run.path} is a full fine-tune (model/); only a LoRA adapter can be "
            "continued (train the parent with method.kind: lora)"
        )
    return ParentRun(run=run, config=run.config(), adapter=adapter)


def inherit_parent(config: RunConfig, parent: ParentRun) -> RunConfig:
    """The config with what it must share with its parent: the base (the adapter only fits that
    one) and the prompt settings (the continued model is served as the parent was)."""
    config = config.model_copy(deep=True)
    base = parent.config.model.base
    if "base" in config.model.model_fields_set and config.model.base != base:
        raise ConfigError(
            f"model.base is {config.model.base!r} but method.from_run {parent.run.path} was trained on "
            f"{base!r}; drop model.base (it is taken from the parent run) or train the parent on it"
        )
    config.model.base = base
    # Evaluation finds the parent (the reference) through the saved config, from any directory.
    config.method.from_run = str(parent.run.path.resolve())
    # Only what this config leaves unset: a None it sets on purpose (rows already in the normal
    # form, as the loop's challenger has) must stay None.
    for key in ("system_prompt", "prompt_template", "input_field"):
        unset = key not in config.data.model_fields_set and getattr(config.data, key) is None
        if unset and getattr(parent.config.data, key) is not None:
            setattr(config.data, key, getattr(parent.config.data, key))
    return config
