"""Batched generation: the shared-prefix cache and stop strings change speed, not answers."""

from __future__ import annotations

import pytest

from specialize.inference import common_prefix, generate, shared_prefix
from specialize.models.load import load_model

SYSTEM = "You route messages. Allowed labels: " + ", ".join(f"label_{i}" for i in range(30))


def conversations():
    texts = [
        "card lost",
        "exchange rate today please",
        "why was I charged twice for one payment",
        "hi",
        "top up by cheque",
        "what is this fee on my statement from last week",
    ]
    return [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}] for t in texts]


def test_shared_prefix_gives_the_same_greedy_answers(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    plain = generate(loaded, conversations(), max_new_tokens=8, batch_size=4, share_prefix=False)
    shared = generate(loaded, conversations(), max_new_tokens=8, batch_size=4, share_prefix=True)
    assert [g.text for g in shared] == [g.text for g in plain]
    assert [g.completion_tokens for g in shared] == [g.completion_tokens for g in plain]
    assert [g.prompt_tokens for g in shared] == [g.prompt_tokens for g in plain]
    one_by_one = [generate(loaded, [c], max_new_tokens=8)[0].text for c in conversations()]
    assert [g.text for g in shared] == one_by_one


def test_a_cached_prefix_serves_one_request_at_a_time_with_the_same_answers(tiny_model_dir):
    """The evaluation's batch-1 latency samples reuse the batched pass's prefix cache: a request
    alone on it gets what it gets with its whole prompt prefilled, and the cache stays usable."""
    loaded = load_model(str(tiny_model_dir))
    prefix = shared_prefix(loaded, conversations())
    assert prefix is not None and len(prefix.tokens) >= 32
    alone = [generate(loaded, [c], max_new_tokens=8)[0] for c in conversations()]
    cached = [generate(loaded, [c], max_new_tokens=8, cached_prefix=prefix)[0] for c in conversations()]
    assert [g.text for g in cached] == [g.text for g in alone]
    assert [g.prompt_tokens for g in cached] == [g.prompt_tokens for g in alone]
    batched = generate(loaded, conversations(), max_new_tokens=8, batch_size=4, cached_prefix=prefix)
    assert [g.text for g in batched] == [g.text for g in alone]
    other = [{"role": "user", "content": "no system turn, so not the same start"}]
    with pytest.raises(ValueError, match="cached prefix"):
        generate(loaded, [other], max_new_tokens=2, cached_prefix=prefix)
    assert shared_prefix(loaded, conversations()[:1]) is None  # one prompt shares nothing


def test_common_prefix_leaves_every_prompt_a_token():
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == [1, 2]
    assert common_prefix([[1, 2, 3, 4], [1, 2, 5]]) == [1, 2]
    assert common_prefix([[7], [1, 2]]) == []


def test_stop_strings_cut_the_answer(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    free = generate(loaded, conversations()[:2], max_new_tokens=12)
    for g in free:
        if len(g.text) > 2:
            stop = g.text[1:3]
            cut = generate(loaded, [conversations()[free.index(g)]], max_new_tokens=12, stop=[stop])[0]
            assert stop not in cut.text and g.text.startswith(cut.text)
            return
    raise AssertionError("the tiny model produced no text to cut")
