"""Evaluating a preference run (DPO, KTO) against its parent on the held-out judgments.

The parent is what the run started from and was regularised towards: the base model, or the
`method.from_run` run's adapter. Both are read from the run's own weights: the base is the tuned
model with its adapter switched off; a parent adapter is loaded next to the tuned one in the same
PEFT model, so the base weights are in memory once.

Two questions, each with an interval:

- does the tuned model prefer the chosen replies more than its parent? Each held-out pair's
  chosen and rejected reply is scored as a whole reply (the template-rendered reply up to its
  end-of-turn, `evaluate.confidence.label_reply_ids`) under both models; the implicit reward of
  DPO is the log-probability ratio to the parent, so its accuracy is the share of pairs where
  that ratio is higher for chosen;
- are its answers better at the task? The chosen reply is the reference: the parent answers the
  same prompts as a contender of the evaluation ("parent"), and the fine-tuned contender's task
  metric is compared with it by the evaluation's paired test (McNemar for labels).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specialize.data.example import Example
from specialize.data.preference import PreferencePair, RatedReply, preference_row
from specialize.evaluate.confidence import label_reply_ids
from specialize.evaluate.contenders import Contender
from specialize.evaluate.metrics import MetricResult
from specialize.evaluate.stats import bootstrap_ci, mcnemar
from specialize.inference import TrainedModel
from specialize.models.chat import prompt_ids
from specialize.models.load import LoadedModel
from specialize.records.eval import Interval, PairedComparison, PreferenceEval

PARENT_ADAPTER = "parent"


def is_preference_run(trained: TrainedModel) -> bool:
    return trained.config.method.preference


def parent_name(trained: TrainedModel) -> str:
    from_run = trained.config.method.from_run
    return f"parent ({Path(from_run).name})" if from_run else "parent (base)"


def parent_context(trained: TrainedModel) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Enter the parent's weights: the base (adapter off) or the from_run adapter (loaded once)."""
    model = trained.loaded.model
    from_run = trained.config.method.from_run
    if not from_run:
        return model.disable_adapter
    if PARENT_ADAPTER not in model.peft_config:
        model.load_adapter(str(Path(from_run) / "adapter"), adapter_name=PARENT_ADAPTER)

    @contextlib.contextmanager
    def use_parent() -> Iterator[None]:
        tuned = model.active_adapter
        model.set_adapter(PARENT_ADAPTER)
        try:
            yield
        finally:
            model.set_adapter(tuned)

    return use_parent


def parent_contender(trained: TrainedModel, test: Sequence[Example]) -> Contender:
    """The parent answering the test prompts exactly as the tuned model does."""
    return Contender(
        parent_name(trained), "extra", trained.loaded, [e.messages for e in test], parent_context(trained)
    )


def sequence_log_probs(loaded: LoadedModel, prompt: list[int], replies: Sequence[list[int]]) -> np.ndarray:
    """log P(reply | prompt) for each reply: its tokens' log-probabilities summed, one batch of
    prompt + reply rows (right-padded; causal attention never looks at the padding)."""
    import torch

    model = loaded.model
    width = len(prompt) + max(len(r) for r in replies)
    pad = loaded.tokenizer.pad_token_id or 0
    ids = torch.full((len(replies), width), pad, dtype=torch.long)
    for row, reply in enumerate(replies):
        ids[row, : len(prompt) + len(reply)] = torch.tensor(prompt + reply, dtype=torch.long)
    with torch.inference_mode():
        logits = model(input_ids=ids.to(model.device)).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position j predicts token j + 1
    out = np.empty(len(replies))
    for row, reply in enumerate(replies):
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(reply), device=logp.device)
        targets = torch.tensor(reply, device=logp.device)
        out[row] = float(logp[row, positions, targets].sum())
    return out


def _reply_log_probs(trained: TrainedModel, rows: Sequence[PreferencePair | RatedReply]) -> np.ndarray:
    """[rows, 2] log P(reply | prompt): chosen and rejected (rated replies: the reply, then nan)."""
    loaded = trained.loaded
    out = np.full((len(rows), 2), np.nan)
    for i, row in enumerate(rows):
        replies = [row.chosen, row.rejected] if isinstance(row, PreferencePair) else [row.completion]
        ids = [label_reply_ids(loaded, row.prompt, reply) for reply in replies]
        out[i, : len(ids)] = sequence_log_probs(loaded, prompt_ids(loaded.tokenizer, row.prompt), ids)
    return out


def _interval(values: Sequence[float], resamples: int) -> Interval:
    value, low, high = bootstrap_ci(np.asarray(values, dtype=float), n_resamples=resamples)
    return Interval(value=value, ci_low=low, ci_high=high)


def preference_eval(
    trained: TrainedModel,
    test: Sequence[Example],
    *,
    resamples: int = 1000,
    tuned_metrics: MetricResult | None = None,
    parent_metrics: MetricResult | None = None,
    paired: Callable[[MetricResult, MetricResult], Any] | None = None,
) -> PreferenceEval | None:
    """Implicit-reward accuracy and preference for chosen, tuned vs parent, on the held-out rows;
    with the task metrics of both (when measured), their paired comparison."""
    rows = [r for e in test if (r := preference_row(e)) is not None]
    if not rows:
        return None
    tuned = _reply_log_probs(trained, rows)
    with parent_context(trained)():
        parent = _reply_log_probs(trained, rows)
    ratio = tuned - parent  # the implicit reward, over beta
    beta = trained.config.method.beta
    pairs = np.array([isinstance(r, PreferencePair) for r in rows])
    correct = np.empty(len(rows), dtype=bool)
    correct[pairs] = ratio[pairs, 0] > ratio[pairs, 1]
    desirable = np.array([isinstance(r, RatedReply) and r.desirable for r in rows])
    correct[~pairs] = (ratio[~pairs, 0] > 0) == desirable[~pairs]
    result = PreferenceEval(
        parent=trained.config.method.from_run or "base",
        rows=len(rows),
        beta=beta,
        implicit_reward_accuracy=_interval(correct.astype(float), resamples),
        parent_contender=parent_name(trained) if parent_metrics is not None else None,
    )
    if pairs.any():
        result.mean_reward_margin = float(beta * (ratio[pairs, 0] - ratio[pairs, 1]).mean())
        tuned_prefers = tuned[pairs, 0] > tuned[pairs, 1]
        parent_prefers = parent[pairs, 0] > parent[pairs, 1]
        result.tuned_prefers_chosen = _interval(tuned_prefers.astype(float), resamples)
        result.parent_prefers_chosen = _interval(parent_prefers.astype(float), resamples)
        test_result = mcnemar(tuned_prefers, parent_prefers)
        result.preference_change = PairedComparison(**test_result.to_dict(), metric="prefers chosen")
    if tuned_metrics is not None and parent_metrics is not None and paired is not None:
        test_result = paired(tuned_metrics, parent_metrics)
        result.task_change = PairedComparison(**test_result.to_dict(), metric=tuned_metrics.primary)
    return result
