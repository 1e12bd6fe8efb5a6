"""How contenders are timed: the batch-1 latency samples find the prompts' shared prefix cached;
several decodings share one batched sweep but each keeps latency samples of its own."""

from __future__ import annotations

from specialize.constrain import OutputContract
from specialize.evaluate import timing
from specialize.inference import Decoding
from specialize.models.load import load_model
from tests.test_inference import conversations


def spied(monkeypatch):
    calls = []
    real_each, real_one = timing.generate_each, timing.generate

    def each(loaded, convs, decodings, **kw):
        calls.append(("batched", len(convs), kw["batch_size"], kw.get("cached_prefix"), tuple(decodings)))
        return real_each(loaded, convs, decodings, **kw)

    def one(loaded, convs, **kw):
        decoding = Decoding(tuple(kw["stop"]), kw["constraint"])
        calls.append(("alone", len(convs), kw["batch_size"], kw.get("cached_prefix"), (decoding,)))
        return real_one(loaded, convs, **kw)

    monkeypatch.setattr(timing, "generate_each", each)
    monkeypatch.setattr(timing, "generate", one)
    return calls


def test_latency_samples_reuse_the_batched_passs_prefix_cache(tiny_model_dir, monkeypatch):
    loaded = load_model(str(tiny_model_dir))
    calls = spied(monkeypatch)
    timed = timing.timed_generation(
        loaded, conversations(), max_new_tokens=4, batch_size=4, stop=[], latency_samples=3
    )
    assert len(timed.outputs) == 6 and len(timed.latencies) == 3
    assert [(kind, n, b) for kind, n, b, _, _ in calls] == [("batched", 6, 4)] + [("alone", 1, 1)] * 3
    prefixes = {id(p) for _, _, _, p, _ in calls}
    assert len(prefixes) == 1 and calls[0][3] is not None  # one cache, computed once, reused by every sample


def test_two_decodings_one_sweep_and_their_own_samples(tiny_model_dir, monkeypatch):
    loaded = load_model(str(tiny_model_dir))
    calls = spied(monkeypatch)
    free, constrained = Decoding(), Decoding(constraint=OutputContract("labels", labels=("a", "b")))
    timed = timing.timed_generations(
        loaded, conversations(), [free, constrained], max_new_tokens=4, batch_size=4, latency_samples=2
    )
    assert [len(t.outputs) for t in timed] == [6, 6] and [len(t.latencies) for t in timed] == [2, 2]
    assert [(kind, d) for kind, _, _, _, d in calls] == [
        ("batched", (free, constrained)),
        ("alone", (free,)),
        ("alone", (free,)),
        ("alone", (constrained,)),
        ("alone", (constrained,)),
    ]
    assert all(t.batched_seconds > 0 for t in timed)
