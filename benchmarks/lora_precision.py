"""The serving engine's LoRA slots in float32 over a bf16 base (this version) vs in bf16 (before).

    python benchmarks/lora_precision.py            # ~6 min on 2 CPU cores

Over a bf16 base the engine now keeps the resident adapters' A and B in float32 and adds the
update to the base output with one rounding, as PEFT does (`batching/adapters.py`). Two engines
over two copies of the bundled model, the same 64 random rank-16 adapters (`serve_adapters.py`'s),
one with float32 slots, one with bf16 slots (the same forward code; before, the bf16 update was
fused into the output with `baddbmm_`), each driven in this process by 64 closed-loop clients
with greedy replies of 16 to 48 tokens (`row_affinity.py`'s driver), rounds alternating so that
both see the same machine. Workloads: 1 adapter, and 64 adapters round-robin from one shared
queue (`serve_adapters.py`'s order: nearly every row of a batch on its own adapter).

Also, per side, a mixed decode step's LoRA products alone (64 rows, 64 slots, the model's seven
projection shapes), and how many replies of the two sides are the same. The last line starts
with RESULT. Needs bf16 to be native (on other CPUs the engine serves float32 and both sides are
the same).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from row_affinity import build_engine, closed_loop, jobs_for  # noqa: E402
from serve_adapters import make_adapters  # noqa: E402

WORKLOADS = (("1 adapter", 1, "per-client"), ("64 shared queue", 64, "queue"))
SIDES = ("float32 slots", "bf16 slots")
# SmolLM2-135M's projections (in, out): q, k, v, o, gate, up, down.
SHAPES = ((576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=128, help="Requests per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each side, alternating.")
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()

    from specialize.cli.common import quiet_libraries
    from specialize.models.load import inference_dtype

    quiet_libraries()
    if inference_dtype("auto") != "bf16":
        print(
            "RESULT skipped: bf16 is not native here, so the engine serves float32 and both sides are equal"
        )
        return
    products = {
        side: lora_products(dtype, args.clients)
        for side, dtype in zip(SIDES, ("float32", "bfloat16"), strict=True)
    }
    work = Path(tempfile.mkdtemp(prefix="specialize-lora-precision-"))
    try:
        names = make_adapters(work, max(n for _, n, _ in WORKLOADS), rank=16)
        results = engine_rounds(work, names, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for side in SIDES:
        print(f"{side}: a mixed decode step's LoRA products alone {products[side]:.1f} ms (30 layers)")
    print(f"{'workload':>16} {'side':>14} {'best tok/s':>11} {'median':>8} {'same replies':>13}")
    ratios = []
    for name, _, _ in WORKLOADS:
        runs, same = results[name]
        for side in SIDES:
            print(
                f"{name:>16} {side:>14} {max(runs[side]):>11.1f} {statistics.median(runs[side]):>8.1f} {same:>13}"
            )
        ratios.append(f"{name} {max(runs[SIDES[0]]) / max(runs[SIDES[1]]):.2f}x")
    print(
        "RESULT engine with float32 LoRA slots vs bf16 slots over a bf16 base: "
        + ", ".join(ratios)
        + f"; a mixed step's LoRA products alone {products[SIDES[1]] / products[SIDES[0]]:.2f}x"
    )


def lora_products(dtype_name: str, rows: int) -> float:
    """Milliseconds of one mixed decode step's LoRA update in every projection of the 30 layers,
    as `BatchedLoraLinear.forward` computes it with slots of `dtype_name` over a bf16 output."""
    import torch

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    layers = []
    for fan_in, fan_out in SHAPES:
        x = torch.randn(rows, 1, fan_in, generator=generator).to(torch.bfloat16)
        a = torch.randn(rows, 16, fan_in, generator=generator).to(dtype)
        b = torch.randn(rows, 16, fan_out, generator=generator).to(dtype)
        y = torch.zeros(rows, 1, fan_out, dtype=torch.bfloat16)
        layers.append((x, a, b, y))

    def step() -> None:
        for x, a, b, y in layers:
            y.add_(torch.bmm(torch.bmm(x.to(a.dtype), a.mT), b))

    for _ in range(5):
        step()
    began = time.perf_counter()
    for _ in range(20):
        step()
    return (time.perf_counter() - began) / 20 * 30 * 1000


def engine_rounds(work: Path, names: list[str], args) -> dict:
    """Per workload: tokens/s of each side per round, and the number of identical replies."""
    import torch

    import specialize.batching.adapter_files as adapter_files
    import specialize.batching.adapters as adapters

    engines = {SIDES[0]: build_engine(work, names, args.clients)}
    as_float32 = adapters.lora_dtype
    # The version before: slots (and the weights read into them) in the base's dtype.
    adapters.lora_dtype = adapter_files.lora_dtype = lambda base_dtype: base_dtype
    try:
        engines[SIDES[1]] = build_engine(work, names, args.clients)
    finally:
        adapters.lora_dtype = adapter_files.lora_dtype = as_float32
    for side, (engine, _, _) in engines.items():
        slot_dtype = next(iter(engine.adapters.layers.values())).lora_a.dtype
        print(f"{side}: base {engine.model.dtype}, slots {slot_dtype}", flush=True)
    results = {}
    with torch.inference_mode():
        for name, n, order in WORKLOADS:
            runs: dict[str, list[float]] = {side: [] for side in SIDES}
            replies: dict[str, list[list[int]]] = {}
            for engine, records, prompts in engines.values():  # warm-up
                closed_loop(engine, records, prompts, jobs_for(names, n, order, args.clients, args.clients))
            for round_ in range(args.rounds):
                for side in SIDES if round_ % 2 == 0 else tuple(reversed(SIDES)):
                    engine, records, prompts = engines[side]
                    jobs = jobs_for(names, n, order, args.requests, args.clients)
                    tps, _, replies[side] = closed_loop(engine, records, prompts, jobs)
                    runs[side].append(tps)
                    print(f"{name:<16} {side:>14} round {round_ + 1}: {tps:7.1f} tok/s", flush=True)
            same = sum(a == b for a, b in zip(replies[SIDES[0]], replies[SIDES[1]], strict=True))
            results[name] = (runs, f"{same}/{len(replies[SIDES[0]])}")
    return results


if __name__ == "__main__":
    main()
