"""A request's token budget, checked before the engine sees it.

The prompt must be non-empty and within `--max-prompt-tokens`; `max_tokens` within the server's
limit and within what the model's context leaves after the prompt. Each refusal is a 400 in
OpenAI's shape (`context_length_exceeded` or `invalid_value`), naming the figures, so a client
knows what to shorten. A request that passes gets its `SamplingParams`.
"""

from __future__ import annotations

from specialize.batching.requests import SamplingParams
from specialize.serve.errors import APIError
from specialize.serve.options import ServeOptions
from specialize.serve.protocol import SamplingBody


def sampling_params(
    body: SamplingBody,
    n_prompt: int,
    max_tokens: int | None,
    default_max: int,
    param: str,
    *,
    limit: ServeOptions,
    max_model_len: int,
) -> SamplingParams:
    if n_prompt == 0:
        raise APIError(400, "the prompt is empty", param=param)
    if n_prompt > limit.max_prompt_tokens:
        raise APIError(
            400,
            f"the prompt has {n_prompt} tokens; this server accepts at most {limit.max_prompt_tokens}",
            param=param,
            code="context_length_exceeded",
        )
    room = max_model_len - n_prompt
    if room < 1:
        raise APIError(
            400,
            f"the prompt has {n_prompt} tokens; the model's context is {max_model_len}",
            param=param,
            code="context_length_exceeded",
        )
    if max_tokens is not None and max_tokens > limit.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {max_tokens}; this server allows at most {limit.max_tokens_limit}",
            param="max_tokens",
            code="invalid_value",
        )
    if max_tokens is not None and max_tokens > room:
        raise APIError(
            400,
            f"this model's context is {max_model_len} tokens: the prompt has {n_prompt} and "
            f"max_tokens asks for {max_tokens}; reduce the prompt or max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return SamplingParams(
        max_tokens=max_tokens or min(default_max, room, limit.max_tokens_limit),
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=body.stop_list(),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )
