"""Constrained vs free decoding: the cost of guaranteed output formats, side by side.

    python benchmarks/constrained_decoding.py [--prompts 64] [--batch-size 16] [--rounds 3]

The bundled SmolLM2-135M-Instruct answers the same Banking77 test requests, with the same
prompts, batch size and greedy decoding, twice per contract:

- labels: "reply with one of these 77 intents" (the label set as the contract);
- json_schema: "reply with JSON {intent, urgent}" (intent an enum of the 77 labels, urgent a boolean).

(a) free decoding (stop at end of turn, or at a newline for labels) and (b) decoding under the
contract (`inference.generate(..., constraint=...)`, llguidance token masks). Rounds alternate
(a) and (b) so that machine noise hits both; each side's best round counts. Printed per contract:
generated tokens/s and requests/s of each, the share of replies valid under the contract, the
share of (b)'s time spent computing and applying token masks, and the ratios (b)/(a). Tokens/s
includes reading the prompts, which costs both sides the same while a constrained reply is
usually shorter (it ends right after the label), so the mask share is the per-token overhead.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "banking77"


class MASK_TIMER:  # noqa: N801 - a namespace: seconds spent computing and applying token masks
    seconds = 0.0


def _time_masks() -> None:
    """Count the time of every mask step (llguidance's mask plus applying it to the logits)."""
    import specialize.constrain.logits as logits

    inner = logits.mask_logits

    def timed(states, scores):
        began = time.perf_counter()
        try:
            return inner(states, scores)
        finally:
            MASK_TIMER.seconds += time.perf_counter() - began

    logits.mask_logits = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from specialize.constrain import compile_constraint, labels_contract, schema_contract
    from specialize.inference import end_of_turn_ids, generate
    from specialize.models.load import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    _time_masks()
    labels = json.loads((DATA / "categories.json").read_text())
    with (DATA / "test.csv").open(newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][:: max(1, 3080 // args.prompts)][
            : args.prompts
        ]
    loaded = load_model("smollm2-135m-instruct")
    listed = ", ".join(labels)
    cases = {
        "labels": (
            labels_contract(labels),
            f"Classify the banking customer's request. Reply with exactly one of these intents: {listed}.",
            ["\n"],
            24,
        ),
        "json_schema": (
            schema_contract(
                {
                    "type": "object",
                    "properties": {"intent": {"enum": labels}, "urgent": {"type": "boolean"}},
                    "required": ["intent", "urgent"],
                    "additionalProperties": False,
                }
            ),
            "Classify the banking customer's request. Reply with JSON only: "
            f'{{"intent": one of {listed}, "urgent": true or false}}.',
            [],
            48,
        ),
    }
    ratios = {}
    for name, (contract, system, stop, max_new) in cases.items():
        conversations = [
            [{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts
        ]
        constraint = compile_constraint(contract, loaded.tokenizer, end_of_turn_ids(loaded))
        best: dict[str, dict] = {}
        for _ in range(args.rounds):
            for side, kwargs in (("free", {"stop": stop}), ("constrained", {"constraint": contract})):
                MASK_TIMER.seconds = 0.0
                began = time.perf_counter()
                outputs = generate(
                    loaded, conversations, max_new_tokens=max_new, batch_size=args.batch_size, **kwargs
                )
                seconds = time.perf_counter() - began
                tokens = sum(o.completion_tokens for o in outputs)
                if side not in best or tokens / seconds > best[side]["tokens_per_s"]:
                    valid = sum(
                        constraint.accepts(
                            loaded.tokenizer(o.text.strip(), add_special_tokens=False)["input_ids"]
                        )
                        for o in outputs
                    )
                    best[side] = {
                        "tokens_per_s": tokens / seconds,
                        "requests_per_s": len(outputs) / seconds,
                        "mask_share": MASK_TIMER.seconds / seconds,
                        "valid": valid / len(outputs),
                        "tokens": tokens,
                    }
        for side in ("free", "constrained"):
            b = best[side]
            print(
                f"{name:12s} ({'a' if side == 'free' else 'b'}) {side:11s}: {b['tokens_per_s']:6.1f} tokens/s, "
                f"mask {b['mask_share']:5.1%} of the time, "
                f"{b['requests_per_s']:5.2f} requests/s, {b['tokens']} tokens, valid {b['valid']:.0%}"
            )
        ratios[name] = (
            best["constrained"]["tokens_per_s"] / best["free"]["tokens_per_s"],
            best["constrained"]["requests_per_s"] / best["free"]["requests_per_s"],
            best["constrained"]["mask_share"],
        )
    print(
        "RESULT constrained/free: "
        + "; ".join(
            f"{k} tokens/s {t:.2f}x, requests/s {r:.2f}x, mask {m:.1%} of constrained time"
            for k, (t, r, m) in ratios.items()
        )
    )


if __name__ == "__main__":
    main()
