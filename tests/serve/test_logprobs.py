"""logprobs / top_logprobs as OpenAI defines them, the label distribution extension and
abstention, over real HTTP with the official `openai` client.

The log-probabilities are checked against the definition (one teacher-forced forward pass of the
model over prompt + reply), the label distribution against `evaluate.confidence` on the same
adapter loaded with PEFT, and greedy replies must not change when logprobs are asked for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from specialize.registry import AdapterRegistry
from tests.conftest import make_adapter_run
from tests.serve.test_app import LABELS, PROMPTS, run_with_contract, running_server


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("logprobs")
    plain = make_adapter_run(root / "plain", tiny_model_dir, seed=11, rank=4)
    router = run_with_contract(plain, root / "router", {"kind": "labels", "labels": LABELS})
    store = AdapterRegistry(root / "registry")
    store.add("plain", plain)
    store.add("router", router)
    return root


def _client(url):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def served(runs, tiny_model_dir):
    with running_server(tiny_model_dir, runs / "registry", runs) as (url, server, _):
        yield url, server, _client(url)


@pytest.fixture(scope="module")
def abstaining(runs, tiny_model_dir, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("abstaining")
    with running_server(
        tiny_model_dir, runs / "registry", log_dir, abstain_below=1.0, fallback_label="human"
    ) as (url, server, _):
        yield url, server, _client(url)


def _teacher_forced(tiny_model_dir, prompt_ids, reply_ids):
    """log P(token_j | prompt, reply_<j) and the log-softmax rows, from one forward pass."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    rows = logp[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(reply_ids)]
    return [float(rows[j, t]) for j, t in enumerate(reply_ids)], rows


def test_chat_logprobs_are_the_models_and_greedy_is_unchanged(served, tiny_model_dir):
    from specialize.batching.requests import SamplingParams
    from specialize.models.chat import prompt_ids

    url, server, client = served
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        plain = client.chat.completions.create(
            model=server.base_id, messages=messages, temperature=0, max_tokens=8
        )
        reply = client.chat.completions.create(
            model=server.base_id,
            messages=messages,
            temperature=0,
            max_tokens=8,
            logprobs=True,
            top_logprobs=3,
        )
        choice = reply.choices[0]
        assert choice.message.content == plain.choices[0].message.content
        content = choice.logprobs.content
        # A random model may emit half a UTF-8 character: its bytes are exact, its text replaced.
        raw = b"".join(bytes(t.bytes) for t in content)
        assert content and raw.decode("utf-8", errors="replace") == choice.message.content
        if all(not t.token.startswith("bytes:") for t in content):
            assert "".join(t.token for t in content) == choice.message.content
        for token in content:
            top = token.top_logprobs
            assert len(top) == 3 and [t.logprob for t in top] == sorted(
                (t.logprob for t in top), reverse=True
            )
            assert top[0].token == token.token and math.isclose(top[0].logprob, token.logprob)  # greedy
        # The definition: one teacher-forced forward pass over the prompt and the tokens generated.
        ids = prompt_ids(server.tokenizer, messages)
        done = server.engine.generate(ids, SamplingParams(max_tokens=8, temperature=0, logprobs=3))
        reply_ids = [e.token_id for e in done.logprobs]
        assert reply_ids == done.token_ids[: len(reply_ids)]
        expected, rows = _teacher_forced(tiny_model_dir, ids, reply_ids)
        np.testing.assert_allclose([t.logprob for t in content], expected, atol=1e-4)
        best = rows.topk(3, dim=-1)
        np.testing.assert_allclose(
            [[t.logprob for t in token.top_logprobs] for token in content], best.values.numpy(), atol=1e-4
        )
        assert [list(token.bytes) for token in content] == [
            list(server.annotator.speller.bytes_of(t)) for t in reply_ids
        ]


