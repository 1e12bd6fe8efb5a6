"""`eval/report.json`: every contender measured on the same held-out rows, as one typed record.

The evaluation runner builds an `EvalReport`; the report writers (terminal, markdown, HTML), the
headline, the registry, export's model card and the drift monitor read it back through
`RunDir.eval_report()`, by attribute rather than by string key. Field names are those of the
report.json files that earlier versions wrote, so older reports load; unknown keys are kept.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["zero-shot", "few-shot", "fine-tuned", "classic", "extra"]
TUNED: Role = "fine-tuned"
CLASSIC: Role = "classic"
# The contenders the fine-tuned model has to beat: prompting the base model, and a classic
# TF-IDF classifier, which on many label tasks is the bar a careful engineer checks first.
BASELINE_ROLES: tuple[str, ...] = ("zero-shot", "few-shot", CLASSIC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and (math.isnan(value) or math.isinf(value)) else value


class Interval(_Record):
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    _finite = field_validator("value", "ci_low", "ci_high", mode="before")(_nan_to_none)


class PairedComparison(_Record):
    """A paired test of two contenders on the same rows (McNemar or paired bootstrap)."""

    name: str | None = None
    mean_diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int | None = None
    b01: int | None = None
    b10: int | None = None
    metric: str | None = None

    _finite = field_validator("mean_diff", "ci_low", "ci_high", "p_value", mode="before")(_nan_to_none)

    def significantly_below_zero(self, alpha: float = 0.05) -> bool:
        """The first side is worse than the second, and the test says it is not chance."""
        return (
            self.mean_diff is not None
            and self.mean_diff < 0
            and self.p_value is not None
            and self.p_value < alpha
        )


class Comparison(PairedComparison):
    """The fine-tuned model against the best prompt baseline."""

    fine_tuned: str | None = None
    best_baseline: str | None = None


class LabelScores(_Record):
    """Precision, recall and F1 of one label; None where undefined (never predicted, no support)."""

    support: int = 0
    predicted: int = 0
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None

    _finite = field_validator("precision", "recall", "f1", mode="before")(_nan_to_none)


class FieldScores(LabelScores):
    """The same for one field of a JSON reply (dotted path): a field counts as right when its
    value equals the reference's."""


class Quality(_Record):
    primary: str
    primary_value: float | None = None
    values: dict[str, float | None] = Field(default_factory=dict)
    ci95: dict[str, Interval] = Field(default_factory=dict)
    # JSON-ready diagnostics whose shape depends on the task kind (confusions, per-label and
    # per-field scores): written by `evaluate.metrics`, shown as they are.
    details: dict[str, Any] = Field(default_factory=dict)
    per_item: dict[str, list[float]] = Field(default_factory=dict)
    # Where a contender fails, typed: per label (classification) or per field (JSON). None in
    # reports written before these existed, and for task kinds that have no such breakdown.
    per_label: dict[str, LabelScores] | None = None
    per_field: dict[str, FieldScores] | None = None

    _finite = field_validator("primary_value", mode="before")(_nan_to_none)

    @field_validator("values", mode="before")
    @classmethod
    def _finite_values(cls, values: Any) -> Any:
        return {k: _nan_to_none(v) for k, v in values.items()} if isinstance(values, dict) else values

    def interval(self) -> Interval:
        """The primary metric with its 95% interval."""
        return self.ci95.get(self.primary) or Interval(value=self.primary_value)


class Tokens(_Record):
    prompt_mean: float = 0.0
    completion_mean: float = 0.0


class Latency(_Record):
    batch1_p50_s: float | None = None
    batch1_p95_s: float | None = None
    samples: int = 0


class Throughput(_Record):
    requests_per_s: float | None = None
    batch_size: int | None = None
    seconds: float | None = None


class ConstraintEffect(_Record):
    """What decoding under the run's output contract changed for one contender."""

    contract: str
    invalid_free: float
    invalid_constrained: float
    prevented_share: float | None = None
    incomplete: int = 0
    quality: Quality
    primary_change: PairedComparison
    latency_overhead: float | None = None
    throughput_ratio: float | None = None
    latency: Latency = Field(default_factory=Latency)
    throughput: Throughput = Field(default_factory=Throughput)
    tokens: Tokens = Field(default_factory=Tokens)
    predictions: list[str] = Field(default_factory=list)

    def harmful(self, alpha: float = 0.05) -> bool:
        """The contract lowered the task metric, significantly by the paired test."""
        return self.primary_change.significantly_below_zero(alpha)


