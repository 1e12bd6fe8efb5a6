"""The evaluation's free and constrained passes: one sweep with a replayed prefill vs two passes.

    python benchmarks/eval_passes.py [--run RUN] [--rows 64] [--rounds 2]

For every generating contender of a trained run (default: the demo's `runs/banking77`, which
`make demo` makes; without it the benchmark says so and stops): zero-shot, few-shot and the
fine-tuned model, on the run's first test rows, at the evaluation's batch size:

(a) the way evaluations ran before: `timed_generation` freely, then again under the run's output
    contract, each pass prefilling its own batches;
(b) `timed_generations` with both decodings, as `specialize eval` now runs them: each batch
    prefilled once, the constrained decoding replaying that prefill (`models.replayed_prefill`).

No batch-1 latency samples (they are the same requests either way). Rounds alternate (a) and (b);
each side's best round counts. Printed per contender: wall seconds of each side, the ratio, whether
every reply of both decodings is identical, and each side's reported pass seconds (what the
report's throughput is computed from: (b) charges each pass the whole prefill). The last line
starts with RESULT.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run as a plain script: specialize from this tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "banking77"))
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.run) / "run.json").is_file():
        print(f"skipped: no trained run at {args.run} (make demo makes one, or pass --run)")
        return

    from specialize.constrain import NONE
    from specialize.data.contract import run_contract
    from specialize.data.preference import reference_rows
    from specialize.data.prepare import read_splits
    from specialize.evaluate.contenders import build_contenders
    from specialize.evaluate.runner import generation_setup
    from specialize.evaluate.timing import timed_generation, timed_generations
    from specialize.inference import Decoding, load_run

    trained = load_run(args.run)
    splits = read_splits(trained.run)
    test = reference_rows(splits.test)[: args.rows]
    setup = generation_setup(trained, splits.train)
    contract = run_contract(trained.run) if trained.config.eval.constrained else NONE
    if contract.kind == "none":
        raise SystemExit(f"{args.run}: the run has no output contract, so there is no second pass to share")
    batch = trained.config.eval.batch_size
    contenders = build_contenders(
        trained, splits.train, test, kind=setup.kind, labels=setup.labels, max_new_tokens=setup.max_new_tokens
    )
    print(
        f"{args.run}: {len(test)} test rows, batch {batch}, max_new_tokens {setup.max_new_tokens}, "
        f"contract {contract.kind}; best of {args.rounds} interleaved rounds"
    )
    print(
        f"{'contender':16s} {'two passes s':>12s} {'one sweep s':>11s} {'ratio':>6s}  replies  reported free/constrained s"
    )
    total_old = total_new = 0.0
    all_same = True
    for contender in contenders:
        kw = dict(max_new_tokens=setup.max_new_tokens, batch_size=batch, latency_samples=0)
        best_old = best_new = float("inf")
        with contender.context():
            for _ in range(args.rounds):
                began = time.perf_counter()
                old = [
                    timed_generation(contender.loaded, contender.conversations, stop=setup.stop, **kw),
                    timed_generation(
                        contender.loaded, contender.conversations, stop=setup.stop, contract=contract, **kw
                    ),
                ]
                best_old = min(best_old, time.perf_counter() - began)
                began = time.perf_counter()
                new = timed_generations(
                    contender.loaded,
                    contender.conversations,
                    [Decoding(tuple(setup.stop)), Decoding(tuple(setup.stop), contract)],
                    **kw,
                )
                best_new = min(best_new, time.perf_counter() - began)
        same = all(
            [g.text for g in a.outputs] == [g.text for g in b.outputs] for a, b in zip(old, new, strict=True)
        )
        all_same &= same
        total_old += best_old
        total_new += best_new
        reported = " / ".join(
            f"{a.batched_seconds:.1f}->{b.batched_seconds:.1f}" for a, b in zip(old, new, strict=True)
        )
        print(
            f"{contender.name[:16]:16s} {best_old:12.1f} {best_new:11.1f} {best_new / best_old:5.2f}x  "
            f"{'same' if same else 'DIFFER'}     {reported}"
        )
    print(
        f"RESULT evaluation passes: one sweep takes {total_new / total_old:.2f}x the time of two passes "
        f"({total_new:.1f} vs {total_old:.1f} s over {len(contenders)} contenders), replies "
        f"{'identical' if all_same else 'NOT identical'}"
    )


if __name__ == "__main__":
    main()
