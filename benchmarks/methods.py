"""Training methods side by side: full, LoRA, QLoRA, DoRA and DPO on the same rows, in one run.

Every method trains the bundled SmolLM2-135M-Instruct through `specialize.train` for the same
number of optimizer steps, with the same batch size, rows (a seeded sample of Banking77's),
sequence length, learning-rate schedule and seed, each in its own process so that its peak RSS is
its own. DPO trains on pairs built from the same rows (chosen = the row's intent, rejected = a
seeded other intent): the pairs are synthetic, since this measures cost, not what DPO learns.

Printed per method: examples/s (rows for the supervised methods, pairs for DPO: one pair is two
sequences, chosen and rejected, each run through the policy and the reference), peak RSS, the final
training loss (mean of the last three logged; DPO's is its preference loss, which starts at
ln 2 = 0.693 and is not comparable with the others' cross-entropy) and the seconds. The last line
starts with RESULT.

    .venv/bin/python benchmarks/methods.py [--steps 30] [--batch-size 8] [--methods full,lora,qlora,dora,dpo]
    .venv/bin/python benchmarks/methods.py --tiny     # a tiny random model: checks the script, no figures
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import tempfile
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "banking77" / "train.csv"
METHODS = ("full", "lora", "qlora", "dora", "dpo")
# method name -> the `method:` section of its config
SECTIONS = {
    "full": {"kind": "full"},
    "lora": {"kind": "lora"},
    "qlora": {"kind": "qlora"},
    "dora": {"kind": "lora", "variant": "dora"},
    "dpo": {"kind": "dpo"},
}
LEARNING_RATES = {"full": 2e-5, "dpo": 5e-5}  # others: 1e-3, the demo's LoRA rate


def all_rows() -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def rows(n: int) -> list[dict[str, str]]:
    """A seeded sample: the file is sorted by intent, so its first rows would be one intent."""
    return random.Random(0).sample(all_rows(), n)


def pairs(data: list[dict[str, str]], seed: int = 0) -> list[dict[str, str]]:
    labels = sorted({r["category"] for r in all_rows()})
    rng = random.Random(seed)
    return [
        {
            "prompt": r["text"],
            "chosen": r["category"],
            "rejected": rng.choice([x for x in labels if x != r["category"]]),
        }
        for r in data
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tiny_model(directory: Path) -> str:
    """A tiny random Llama and tokenizer (tests/conftest.py's), saved as a local model directory."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_tiny_model, make_tokenizer

    tokenizer = make_tokenizer()
    make_tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def side(method: str, args: argparse.Namespace, queue) -> None:
    """Train one method in this (spawned) process and report its figures."""
    try:
        from specialize.config import parse_config
        from specialize.train.sft import train

        with tempfile.TemporaryDirectory() as tmp:
            base = tiny_model(Path(tmp) / "tiny") if args.tiny else "smollm2-135m-instruct"
            data = rows(args.examples)
            file = Path(tmp) / "train.jsonl"
            written = pairs(data) if method == "dpo" else data
            file.write_text("".join(json.dumps(r) + "\n" for r in written), encoding="utf-8")
            fields = {} if method == "dpo" else {"input_field": "text", "output_field": "category"}
            config = parse_config(
                {
                    "data": {"train": str(file), "val_fraction": 0.0, "test_fraction": 0.0, **fields},
                    "model": {"base": base, "max_seq_len": 128},
                    "method": {
                        **SECTIONS[method],
                        **({} if method == "full" else {"lora_r": 16, "lora_alpha": 32}),
                    },
                    "train": {
                        "max_steps": args.steps,
                        "batch_size": args.batch_size,
                        "learning_rate": LEARNING_RATES.get(method, 1e-3),
                        "lr_scheduler": "linear",
                        "warmup_ratio": 0.0,
                        "log_every": 1,
                        "eval_every": 10_000,
                        "early_stopping_patience": None,
                        "threads": args.threads,
                    },
                }
            )
            result = train(config, Path(tmp) / "run")
            record = result.record
            assert record is not None
            lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        losses = [x["loss"] for x in lines if "loss" in x]
        queue.put(
            {
                "examples_per_s": record.steps * args.batch_size / record.train_seconds,
                "seconds": record.train_seconds,
                "peak_rss_mb": peak_rss_mb(),
                "loss": sum(losses[-3:]) / len(losses[-3:]) if losses else float("nan"),
                "steps": record.steps,
                "setup": f"{record.precision}, attention {record.attention}",
            }
        )
    except ImportError as exc:  # qlora without bitsandbytes, for instance
        queue.put({"skipped": str(exc)})
    except Exception as exc:  # noqa: BLE001 - reported as the method's row, the others still run
        queue.put({"skipped": f"{type(exc).__name__}: {exc}"})


def run_side(method: str, args: argparse.Namespace) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=side, args=(method, args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                return {"skipped": f"the process died with exit code {process.exitcode}"}
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--examples", type=int, default=None, help="rows (default: steps x batch size)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tiny", action="store_true", help="a tiny random model: checks the script only")
    args = parser.parse_args()
    if args.tiny:
        args.steps = min(args.steps, 3)
    args.examples = args.examples or args.steps * args.batch_size
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")

    model = "a tiny random Llama (no figures)" if args.tiny else "SmolLM2-135M-Instruct"
    print(
        f"{model}, {args.examples} rows, {args.steps} steps of batch {args.batch_size}, {args.threads} threads"
    )
    results = {m: run_side(m, args) for m in methods}
    for m, r in results.items():
        if "skipped" in r:
            print(f"{m:6} skipped: {r['skipped']}")
            continue
        unit = "pairs/s" if m == "dpo" else "examples/s"
        print(
            f"{m:6} {r['examples_per_s']:8.2f} {unit:10} peak RSS {r['peak_rss_mb']:6.0f} MB  "
            f"final loss {r['loss']:.4f}  {r['steps']} steps in {r['seconds']:.1f} s ({r['setup']})"
        )
    measured = {m: r for m, r in results.items() if "skipped" not in r}
    parts = [
        f"{m} {r['examples_per_s']:.2f}/s {r['peak_rss_mb']:.0f} MB loss {r['loss']:.3f}"
        for m, r in measured.items()
    ]
    ratio = ""
    if "dpo" in measured and "lora" in measured:
        ratio = f"; DPO/LoRA examples/s = {measured['dpo']['examples_per_s'] / measured['lora']['examples_per_s']:.2f}x"
    print(f"RESULT {'; '.join(parts)}{ratio}" + (" (tiny model: not figures)" if args.tiny else ""))


if __name__ == "__main__":
    main()
