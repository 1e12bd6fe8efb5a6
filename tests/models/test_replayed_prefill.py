"""One prefill for several decodings: the replayed passes give the tokens of passes of their own."""

from __future__ import annotations

import pytest
import torch

from specialize.constrain import OutputContract
from specialize.inference import Decoding, generate, generate_each
from specialize.models.load import load_model
from specialize.models.replayed_prefill import PrefillReplay, generating_module
from tests.test_inference import conversations

LABELS = OutputContract("labels", labels=("label_1", "label_12", "card lost", "other"))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir))


def counted_forwards(model, monkeypatch):
    module = generating_module(model)
    calls = []
    real = type(module).forward

    def forward(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[1])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(module), "forward", forward)
    return calls


@pytest.mark.parametrize("share_prefix", [True, False])
def test_each_decoding_gets_what_it_gets_alone(loaded, share_prefix):
    """Free, constrained and free again: each pass equals a plain `generate` of that decoding,
    with the shared prefix (its own cache layout) and without."""
    decodings = [Decoding(), Decoding(constraint=LABELS), Decoding(stop=("a",))]
    passes = generate_each(
        loaded, conversations(), decodings, max_new_tokens=8, batch_size=4, share_prefix=share_prefix
    )
    for decoding, result in zip(decodings, passes, strict=True):
        alone = generate(
            loaded,
            conversations(),
            max_new_tokens=8,
            batch_size=4,
            share_prefix=share_prefix,
            stop=decoding.stop,
            constraint=decoding.constraint,
        )
        assert [(g.text, g.completion_tokens, g.complete) for g in result.generations] == [
            (g.text, g.completion_tokens, g.complete) for g in alone
        ]
        assert result.seconds > 0
    assert any(g.complete for g in passes[1].generations)  # the constraint really decoded


def test_the_later_decodings_do_not_run_the_prompts_again(loaded, monkeypatch):
    calls = counted_forwards(loaded.model, monkeypatch)
    generate_each(
        loaded,
        conversations(),
        [Decoding(), Decoding(constraint=LABELS)],
        max_new_tokens=3,
        batch_size=4,
        share_prefix=False,
    )
    prefills = [width for width in calls if width > 1]
    assert len(prefills) == 2  # two batches of the six prompts, each prefilled once, not twice
    assert len(calls) - len(prefills) >= 2 * 2  # both decodings decoded both batches


def test_a_replay_is_charged_the_prefill_it_did_not_run(loaded):
    decodings = [Decoding(), Decoding()]
    same, again = generate_each(loaded, conversations(), decodings, max_new_tokens=2, batch_size=6)
    assert [g.text for g in same.generations] == [g.text for g in again.generations]
    # Identical work, so about the same time: the replayed pass is not shown as prefill-free.
    assert again.seconds > 0.5 * same.seconds


def test_a_replay_over_another_batch_is_refused(loaded):
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = torch.tensor([tokenizer("hello there", add_special_tokens=False)["input_ids"]])
    other = torch.tensor([tokenizer("goodbye now", add_special_tokens=False)["input_ids"]])
    replay = PrefillReplay(model)
    assert replay.supported
    with torch.inference_mode(), replay.active():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
        with pytest.raises(ValueError, match="batch that was recorded"):
            model.generate(
                input_ids=other, attention_mask=torch.ones_like(other), max_new_tokens=2, do_sample=False
            )
    assert "_prefill" not in generating_module(model).__dict__  # the wrapper is gone after the block


def test_no_decoding_is_an_error(loaded):
    with pytest.raises(ValueError, match="no decoding"):
        generate_each(loaded, conversations(), [])
