"""What decoding under the run's output contract changes for one contender.

Both runs answer the same test rows; the free run's replies are scored against the contract
(exactly one label; JSON valid under the schema) with the same compiled grammar that enforces it,
so "invalid" means the same thing on both sides. Reported: the invalid share free and
constrained, the share of invalid replies the constraint prevented, the change in every quality
metric with the paired interval of the primary one, and the latency and throughput overhead.

`contract_verdict` turns the fine-tuned contender's effect into the run's default: a contract
that makes its answers significantly worse is not applied unless asked for.
"""

from __future__ import annotations

from specialize.constrain import OutputContract, compile_constraint
from specialize.evaluate.metrics import MetricResult, paired_test
from specialize.evaluate.stats import PairedTest, mcnemar
from specialize.inference import end_of_turn_ids
from specialize.models.load import LoadedModel
from specialize.records.eval import ConstraintEffect, ContenderResult, ContractVerdict, PairedComparison

# A contract is switched off by default when it lowers the fine-tuned model's primary metric and
# the paired test puts that below this level: the usual 5%, one test per run.
HARMFUL_ALPHA = 0.05


def paired(a: MetricResult, b: MetricResult) -> PairedTest:
    """McNemar on per-item correctness for classification, the paired bootstrap otherwise."""
    if a.kind == "classification":
        return mcnemar([x > 0.5 for x in a.per_item["accuracy"]], [x > 0.5 for x in b.per_item["accuracy"]])
    return paired_test(a, b)


def constraint_effect(
    free: ContenderResult,
    free_metrics: MetricResult,
    constrained: ContenderResult,
    constrained_metrics: MetricResult,
    contract: OutputContract,
    loaded: LoadedModel,
) -> ConstraintEffect:
    """`free` and `constrained` are the runner's measurements of one contender (same rows)."""
    invalid_free = _invalid(free.predictions, contract, loaded)
    invalid_constrained = _invalid(constrained.predictions, contract, loaded)
    n = len(free.predictions)
    test = paired(constrained_metrics, free_metrics)
    free_p50, con_p50 = free.latency.batch1_p50_s, constrained.latency.batch1_p50_s
    free_rps, con_rps = free.throughput.requests_per_s, constrained.throughput.requests_per_s
    return ConstraintEffect(
        contract=contract.kind,
        invalid_free=invalid_free / n,
        invalid_constrained=invalid_constrained / n,
        # Of the replies that broke the contract when decoding freely, the share that no longer do.
        prevented_share=(invalid_free - invalid_constrained) / invalid_free if invalid_free else None,
        incomplete=constrained.incomplete,
        quality=constrained.quality,
        primary_change=PairedComparison(metric=constrained_metrics.primary, **test.to_dict()),
        latency_overhead=con_p50 / free_p50 if free_p50 and con_p50 else None,
        throughput_ratio=con_rps / free_rps if free_rps and con_rps else None,
        latency=constrained.latency,
        throughput=constrained.throughput,
        tokens=constrained.tokens,
        predictions=constrained.predictions,
    )


def contract_verdict(tuned: ContenderResult) -> ContractVerdict:
    """Apply the contract by default unless it made the fine-tuned model significantly worse."""
    effect = tuned.constrained
    if effect is None or not effect.harmful(HARMFUL_ALPHA):
        return ContractVerdict()
    change = effect.primary_change
    return ContractVerdict(
        apply_by_default=False,
        reason=(
            f"decoding under the inferred {effect.contract.replace('_', ' ')} contract lowered the fine-tuned "
            f"model's {change.metric} by {-(change.mean_diff or 0):.3f} (paired p={change.p_value:.2g}); "
            "serving and generate decode freely unless a request sets response_format"
        ),
    )


def _invalid(predictions: list[str], contract: OutputContract, loaded: LoadedModel) -> int:
    tokenizer = loaded.tokenizer
    constraint = compile_constraint(contract, tokenizer, end_of_turn_ids(loaded))
    assert constraint is not None
    return sum(
        1
        for text in predictions
        if not constraint.accepts(tokenizer(text, add_special_tokens=False)["input_ids"])
    )
