"""Serving many adapters over one base model: our batching engine, the forward passes alone, and
one-request-at-a-time serving.

    python benchmarks/serve_adapters.py                      # ~8 min on 2 CPU cores
    python benchmarks/serve_adapters.py --adapters 1,8,64 --requests 128 --concurrency 64 --max-batch 64

For N = 1, 8 and 64 random rank-16 LoRA adapters (all linear layers, as `specialize train`
makes them) on the bundled SmolLM2-135M-Instruct, concurrent clients send greedy chat requests
over real HTTP on loopback, round-robin over the adapters (so with 64 adapters nearly every row of
a batch uses a different adapter). Each request generates exactly --max-tokens tokens.

(a) `specialize serve`'s engine: continuous batching, mixed-adapter batches in one forward pass;
    requests stream, so the time to the first token is measured.
(b) the decode forward pass alone: the same model and adapter wrappers, --max-tokens greedy
    steps at batch --max-batch, nothing else (the ceiling for any scheduler's decoding over this
    model; (a) also prefills every request, so (a)/(b) < 1 by construction).
(c) the naive baseline: a PeftModel holding every adapter, serving one request at a time and
    switching the active adapter (`set_adapter`) per request, with `generate`.
(d) vLLM's CPU build, when `make vllm` has set up .venv-vllm: its OpenAI server over the same base
    checkpoint and the same PEFT adapter directories (`--enable-lora`, every adapter allowed in one
    batch), driven by the same clients over the largest N's workload, in the same dtype as (a).
    vLLM runs as its own process after (a)-(c) are done, so the two never share the cores.

Printed: tokens/s of (a), (b), (c) and (d), the first-token p50/p95 of (a) and (d), the ratios,
the 64-vs-1 adapter ratio of the engine, the adapter cold-load time of (a) and (c), and whether the
greedy outputs of (a) agree with (c) and with (d). The last line starts with RESULT and holds the figures the README
quotes. `--dtype` picks the served weights (auto: bf16 where bf16 matmuls are native, else fp32).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "I am still waiting on my card, when will it arrive?",
    "How do I top up my account with a cheque?",
    "My card payment was declined, why?",
    "What exchange rate do you use for euros?",
    "Can I change the PIN of my card in the app?",
    "Why was I charged a fee for a transfer?",
    "Where can I see my pending transactions?",
    "How long does a bank transfer take to arrive?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="1,8,64", help="Comma-separated adapter counts.")
    parser.add_argument(
        "--requests", type=int, default=128, help="Engine requests per adapter count and round."
    )
    parser.add_argument("--naive-requests", type=int, default=4, help="Naive requests per count and round.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; the best round is kept.")
    parser.add_argument("--concurrency", type=int, default=64, help="Concurrent HTTP clients.")
    parser.add_argument("--max-batch", type=int, default=64, help="Engine batch size.")
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens generated per request.")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    parser.add_argument(
        "--dtype", default="auto", help="Served weights: auto (bf16 where native), f32, bf16."
    )
    parser.add_argument(
        "--vllm-python",
        type=Path,
        default=ROOT / ".venv-vllm" / "bin" / "python",
        help="python of the vLLM venv (make vllm); the vLLM column is skipped when it is missing.",
    )
    parser.add_argument(
        "--vllm-requests", type=int, default=64, help="vLLM requests over the largest N (one round)."
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.adapters.split(",")]

    from specialize.cli.common import quiet_libraries

    quiet_libraries()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="specialize-bench-"))
    try:
        began = time.perf_counter()
        names = make_adapters(work, max(counts), args.rank)
        print(
            f"{len(names)} random rank-{args.rank} adapters made and registered in "
            f"{time.perf_counter() - began:.1f} s",
            flush=True,
        )
        engine = run_engine(work, names, counts, args)
        naive = run_naive(work, names, counts, args)
        vllm = run_vllm(work, names[: max(counts)], engine["dtype"], args)
        report(engine, naive, vllm, counts, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_adapters(work: Path, count: int, rank: int) -> list[str]:
    """Random LoRA adapters in PEFT's format, each in a run-like dir, added to a registry."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from torch import nn

    from specialize.models.load import load_model
    from specialize.models.registry import weights_fingerprint
    from specialize.registry import AdapterRegistry

    loaded = load_model(MODEL)
    shapes = {
        name: (m.in_features, m.out_features)
        for name, m in loaded.model.named_modules()
        if isinstance(m, nn.Linear) and name != "lm_head"
    }
    kinds = sorted({name.rsplit(".", 1)[-1] for name in shapes})
    meta = {"base_model": loaded.ref.to_dict(), "base_fingerprint": weights_fingerprint(loaded.ref)}
    registry = AdapterRegistry(work / "registry")
    generator = torch.Generator().manual_seed(0)
    names = []
    for i in range(count):
        run = work / "runs" / f"task{i:02d}"
        (run / "adapter").mkdir(parents=True)
        tensors = {}
        for name, (fan_in, fan_out) in shapes.items():
            key = f"base_model.model.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.02
        save_file(tensors, str(run / "adapter" / "adapter_model.safetensors"))
        LoraConfig(
            r=rank,
            lora_alpha=2 * rank,
            target_modules=kinds,
            task_type="CAUSAL_LM",
            base_model_name_or_path=str(loaded.hf_path),
        ).save_pretrained(str(run / "adapter"))
        (run / "run.json").write_text(json.dumps(meta))
        registry.add(f"task{i:02d}", run)
        shutil.rmtree(run)
        names.append(f"task{i:02d}")
    return names


