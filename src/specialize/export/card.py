"""The model card (README.md) written into every export.

It says what the specialist is built on, what it was trained on and how, how well it did when
the run has an evaluation, how to run this export, and what it must not be used for. The prompt
format is spelled out because a specialist only behaves as measured when prompted exactly as
in training (same system prompt and template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.errors import RunError
from specialize.records.run import RunRecord
from specialize.run_dir import RunDir


def eval_headline(run: RunDir) -> str | None:
    """The evaluation report's headline, or None when the run has not been evaluated (or its
    report cannot be read: the card then says so rather than failing the export)."""
    if not run.evaluated:
        return None
    try:
        return run.eval_report().headline or None
    except RunError:
        return None


def base_of(record: RunRecord) -> dict[str, str]:
    """The run's base model as recorded ({} for a run that recorded none)."""
    return record.base_model.model_dump() if record.base_model is not None else {}


def model_card(
    *,
    run: RunDir,
    config: RunConfig,
    record: RunRecord,
    fmt: str,
    base_name: str,
    usage: str,
    checks: dict[str, Any],
) -> str:
    name = config.name or run.path.name
    library = "peft" if fmt == "peft" else ("gguf" if fmt == "gguf" else "transformers")
    front = [
        "---",
        f"base_model: {json.dumps(base_name)}",
        f"library_name: {library}",
        "tags: [specialize, "
        + (config.method.kind if config.method.adapter else "full-fine-tune")
        + f", {fmt}]",
        "---",
    ]
    sections = [
        f"# {name}",
        f"A specialist fine-tuned from **{base_name}** with `specialize` for one task"
        + (f" ({record.task})" if record.task else "")
        + f". This directory is the `{fmt}` export.",
        "## Base model\n\n" + _base(record, base_name),
        "## Training data\n\n" + _data(config, record),
        "## Method and hyper-parameters\n\n" + _method(config, record),
        "## Evaluation\n\n" + _evaluation(eval_headline(run)),
        "## Prompt format\n\n" + _prompt(config),
        "## How to run\n\n" + usage.strip(),
        "## Export checks\n\n" + _checks(checks),
        "## Intended use and limits\n\n" + _limits(record),
    ]
    return "\n".join(front) + "\n\n" + "\n\n".join(sections) + "\n"


def base_card(*, record: RunRecord, base_name: str, usage: str, checks: dict[str, Any]) -> str:
    """The card of a `base` export: the untouched base model, so no training data, method or
    evaluation to describe, only where it came from and how to serve adapters on it."""
    front = [
        "---",
        f"base_model: {json.dumps(base_name)}",
        "library_name: transformers",
        "tags: [specialize, base]",
        "---",
    ]
    sections = [
        f"# {base_name}",
        f"The base model **{base_name}** as a plain Hugging Face directory, exported by `specialize` so "
        "that servers which load adapters onto a base (vLLM `--enable-lora`, LoRAX) can read it offline. "
        "It holds no fine-tuning." + _gguf_note(record, base_name),
        "## Base model\n\n" + _base(record, base_name),
        "## How to run\n\n" + usage.strip(),
        "## Export checks\n\n" + _checks(checks),
    ]
    return "\n".join(front) + "\n\n" + "\n\n".join(sections) + "\n"


def _gguf_note(record: RunRecord, base_name: str) -> str:
    """A GGUF base is quantized: its dequantized weights, which the adapters were trained on and
    this export holds, are not the hub release of the same name, so say which one to serve."""
    base = base_of(record)
    if not str(base.get("kind", "")).endswith("gguf"):
        return ""
    return (
        f" The weights are those of `{Path(str(base.get('path', ''))).name}`, dequantized: the ones this "
        f"run's adapter was trained on, not the original `{base_name}` release, so serve adapters on this "
        "directory to get the replies they were evaluated with."
    )


