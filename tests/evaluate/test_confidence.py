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
    label_choice,
    label_probabilities,
    label_reply_ids,
    reply_confidence,
)
from specialize.models.chat import prompt_ids
from specialize.models.label_scores import LabelTrie, normalise, trie_log_probs

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


def brute_force_log_probs(loaded, messages, labels) -> np.ndarray:
    """log P(reply | prompt), one whole forward pass per label over prompt + reply: the
    definition, computed slowly."""
    import torch

    prompt = prompt_ids(loaded.tokenizer, messages)
    scores = []
    for label in labels:
        reply = label_reply_ids(loaded, messages, label)
        ids = torch.tensor([prompt + reply])
        with torch.inference_mode():
            logp = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), dim=-1)
        scores.append(sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(reply)))
    return np.array(scores)


def brute_force(loaded, messages, labels) -> np.ndarray:
    scores = brute_force_log_probs(loaded, messages, labels)
    return np.exp(scores - np.logaddexp.reduce(scores))


def test_batched_scorer_matches_one_forward_per_label(loaded):
    probs = label_probabilities(loaded, CONVERSATIONS, LABELS, prune=0)
    assert probs.shape == (len(CONVERSATIONS), len(LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    for row, messages in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(probs[row], brute_force(loaded, messages, LABELS), rtol=1e-4, atol=1e-6)
    # A random model spreads its mass unevenly: the check above is not passed by a uniform answer.
    assert probs.max() - probs.min() > 1e-3


def test_sequence_log_probs_match_brute_force(loaded):
    """On the log scale, so that labels with a tiny probability are checked as closely as the
    likely one (a wrong tree mask moves them by whole nats)."""
    trie = LabelTrie.build(LABELS, [label_reply_ids(loaded, CONVERSATIONS[0], label) for label in LABELS])
    prompts = [prompt_ids(loaded.tokenizer, m) for m in CONVERSATIONS]
    got = trie_log_probs(loaded.model, prompts, trie, loaded.tokenizer.pad_token_id, prune=0)
    for row, messages in enumerate(CONVERSATIONS):
        np.testing.assert_allclose(got[row], brute_force_log_probs(loaded, messages, LABELS), atol=1e-3)


def test_reply_ends_at_end_of_turn(loaded):
    reply = label_reply_ids(loaded, CONVERSATIONS[0], "card")
    assert reply[-1] == loaded.tokenizer.eos_token_id and reply.count(loaded.tokenizer.eos_token_id) == 1
    assert loaded.tokenizer.decode(reply[:-1]) == "card"


def test_prompts_in_several_passes_and_of_different_lengths(loaded, monkeypatch):
    import specialize.models.label_scores as label_scores

    conversations = [*CONVERSATIONS, [{"role": "user", "content": "a much longer request " * 6}]]
    whole = label_probabilities(loaded, conversations, LABELS, prune=0)
    monkeypatch.setattr(label_scores, "MAX_PROMPTS_PER_PASS", 1)
    one_by_one = label_probabilities(loaded, conversations, LABELS, prune=0)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        np.log(whole[-1]), np.log(brute_force(loaded, conversations[-1], LABELS)), atol=1e-3
    )


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_tree_mask_under_both_attention_kernels(tiny_model_dir, attention):
    from transformers import AutoModelForCausalLM

    from specialize.models.load import load_model

    loaded = load_model(str(tiny_model_dir))
    loaded.model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=attention)
    loaded.model.eval()
    probs = label_probabilities(loaded, CONVERSATIONS[:2], LABELS, prune=0)
    for row, messages in enumerate(CONVERSATIONS[:2]):
        np.testing.assert_allclose(
            np.log(probs[row]), np.log(brute_force(loaded, messages, LABELS)), atol=1e-3
        )


def test_second_pass_in_groups_under_a_small_logits_budget(loaded, monkeypatch):
    import specialize.models.label_scores as label_scores

    whole = label_probabilities(loaded, CONVERSATIONS, LABELS, prune=0)
    monkeypatch.setattr(label_scores, "LOGITS_BUDGET_BYTES", 1)  # one row per group
    np.testing.assert_allclose(label_probabilities(loaded, CONVERSATIONS, LABELS, prune=0), whole, rtol=1e-5)


