"""How contenders are timed: the batch-1 latency samples find the prompts' shared prefix cached."""

from __future__ import annotations

from specialize.evaluate import timing
from specialize.models.load import load_model
from tests.test_inference import conversations


def test_latency_samples_reuse_the_batched_passs_prefix_cache(tiny_model_dir, monkeypatch):
    loaded = load_model(str(tiny_model_dir))
    calls = []
    real = timing.generate

    def spy(loaded, convs, **kw):
        calls.append((len(convs), kw["batch_size"], kw.get("cached_prefix")))
        return real(loaded, convs, **kw)

    monkeypatch.setattr(timing, "generate", spy)
    timed = timing.timed_generation(
        loaded, conversations(), max_new_tokens=4, batch_size=4, stop=[], latency_samples=3
    )
    assert len(timed.outputs) == 6 and len(timed.latencies) == 3
    assert [(n, b) for n, b, _ in calls] == [(6, 4), (1, 1), (1, 1), (1, 1)]
    prefixes = {id(p) for _, _, p in calls}
    assert len(prefixes) == 1 and calls[0][2] is not None  # one cache, computed once, reused by every sample