@contextlib.contextmanager
def http_server(app):
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", timeout_graceful_shutdown=60))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server failed to start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def load_requests(adapters: list[str], total: int) -> list[tuple[str, str]]:
    """Round-robin over adapters, cycling prompts: (model, prompt) per request."""
    return [
        (adapters[i % len(adapters)], PROMPTS[(i // len(adapters) + i) % len(PROMPTS)]) for i in range(total)
    ]


def drive(
    url: str, jobs: list[tuple[str, str]], concurrency: int, max_tokens: int, stream: bool = False
) -> dict:
    """Closed-loop clients over HTTP; returns throughput, latency and every request's text.

    With `stream`, requests stream (SSE) and the time to the first content chunk is recorded;
    without, the first token is only seen with the whole reply, so it is the latency."""
    import httpx

    async def run() -> dict:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        outputs: dict[tuple[str, str], str] = {}
        tokens: list[int] = []
        latencies: list[float] = []
        first_tokens: list[float] = []

        async def one_streamed(http: httpx.AsyncClient, body: dict, sent: float) -> tuple[str, int]:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            parts, used = [], 0
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        used = chunk["usage"]["completion_tokens"]
                    for choice in chunk.get("choices", []):
                        if choice["delta"].get("content"):
                            if not parts:
                                first_tokens.append(time.perf_counter() - sent)
                            parts.append(choice["delta"]["content"])
            return "".join(parts), used

        async def client(http: httpx.AsyncClient) -> None:
            while not queue.empty():
                model, prompt = queue.get_nowait()
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                    "ignore_eos": True,
                }
                sent = time.perf_counter()
                if stream:
                    text, used = await one_streamed(http, body, sent)
                else:
                    response = await http.post(url + "/v1/chat/completions", json=body)
                    response.raise_for_status()
                    data = response.json()
                    text, used = data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]
                    first_tokens.append(time.perf_counter() - sent)
                latencies.append(time.perf_counter() - sent)
                tokens.append(used)
                outputs[(model, prompt)] = text

        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=600, limits=limits) as http:
            began = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(concurrency)))
            wall = time.perf_counter() - began
        return {
            "rps": len(jobs) / wall,
            "tps": sum(tokens) / wall,
            "p50": statistics.median(latencies),
            "ttft_p50": statistics.median(first_tokens),
            "ttft_p95": _percentile(first_tokens, 0.95),
            "outputs": outputs,
            "wall": wall,
        }

    return asyncio.run(run())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleave(
    url: str, names: list[str], counts: list[int], requests: int, args, label: str, stream: bool = False
) -> dict:
    """Rounds of (N = each count): the machine's background load drifts, so every N sees the
    same conditions, and the best round per N is kept."""
    best: dict[int, dict] = {}
    outputs: dict[tuple, str] = {}
    for round_ in range(args.rounds):
        for n in counts:
            result = drive(url, load_requests(names[:n], requests), args.concurrency, args.max_tokens, stream)
            outputs.update({(n, *key): text for key, text in result.pop("outputs").items()})
            print(
                f"{label:<6} round {round_ + 1} N={n:<3} {result['rps']:6.2f} req/s {result['tps']:8.1f} tok/s "
                f"first token p50 {result['ttft_p50']:.2f} s p95 {result['ttft_p95']:.2f} s",
                flush=True,
            )
            if n not in best or result["tps"] > best[n]["tps"]:
                best[n] = result
    return {"runs": best, "outputs": outputs}


