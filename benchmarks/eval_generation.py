"""The evaluation's prompt baselines: shared-prefix attention vs the shared prefix copied per row.

    python benchmarks/eval_generation.py                 # ~6 min on 2 CPU cores
    python benchmarks/eval_generation.py --rows 64 --batch-size 16 --rounds 2

`specialize eval` runs the zero-shot and few-shot prompts of the base model over the test rows,
free and under the output contract; for a label task both prompts start with the same long
instruction (every allowed label), which `inference.generate` prefills once. The rows then either
attend over their own copy of that prefix's K/V (transformers' cache: `batch_repeat_interleave`,
then a concatenation per decode step; `shared_attention=False`) or over the one copy
(`models.shared_prefix`, the default). Same model, prompts, batch size, greedy decoding and
max_new_tokens as the evaluation uses, each side timed in interleaved rounds (best kept).

Two label sets, so the figure is not one data set's: Banking77's 77 intents (the demo; its test
rows) and a rules-made set of 40 ticket-routing queues with longer names. Printed per prompt kind:
seconds per side, the speed-up, and how many greedy replies are identical (in bf16 a few may part
on near-ties; the script also reports how many of each side's replies equal the float32 ones, the
reference neither side is closer to by construction). The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run as a plain script: specialize from this tree

from specialize.data.example import Example, Source  # noqa: E402
from specialize.evaluate.prompts import FewShotSelector, few_shot, instruction, zero_shot  # noqa: E402

MODEL = "smollm2-135m-instruct"
TEAMS = ["billing", "identity", "logistics", "payroll", "security", "onboarding", "hardware", "legal"]
ISSUES = ["escalation_tier_1", "escalation_tier_2", "refund_review", "access_request", "outage_report"]
WORDS = "printer badge invoice laptop contract password shipment salary vpn desk refund login".split()


def banking77(rows: int) -> tuple[list[Example], list[Example]]:
    def read(name: str) -> list[Example]:
        with (ROOT / "examples" / "banking77" / name).open(newline="", encoding="utf-8") as handle:
            return [_example(r["text"], r["category"], name, i) for i, r in enumerate(csv.DictReader(handle))]

    test = read("test.csv")
    return read("train.csv")[::10], random.Random(0).sample(test, rows)


def ticket_queues(rows: int) -> tuple[list[Example], list[Example]]:
    """40 queues named team__issue; requests made of a few words about the team's topic."""
    rng = random.Random(1)
    queues = [f"{team}__{issue}" for team in TEAMS for issue in ISSUES]

    def make(n: int, tag: str) -> list[Example]:
        out = []
        for i in range(n):
            queue = rng.choice(queues)
            words = " ".join(rng.sample(WORDS, 4))
            text = f"{queue.split('__')[0]} team: {words}, please {queue.split('__')[1].replace('_', ' ')}"
            out.append(_example(text, queue, tag, i))
        return out

    return make(400, "train"), make(rows, "test")


def _example(text: str, label: str, file: str, line: int) -> Example:
    return Example(messages=[{"role": "user", "content": text}], completion=label, source=Source(file, line))


def prompts(train: list[Example], test: list[Example], tokenizer, k: int) -> dict[str, list]:
    labels = sorted({e.completion or "" for e in train} | {e.completion or "" for e in test})
    system = instruction("classification", train, labels)
    selector = FewShotSelector(train, k, how="similar")
    return {
        "zero-shot": [zero_shot(e, system) for e in test],
        f"few-shot (k={k})": [few_shot(e, system, selector.select(e), tokenizer, 2000) for e in test],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=48, help="Test rows per data set.")
    parser.add_argument("--batch-size", type=int, default=16, help="As eval.batch_size.")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--k", type=int, default=5, help="Few-shot demonstrations.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where native), f32 or bf16.")
    args = parser.parse_args()

    from specialize.cli.common import quiet_libraries
    from specialize.inference import generate
    from specialize.models.load import inference_dtype, load_model

    quiet_libraries()
    loaded = load_model(MODEL, dtype=inference_dtype(args.dtype))
    reference = load_model(MODEL, dtype="f32")
    dtype = str(loaded.model.dtype).replace("torch.", "")
    print(f"model {MODEL} ({dtype}), batch {args.batch_size}, {args.max_new_tokens} new tokens at most")

    def run(model, conversations, shared: bool) -> tuple[float, list[str]]:
        began = time.perf_counter()
        out = generate(
            model,
            conversations,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            stop=["\n"],
            shared_attention=shared,
        )
        return time.perf_counter() - began, [g.text for g in out]

    totals = {False: 0.0, True: 0.0}
    same = checked = 0
    for name, make in (("banking77", banking77), ("ticket queues", ticket_queues)):
        train, test = make(args.rows)
        for kind, conversations in prompts(train, test, loaded.tokenizer, args.k).items():
            run(loaded, conversations[:2], True)  # warm-up
            best: dict[bool, float] = {}
            texts: dict[bool, list[str]] = {}
            for _ in range(args.rounds):
                for shared in (False, True):
                    seconds, texts[shared] = run(loaded, conversations, shared)
                    best[shared] = min(best.get(shared, seconds), seconds)
            f32 = run(reference, conversations, False)[1] if dtype != "float32" else texts[False]
            equal = sum(a == b for a, b in zip(texts[False], texts[True], strict=True))
            near = [sum(a == b for a, b in zip(texts[s], f32, strict=True)) for s in (False, True)]
            same, checked = same + equal, checked + len(conversations)
            totals[False] += best[False]
            totals[True] += best[True]
            print(
                f"{name:14} {kind:14} copies {best[False]:6.1f} s  shared {best[True]:6.1f} s  "
                f"{best[False] / best[True]:4.2f}x  identical {equal}/{len(conversations)}  "
                f"equal to float32: copies {near[0]}, shared {near[1]}",
                flush=True,
            )
    print(
        f"RESULT shared-prefix attention: {totals[False] / totals[True]:.2f}x faster over the prompt "
        f"baselines ({totals[False]:.0f} s -> {totals[True]:.0f} s), {same}/{checked} greedy replies identical "
        f"({dtype})"
    )


if __name__ == "__main__":
    main()
