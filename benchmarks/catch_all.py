"""An intent set with a catch-all class: does abstaining at the recommended threshold find the
out-of-scope requests, and what does it cost the in-scope ones?

    .venv/bin/python benchmarks/catch_all.py [--out DIR] [--intents 20] [--per-intent 20]

The data set is made here from Banking77's text with another label set, the shape of a real
deployment's: a few in-scope intents (seeded choice of `--intents` of the 77, `--per-intent`
training rows each, 15 test rows each) and one catch-all class, `out_of_scope`, whose rows are
requests of the *other* intents (100 training rows and 100 test rows, the test ones from intents
that no training row of the catch-all class comes from, so that the catch-all class is tested on
requests unlike any it was trained on, as real out-of-scope traffic is). Test rows come from
Banking77's test file, training rows from its training file.

The run is driven as a user drives the tool: jsonl files and a config, then `specialize check`,
`train` and `eval` (few-shot off to keep the run short; the classic TF-IDF baseline on). The
report's typed record (`EvalReport`) gives, for the fine-tuned model and the classic baseline:
accuracy with its interval, the catch-all class's recall and precision as replied, and for the
fine-tuned model also after the replies below the recommended threshold (the one reaching
`eval.target_precision`) abstain into the catch-all class, with the in-scope rows' accuracy before
and after. The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
BANKING = ROOT / "examples" / "banking77"
CATCH_ALL = "out_of_scope"
TEST_PER_INTENT = 15
CATCH_ALL_ROWS = 100

CONFIG = """\
name: catch-all
seed: 7
data:
  train: train.jsonl
  test: test.jsonl
  input_field: text
  output_field: label
  val_fraction: 0.05
model:
  base: smollm2-135m-instruct
  max_seq_len: 128
method:
  kind: lora
  lora_r: 16
  lora_alpha: 32
train:
  epochs: {epochs}
  batch_size: 16
  learning_rate: 0.001
  eval_every: 25
  early_stopping_patience: 3
eval:
  few_shot_k: 0
  latency_samples: 4
  measure_merged: false
  target_precision: {target_precision}
