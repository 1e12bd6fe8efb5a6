"""The evaluation's batch-1 latency samples: the prompts' shared prefix cached (this version) vs
prefilled again in every request (the version before).

    python benchmarks/latency_prefix.py [--run RUN] [--samples 8] [--rounds 3]

The prompt baselines repeat one long instruction in every request (the zero-shot prompt lists
every label). The batched pass already runs the prefix all prompts share once; the latency
samples now reuse that cache, as a server with prefix caching would (`specialize serve`'s engine
does, and the report's served row measures it). Before, each sample prefilled the whole prompt.

On a trained run (default: the demo's `runs/banking77`, which `make demo` makes; without it the
benchmark says so and stops), for each generating contender of its evaluation (zero-shot,
few-shot, fine-tuned), the first --samples test prompts one at a time, greedy, the evaluation's
max_new_tokens and stop strings; rounds alternate the two ways and each way's best round counts.
Printed: p50 latency of each, the ratio, whether the replies are the same, and a RESULT line with
the ratio of the total time the samples take.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(ROOT / "runs" / "banking77"))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from specialize.cli.common import quiet_libraries

    quiet_libraries()
    if not (Path(args.run) / "run.json").is_file():
        print(f"skipped: no trained run at {args.run} (make demo makes one, or pass --run)")
        return
    from specialize.data.prepare import read_splits
    from specialize.evaluate.contenders import build_contenders
    from specialize.evaluate.runner import generation_setup
    from specialize.inference import generate, load_run, shared_prefix
    from specialize.run_dir import open_run

    run = open_run(args.run)
    trained = load_run(run.path)
    splits = read_splits(run)
    setup = generation_setup(trained, splits.train)
    max_new, stop = setup.max_new_tokens, setup.stop
    contenders = build_contenders(
        trained, splits.train, splits.test, kind=setup.kind, labels=setup.labels, max_new_tokens=max_new
    )

    totals = {"cached": 0.0, "prefilled": 0.0}
    print(
        f"{'contender':>16} {'prefix':>7} {'prefilled p50 ms':>17} {'cached p50 ms':>14} {'ratio':>6} {'same replies':>13}"
    )
    for contender in contenders:
        with contender.context():
            prefix = shared_prefix(contender.loaded, contender.conversations)
            rows = contender.conversations[: args.samples]
            best: dict[str, list[float]] = {}
            replies: dict[str, list[str]] = {}
            for round_ in range(args.rounds):
                ways = ("cached", "prefilled") if round_ % 2 == 0 else ("prefilled", "cached")
                for way in ways:
                    times, texts = [], []
                    for conversation in rows:
                        began = time.perf_counter()
                        out = generate(
                            contender.loaded,
                            [conversation],
                            max_new_tokens=max_new,
                            batch_size=1,
                            stop=stop,
                            cached_prefix=prefix if way == "cached" else None,
                        )
                        times.append(time.perf_counter() - began)
                        texts.append(out[0].text)
                    if way not in best or sum(times) < sum(best[way]):
                        best[way] = times
                    replies[way] = texts
        for way in totals:
            totals[way] += sum(best[way])
        p50 = {way: statistics.median(best[way]) * 1000 for way in best}
        same = sum(a == b for a, b in zip(replies["cached"], replies["prefilled"], strict=True))
        print(
            f"{contender.name:>16} {len(prefix.tokens) if prefix else 0:>7} {p50['prefilled']:>17.0f} "
            f"{p50['cached']:>14.0f} {p50['prefilled'] / p50['cached']:>5.2f}x {same:>8}/{len(rows)}"
        )
    print(
        f"RESULT latency samples with the shared prefix cached: {totals['prefilled'] / totals['cached']:.2f}x faster "
        f"({totals['prefilled']:.1f} s -> {totals['cached']:.1f} s for {args.samples} samples of each contender)"
    )


if __name__ == "__main__":
    main()
