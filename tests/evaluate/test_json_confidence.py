"""JSON reply confidence: value spans by hand, per-field minima by hand, and the batched
teacher-forced log-probabilities against one forward pass per reply on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from specialize.evaluate.json_confidence import ReplyLogProbs, reply_log_probs, value_spans
from specialize.models.chat import prompt_ids, render_reply


def test_value_spans_of_nested_objects_lists_and_scalars():
    text = '{"intent": "card", "slots": {"date": null, "n": 3}, "tags": [1, 2], "e": {}}'
    spans = value_spans(text)
    assert {path: text[a:b] for path, (a, b) in spans.items()} == {
        "intent": '"card"',
        "slots.date": "null",
        "slots.n": "3",
        "tags": "[1, 2]",
        "e": "{}",
    }
    assert value_spans(' { "a" : true }\n') == {"a": (9, 13)}
    assert value_spans('"just a string"') == {"$": (0, 15)}


@pytest.mark.parametrize("text", ['{"a": 1', '{"a" 1}', '{"a": 1} x', "", "{'a': 1}"])
def test_value_spans_of_broken_json(text):
    assert value_spans(text) is None


def test_field_minima_hand_computed():
    text = '{"a": "xy", "b": 7}'
    # Tokens: '{"a": ' | '"x' | 'y"' | ', "b": ' | '7' | '}' | end-of-turn (after the text).
    offsets = [(0, 6), (6, 8), (8, 10), (10, 17), (17, 18), (18, 19), (19, 29)]
    logprobs = [-0.1, -2.0, -0.5, -0.2, -0.05, -0.01, -0.3]
    reply = ReplyLogProbs(text, offsets, logprobs)
    assert reply.mean == pytest.approx(np.mean(logprobs))
    assert reply.field_minima() == {"a": -2.0, "b": -0.05}
    assert ReplyLogProbs("not json", [(0, 8)], [-1.0]).field_minima() == {}
    assert ReplyLogProbs("", [], []).mean is None


def test_reply_log_probs_match_one_pass_per_reply(tiny_model_dir):
    import torch

    from specialize.models.load import load_model

    loaded = load_model(str(tiny_model_dir))
    loaded.model.eval()
    conversations = [
        [{"role": "user", "content": "card lost"}],
        [
            {"role": "system", "content": "Extract."},
            {"role": "user", "content": "a much longer request here"},
        ],
        [{"role": "user", "content": "x"}],
    ]
    replies = ['{"intent": "card"}', '{"a": 1, "b": [true]}', "{}"]
    got = reply_log_probs(loaded, conversations, replies)
    eos = loaded.tokenizer.eos_token_id
    for messages, reply, scored in zip(conversations, replies, got, strict=True):
        prompt = prompt_ids(loaded.tokenizer, messages)
        ids = loaded.tokenizer(render_reply(loaded.tokenizer, messages, reply), add_special_tokens=False)[
            "input_ids"
        ]
        ids = ids[: ids.index(eos) + 1]
        with torch.inference_mode():
            logp = torch.log_softmax(loaded.model(input_ids=torch.tensor([prompt + ids])).logits[0], dim=-1)
        expected = [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids)]
        np.testing.assert_allclose(scored.logprobs, expected, atol=1e-4)
        assert scored.text == reply and len(scored.offsets) == len(ids)
        # Every field's value is covered by at least one token.
        assert set(scored.field_minima()) == set(value_spans(reply) or {})
    with pytest.raises(ValueError, match="2 conversations for 1 replies"):
        reply_log_probs(loaded, conversations[:2], replies[:1])
