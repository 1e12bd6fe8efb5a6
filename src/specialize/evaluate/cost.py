"""What a request costs, what training cost, and when fine-tuning pays for itself.

Two price models, because teams pay in two ways: per token to an API (`tokens`), or per hour for
a machine they run (`machine`), where a request costs the machine time it occupies at the
measured batched throughput.
"""

from __future__ import annotations

import math

from specialize.config import PriceConfig


def cost_per_1k_requests(
    price: PriceConfig, *, prompt_tokens: float, completion_tokens: float, seconds_per_request: float
) -> float:
    if price.mode == "tokens":
        per_request = (
            prompt_tokens * price.input_per_million + completion_tokens * price.output_per_million
        ) / 1e6
        return 1000 * per_request
    return machine_cost_per_1k(price, seconds_per_request)


def machine_cost_per_1k(price: PriceConfig, seconds_per_request: float) -> float:
    """A model that runs on your own machine costs its machine time in either price model."""
    return 1000 * seconds_per_request * price.machine_per_hour / 3600


def training_cost(price: PriceConfig, train_seconds: float) -> float:
    """Training always runs on a machine, priced per hour whatever the request price model."""
    return train_seconds * price.machine_per_hour / 3600


def break_even_requests(train_cost: float, baseline_per_1k: float, tuned_per_1k: float) -> float | None:
    """Requests after which the fine-tuned model's savings have repaid its training.

    None when it never does (the fine-tuned model is not cheaper per request); 0 when training
    was free.
    """
    saving = (baseline_per_1k - tuned_per_1k) / 1000
    if saving <= 0:
        return None
    return math.ceil(train_cost / saving) if train_cost > 0 else 0.0
