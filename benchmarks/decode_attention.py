"""Decode steps of unpadded batches: the folded route of `models/decode_attention.py` (this
version) vs transformers' sdpa attention, which passes `enable_gqa=True` to torch when no row
is padded (before).

    python benchmarks/decode_attention.py            # ~3 min on 2 CPU cores

(1) The attention alone, as one decode step of SmolLM2-135M calls it per layer (9 query heads
    over 3 key/value heads of 64 dims), at 1, 16 and 64 rows and cache lengths 100 and 400:
    transformers' sdpa without a mask (its enable_gqa route), with a mask of one padded position
    (its folded route), and this attention without a mask.
(2) The bundled model's greedy replies one request at a time (`inference.generate`, batch 1:
    nothing is padded, as for a single request to `specialize serve`), 8 Banking77-style prompts
    x 48 tokens, both attentions alternating round after round; seconds per reply and how many
    replies are the same token for token (bf16: the two routes round differently).

The last line starts with RESULT.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve_adapters import PROMPTS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of each side, alternating.")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()

    from specialize.cli.common import quiet_libraries

    quiet_libraries()
    kernel = attention_alone()
    replies = single_requests(args)
    print(
        f"{'rows':>4} {'cache':>5} {'sdpa unmasked ms':>17} {'sdpa masked ms':>15} {'folded ms':>10} {'ratio':>6}"
    )
    for (rows, length), (unmasked, masked, ours) in kernel.items():
        print(
            f"{rows:>4} {length:>5} {unmasked:>17.3f} {masked:>15.3f} {ours:>10.3f} {unmasked / ours:>5.2f}x"
        )
    (ours, before), same = replies
    print(
        f"one request at a time: {statistics.median(ours):.3f} s per reply (folded), "
        f"{statistics.median(before):.3f} s (sdpa); {same} replies identical"
    )
    print(
        "RESULT decode attention without padding, folded vs enable_gqa: "
        f"one request at a time {min(before) / min(ours):.2f}x faster; the attention alone at 64 rows, "
        f"cache 400: {kernel[(64, 400)][0] / kernel[(64, 400)][2]:.2f}x; {same} replies identical"
    )


def attention_alone() -> dict[tuple[int, int], tuple[float, float, float]]:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from specialize.models.decode_attention import decode_attention_forward
    from specialize.models.load import default_device, inference_dtype, resolve_dtype

    dtype = resolve_dtype(inference_dtype("auto"), default_device())

    class Module:  # what the attention functions read from an attention module
        num_key_value_groups = 3
        is_causal = True
        training = False

    def per_call(fn, *inputs) -> float:
        for _ in range(10):
            fn(Module(), *inputs)
        began = time.perf_counter()
        for _ in range(100):
            fn(Module(), *inputs)
        return (time.perf_counter() - began) * 10  # ms per call

    generator = torch.Generator().manual_seed(0)
    times = {}
    with torch.inference_mode():
        for rows in (1, 16, 64):
            for length in (100, 400):
                query = torch.randn(rows, 9, 1, 64, generator=generator).to(dtype)
                key = torch.randn(rows, 3, length, 64, generator=generator).to(dtype)
                value = torch.randn(rows, 3, length, 64, generator=generator).to(dtype)
                mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
                mask[:, :, :, 0] = False
                times[(rows, length)] = (
                    per_call(sdpa_attention_forward, query, key, value, None),
                    per_call(sdpa_attention_forward, query, key, value, mask),
                    per_call(decode_attention_forward, query, key, value, None),
                )
                print(f"attention alone, {rows} rows, cache {length}: {times[(rows, length)]}", flush=True)
    return times


def single_requests(args) -> tuple[tuple[list[float], list[float]], str]:
    from specialize.inference import generate
    from specialize.models.decode_attention import ATTENTION
    from specialize.models.load import inference_dtype, load_model

    loaded = load_model("smollm2-135m-instruct", dtype=inference_dtype("auto"))
    config = loaded.model.config
    conversations = [[{"role": "user", "content": p}] for p in PROMPTS]
    sides = {ATTENTION: [], "sdpa": []}
    texts: dict[str, list[str]] = {}

    def one_at_a_time(implementation: str) -> float:
        config._attn_implementation = implementation
        began = time.perf_counter()
        out = [
            generate(loaded, [c], max_new_tokens=args.max_tokens, batch_size=1, share_prefix=False)[0]
            for c in conversations
        ]
        seconds = (time.perf_counter() - began) / len(conversations)
        texts[implementation] = [g.text for g in out]
        return seconds

    one_at_a_time(ATTENTION)  # warm-up
    for round_ in range(args.rounds):
        for implementation in (ATTENTION, "sdpa") if round_ % 2 == 0 else ("sdpa", ATTENTION):
            sides[implementation].append(one_at_a_time(implementation))
            print(
                f"round {round_ + 1} {implementation}: {sides[implementation][-1]:.3f} s per reply",
                flush=True,
            )
    config._attn_implementation = ATTENTION
    same = sum(a == b for a, b in zip(texts[ATTENTION], texts["sdpa"], strict=True))
    return (sides[ATTENTION], sides["sdpa"]), f"{same}/{len(conversations)}"


if __name__ == "__main__":
    main()
