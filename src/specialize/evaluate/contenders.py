"""The contenders of an evaluation: who answers the test rows, and with which prompt.

(a) the base model zero-shot with a full instruction, (b) the base model few-shot, (c) the
fine-tuned model with the short prompt it was trained on, (d) extras from the config (another
run, another base model zero-shot). Base-model contenders reuse the fine-tuned model's weights
with the adapter switched off, so the base is loaded once.

For label tasks, (e) the classic baseline (`evaluate.classic`): not a language model, so it is
built apart from the generation contenders and measured by its own function.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specialize.data.example import Example
from specialize.errors import ConfigError
from specialize.evaluate import prompts
from specialize.evaluate.classic import NAME as CLASSIC_NAME
from specialize.evaluate.classic import ClassicContender, ClassicUnavailable, fit_classic
from specialize.inference import TrainedModel, load_run
from specialize.models.load import LoadedModel, inference_dtype, load_model
from specialize.outputs import TaskKind
from specialize.records.eval import Skipped


@dataclass
class Contender:
    name: str
    role: str  # "zero-shot" | "few-shot" | "fine-tuned" | "extra"
    loaded: LoadedModel
    conversations: list[list[dict[str, str]]]
    # Enters the model state this contender needs (adapter on or off) for its generations.
    context: Callable[[], contextlib.AbstractContextManager[Any]] = field(default=contextlib.nullcontext)


def build_contenders(
    trained: TrainedModel,
    train: list[Example],
    test: list[Example],
    *,
    kind: TaskKind,
    labels: list[str] | None,
    max_new_tokens: int,
) -> list[Contender]:
    cfg = trained.config.eval
    custom = Path(cfg.zero_shot_prompt).read_text(encoding="utf-8") if cfg.zero_shot_prompt else None
    system = prompts.instruction(kind, train, labels, custom)
    base, base_context = _base_of(trained)
    contenders = [
        Contender("zero-shot", "zero-shot", base, [prompts.zero_shot(e, system) for e in test], base_context)
    ]
    if cfg.few_shot_k > 0:
        selector = prompts.FewShotSelector(
            train, cfg.few_shot_k, how=cfg.few_shot_selection, seed=trained.config.seed
        )
        limit = _context_limit(base) - max_new_tokens
        shots = [prompts.few_shot(e, system, selector.select(e), base.tokenizer, limit) for e in test]
        contenders.append(Contender(f"few-shot (k={selector.k})", "few-shot", base, shots, base_context))
    contenders.append(Contender("fine-tuned", "fine-tuned", trained.loaded, [e.messages for e in test]))
    for extra in cfg.extra_contenders:
        contenders.append(_extra(extra, test, system))
    return contenders


def build_classic(
    trained: TrainedModel, kind: TaskKind, train: list[Example], val: list[Example], test: list[Example]
) -> ClassicContender | Skipped | None:
    """The classic baseline for a label task (None when it does not apply or is switched off)."""
    if kind != "classification" or not trained.config.eval.classic_baseline:
        return None
    try:
        return fit_classic(train, val, test, seed=trained.config.seed)
    except ClassicUnavailable as why:
        return Skipped(name=CLASSIC_NAME, reason=str(why))


def _base_of(trained: TrainedModel) -> tuple[LoadedModel, Callable[[], Any]]:
    model = trained.loaded.model
    if hasattr(model, "disable_adapter"):  # a PEFT model: the same weights with the adapter off
        return trained.loaded, model.disable_adapter
    return load_model(
        trained.config.model.base, dtype=inference_dtype(trained.config.model.dtype)
    ), contextlib.nullcontext


def _extra(spec: dict[str, Any], test: list[Example], system: str) -> Contender:
    if "run" in spec:
        other = load_run(spec["run"])
        name = spec.get("name") or f"run {Path(spec['run']).name}"
        return Contender(name, "extra", other.loaded, [e.messages for e in test])
    if "model" in spec:
        loaded = load_model(spec["model"], dtype=inference_dtype("auto"))
        name = spec.get("name") or f"{spec['model']} zero-shot"
        return Contender(name, "extra", loaded, [prompts.zero_shot(e, system) for e in test])
    raise ConfigError(f"eval.extra_contenders: each entry needs 'run' or 'model', got {sorted(spec)}")


def _context_limit(loaded: LoadedModel) -> int:
    limit = getattr(loaded.model.config, "max_position_embeddings", None) or 2048
    return min(int(limit), 4096)