"""


def _read(path: Path) -> dict[str, list[str]]:
    by_intent: dict[str, list[str]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            by_intent.setdefault(row["category"], []).append(row["text"])
    return by_intent


def make_rows(intents: int, per_intent: int, seed: int) -> tuple[list[dict], list[dict], list[str]]:
    """Training and test rows (`text`, `label`) and the in-scope intents chosen."""
    rng = random.Random(seed)
    train_pool, test_pool = _read(BANKING / "train.csv"), _read(BANKING / "test.csv")
    names = sorted(train_pool)
    rng.shuffle(names)
    in_scope, others = sorted(names[:intents]), names[intents:]
    # The catch-all class's training requests come from half of the other intents, its test
    # requests from the other half: out-of-scope traffic is mostly unlike the examples of it.
    seen_others, unseen_others = others[: len(others) // 2], others[len(others) // 2 :]
    train = [{"text": t, "label": i} for i in in_scope for t in rng.sample(train_pool[i], per_intent)]
    test = [{"text": t, "label": i} for i in in_scope for t in rng.sample(test_pool[i], TEST_PER_INTENT)]
    train += [{"text": t, "label": CATCH_ALL} for t in _spread(train_pool, seen_others, CATCH_ALL_ROWS, rng)]
    test += [{"text": t, "label": CATCH_ALL} for t in _spread(test_pool, unseen_others, CATCH_ALL_ROWS, rng)]
    rng.shuffle(train)
    return train, test, in_scope


def _spread(pool: dict[str, list[str]], intents: list[str], n: int, rng: random.Random) -> list[str]:
    """n requests drawn round-robin over `intents`, so that no one of them dominates."""
    queues = {i: rng.sample(pool[i], len(pool[i])) for i in intents}
    drawn: list[str] = []
    while len(drawn) < n:
        for intent in intents:
            if queues[intent] and len(drawn) < n:
                drawn.append(queues[intent].pop())
    return drawn


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "specialize", *args]
    print("$ specialize " + " ".join(args), flush=True)
    if subprocess.run(command, env=os.environ.copy()).returncode != 0:
        raise SystemExit(f"specialize {args[0]} failed")


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def report(run: Path) -> None:
    from specialize.records.eval import EvalReport

    result = EvalReport.model_validate_json((run / "eval" / "report.json").read_bytes())
    print(f"\n{result.test_rows} test rows, {len(result.labels or [])} labels; 95% bootstrap intervals")
    print(f"{'contender':14s} {'accuracy':24s} {'catch-all recall':>16s} {'precision':>10s}")
    for contender in result.contenders:
        interval = contender.quality.interval()
        scores = (contender.quality.per_label or {}).get(CATCH_ALL)
        print(
            f"{contender.name:14s} {interval.value:.3f} [{interval.ci_low:.3f}, {interval.ci_high:.3f}]   "
            f"{_score(scores.recall if scores else None):>16s} {_score(scores.precision if scores else None):>10s}"
        )
    tuned = result.tuned()
    calibration = tuned.confidence
    if calibration is None or calibration.catch_all is None:
        raise SystemExit("the fine-tuned contender has no catch-all scores: is the class detected?")
    catch = calibration.catch_all
    print(
        f"\nfine-tuned, confidence from {calibration.replies} replies: ECE {_score(calibration.ece)}, "
        f"threshold for precision >= {calibration.target_precision}: {_score(calibration.threshold)} "
        f"(coverage {_score(calibration.threshold_coverage)})"
    )
    if catch.after is None:
        print("RESULT no threshold reaches the target precision: nothing to abstain at")
        return
    print(f"{'':24s} {'catch-all recall':>16s} {'precision':>10s} {'in-scope accuracy':>18s}")
    print(
        f"{'as replied':24s} {_score(catch.before.recall):>16s} {_score(catch.before.precision):>10s} "
        f"{_score(catch.in_scope_accuracy_before):>18s}"
    )
    print(
        f"{f'abstain below {catch.threshold:.3f}':24s} {_score(catch.after.recall):>16s} "
        f"{_score(catch.after.precision):>10s} {_score(catch.in_scope_accuracy_after):>18s}"
        f"   ({catch.abstained} replies abstained)"
    )
    print(
        f"\nRESULT catch-all recall {_score(catch.before.recall)} -> {_score(catch.after.recall)} "
        f"abstaining below {catch.threshold:.3f}; in-scope accuracy {_score(catch.in_scope_accuracy_before)} -> "
        f"{_score(catch.in_scope_accuracy_after)}; overall fine-tuned accuracy {_score(tuned.quality.primary_value)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="Work directory (default: a temp dir).")
    parser.add_argument("--intents", type=int, default=20)
    parser.add_argument("--per-intent", type=int, default=20)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--target-precision", type=float, default=0.9)
    parser.add_argument("--report-only", action="store_true", help="Report the evaluated run in --out.")
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="catch-all-"))
    run = work / "run"
    if args.report_only:
        report(run)
        return
    work.mkdir(parents=True, exist_ok=True)
    train, test, in_scope = make_rows(args.intents, args.per_intent, seed=7)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (work / "config.yaml").write_text(
        CONFIG.format(epochs=args.epochs, target_precision=args.target_precision), encoding="utf-8"
    )
    print(
        f"data: {len(train)} train / {len(test)} test rows; {len(in_scope)} in-scope intents + "
        f"{CATCH_ALL} ({CATCH_ALL_ROWS} train, {CATCH_ALL_ROWS} test rows from other intents); in {work}",
        flush=True,
    )
    _cli("check", str(work / "train.jsonl"), "--test", str(work / "test.jsonl"), "--input-field", "text",
         "--output-field", "label", "--no-tokens")  # fmt: skip
    _cli("train", "--config", str(work / "config.yaml"), "--out", str(run))
    _cli("eval", str(run))
    report(run)


if __name__ == "__main__":
    main()
