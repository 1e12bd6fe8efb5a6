"""What decoding under the run's output contract changes for one contender.

Both runs answer the same test rows; the free run's replies are scored against the contract
(exactly one label; JSON valid under the schema) with the same compiled grammar that enforces it,
so "invalid" means the same thing on both sides. Reported: the invalid share free and
constrained, the share of invalid replies the constraint prevented, the change in every quality
metric with the paired interval of the primary one, and the latency and throughput overhead.
"""

from __future__ import annotations

from typing import Any

from specialize.constrain import OutputContract, compile_constraint
from specialize.evaluate.metrics import paired_test
from specialize.evaluate.stats import mcnemar
from specialize.models.load import LoadedModel


def constraint_effect(
    free: dict[str, Any], constrained: dict[str, Any], contract: OutputContract, loaded: LoadedModel
) -> dict[str, Any]:
    """`free` and `constrained` are the runner's measurements of one contender (same rows)."""
    invalid_free = _invalid(free["predictions"], contract, loaded)
    invalid_constrained = _invalid(constrained["predictions"], contract, loaded)
    n = len(free["predictions"])
    a, b = constrained["_metrics"], free["_metrics"]
    if a.kind == "classification":
        test = mcnemar([x > 0.5 for x in a.per_item["accuracy"]], [x > 0.5 for x in b.per_item["accuracy"]])
    else:
        test = paired_test(a, b)
    free_p50, con_p50 = free["latency"]["batch1_p50_s"], constrained["latency"]["batch1_p50_s"]
    free_rps, con_rps = free["throughput"]["requests_per_s"], constrained["throughput"]["requests_per_s"]
    return {
        "contract": contract.kind,
        "invalid_free": invalid_free / n,
        "invalid_constrained": invalid_constrained / n,
        # Of the replies that broke the contract when decoding freely, the share that no longer do.
        "prevented_share": (invalid_free - invalid_constrained) / invalid_free if invalid_free else None,
        "incomplete": constrained["incomplete"],
        "quality": constrained["quality"],
        "primary_change": {"metric": a.primary, **test.to_dict()},
        "latency_overhead": con_p50 / free_p50 if free_p50 and con_p50 else None,
        "throughput_ratio": con_rps / free_rps if free_rps and con_rps else None,
        "latency": constrained["latency"],
        "throughput": constrained["throughput"],
        "tokens": constrained["tokens"],
        "predictions": constrained["predictions"],
    }


def _invalid(predictions: list[str], contract: OutputContract, loaded: LoadedModel) -> int:
    from specialize.inference import end_of_turn_ids

    tokenizer = loaded.tokenizer
    constraint = compile_constraint(contract, tokenizer, end_of_turn_ids(loaded))
    return sum(
        1
        for text in predictions
        if not constraint.accepts(tokenizer(text, add_special_tokens=False)["input_ids"])
    )
