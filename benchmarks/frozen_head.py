"""Generation on a frozen (PEFT-wrapped) model: the LM head's input made contiguous, or not.

    python benchmarks/frozen_head.py                 # ~1 min on 2 CPU cores
    python benchmarks/frozen_head.py --rows 64 --batch-size 16 --rounds 2

Every model the evaluation generates with is a PeftModel (the fine-tuned contender; the zero- and
few-shot baselines run on the same object with the adapter disabled; the merged deployment copy
comes from it), and PEFT freezes the base weights. transformers gives the LM head the last
position as a strided `[batch, 1, hidden]` view (`logits_to_keep=1`), and `torch.matmul` only folds
that view into one `mm` while the weight requires grad (pytorch/pytorch#186148): frozen, it runs
`bmm` over a copy of the 49k x 576 head weight per row, once per prefill. `models.load` hooks the
head to get a contiguous input (`fold_head_input`); this script times `inference.generate` on the
bundled SmolLM2 under a rank-16 random LoRA, adapter enabled (the fine-tuned contender's case) and
disabled (the baselines'), with that hook and with it removed, in interleaved rounds (best kept).
Replies must be identical: the hook changes a memory layout, not a value. Banking77 test requests
with the fine-tuned prompt (short) and the zero-shot prompt (the 77 labels, a long shared prefix).
The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run as a plain script: specialize from this tree
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_generation import MODEL, banking77, prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=48, help="Banking77 test rows.")
    parser.add_argument("--batch-size", type=int, default=16, help="As eval.batch_size.")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dtype", default="auto", help="auto (bf16 where native), f32 or bf16.")
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from specialize.cli.common import quiet_libraries
    from specialize.inference import generate
    from specialize.models.load import _contiguous_input, inference_dtype, load_model

    quiet_libraries()
    loaded = load_model(MODEL, dtype=inference_dtype(args.dtype))
    torch.manual_seed(0)
    loaded.model = get_peft_model(
        loaded.model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False)
    ).eval()
    head = loaded.model.get_output_embeddings()
    dtype = str(next(loaded.model.parameters()).dtype).replace("torch.", "")
    train, test = banking77(args.rows)
    conversations = {
        "short prompt, adapter on": [[{"role": "user", "content": e.user_text}] for e in test],
        "zero-shot, adapter off": prompts(train, test, loaded.tokenizer, 5)["zero-shot"],
    }
    print(f"model {MODEL} ({dtype}) + random LoRA r16, {args.rows} rows, batch {args.batch_size}")

    def run(rows: list, hooked: bool) -> tuple[float, list[str]]:
        hooks = head._forward_pre_hooks
        saved = dict(hooks)
        if not hooked:
            for key in [k for k, fn in hooks.items() if fn is _contiguous_input]:
                del hooks[key]
        try:
            began = time.perf_counter()
            out = generate(loaded, rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
            return time.perf_counter() - began, [g.text for g in out]
        finally:
            hooks.clear()
            hooks.update(saved)

    totals = {False: 0.0, True: 0.0}
    identical = checked = 0
    for kind, rows in conversations.items():
        adapter_off = "off" in kind
        with loaded.model.disable_adapter() if adapter_off else contextlib.nullcontext():
            run(rows[:2], True)  # warm-up
            best: dict[bool, float] = {}
            texts: dict[bool, list[str]] = {}
            for _ in range(args.rounds):
                for hooked in (False, True):
                    seconds, texts[hooked] = run(rows, hooked)
                    best[hooked] = min(best.get(hooked, seconds), seconds)
        same = sum(a == b for a, b in zip(texts[False], texts[True], strict=True))
        identical, checked = identical + same, checked + len(rows)
        totals[False] += best[False]
        totals[True] += best[True]
        print(
            f"{kind:26} strided head input {best[False]:6.1f} s  contiguous {best[True]:6.1f} s  "
            f"{best[False] / best[True]:4.2f}x  identical {same}/{len(rows)}",
            flush=True,
        )
    print(
        f"RESULT contiguous LM-head input on a frozen model: {totals[False] / totals[True]:.2f}x faster "
        f"generation ({totals[False]:.1f} s -> {totals[True]:.1f} s), {identical}/{checked} replies "
        f"identical ({dtype})"
    )


if __name__ == "__main__":
    main()
