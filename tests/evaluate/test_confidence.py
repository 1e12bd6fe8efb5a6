"""Reply confidence: the batched label scorer against brute force on a tiny model, and the
calibration metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from specialize.evaluate.calibration import (
    calibration,
    coverage_curve,
    expected_calibration_error,
    precision_threshold,
    reliability_bins,
)
from specialize.evaluate.confidence import (
    LABEL_CHUNK,
    label_probabilities,
    label_reply_ids,
    reply_confidence,
)
from specialize.models.chat import prompt_ids

# "card" is a prefix of "card_arrival": only the end-of-turn token tells them apart.
LABELS = ["card", "card_arrival", "declined_card_payment", "exchange_rate", "top up"]
CONVERSATIONS = [
    [{"role": "user", "content": "I am still waiting on my card?"}],
    [{"role": "system", "content": "Classify."}, {"role": "user", "content": "What is the exchange rate?"}],
    [{"role": "user", "content": "x"}],
]


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    from specialize.models.load import load_model

    model = load_model(str(tiny_model_dir))
    model.model.eval()
    return model


def brute_force(loaded, messages, labels) -> np.ndarray:
    """One whole forward pass per label over prompt + reply: the definition, computed slowly."""
    import torch

    prompt = prompt_ids(loaded.tokenizer, messages)
    scores = []
    for label in labels:
        reply = label_reply_ids(loaded, messages, label)
        ids = torch.tensor([prompt + reply])
        with torch.inference_mode():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), dim=-1)
        scores.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(reply)))
    scores = np.array(scores)
    return np.exp(scores - np.logaddexp.reduce(scores))


def test_batched_scorer_matches_one_forward_per_label(loaded):
    probs = label_probabilities(loaded, CONVERSATIONS, LABELS)
    assert probs.shape == (len(CONVERSATIONS), len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for row, messages in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(probs[row], brute_force(loaded, messages, LABELS), rtol=1e-4, atol=1e-6)
    # A random model spreads its mass unevenly: the check above is not passed by a uniform answer.
    assert probs.max() - probs.min() > 1e-3


def test_reply_ends_at_end_of_turn(loaded):
    reply = label_reply_ids(loaded, CONVERSATIONS[0], "card")
    assert reply[-1] == loaded.tokenizer.eos_token_id and reply.count(loaded.tokenizer.eos_token_id) == 1
    assert loaded.tokenizer.decode(reply[:-1]) == "card"


def test_more_labels_than_a_chunk(loaded, monkeypatch):
    import specialize.evaluate.confidence as confidence

    labels = [f"label {i}" for i in range(7)]
    whole = label_probabilities(loaded, CONVERSATIONS[:1], labels)
    monkeypatch.setattr(confidence, "LABEL_CHUNK", 3)
    assert confidence.LABEL_CHUNK != LABEL_CHUNK
    np.testing.assert_allclose(label_probabilities(loaded, CONVERSATIONS[:1], labels), whole, rtol=1e-5)


def test_scorer_bad_input(loaded):
    with pytest.raises(ValueError, match="no labels"):
        label_probabilities(loaded, CONVERSATIONS, [])
    assert label_probabilities(loaded, [], LABELS).shape == (0, len(LABELS))


def test_reply_confidence_picks_the_replied_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert reply_confidence(probs, ["a", "b", "c"], ["b", None]) == [0.2, None]
    assert reply_confidence(probs, ["a", "b", "c"], ["a", "not a label"]) == [0.7, None]


# ----------------------------------------------------------------------------------- calibration


def test_perfectly_calibrated_toy():
    # 0.75 confident and right 3 times in 4; 0.5 confident and right once in 2; 1.0 and always right.
    confidence = [0.75] * 4 + [0.5] * 2 + [1.0] * 2
    correct = [True, True, True, False, True, False, True, True]
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)
    bins = reliability_bins(confidence, correct)
    assert len(bins) == 15 and sum(b.count for b in bins) == 8
    assert [b.count for b in bins if b.count] == [2, 4, 2]
    assert bins[0].lower == 0.0 and bins[-1].upper == 1.0 and bins[-1].accuracy == 1.0


def test_miscalibrated_hand_computed():
    # Bin (0.867, 0.933]: 0.9 confident, 1 of 2 right -> gap 0.4; bin (0.2, 0.267]: 0.25, 1 of 2 -> 0.25.
    confidence = [0.9, 0.9, 0.25, 0.25]
    correct = [True, False, True, False]
    assert expected_calibration_error(confidence, correct) == pytest.approx((2 * 0.4 + 2 * 0.25) / 4)


def test_coverage_curve_and_threshold_hand_computed():
    confidence = [0.95, 0.9, 0.9, 0.6, 0.4, None]
    correct = [True, True, False, True, False, False]
    curve = coverage_curve(confidence, correct)
    # Ties at 0.9 are kept together; the abstaining row counts in the denominator only.
    assert [(p.threshold, p.coverage, p.precision) for p in curve] == [
        (0.95, pytest.approx(1 / 6), 1.0),
        (0.9, pytest.approx(3 / 6), pytest.approx(2 / 3)),
        (0.6, pytest.approx(4 / 6), pytest.approx(3 / 4)),
        (0.4, pytest.approx(5 / 6), pytest.approx(3 / 5)),
    ]
    assert precision_threshold(curve, 0.9).threshold == 0.95
    # Precision is not monotone in the threshold: 0.75 is reached again at 0.6, the smallest one.
    assert precision_threshold(curve, 0.75).threshold == 0.6
    assert precision_threshold(curve, 0.5).threshold == 0.4


def test_single_class_sets():
    right = calibration([0.9] * 5, [True] * 5, target_precision=0.9)
    assert right.ece == pytest.approx(0.1) and right.threshold == 0.9 and right.threshold_coverage == 1.0
    wrong = calibration([0.8] * 3, [False] * 3, target_precision=0.9)
    assert wrong.ece == pytest.approx(0.8) and wrong.threshold is None and wrong.threshold_coverage is None


def test_all_abstain():
    result = calibration(
        [None, None, None], [False, False, False], target_precision=0.9, replies="constrained"
    )
    assert result.ece is None and result.threshold is None and result.coverage_curve == []
    assert sum(b.count for b in result.bins) == 0 and result.replies == "constrained"
    assert result.confidence == [None, None, None]


def test_calibration_bad_input():
    with pytest.raises(ValueError, match="confidences for"):
        expected_calibration_error([0.5], [True, False])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [True])
    assert math.isclose(expected_calibration_error([0.0, 1.0], [False, True]), 0.0)
