"""A trained run answering raw requests with its confidence: what `generate --json` prints and
what `generate --abstain-below` serves. A JSON run's replies get their mean token log-probability
and per-field minima instead (`evaluate.json_confidence`).

Each reply is generated as `generate` always does (greedy, under the run's default contract
unless `free`); for a label task every label is then scored as a whole reply
(`evaluate.confidence`), giving the reply's probability and the most likely alternatives, and,
with an abstention, a reply below the threshold is replaced by the fallback label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specialize.evaluate.abstention import Abstention, run_abstention
from specialize.evaluate.confidence import LabelChoice, label_choice, label_probabilities
from specialize.evaluate.json_confidence import reply_log_probs
from specialize.inference import TrainedModel, generate
from specialize.outputs import LabelMatcher


@dataclass(frozen=True)
class Answer:
    """One request's reply: `text` as generated, `served` what the user gets (the fallback label
    when it abstained), and the label confidence when the run has labels."""

    request: str
    text: str
    served: str
    label: LabelChoice | None = None
    abstained: bool | None = None  # None: no abstention asked for
    # JSON runs: the reply's mean token log-probability and each field's lowest one.
    mean_logprob: float | None = None
    field_minimum: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request": self.request, "reply": self.served}
        if self.label is not None:
            out |= {
                "confidence": self.label.probability,
                "alternatives": self.label.to_dict()["alternatives"],
            }
        if self.mean_logprob is not None:
            out |= {"mean_logprob": self.mean_logprob, "field_min_logprob": self.field_minimum or {}}
        if self.abstained is not None:
            out["abstained"] = self.abstained
            if self.abstained:
                out["abstained_reply"] = self.text
        return out


def run_labels(trained: TrainedModel, contract: Any) -> list[str] | None:
    """The labels a run's replies are scored over: its label contract's, else its recorded ones."""
    if contract is not None and contract.kind == "labels" and contract.labels:
        return list(contract.labels)
    record = trained.record
    return (
        list(record.labels)
        if record is not None and record.task == "classification" and record.labels
        else None
    )


def _json_run(trained: TrainedModel, contract: Any) -> bool:
    if contract is not None and contract.kind in ("json_schema", "json_object"):
        return True
    return trained.record is not None and trained.record.task == "json"


def answer(
    trained: TrainedModel,
    requests: Sequence[str],
    *,
    max_new_tokens: int = 64,
    contract: Any = None,
    with_confidence: bool = False,
    abstain_below: float | str | None = None,
    fallback_label: str | None = None,
) -> list[Answer]:
    """Replies to `requests`; label confidence when asked for or when abstaining (label runs only)."""
    conversations = [trained.messages_for(text) for text in requests]
    labels = run_labels(trained, contract)
    abstention: Abstention | None = None
    if abstain_below is not None:
        if not labels:
            from specialize.errors import ConfigError

            raise ConfigError("--abstain-below needs a label task: this run's replies have no label set")
        abstention = run_abstention(trained.run, labels, abstain_below, fallback_label)
    replies = generate(trained.loaded, conversations, max_new_tokens=max_new_tokens, constraint=contract)
    if with_confidence and _json_run(trained, contract):
        scored = reply_log_probs(trained.loaded, conversations, [r.text for r in replies])
        return [
            Answer(t, r.text, r.text, mean_logprob=s.mean, field_minimum=s.field_minima())
            for t, r, s in zip(requests, replies, scored, strict=True)
        ]
    if not labels or not (with_confidence or abstention is not None):
        return [Answer(t, r.text, r.text) for t, r in zip(requests, replies, strict=True)]
    probabilities = label_probabilities(trained.loaded, conversations, labels)
    matcher = LabelMatcher(labels)
    out = []
    for row, (text, reply) in enumerate(zip(requests, replies, strict=True)):
        choice = label_choice(probabilities[row], labels, matcher(reply.text))
        served, abstained = (
            abstention.apply(reply.text, choice.probability) if abstention is not None else (reply.text, None)
        )
        out.append(Answer(text, reply.text, served, choice, abstained))
    return out