def run_engine(work: Path, names: list[str], counts: list[int], args) -> dict:
    import httpx

    from specialize.serve.app import create_app
    from specialize.serve.options import ServeOptions

    options = ServeOptions(
        model=MODEL,
        registry=work / "registry",
        adapters=names,
        max_batch=args.max_batch,
        max_queue=4 * args.concurrency,
        max_resident_adapters=len(names),
        request_log_path=work / "requests.sqlite",
        threads=args.threads,
        dtype=args.dtype,
    )
    app = create_app(options)
    server = app.state.server
    with http_server(app) as url:
        for name in names:  # load every adapter before timing; cold loads are reported apart
            httpx.post(url + "/v1/adapters", json={"name": name}, timeout=120).raise_for_status()
        cold = [server.resident.load_seconds / max(server.resident.loads, 1)]
        drive(url, load_requests(names, args.concurrency), args.concurrency, 4)  # warm-up
        steps, rows = server.engine.steps, server.engine.step_rows
        result = interleave(url, names, counts, args.requests, args, "engine", stream=True)
        mean_batch = (server.engine.step_rows - rows) / max(server.engine.steps - steps, 1)
        ceiling = {n: forward_ceiling(server, names[:n], args) for n in counts}
        for n, tps in ceiling.items():
            print(
                f"forward only N={n:<3} {tps:8.1f} tok/s (decode steps at batch {args.max_batch})", flush=True
            )
    dtype = str(next(server.engine.model.parameters()).dtype).replace("torch.", "")
    return {**result, "cold": cold, "mean_batch": mean_batch, "ceiling": ceiling, "dtype": dtype}


def forward_ceiling(server, names: list[str], args) -> float:
    """Tokens/s of the served model's decode forward pass alone at the engine's batch size, rows
    round-robin over `names`' adapter slots: `max_tokens` greedy steps after one batched prefill
    (not timed). No HTTP, queue, prefill, sampling, streaming or cache bookkeeping: the ceiling
    for any scheduler's decoding over this model and these adapter wrappers (transformers' own
    cache). The engine's figure also pays for prefilling every request (shared prefixes once),
    so its ratio to this ceiling is below 1 by construction. Runs on the engine thread."""
    import torch

    from specialize.models.chat import render_prompt

    engine, resident = server.engine, server.resident
    tokenizer = engine.tokenizer
    prompt = render_prompt(tokenizer, [{"role": "user", "content": PROMPTS[0]}])
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    slots = [resident.slot_of(server.served[name].key) for name in names]
    rows = [slots[i % len(slots)] for i in range(args.max_batch)]

    @torch.inference_mode()
    def measure() -> float:
        model = engine.model
        resident.route(rows)
        out = model(input_ids=torch.tensor([ids] * len(rows)), use_cache=True, logits_to_keep=1)
        cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        began = time.perf_counter()
        for _ in range(args.max_tokens):
            out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        return len(rows) * args.max_tokens / (time.perf_counter() - began)

    return max(engine.call(measure).result() for _ in range(args.rounds))


