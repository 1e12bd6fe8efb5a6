"""The in-place batch cache: requests joining and leaving a running batch at every step, with
prompts longer and shorter than the window, reallocations and compactions, still get the greedy
tokens each would get alone, and the ones transformers' own `generate` gives."""

from __future__ import annotations

import random

import pytest
import torch

from specialize.batching.engine import Engine
from specialize.batching.kv_batch import SlotBatch
from specialize.batching.requests import SamplingParams


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(
        tiny_model_dir
    )


def hf_greedy(model, ids, max_tokens):
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def drive(engine, arrivals):
    """Run the engine's loop by hand (no thread): `arrivals[step]` is the list of (prompt, max_tokens)
    submitted before that step, so rows join a batch that is mid-decode, deterministically."""
    handles, step = [], 0
    while step < len(arrivals) or engine.running or engine.queue_depth:
        for prompt, max_tokens in arrivals[step] if step < len(arrivals) else []:
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
            handles.append((prompt, max_tokens, engine.submit(prompt, params)))
        engine._iterate()
        step += 1
    return [(prompt, n, handle.wait(0)) for prompt, n, handle in handles]


def test_rows_joining_and_leaving_mid_decode_get_their_tokens_alone(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rng = random.Random(7)
    vocab = tokenizer.vocab_size
    # Short and long prompts, arriving in bursts and one by one, finishing at different steps.
    arrivals = [[] for _ in range(40)]
    for step in (0, 0, 0, 1, 3, 3, 6, 10, 10, 10, 11, 15, 22, 22, 30, 31):
        length = rng.choice([3, 5, 9, 40, 90])
        prompt = [rng.randrange(3, vocab) for _ in range(length)]
        arrivals[step].append((prompt, rng.choice([1, 2, 7, 15, 30])))
    # Prompts over 16 tokens that arrive while rows decode are prefilled in chunks.
    engine = Engine(model, tokenizer, max_batch=8, max_queue=64, prefill_chunk=16)
    engine._check_cache_layout()
    results = drive(engine, arrivals)
    assert len(results) == 16
    for prompt, max_tokens, completion in results:
        assert completion.token_ids == hf_greedy(model, prompt, max_tokens), (len(prompt), max_tokens)
    batch = engine._batch
    assert batch.reallocations >= 1  # a prompt longer than the room left of the window, or decode past it
    assert engine.running == 0 and batch.live == 0


def test_a_long_prompt_is_prefilled_in_chunks_while_the_batch_decodes(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_batch=4, prefill_chunk=10)
    engine._check_cache_layout()
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
    short = engine.submit([5, 6, 7], params)
    engine._admit()
    engine._decode()
    long_prompt = list(range(3, 48))  # 45 tokens: five chunks of at most 10
    long = engine.submit(long_prompt, SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))
    while engine._batch.count < 2:
        engine._iterate()
    # The short row had 2 tokens; it got one decode step after each of the first four chunks, and
    # one with the long row after the fifth chunk put that row in the batch (its second token).
    short_row, long_row = engine._batch.rows[0], engine._batch.rows[1]
    assert (len(short_row.tokens), len(long_row.tokens)) == (2 + 4 + 1, 2)
    while engine.running:
        engine._iterate()
    assert long.wait(0).token_ids == hf_greedy(model, long_prompt, 4)
    assert short.wait(0).token_ids == hf_greedy(model, [5, 6, 7], 20)


def test_a_long_prompt_whose_start_is_cached_joins_without_chunks(model_and_tokenizer):
    """Long is what is left to compute: a prompt past `prefill_chunk` whose start the prefix cache
    holds (a long shared instruction) is prefilled with the batch; one whose own tail is long
    still goes chunk by chunk. Either way its tokens are those it gets alone."""
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_batch=4, prefill_chunk=10)
    engine._check_cache_layout()
    instruction = list(range(3, 43))  # 40 tokens every prompt starts with
    prompts = [instruction + [50, 51, 52], instruction + [55, 56], instruction + [60, 61]]
    prompts.append(instruction + list(range(100, 115)))  # 15 tokens of its own
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    handles = [engine.submit(p, params) for p in prompts[:2]]
    engine._admit()  # nothing decoding yet: one prefill, which teaches the cache the instruction
    engine._decode()
    handles.append(engine.submit(prompts[2], params))
    engine._admit()
    assert not engine._chunked and engine._batch.count == 3  # its own 2 tokens, with the batch
    assert engine.prefixes.hits >= 1
    handles.append(engine.submit(prompts[3], params))
    engine._admit()
    assert len(engine._chunked) == 1  # 15 uncached tokens > prefill_chunk
    while engine.running:
        engine._iterate()
    for prompt, handle in zip(prompts, handles, strict=True):
        assert handle.wait(0).token_ids == hf_greedy(model, prompt, 6)


