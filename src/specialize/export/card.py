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
from specialize.run_dir import RunDir


def eval_headline(run: RunDir) -> Any:
    """The evaluation report's headline, or None when the run has not been evaluated."""
    report = run.eval_dir / "report.json"
    if not report.is_file():
        return None
    try:
        return json.loads(report.read_text(encoding="utf-8")).get("headline")
    except (json.JSONDecodeError, AttributeError):
        return None


def model_card(
    *,
    run: RunDir,
    config: RunConfig,
    meta: dict[str, Any],
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
        "tags: [specialize, " + ("lora" if config.method.kind == "lora" else "full-fine-tune") + f", {fmt}]",
        "---",
    ]
    sections = [
        f"# {name}",
        f"A specialist fine-tuned from **{base_name}** with `specialize` for one task"
        + (f" ({meta['task']})" if meta.get("task") else "")
        + f". This directory is the `{fmt}` export.",
        "## Base model\n\n" + _base(meta, base_name),
        "## Training data\n\n" + _data(config, meta),
        "## Method and hyper-parameters\n\n" + _method(config, meta),
        "## Evaluation\n\n" + _evaluation(eval_headline(run)),
        "## Prompt format\n\n" + _prompt(config),
        "## How to run\n\n" + usage.strip(),
        "## Export checks\n\n" + _checks(checks),
        "## Intended use and limits\n\n" + _limits(meta),
    ]
    return "\n".join(front) + "\n\n" + "\n\n".join(sections) + "\n"


def _base(meta: dict[str, Any], base_name: str) -> str:
    base = meta.get("base_model") or {}
    lines = [f"- model: `{base_name}`"]
    if base.get("kind"):
        lines.append(f"- loaded from: {base['kind']} (`{Path(str(base.get('path', ''))).name}`)")
    if meta.get("base_fingerprint"):
        lines.append(f"- weights fingerprint: `{meta['base_fingerprint']}`")
    return "\n".join(lines)


def _data(config: RunConfig, meta: dict[str, Any]) -> str:
    counts = meta.get("examples") or {}
    lines = []
    if config.data.train:
        lines.append(
            f"- source: `{Path(config.data.train).name}`"
            + (f" (test: `{Path(config.data.test).name}`)" if config.data.test else "")
        )
    if counts:
        lines.append("- examples: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    labels = meta.get("labels")
    if labels:
        shown = ", ".join(f"`{label}`" for label in labels[:10])
        lines.append(f"- labels ({len(labels)}): {shown}" + (", ..." if len(labels) > 10 else ""))
    if meta.get("supervised_tokens"):
        lines.append(f"- supervised tokens: {meta['supervised_tokens']}")
    lines.append(f"- max sequence length: {config.model.max_seq_len} tokens (longer examples were truncated)")
    return "\n".join(lines)


def _method(config: RunConfig, meta: dict[str, Any]) -> str:
    m, t = config.method, config.train
    rows: list[tuple[str, Any]] = [("method", "LoRA" if m.kind == "lora" else "full fine-tuning")]
    if m.kind == "lora":
        rows += [
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
        ("optimizer steps", meta.get("steps")),
        ("train loss", _num(meta.get("train_loss"))),
        ("validation loss", _num(meta.get("val_loss"))),
        ("trainable parameters", meta.get("trainable_parameters")),
        ("training time (s)", meta.get("train_seconds")),
    ]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)


def _evaluation(headline: Any) -> str:
    if headline is None:
        return "This run has not been evaluated; run `specialize eval RUN` and export again."
    if isinstance(headline, dict):
        return "\n".join(f"- {k}: {_num(v)}" for k, v in headline.items())
    if isinstance(headline, list):
        return "\n".join(f"- {item}" for item in headline)
    return str(headline)


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


def _limits(meta: dict[str, Any]) -> str:
    task = meta.get("task")
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
