"""The fast training batch computes the same loss as the stock full-logits forward."""

from __future__ import annotations

import pytest
import torch

from specialize.data.example import Example, Source
from specialize.data.tokenize import IGNORE_INDEX, encode
from specialize.train.collator import CompletionCollator, supervised_loss

from ..conftest import make_tiny_model


def encoded_batch(tokenizer):
    rows = [
        ("short", "alpha"),
        ("a much longer request with many more words in it", "beta gamma"),
        ("medium sized request", '{"k": 1}'),
    ]
    return [
        encode(tokenizer, Example([{"role": "user", "content": q}], a, Source("t", i)), 64)
        for i, (q, a) in enumerate(rows)
    ]


def stock_loss(model, encoded):
    """Right padding, full logits, the model's own loss: what a default recipe computes."""
    width = max(len(e.input_ids) for e in encoded)
    ids = torch.full((len(encoded), width), 0)
    labels = torch.full((len(encoded), width), IGNORE_INDEX)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def test_left_padded_kept_logits_loss_equals_stock_loss(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer).eval()
    encoded = encoded_batch(tiny_tokenizer)
    batch = CompletionCollator(tiny_tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    )
    labels = batch.pop("labels")
    assert batch["logits_to_keep"] < batch["input_ids"].shape[1], "only the reply positions are kept"
    ours = supervised_loss(model(**batch), labels)
    torch.testing.assert_close(ours, stock_loss(model, encoded), rtol=1e-5, atol=1e-5)


def test_batch_loss_is_the_token_mean_of_single_example_losses(tiny_tokenizer):
    model = make_tiny_model(tiny_tokenizer).eval()
    collate = CompletionCollator(tiny_tokenizer.pad_token_id)
    encoded = encoded_batch(tiny_tokenizer)
    total, tokens = 0.0, 0
    for e in encoded:
        batch = collate([{"input_ids": e.input_ids, "labels": e.labels}])
        labels = batch.pop("labels")
        n = e.completion_len
        total += float(supervised_loss(model(**batch), labels)) * n
        tokens += n
    batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    labels = batch.pop("labels")
    assert abs(float(supervised_loss(model(**batch), labels)) - total / tokens) < 1e-5


def test_masked_prompt_tokens_contribute_no_gradient(tiny_tokenizer):
    """Our gradient equals the stock gradient with the prompt masked, and differs from one where
    the prompt is supervised too: prompt positions add nothing."""
    model = make_tiny_model(tiny_tokenizer)
    encoded = encoded_batch(tiny_tokenizer)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    batch = CompletionCollator(tiny_tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    )
    labels = batch.pop("labels")
    ours = grads(supervised_loss(model(**batch), labels))
    masked = grads(stock_loss(model, encoded))
    torch.testing.assert_close(ours, masked, rtol=1e-4, atol=1e-6)
    for e in encoded:  # now supervise the prompt as well
        e.labels = list(e.input_ids)
    unmasked = grads(stock_loss(model, encoded))
    assert not torch.allclose(ours, unmasked, atol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batch_loss_equals_the_mean_of_unpacked_losses(tiny_tokenizer, attention):
    """No attention across packed examples, with either attention kernel training may pick: the
    packed loss is the token-mean of each example's own loss, computed alone and unpadded."""
    from specialize.train.collator import PackedCollator

    model = make_tiny_model(tiny_tokenizer).eval()
    model.set_attn_implementation(attention)
    encoded = encoded_batch(tiny_tokenizer)
    batch = PackedCollator(row_tokens=1000)([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    assert batch["input_ids"].shape == (1, sum(len(e.input_ids) for e in encoded)), "one row, no padding"
    labels = batch.pop("labels")
    packed = supervised_loss(model(**batch), labels)
    total = sum(float(stock_loss(model, [e])) * e.completion_len for e in encoded)
    assert abs(float(packed) - total / sum(e.completion_len for e in encoded)) < 1e-5
    torch.testing.assert_close(packed, stock_loss(model, encoded), rtol=1e-5, atol=1e-5)


def test_rows_default_to_the_longest_example(tiny_tokenizer):
    from specialize.train.collator import PackedCollator

    encoded = encoded_batch(tiny_tokenizer) * 3
    batch = PackedCollator(tiny_tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    )
    assert batch["input_ids"].shape[1] == max(len(e.input_ids) for e in encoded)


def test_rows_are_bounded_and_the_loss_does_not_change(tiny_tokenizer):
    """With a small row limit the batch spreads over several rows, padded only at their ends;
    the loss is still the stock one."""
    from specialize.train.collator import PackedCollator

    model = make_tiny_model(tiny_tokenizer).eval()
    encoded = encoded_batch(tiny_tokenizer) * 3
    batch = PackedCollator(tiny_tokenizer.pad_token_id, row_tokens=40)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    )
    longest = max(len(e.input_ids) for e in encoded)
    assert batch["input_ids"].shape[0] > 1 and batch["input_ids"].shape[1] <= max(40, longest)
    labels = batch.pop("labels")
    assert int((labels != IGNORE_INDEX).sum()) == sum(e.completion_len for e in encoded)
    torch.testing.assert_close(
        supervised_loss(model(**batch), labels), stock_loss(model, encoded), rtol=1e-5, atol=1e-5
    )
