"""Training throughput: `specialize train` against the stock TRL + PEFT recipe, side by side.

Both sides fine-tune the bundled SmolLM2-135M-Instruct with the same LoRA (rank 16, alpha 32,
all linear layers), on the same Banking77 rows, batch size, learning rate and seed, for the same
number of steps. (a) is what the TRL and PEFT documentation tells a user to write: `SFTTrainer`
with a `LoraConfig` and a conversational prompt/completion dataset (completion-only loss, default
collation and padding). (b) is `specialize.train`. Each side runs in its own process so that
peak RSS is its own.

Prints examples/s, supervised tokens/s, peak RSS and final training loss of each, the ratio,
and (b)'s achieved FLOP/s as a share of the matmul peak (fp32 and bf16) measured in this script
(MFU). Both sides use bf16 autocast where the CPU has native bf16: SFTConfig turns it on by default.

    .venv/bin/python benchmarks/train_throughput.py [--examples 160] [--batch-size 16] [--ablation]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "banking77" / "train.csv"
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}


def rows(n: int) -> list[dict[str, str]]:
    with DATA.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))[:n]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stock(args, queue) -> None:
    """(a) The documented recipe: SFTTrainer + LoraConfig, conversational prompt/completion."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from specialize.models.load import hf_directory
    from specialize.models.registry import resolve_model

    torch.set_num_threads(args.threads)
    path = hf_directory(resolve_model("smollm2-135m-instruct"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["text"]}],
                "completion": [{"role": "assistant", "content": r["category"]}],
            }
            for r in rows(args.examples)
        ]
    )
    with tempfile.TemporaryDirectory() as out:
        config = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=42,
            max_length=128,
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
        )
        column = "labels" if "labels" in trainer.train_dataset.column_names else "completion_mask"
        supervised = sum(
            sum(1 for v in x[column] if (v != -100 if column == "labels" else v == 1))
            for x in trainer.train_dataset
        )
        began = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - began
    queue.put(
        {
            "seconds": seconds,
            "supervised_tokens": supervised,
            "loss": _last_loss(trainer.state.log_history),
            "peak_rss_mb": peak_rss_mb(),
            "steps": output.global_step,
            "setup": f"bf16 autocast {config.bf16}, gradient checkpointing {config.gradient_checkpointing}, "
            f"weights {model.dtype}",
        }
    )


def ours(args, queue) -> None:
    """(b) specialize train with the same model, rows, LoRA, batch, learning rate and seed."""
    from specialize.config import parse_config
    from specialize.train.sft import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows(args.examples)), encoding="utf-8")
        config = parse_config(
            {
                "data": {
                    "train": str(data),
                    "input_field": "text",
                    "output_field": "category",
                    "val_fraction": 0.0,
                    "test_fraction": 0.0,
                },
                "model": {"base": "smollm2-135m-instruct", "max_seq_len": 128},
                "method": {
                    "kind": "lora",
                    "lora_r": LORA["r"],
                    "lora_alpha": LORA["lora_alpha"],
                    "lora_dropout": LORA["lora_dropout"],
                },
                # The stock recipe's defaults: linear decay, no warmup, so both sides follow one schedule.
                "train": {
                    "epochs": 1,
                    "batch_size": args.batch_size,
                    "learning_rate": 1e-3,
                    "log_every": 1,
                    "lr_scheduler": "linear",
                    "warmup_ratio": 0.0,
                    "eval_every": 10_000,
                    "threads": args.threads,
                    "early_stopping_patience": None,
                    **args.overrides,
                },
            }
        )
        began = time.perf_counter()
        result = train(config, Path(tmp) / "run")
        seconds = time.perf_counter() - began
        meta = result.meta
        lines = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    queue.put(
        {
            "seconds": meta["train_seconds"],
            "wall_with_setup": seconds,
            "supervised_tokens": meta["supervised_tokens"],
            "loss": _last_loss(lines),
            "peak_rss_mb": peak_rss_mb(),
            "steps": meta["steps"],
            "tokens": max(x.get("num_input_tokens_seen", 0) for x in lines),
            "setup": f"precision {meta['precision']}, attention {meta['attention']}, packing {config.train.packing}",
        }
    )


def _last_loss(history: list[dict]) -> float | None:
    losses = [h["loss"] for h in history if "loss" in h]
    return float(sum(losses[-3:]) / len(losses[-3:])) if losses else None


def matmul_peak_gflops(threads: int, dtype: str = "float32", seconds: float = 3.0) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = (torch.randn(1024, 1024, dtype=getattr(torch, dtype)) for _ in range(2))
    for _ in range(3):
        a @ b
    n, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - began) / 1e9


# (b) with one more optimisation turned off at each line; logits_to_keep (the LM head at reply
# positions only) has no switch, since nothing is gained by computing the rest.
ABLATIONS = [
    ("sdpa attention instead of eager", {"attention": "sdpa"}),
    ("sdpa, fp32 instead of bf16 mixed precision", {"attention": "sdpa", "precision": "fp32"}),
    (
        "sdpa, fp32, left-padded batches instead of packed rows",
        {"attention": "sdpa", "precision": "fp32", "packing": False},
    ),
]


def run_side(target, args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"{target.__name__} side died with exit code {process.exitcode}") from None
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--ablation", action="store_true", help="also run (b) with its optimisations turned off one by one"
    )
    args = parser.parse_args()
    args.overrides = {}

    peaks = {dtype: matmul_peak_gflops(args.threads, dtype) for dtype in ("float32", "bfloat16")}
    a = run_side(stock, args)
    b = run_side(ours, args)
    if args.ablation:
        for label, overrides in ABLATIONS:
            r = run_side(ours, argparse.Namespace(**{**vars(args), "overrides": overrides}))
            print(
                f"(b) {label}: {args.examples / r['seconds']:.2f} examples/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"final loss {r['loss']:.4f}"
            )
    n = args.examples
    for name, r in (("(a) stock TRL SFTTrainer + LoraConfig", a), ("(b) specialize train", b)):
        print(
            f"{name}: {n / r['seconds']:.2f} examples/s, {r['supervised_tokens'] / r['seconds']:.1f} supervised tokens/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, final loss {r['loss']:.4f}, {r['steps']} steps in {r['seconds']:.1f} s "
            f"({r['setup']})"
        )
    # FLOPs of (b): forward 2*N per token and backward ~2*N per token for the input gradients
    # through the frozen body (LoRA's own gradients are negligible), plus the LM head only at the
    # kept (reply) positions, forward and backward: 6*V*d per supervised token.
    from specialize.models.load import load_model

    model = load_model("smollm2-135m-instruct").model
    embed = model.get_input_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embed.numel()
    flops = 4 * body * b["tokens"] + 6 * embed.numel() * b["supervised_tokens"]
    achieved = flops / b["seconds"] / 1e9
    peak = peaks["bfloat16" if "bf16" in b["setup"] else "float32"]
    print(
        f"matmul peak here: fp32 {peaks['float32']:.1f}, bf16 {peaks['bfloat16']:.1f} GFLOP/s; (b) achieved "
        f"{achieved:.1f} GFLOP/s = MFU {achieved / peak:.1%} of the {b['setup'].split(',')[0]} peak "
        f"({achieved / peaks['float32']:.1%} of fp32)"
    )
    ratio = (n / b["seconds"]) / (n / a["seconds"])
    print(
        f"RESULT examples/s ratio (b)/(a) = {ratio:.2f}x; peak RSS (b)/(a) = {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}; "
        f"final loss (a) {a['loss']:.4f} vs (b) {b['loss']:.4f}"
    )


if __name__ == "__main__":
    main()