def run_naive(work: Path, adapters: list[str], counts: list[int], args) -> dict:
    """One PeftModel with every adapter; a lock serves one request at a time."""
    import torch
    from fastapi import FastAPI
    from peft import PeftModel

    from specialize.batching.threads import release_thread_pool
    from specialize.models.chat import render_prompt
    from specialize.models.load import load_model
    from specialize.registry import AdapterRegistry

    registry = AdapterRegistry(work / "registry")
    loaded = load_model(MODEL, dtype=args.dtype)
    tokenizer = loaded.tokenizer
    loads = []
    model = None
    for name in adapters:
        began = time.perf_counter()
        path = str(registry.get(name).path)
        if model is None:
            model = PeftModel.from_pretrained(loaded.model, path, adapter_name=name, low_cpu_mem_usage=True)
        else:
            model.load_adapter(path, adapter_name=name, low_cpu_mem_usage=True)
        loads.append(time.perf_counter() - began)
    model.eval()
    lock = threading.Lock()
    app = FastAPI()
    # FastAPI runs each request on one of its worker threads; each would keep its own OpenMP pool
    # and slow every other (specialize.batching.threads). The baseline gets what the engine
    # gets: only the pool of the thread that is generating stays alive.
    release_thread_pool()

    @app.post("/v1/chat/completions")
    def chat(body: dict) -> dict:  # a plain def: FastAPI runs it in a worker thread
        with lock:
            model.set_adapter(body["model"])
            prompt = render_prompt(tokenizer, body["messages"])
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            with torch.inference_mode():
                # eos_token_id=None: like the engine's ignore_eos, continue past an end of turn.
                out = model.generate(
                    **ids,
                    max_new_tokens=body["max_tokens"],
                    eos_token_id=None,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            release_thread_pool()
            new = out[0, ids["input_ids"].shape[1] :]
            text = tokenizer.decode(new, skip_special_tokens=True)
        return {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": ids["input_ids"].shape[1], "completion_tokens": len(new)},
        }

    with http_server(app) as url:
        drive(url, load_requests(adapters[:2], 2), 1, 4)  # warm-up
        result = interleave(url, adapters, counts, args.naive_requests, args, "naive")
    return {**result, "cold": loads}


def run_vllm(work: Path, adapters: list[str], dtype: str, args) -> dict | None:
    """(d): vLLM's OpenAI server on the same base checkpoint and PEFT dirs, the same clients.

    The base is the cached checkpoint our engine loads (it stores the tied embedding under the
    name vLLM reads, see models.load), so both serve the same weights."""
    if not args.vllm_python.is_file():
        print(f"vLLM: skipped, {args.vllm_python} not found (make vllm sets it up)", flush=True)
        return None
    sys.path.insert(0, str(ROOT))
    from tests.vllm.check_vllm import vllm_server, vllm_version

    from specialize.models.load import hf_directory
    from specialize.models.registry import resolve_model
    from specialize.registry import AdapterRegistry

    registry = AdapterRegistry(work / "registry")
    paths = {name: registry.get(name).path for name in adapters}
    base = hf_directory(resolve_model(MODEL))
    log = work / "vllm-serve.log"
    began = time.perf_counter()
    with vllm_server(str(args.vllm_python), base, paths, log, dtype=dtype) as url:
        start_up = time.perf_counter() - began
        drive(url, load_requests(adapters, len(adapters)), args.concurrency, 4)  # loads every adapter
        jobs = load_requests(adapters, args.vllm_requests)
        result = drive(url, jobs, args.concurrency, args.max_tokens, stream=True)
    print(
        f"vllm   N={len(adapters):<3} {result['rps']:6.2f} req/s {result['tps']:8.1f} tok/s "
        f"first token p50 {result['ttft_p50']:.2f} s p95 {result['ttft_p95']:.2f} s "
        f"(started in {start_up:.0f} s)",
        flush=True,
    )
    return {**result, "n": len(adapters), "version": vllm_version(str(args.vllm_python))}


def report(engine: dict, naive: dict, vllm: dict | None, counts: list[int], args) -> None:
    print()
    print(
        f"model {MODEL} ({engine['dtype']}), rank-{args.rank} adapters on all linear layers, "
        f"{args.concurrency} concurrent clients, {args.max_tokens} tokens per request, engine batch "
        f"{args.max_batch} (mean {engine['mean_batch']:.1f}); best of {args.rounds} interleaved rounds"
    )
    print(
        f"{'adapters':>8} {'engine tok/s':>13} {'first token p50/p95':>20} {'forward only':>13} "
        f"{'engine/fwd':>11} {'naive tok/s':>12} {'engine/naive':>13}"
    )
    ours, theirs, ceiling = engine["runs"], naive["runs"], engine["ceiling"]
    for n in counts:
        print(
            f"{n:>8} {ours[n]['tps']:>13.1f} {ours[n]['ttft_p50']:>11.2f}/{ours[n]['ttft_p95']:.2f} s "
            f"{ceiling[n]:>13.1f} {ours[n]['tps'] / ceiling[n]:>10.2f}x {theirs[n]['tps']:>12.1f} "
            f"{ours[n]['tps'] / theirs[n]['tps']:>12.1f}x"
        )
    peft = naive["cold"]
    print(
        f"adapter cold load (registry -> serving): engine {engine['cold'][0] * 1000:.0f} ms; PEFT load_adapter "
        f"{peft[0] * 1000:.0f} ms for the first, {statistics.mean(peft) * 1000:.0f} ms mean, "
        f"{peft[-1] * 1000:.0f} ms for the {len(peft)}th (it walks every module of every loaded adapter)"
    )
    shared = [key for key in engine["outputs"] if key in naive["outputs"]]
    same = sum(engine["outputs"][key] == naive["outputs"][key] for key in shared)
    print(f"greedy outputs identical between engine and naive baseline: {same}/{len(shared)}")
    most, least = max(counts), min(counts)
    top = ours[most]["tps"]
    versus_vllm = "vLLM not run (make vllm)"
    if vllm is not None:
        # Greedy replies in bf16 can part on near-ties (other kernels sum in another order).
        keys = [key for key in vllm["outputs"] if (most, *key) in engine["outputs"]]
        agree = sum(vllm["outputs"][key] == engine["outputs"][(most, *key)] for key in keys)
        print(
            f"vLLM {vllm['version']} (CPU build), N={vllm['n']}: {vllm['tps']:.1f} tok/s, first token "
            f"p50/p95 {vllm['ttft_p50']:.2f}/{vllm['ttft_p95']:.2f} s; engine/vLLM {top / vllm['tps']:.1f}x; "
            f"greedy outputs identical to the engine's: {agree}/{len(keys)}"
        )
        versus_vllm = f"vs vLLM's CPU build: {top / vllm['tps']:.1f}x (target > 1)"
    print(
        f"RESULT {most} adapters: {top:.0f} tok/s (target >= 400); vs {least} adapter: "
        f"{top / ours[least]['tps']:.2f}x (target >= 0.8); vs forward only: {top / ceiling[most]:.2f}x "
        f"(target >= 0.75); vs naive per-request switching: {top / theirs[most]['tps']:.1f}x; {versus_vllm}"
    )


if __name__ == "__main__":
    sys.exit(main())
