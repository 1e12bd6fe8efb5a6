"""Where a joining request lands in the running batch: in a free row whose LoRA row buffers
already hold its adapter (this version), or in the lowest free row (the version before).

    python benchmarks/row_affinity.py            # ~6 min on 2 CPU cores

Mixed-adapter batches read each row's A and B from per-layer row buffers
(`batching.adapters.LoraRouting`); a row that changes adapter costs a gather of its A and B in
every adapted layer. The engine now (1) puts a joining request in a free row that holds its
adapter where one does (among the free rows that keep the forward pass as short) and (2) lets a
free row keep what it holds (before, a free row was routed to slot 0: a copy, and a one-adapter
batch with a free row went down the mixed path).

The same engine, model and random rank-16 adapters (`serve_adapters.py`'s), driven in this process
by 64 closed-loop clients, each submitting its next request when its last one finishes; replies
of 16 to 48 greedy tokens (the same seeded lengths for both placements), no HTTP. Workloads:
1 adapter; 64 adapters with each client on its own adapter (a tenant's stream); 64 adapters
round-robin from one shared queue (`serve_adapters.py`'s order, where the next request's adapter
is unrelated to the row that just finished). The two placements alternate, round after round, so
that both see the same machine. The version before is this engine with its placement replaced by
the lowest free rows and free rows routed to slot 0. Printed per workload: tokens/s (best and
median of the rounds) and the row copies per request; then a RESULT line with the ratios of the
best rounds.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_adapters import MODEL, PROMPTS, load_requests, make_adapters  # noqa: E402

WORKLOADS = (
    ("1 adapter", 1, "per-client"),
    ("64 per-client", 64, "per-client"),
    ("64 shared queue", 64, "queue"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=128, help="Requests per round.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each placement, alternating.")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument(
        "--workloads", default=",".join(w[0] for w in WORKLOADS), help="Comma-separated, from: %(default)s."
    )
    args = parser.parse_args()
    chosen = set(args.workloads.split(","))
    workloads = [w for w in WORKLOADS if w[0] in chosen]
    if not workloads:
        parser.error(f"--workloads: none of {sorted(chosen)} is a workload")

    from specialize.cli.common import quiet_libraries

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="specialize-affinity-"))
    try:
        names = make_adapters(work, max(n for _, n, _ in workloads), rank=16)
        results = measure(work, names, workloads, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'workload':>16} {'placement':>13} {'best tok/s':>11} {'median':>8} {'copies/request':>15}")
    for name, _, _ in workloads:
        for placement in ("affinity", "lowest-first"):
            runs = results[name][placement]
            print(
                f"{name:>16} {placement:>13} {max(r[0] for r in runs):>11.1f} "
                f"{statistics.median(r[0] for r in runs):>8.1f} {statistics.mean(r[1] for r in runs):>15.2f}"
            )
    ratios = []
    for name, _, _ in workloads:
        best = {p: max(r[0] for r in results[name][p]) for p in ("affinity", "lowest-first")}
        ratios.append(f"{name} {best['affinity'] / best['lowest-first']:.2f}x")
    print("RESULT joining rows placed by adapter vs in the lowest free rows: " + ", ".join(ratios))


def jobs_for(
    names: list[str], n: int, order: str, total: int, clients: int
) -> list[list[tuple[str, str, int]]]:
    """Per client, its (adapter, prompt, max_tokens) requests in order."""
    rng = random.Random(n)
    if order == "per-client":
        return [
            [
                (names[c % n], PROMPTS[(c + k) % len(PROMPTS)], rng.randint(16, 48))
                for k in range(total // clients)
            ]
            for c in range(clients)
        ]
    shared = [(name, prompt, rng.randint(16, 48)) for name, prompt in load_requests(names[:n], total)]
    return [shared]  # one queue every client takes from


def closed_loop(
    engine, records: dict, prompts: dict, queues: list[list[tuple[str, str, int]]]
) -> tuple[float, float, list[list[int]]]:
    """Tokens/s, row copies per request and every reply's tokens (in submission order): one
    client per row of `engine`'s batch, each taking its next request from its own queue (or all
    from the one shared queue) when its last one finished; the engine's loop runs in this thread."""
    from specialize.batching import SamplingParams

    clients = engine.max_batch
    routing = engine.adapters.routing
    queues = [list(reversed(q)) for q in queues]
    running: list = [None] * clients
    handles = []
    copies = 0
    tokens = engine.generated_tokens
    began = time.perf_counter()
    while True:
        for c in range(clients):
            if running[c] is not None and not running[c].done:
                continue
            queue = queues[c if len(queues) > 1 else 0]
            running[c] = None
            if queue:
                name, prompt, max_tokens = queue.pop()
                params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
                running[c] = engine.submit(prompts[prompt], params, records[name])
                handles.append(running[c])
        if all(h is None for h in running):
            break
        epoch = routing.epoch
        engine._iterate()
        if routing.epoch != epoch:
            copies += len(routing.changed_rows)
    seconds = time.perf_counter() - began
    replies = [h.wait().token_ids for h in handles]
    return (engine.generated_tokens - tokens) / seconds, copies / len(handles), replies