class ReliabilityBin(_Record):
    """One equal-width confidence bin: its rows' mean confidence against their accuracy."""

    lower: float
    upper: float
    count: int = 0
    confidence: float | None = None
    accuracy: float | None = None


class CoveragePoint(_Record):
    """Answering only the rows with confidence >= threshold: the share kept and their precision."""

    threshold: float
    coverage: float
    precision: float


class Calibration(_Record):
    """How far a contender's confidence in its label replies can be trusted (one per test row).

    `confidence[i]` is the probability the model gives to the label it replied on row i, among
    all allowed labels; None when the reply names no label (it abstains). `replies` says which
    replies were scored: the ones decoded under the label contract when measured, else the free ones.
    """

    replies: Literal["constrained", "free"] = "free"
    confidence: list[float | None] = Field(default_factory=list)
    correct: list[bool] = Field(default_factory=list)
    ece: float | None = None
    bins: list[ReliabilityBin] = Field(default_factory=list)
    coverage_curve: list[CoveragePoint] = Field(default_factory=list)
    target_precision: float = 0.9
    # The smallest confidence threshold whose kept rows reach the target precision (None: none does).
    threshold: float | None = None
    threshold_coverage: float | None = None
    # Share of answered rows whose reply is also the label the scorer ranks first. Greedy decoding
    # picks token by token, the scorer ranks whole replies; when they often disagree, the
    # confidence describes a different decision than the one served.
    top_label_agreement: float | None = None

    _finite = field_validator("ece", "threshold", "threshold_coverage", mode="before")(_nan_to_none)


class ContenderResult(_Record):
    name: str
    role: str
    quality: Quality
    tokens: Tokens = Field(default_factory=Tokens)
    latency: Latency = Field(default_factory=Latency)
    throughput: Throughput = Field(default_factory=Throughput)
    cost_per_1k: float | None = None
    predictions: list[str] = Field(default_factory=list)
    incomplete: int = 0
    constrained: ConstraintEffect | None = None
    break_even_requests: float | None = None
    confidence: Calibration | None = None


class Skipped(_Record):
    """A contender the evaluation could not measure, and why (shown, so its absence is explained)."""

    name: str
    reason: str


class LossCurves(_Record):
    train: list[list[float]] = Field(default_factory=list)
    val: list[list[float]] = Field(default_factory=list)


class TrainingSummary(_Record):
    seconds: float | None = None
    cost: float | None = None
    examples: int | None = None
    method: str | None = None
    curves: LossCurves = Field(default_factory=LossCurves)


class Sample(_Record):
    input: str
    reference: str
    predictions: dict[str, str] = Field(default_factory=dict)


class ContractVerdict(_Record):
    """Whether serving and `generate` should enforce the run's output contract by default."""

    apply_by_default: bool = True
    reason: str = ""


class EvalReport(_Record):
    # Every field has a default so that a partial report (hand-made, or cut down by another tool)
    # still yields what it does hold, such as its headline.
    run: str = ""
    task: str = ""
    labels: list[str] | None = None
    test_rows: int = 0
    max_new_tokens: int = 0
    output_contract: dict[str, Any] = Field(default_factory=lambda: {"kind": "none"})
    price: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    contenders: list[ContenderResult] = Field(default_factory=list)
    skipped: list[Skipped] = Field(default_factory=list)
    comparison: Comparison | None = None
    samples: list[Sample] = Field(default_factory=list)
    contract_verdict: ContractVerdict = Field(default_factory=ContractVerdict)
    headline: str = ""

    def tuned(self) -> ContenderResult:
        """The fine-tuned contender (every report the evaluation writes has exactly one)."""
        found = next((c for c in self.contenders if c.role == TUNED), None)
        if found is None:
            raise ValueError(f"the evaluation report of {self.run or 'this run'} has no fine-tuned contender")
        return found

    def baselines(self) -> list[ContenderResult]:
        return [c for c in self.contenders if c.role in BASELINE_ROLES]

    def contender(self, name: str | None) -> ContenderResult | None:
        return next((c for c in self.contenders if c.name == name), None)