def test_logprobs_off_by_default_and_top_needs_logprobs(served):
    import openai

    url, server, client = served
    reply = client.chat.completions.create(
        model=server.base_id, messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=4
    )
    assert reply.choices[0].logprobs is None
    assert "label_distribution" not in (reply.choices[0].model_extra or {})
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client.chat.completions.create(
            model=server.base_id, messages=[{"role": "user", "content": "hi"}], top_logprobs=2
        )


def test_completions_legacy_logprobs(served):
    url, server, client = served
    reply = client.completions.create(
        model=server.base_id,
        prompt="The quick brown",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    choice = reply.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    if all(not t.startswith("bytes:") for t in lp.tokens):
        assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 2 <= len(top) <= 3 and top[token] == logprob and logprob == max(top.values())


def test_streamed_logprobs_equal_the_whole_response(served):
    url, server, client = served
    kwargs = {
        "model": "plain",
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "temperature": 0,
        "max_tokens": 10,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = [
        t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content
    ]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.message.content
    assert [t.token for t in streamed] == [t.token for t in whole.logprobs.content]
    # Not bit-equal: the second request's prompt start comes from the prefix cache (prefilled
    # apart), which moves float sums in the last digits.
    assert [t.logprob for t in streamed] == pytest.approx(
        [t.logprob for t in whole.logprobs.content], abs=1e-5
    )


def test_label_distribution_under_the_label_contract(served, runs, tiny_model_dir):
    from peft import PeftModel

    from specialize.evaluate.confidence import label_probabilities
    from specialize.models.load import load_model

    url, server, client = served
    loaded = load_model(str(tiny_model_dir))
    loaded.model = PeftModel.from_pretrained(loaded.model, str(runs / "router" / "adapter")).eval()
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        reply = client.chat.completions.create(
            model="router", messages=messages, temperature=0, max_tokens=32, logprobs=True
        )
        choice = reply.choices[0]
        extra = choice.model_extra
        distribution = extra["label_distribution"]
        assert [d["label"] for d in distribution] == sorted(
            LABELS, key=lambda label: -next(d["probability"] for d in distribution if d["label"] == label)
        )
        by_label = {d["label"]: d["probability"] for d in distribution}
        assert set(by_label) == set(LABELS) and math.isclose(sum(by_label.values()), 1.0, rel_tol=1e-6)
        assert choice.message.content in LABELS and extra["confidence"] == by_label[choice.message.content]
        assert "abstained" not in extra  # this server does not abstain
        # Both prune the same way (PRUNE_MASS); the likely labels are compared on the log scale.
        expected = label_probabilities(loaded, [messages], LABELS)[0]
        got = np.array([by_label[label] for label in LABELS])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        likely = expected > 1e-3
        np.testing.assert_allclose(np.log(got[likely]), np.log(expected[likely]), atol=1e-3)
    # No logprobs asked for and no abstention: the labels are not scored (it costs a forward pass).
    quiet = client.chat.completions.create(
        model="router", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=32
    )
    assert "label_distribution" not in (quiet.choices[0].model_extra or {})


def test_abstaining_server_answers_the_fallback(abstaining):
    url, server, client = abstaining
    for prompt in PROMPTS:
        reply = client.chat.completions.create(
            model="router", messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=32
        )
        choice = reply.choices[0]
        extra = choice.model_extra
        assert extra["confidence"] < 1.0  # below --abstain-below 1.0: every reply abstains
        assert extra["abstained"] is True and choice.message.content == "human"
        assert extra["abstained_reply"] in LABELS and extra["label_distribution"]
    # Streamed: the fallback is the only text sent, and the last chunk says it abstained.
    chunks = list(
        client.chat.completions.create(
            model="router",
            messages=[{"role": "user", "content": PROMPTS[0]}],
            temperature=0,
            max_tokens=32,
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "human"
    assert chunks[-1].choices[0].model_extra["abstained"] is True
    # An adapter without a label contract is not touched.
    free = client.chat.completions.create(
        model="plain", messages=[{"role": "user", "content": "hi"}], temperature=0, max_tokens=4
    )
    assert "abstained" not in (free.choices[0].model_extra or {})
