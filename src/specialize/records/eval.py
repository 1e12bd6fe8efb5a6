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

from specialize.records.human import HumanEval

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


class Deployment(_Record):
    """The fine-tuned adapter timed as one way of deploying it runs it, on the contender's prompts.

    `replies_equal` of `rows_compared` greedy replies are identical to the unmerged adapter's
    in the evaluation (another way of computing the same model rounds differently, so a rare
    reply may change)."""

    latency: Latency = Field(default_factory=Latency)
    throughput: Throughput = Field(default_factory=Throughput)
    cost_per_1k: float | None = None
    rows_compared: int = 0
    replies_equal: int = 0


class MergedDeployment(Deployment):
    """The adapter merged into a copy of the base (a single-adapter deployment), timed like every
    contender (`evaluate.timing`)."""


class ServedDeployment(Deployment):
    """The adapter as `specialize serve` runs it: unmerged, in the batching engine, its LoRA in the
    model's dtype, every request submitted at once (throughput; `throughput.batch_size` is the
    engine's batch) and then one at a time (latency). `tokens_per_s` counts generated tokens."""

    tokens_per_s: float | None = None


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


class CatchAllScores(_Record):
    """The catch-all class (out of scope, other, none) on its own: its precision and recall as
    replied, and after the replies below `threshold` abstain into it; what that cost the other
    classes is their rows' accuracy before and after. `after` is None without a threshold."""

    label: str
    threshold: float | None = None
    before: LabelScores = Field(default_factory=LabelScores)
    after: LabelScores | None = None
    abstained: int = 0
    in_scope_accuracy_before: float | None = None
    in_scope_accuracy_after: float | None = None

    _finite = field_validator("in_scope_accuracy_before", "in_scope_accuracy_after", mode="before")(
        _nan_to_none
    )


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
    # The label set's catch-all class, when it has one (detected by name or eval.catch_all_label).
    catch_all: CatchAllScores | None = None

    _finite = field_validator("ece", "threshold", "threshold_coverage", mode="before")(_nan_to_none)


class JsonConfidence(_Record):
    """How sure the model was of each JSON reply (one entry per test row): the mean token
    log-probability of the reply, and per field (dotted path) the lowest log-probability among
    its value's tokens; `field_mean_minimum` averages those over the rows, weakest fields first."""

    replies: Literal["constrained", "free"] = "free"
    mean_logprob: list[float | None] = Field(default_factory=list)
    field_minimum: list[dict[str, float]] = Field(default_factory=list)
    field_mean_minimum: dict[str, float] = Field(default_factory=dict)


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
    json_confidence: JsonConfidence | None = None  # the fine-tuned model's, on JSON tasks
    merged: MergedDeployment | None = None  # fine-tuned LoRA runs: the single-adapter deployment
    served: ServedDeployment | None = None  # fine-tuned LoRA runs: in the batching engine


class CurvePoint(_Record):
    """The fine-tuned model trained on one nested subset of the training rows, on the test rows."""

    fraction: float
    examples: int
    value: float | None = None
    ci95: Interval = Field(default_factory=Interval)

    _finite = field_validator("value", mode="before")(_nan_to_none)


class CurveFit(_Record):
    """metric(n) = a + b * n^(-c): `a` is the asymptote, where more data stops helping."""

    a: float
    b: float
    c: float


class LearningCurve(_Record):
    """What more training data would buy (`eval.learning_curve`; `evaluate.learning_curve`)."""

    metric: str
    points: list[CurvePoint] = Field(default_factory=list)
    fit: CurveFit | None = None
    at_2x: Interval | None = None  # expected metric with twice the training rows, 95% interval
    at_4x: Interval | None = None
    asymptote: Interval | None = None
    target_metric: float | None = None
    target_reachable: bool | None = None
    examples_for_target: Interval | None = None  # training rows the curve needs to reach the target
    note: str = ""


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


class PreferenceEval(_Record):
    """A preference run (DPO, KTO) on its held-out judgments, against its parent (the base, or
    the run it started from), whose log-probabilities are the implicit reward's reference.

    implicit-reward accuracy: the share of held-out pairs where the tuned model's implicit reward
    log p_tuned(y) - log p_parent(y) is higher for chosen than for rejected (for rated replies:
    positive for a desirable reply, negative for an undesirable one). prefers chosen: the share of
    pairs where a model's own log-probability of chosen is above rejected's, for both models, with
    McNemar's paired test of the change.
    """

    parent: str = "base"
    rows: int = 0  # held-out pairs (or rated replies) scored
    beta: float | None = None
    implicit_reward_accuracy: Interval = Field(default_factory=Interval)
    mean_reward_margin: float | None = None  # beta x the mean margin (pairs)
    parent_prefers_chosen: Interval | None = None  # pairs only
    tuned_prefers_chosen: Interval | None = None
    preference_change: PairedComparison | None = None  # tuned vs parent on prefers-chosen
    # The usual task metric with chosen (or the desirable reply) as reference: tuned vs parent.
    parent_contender: str | None = None  # the contender row holding the parent's replies
    task_change: PairedComparison | None = None

    _finite = field_validator("mean_reward_margin", mode="before")(_nan_to_none)


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
    # Blind human review of this run's replies (`specialize review`), also written as eval/human.json.
    human: HumanEval | None = None
    learning_curve: LearningCurve | None = None
    preference: PreferenceEval | None = None  # preference runs (DPO, KTO) only
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