def test_pruning_stays_within_its_bound_and_runs_fewer_nodes(loaded, monkeypatch):
    """A left-out label gets its deepest scored prefix's probability (an upper bound of its own),
    and every probability stays within prune of the exact one.

    The random model is made to answer like a trained one: a bias on the tokens of
    "card_arrival" puts almost all the mass on "card" and then on that label's own tokens, so
    only its path is fed after the prompts."""
    trie = LabelTrie.build(LABELS, [label_reply_ids(loaded, CONVERSATIONS[0], label) for label in LABELS])
    prompts = [prompt_ids(loaded.tokenizer, m) for m in CONVERSATIONS]
    pad = loaded.tokenizer.pad_token_id
    fed = []
    inner = loaded.model.forward
    boosted = label_reply_ids(loaded, CONVERSATIONS[0], "card_arrival")

    def trained(*args, **kwargs):
        fed.append(kwargs["input_ids"].clone())
        out = inner(*args, **kwargs)
        out.logits[..., boosted] += 12.0
        return out

    monkeypatch.setattr(loaded.model, "forward", trained)
    exact = trie_log_probs(loaded.model, prompts, trie, pad, prune=0)
    for prune in (1e-6, 1e-3, 0.3):
        fed.clear()
        pruned = trie_log_probs(loaded.model, prompts, trie, pad, prune=prune)
        assert (np.abs(normalise(pruned) - normalise(exact)) <= prune + 1e-9).all()
        assert (pruned >= exact - 1e-4).all()  # upper bounds where left out, equal elsewhere
    # At prune 0.3 (the loop's last): after the prompts, only card_arrival's path is fed: "card"
    # (which ends the label "card" too), then the rest of its path in one pass (a chain of only
    # children) by the rows not done yet; nothing of the other labels.
    arrival = [trie.tokens[n] for n in trie.paths[LABELS.index("card_arrival")][:-1]]
    assert len(fed) == 3 and fed[1].tolist() == [arrival[:1]] * len(prompts)
    assert 1 <= fed[2].shape[0] <= len(prompts)
    assert fed[2].tolist() == [arrival[1:]] * fed[2].shape[0]


def test_a_model_that_rarely_answers_a_label_is_still_within_the_bound(loaded):
    """The random model gives the labels almost no probability, so the labels it completes hold
    little mass and the bound is relative to them: the scorer goes deeper, not wrong."""
    trie = LabelTrie.build(LABELS, [label_reply_ids(loaded, CONVERSATIONS[0], label) for label in LABELS])
    prompts = [prompt_ids(loaded.tokenizer, m) for m in CONVERSATIONS]
    pad = loaded.tokenizer.pad_token_id
    exact = normalise(trie_log_probs(loaded.model, prompts, trie, pad, prune=0))
    for prune in (1e-3, 0.3):
        pruned = normalise(trie_log_probs(loaded.model, prompts, trie, pad, prune=prune))
        assert (np.abs(pruned - exact) <= prune + 1e-9).all()


def test_trie_shares_prefixes():
    trie = LabelTrie.build(["a", "ab", "b"], [[5, 9], [5, 6, 9], [7, 9]])
    # 5 is shared by "a" and "ab": 6 nodes, not 7; only nodes with children need logits.
    assert trie.tokens == (5, 9, 6, 9, 7, 9)
    assert trie.parents == (-1, 0, 0, 2, -1, 4)
    assert trie.depths == (0, 1, 1, 2, 0, 1)
    assert trie.paths == ((0, 1), (0, 2, 3), (4, 5))
    assert trie.expanded == (0, 2, 4)
    with pytest.raises(ValueError, match="empty reply"):
        LabelTrie.build(["a"], [[]])


def test_label_choice_names_the_reply_and_the_runners_up():
    probs = np.array([0.1, 0.6, 0.25, 0.05])
    labels = ["a", "b", "c", "d"]
    choice = label_choice(probs, labels, "c", top=2)
    assert choice.label == "c" and choice.probability == 0.25
    assert choice.alternatives == (("b", 0.6), ("a", 0.1))
    none = label_choice(probs, labels, None, top=2)
    assert none.label is None and none.probability is None and none.alternatives[0] == ("b", 0.6)
    assert none.to_dict()["alternatives"][0] == {"label": "b", "probability": 0.6}


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