def _base(record: RunRecord, base_name: str) -> str:
    base = base_of(record)
    lines = [f"- model: `{base_name}`"]
    if base.get("kind"):
        lines.append(f"- loaded from: {base['kind']} (`{Path(str(base.get('path', ''))).name}`)")
    if record.base_fingerprint:
        lines.append(f"- weights fingerprint: `{record.base_fingerprint}`")
    return "\n".join(lines)


def _data(config: RunConfig, record: RunRecord) -> str:
    counts = record.examples.model_dump()
    lines = []
    if config.data.train:
        lines.append(
            f"- source: `{Path(config.data.train).name}`"
            + (f" (test: `{Path(config.data.test).name}`)" if config.data.test else "")
        )
    if counts:
        lines.append("- examples: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    labels = record.labels
    if labels:
        shown = ", ".join(f"`{label}`" for label in labels[:10])
        lines.append(f"- labels ({len(labels)}): {shown}" + (", ..." if len(labels) > 10 else ""))
    if record.supervised_tokens:
        lines.append(f"- supervised tokens: {record.supervised_tokens}")
    lines.append(f"- max sequence length: {config.model.max_seq_len} tokens (longer examples were truncated)")
    return "\n".join(lines)


_METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA (LoRA over a 4-bit NF4 base)", "full": "full fine-tuning"}
_VARIANT_NAMES = {"lora": None, "dora": "DoRA", "rslora": "rank-stabilised (rsLoRA)"}


def _method(config: RunConfig, record: RunRecord) -> str:
    m, t = config.method, config.train
    rows: list[tuple[str, Any]] = [("method", _METHOD_NAMES.get(m.kind, m.kind))]
    if m.adapter:
        rows += [
            ("variant", _VARIANT_NAMES.get(m.variant, m.variant)),
            ("rank r", m.lora_r),
            ("alpha", m.lora_alpha),
            ("dropout", m.lora_dropout),
            ("target modules", m.target_modules),
        ]
    rows += [
        ("learning rate", config.learning_rate),
        ("scheduler", t.lr_scheduler),
        ("warmup ratio", t.warmup_ratio),
        ("epochs", t.epochs),
        ("max steps", t.max_steps),
        ("batch size", t.batch_size),
        ("gradient accumulation", t.grad_accum),
        ("weight decay", t.weight_decay),
        ("seed", config.seed),
        ("optimizer steps", record.steps),
        ("train loss", _num(record.train_loss)),
        ("validation loss", _num(record.val_loss)),
        ("trainable parameters", record.trainable_parameters),
        ("training time (s)", record.train_seconds),
    ]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)


def _evaluation(headline: str | None) -> str:
    if headline is None:
        return "This run has not been evaluated; run `specialize eval RUN` and export again."
    return headline


def _prompt(config: RunConfig) -> str:
    d = config.data
    lines = ["Prompt the model as it was trained, through its chat template (included in this export):"]
    lines.append(f"- system prompt: {json.dumps(d.system_prompt) if d.system_prompt else 'none'}")
    lines.append(
        f"- user message template: {json.dumps(d.prompt_template) if d.prompt_template else 'the request text as is'}"
    )
    lines.append("- decoding: greedy (temperature 0), as evaluated")
    return "\n".join(lines)


def _checks(checks: dict[str, Any]) -> str:
    shown = {k: v for k, v in checks.items() if k != "disagreements" and v not in (None, [], {})}
    return "\n".join(f"- {k}: {_num(v)}" for k, v in shown.items()) or "- none"


def _limits(record: RunRecord) -> str:
    task = record.task
    return "\n".join(
        [
            f"- Intended for the single task it was trained on{f' ({task})' if task else ''}, on inputs like its "
            "training data. Outside that task it is a small general model and may be wrong with confidence.",
            "- Quality was measured only on the held-out split named above; inputs that drift from that "
            "distribution need a new evaluation (`specialize drift` watches for it).",
            "- It inherits the base model's licence, biases and limits; do not use it for decisions about "
            "people without human review.",
        ]
    )


def _num(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value
