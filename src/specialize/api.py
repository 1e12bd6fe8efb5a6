"""The Python API behind every CLI command: `from specialize import check_data, train, ...`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.config import RunConfig, load_config, parse_config
from specialize.data.checks import DataReport, check_files
from specialize.data.formats import FormatSpec

# Non-padding tokens per second of LoRA training on the bundled model on this 2-core machine
# (measured by `make demo`: 452 tokens/s over 150 steps with its validation passes, in bf16 mixed
# precision on this AVX512-BF16 CPU; fp32 training, as on CPUs without native bf16, measured 210);
# the time estimate of `specialize check` scales by it. Other models and machines: pass
# tokens_per_second.
DEFAULT_TRAIN_TOKENS_PER_SECOND = 450.0
DEFAULT_PRICE_PER_HOUR = 0.10


def check_data(
    data: str | Path,
    *,
    test: str | Path | None = None,
    input_field: str | None = None,
    output_field: str | None = None,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    model: str | None = "smollm2-135m-instruct",
    max_seq_len: int = 256,
    epochs: float = 1.0,
    tokens_per_second: float = DEFAULT_TRAIN_TOKENS_PER_SECOND,
    price_per_hour: float = DEFAULT_PRICE_PER_HOUR,
) -> DataReport:
    """Validate a file of examples (and optionally a test file) without training anything."""
    tokenizer = None
    if model is not None:
        from specialize.models.load import load_tokenizer

        tokenizer = load_tokenizer(model)
    spec = FormatSpec(
        input_field=input_field,
        output_field=output_field,
        system_prompt=system_prompt,
        prompt_template=prompt_template,
    )
    return check_files(
        data,
        spec,
        test_path=test,
        tokenizer=tokenizer,
        max_seq_len=max_seq_len,
        epochs=epochs,
        tokens_per_second=tokens_per_second,
        price_per_hour=price_per_hour,
    )


def resolve_run_config(
    config_path: str | Path | None, overrides: dict[str, Any], *, name: str | None = None
) -> RunConfig:
    """A config file (or the defaults) with command-line overrides applied; None means unset."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if config_path is not None:
        config = load_config(config_path, given)
    else:
        data: dict[str, Any] = {}
        for dotted, value in given.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        config = parse_config(data, source="command line")
    if config.name is None and name:
        config.name = name
    return config
