"""vLLM's offline throughput with a LoRA adapter: N prompts x T tokens, greedy, in one call.

Runs in the vLLM venv (`.venv-vllm/bin/python tests/vllm/throughput_offline.py BASE PEFT PROMPTS`),
on the directories `check_vllm.py` exports and a JSON list of conversations. The server figure in
`check_vllm.py --throughput` adds HTTP and scheduling over 64 connections; this one is the
engine alone, the number to set beside our own batched `generate`.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("adapter")
    parser.add_argument("prompts", help="JSON file: a list of conversations (lists of messages)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (slow start)")
    parser.add_argument("--no-lora", action="store_true", help="the base alone, to see what LoRA costs")
    args = parser.parse_args()

    from vllm.lora.request import LoRARequest

    from vllm import LLM, SamplingParams

    conversations = json.loads(open(args.prompts, encoding="utf-8").read())[: args.n]
    began = time.perf_counter()
    llm = LLM(
        model=args.base,
        dtype="float32",
        enable_lora=not args.no_lora,
        max_model_len=1024,
        enforce_eager=not args.compile,
    )
    start_up = time.perf_counter() - began
    lora = None if args.no_lora else LoRARequest("adapter", 1, args.adapter)
    params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    llm.chat(conversations[:1], params, lora_request=lora, use_tqdm=False)  # loads the adapter
    began = time.perf_counter()
    outputs = llm.chat(conversations, params, lora_request=lora, use_tqdm=False)
    seconds = time.perf_counter() - began
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    result = {
        "prompts": len(outputs),
        "tokens_each": args.tokens,
        "completion_tokens": tokens,
        "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs),
        "seconds": round(seconds, 2),
        "completion_tokens_per_s": round(tokens / seconds, 1),
        "start_up_s": round(start_up, 1),
        "compiled": args.compile,
        "lora": not args.no_lora,
    }
    print("RESULT", json.dumps(result))


if __name__ == "__main__":
    main()