def build_engine(work: Path, names: list[str], clients: int):
    """The engine over the bundled model (auto dtype) with every adapter of `names` resident, its
    adapters' registry records by name, and the token ids of each of PROMPTS as a chat prompt."""
    from specialize.batching import Engine, ResidentAdapters
    from specialize.inference import end_of_turn_ids
    from specialize.models.chat import prompt_ids
    from specialize.models.load import inference_dtype, load_model
    from specialize.registry import AdapterRegistry

    loaded = load_model(MODEL, dtype=inference_dtype("auto"))
    registry = AdapterRegistry(work / "registry")
    records = {name: registry.get(name) for name in names}
    resident = ResidentAdapters(loaded.model, capacity=len(names))
    for record in records.values():
        resident.warm(record)
    engine = Engine(
        loaded.model,
        loaded.tokenizer,
        adapters=resident,
        max_batch=clients,
        max_queue=4 * clients,
        eos_token_ids=end_of_turn_ids(loaded),
    )
    prompts = {p: prompt_ids(loaded.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS}
    return engine, records, prompts


def measure(work: Path, names: list[str], workloads: list[tuple[str, int, str]], args) -> dict:
    import torch

    engine, records, prompts = build_engine(work, names, args.clients)
    resident = engine.adapters
    placed_by_adapter = engine._slots_for
    route = resident.route

    def use(placement: str) -> None:
        if placement == "affinity":
            engine._slots_for, resident.route = placed_by_adapter, route
        else:  # the version before: lowest free rows; a free row routed to slot 0
            engine._slots_for = lambda rows: engine._batch.free_slots(len(rows))
            resident.route = lambda slots, **kw: route([0 if s is None else s for s in slots], **kw)

    results: dict = {}
    with torch.inference_mode():
        for name, n, order in workloads:
            use("affinity")
            closed_loop(
                engine, records, prompts, jobs_for(names, n, order, args.clients, args.clients)
            )  # warm-up
            results[name] = {"affinity": [], "lowest-first": []}
            for round_ in range(args.rounds):
                for placement in (
                    ("affinity", "lowest-first") if round_ % 2 == 0 else ("lowest-first", "affinity")
                ):
                    use(placement)
                    tps, copies, _ = closed_loop(
                        engine, records, prompts, jobs_for(names, n, order, args.requests, args.clients)
                    )
                    results[name][placement].append((tps, copies))
                    print(
                        f"{name:<16} {placement:>13} round {round_ + 1}: {tps:7.1f} tok/s, "
                        f"{copies:.2f} copies/request",
                        flush=True,
                    )
    return results


if __name__ == "__main__":
    main()
