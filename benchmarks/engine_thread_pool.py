"""The engine thread's decode step with and without another thread's OpenMP worker pool alive.

    python benchmarks/engine_thread_pool.py               # ~3 min on 2 CPU cores
    python benchmarks/engine_thread_pool.py --adapters 64 --batch 64 --steps 32 --rounds 3

The model is loaded on the main thread, which leaves that thread with a libgomp worker pool; the
engine then decodes on a thread of its own. With two pools alive there are more OpenMP threads
than cores, libgomp stops letting idle workers spin, and every parallel op pays a wake-up
(`specialize.batching.threads`). The engine now frees the loading thread's pool when it is built
and started (`release_thread_pool`). Side by side, in interleaved rounds on one engine: the same
decode steps (the bundled SmolLM2-135M-Instruct, random rank-16 adapters on all linear layers,
rows round-robin over them, one batched prefill, then greedy steps) on the engine thread

(a) after a parallel op on the main thread has re-created its pool (how every engine ran before);
(b) after `release_thread_pool()` on the main thread (how the engine runs now);
(c) for reference, the same steps on the main thread with the engine thread's pool freed.

Greedy tokens are compared between (a) and (b): the release changes scheduling, not arithmetic.
The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_adapters import MODEL, PROMPTS, make_adapters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32, help="Greedy decode steps timed per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; the best is kept.")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    import torch

    from specialize.batching import Engine, ResidentAdapters
    from specialize.batching.threads import release_thread_pool
    from specialize.models.chat import prompt_ids
    from specialize.models.load import inference_dtype, load_model
    from specialize.registry import AdapterRegistry

    work = Path(tempfile.mkdtemp(prefix="thread-pool-"))
    names = make_adapters(work, args.adapters, args.rank)
    records = [AdapterRegistry(work / "registry").get(name) for name in names]
    loaded = load_model(MODEL, dtype=inference_dtype("auto"))
    resident = ResidentAdapters(loaded.model, capacity=len(records), max_rank=args.rank)
    engine = Engine(loaded.model, loaded.tokenizer, adapters=resident, max_batch=args.batch)
    engine.start()
    slots = [engine.call(lambda r=r: resident.acquire(r)).result() for r in records]
    rows = [slots[i % len(slots)] for i in range(args.batch)]
    ids = prompt_ids(loaded.tokenizer, [{"role": "user", "content": PROMPTS[0]}])

    @torch.inference_mode()
    def decode() -> tuple[float, list[int]]:
        model = loaded.model
        resident.route(rows)
        out = model(input_ids=torch.tensor([ids] * len(rows)), use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = []
        began = time.perf_counter()
        for _ in range(args.steps):
            out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token[0, 0]))
        return len(rows) * args.steps / (time.perf_counter() - began), tokens

    def on_main_thread() -> tuple[float, list[int]]:
        engine.pause()
        engine.call(release_thread_pool).result()
        try:
            return decode()
        finally:
            release_thread_pool()
            engine.resume()

    def main_pool_alive() -> tuple[float, list[int]]:
        torch.ones(1 << 22).mul_(2)  # a parallel op: the main thread's pool exists again
        return engine.call(decode).result()

    def main_pool_released() -> tuple[float, list[int]]:
        release_thread_pool()
        return engine.call(decode).result()

    engine.call(decode).result()  # warm-up
    runs: dict[str, list[tuple[float, list[int]]]] = {"alive": [], "released": [], "main": []}
    for _ in range(args.rounds):
        runs["alive"].append(main_pool_alive())
        runs["released"].append(main_pool_released())
        runs["main"].append(on_main_thread())
    best = {name: max(tps for tps, _ in results) for name, results in runs.items()}
    same = runs["alive"][0][1] == runs["released"][0][1]
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    print(
        f"{MODEL} ({dtype}), {args.adapters} rank-{args.rank} adapters, batch {args.batch}, "
        f"{args.steps} decode steps, {torch.get_num_threads()} torch threads; best of {args.rounds} rounds"
    )
    for name, label in (
        ("alive", "engine thread, main thread's pool alive (before)"),
        ("released", "engine thread, main thread's pool released (now)"),
        ("main", "main thread, engine thread's pool released"),
    ):
        rounds = ", ".join(f"{tps:.1f}" for tps, _ in runs[name])
        print(f"{label:<52} {best[name]:7.1f} tok/s  (rounds: {rounds})")
    engine.stop()
    print(
        f"RESULT releasing the loading thread's OpenMP pool: engine decode {best['released'] / best['alive']:.2f}x "
        f"({best['alive']:.0f} -> {best['released']:.0f} tok/s over {args.adapters} adapters at batch "
        f"{args.batch}); greedy tokens {'identical' if same else 'DIFFERENT'}"
    )


if __name__ == "__main__":
    main()