def test_a_finished_slot_is_reused_and_the_window_drops_dead_columns(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, max_batch=4)
    engine._check_cache_layout()
    long_prompt, short_prompt = list(range(3, 63)), [5, 6, 7]
    engine.submit(long_prompt, SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    engine.submit(short_prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    engine._admit()
    batch = engine._batch
    assert batch.width == len(long_prompt)
    engine._decode()  # the long row's second token: it leaves
    assert engine.running == 1
    # Only the short row is left: the window now starts at its first real column.
    assert batch.width == len(short_prompt) + 1
    engine.submit([9, 10], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))
    engine._admit()
    assert engine.running == 2 and batch.occupied == [0, 1]  # the freed lowest slot was reused


def test_compaction_keeps_rows_and_their_caches_together():
    batch = SlotBatch(max_rows=8)

    class Layer:
        def __init__(self, keys):
            self.keys, self.values = keys, -keys

    class Prefill:
        def __init__(self, rows, width, fill):
            keys = torch.arange(rows * width, dtype=torch.float32).reshape(rows, 1, width, 1) + fill
            self.layers = [Layer(keys), Layer(keys * 10)]

    slots = batch.place(list("abcdefgh"), Prefill(8, 3, 0.0), torch.ones(8, 3, dtype=torch.long))
    assert slots == list(range(8))
    before = {
        row: batch.keys[1][slot, 0, batch.start : batch.end, 0].clone() for slot, row in enumerate("abcdefgh")
    }
    batch.release([0, 1, 2, 4, 6])  # three left of eight: the forward pass would be mostly free slots
    assert batch.live == 3 and [batch.rows[i] for i in batch.occupied] == ["d", "f", "h"]
    for slot in batch.occupied:
        row = batch.rows[slot]
        assert torch.equal(batch.keys[1][slot, 0, batch.start : batch.end, 0], before[row])
        assert torch.equal(batch.values[1][slot, 0, batch.start : batch.end, 0], -before[row])
    assert int(batch.mask[3:].sum()) == 0


def test_placing_more_rows_than_free_slots_is_refused():
    batch = SlotBatch(max_rows=1)

    class Layer:
        keys = values = torch.zeros(2, 1, 2, 1)

    class Prefill:
        layers = [Layer()]

    with pytest.raises(ValueError, match="free slots"):
        batch.place(["a", "b"], Prefill(), torch.ones(2, 2, dtype=torch.long))


def test_a_shared_prompt_start_is_prefilled_once_and_answers_do_not_change(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    rng = random.Random(3)
    start = [rng.randrange(3, tokenizer.vocab_size) for _ in range(24)]  # a system turn, say
    prompts = [start + [rng.randrange(3, tokenizer.vocab_size) for _ in range(n)] for n in (2, 5, 9, 1)]
    engine = Engine(model, tokenizer, max_batch=4)
    engine._check_cache_layout()
    arrivals = [[(prompts[0], 6)], [], [(prompts[1], 6), (prompts[2], 6)], [(prompts[3], 6)]]
    for prompt, max_tokens, completion in drive(engine, arrivals):
        assert completion.token_ids == hf_greedy(model, prompt, max_tokens)
    cache = engine.prefixes
    # The first prompt had nothing to share with; every later one found the 24-token start.
    assert (cache.misses, cache.hits) == (1, 2) and cache.shared([start + [7, 8]]) == start


def test_rows_can_be_placed_in_chosen_free_slots():
    batch = SlotBatch(max_rows=4)

    class Layer:
        def __init__(self, rows):
            self.keys = self.values = torch.arange(rows * 2, dtype=torch.float32).reshape(rows, 1, 2, 1)

    class Prefill:
        def __init__(self, rows):
            self.layers = [Layer(rows)]

    assert batch.free_slots(2) == [0, 1]
    assert batch.place(["a", "b"], Prefill(2), torch.ones(2, 2, dtype=torch.long), slots=[1, 0]) == [1, 0]
    assert batch.rows[:2] == ["b", "a"]
    assert batch.free_slots(3) == [2, 3, 4]  # past the last slot when too few are free
    with pytest.raises(ValueError, match="distinct free slots"):
        batch.place(["c"], Prefill(1), torch.ones(1, 2, dtype=torch.long), slots=[0])
    with pytest.raises(ValueError, match="distinct free slots"):
        batch.place(["c", "d"], Prefill(2), torch.ones(2, 2, dtype=torch.long), slots=[2, 2])
    with pytest.raises(ValueError, match="below 4"):
        batch.place(["c"], Prefill(1), torch.ones(1, 2, dtype=torch.long), slots=[7])
    assert batch.rows[:2] == ["b", "a"] and batch.count == 2 and len(batch.rows) == 2  # nothing changed
