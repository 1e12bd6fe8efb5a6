"""`specialize serve` under sustained load: 64 clients for two minutes over 64 mixed adapters.

    .venv/bin/python benchmarks/serve_load.py [--clients 64] [--seconds 120] [--adapters 64]

Each closed-loop client sends a greedy chat request (a Banking77-style question, 32 tokens, to the
next adapter round-robin, so a batch mixes nearly as many adapters as rows), waits for the whole
reply, and sends the next one until the time is up. Requests answered 503 (queue full) are retried
after a short pause, as a client of an OpenAI-compatible server would; any other failure, a
dropped connection, or a reply shorter than asked counts as lost.

Printed: requests completed, lost, 503 retries, tokens/s, and the latency p50/p95/max of completed
requests. The last line starts with RESULT. Adapters, server and HTTP helpers are those of
`serve_adapters.py`, so the two measure the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from serve_adapters import MODEL, PROMPTS, http_server, make_adapters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--adapters", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64, help="Engine batch size.")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    from specialize.cli.common import quiet_libraries

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="specialize-load-"))
    try:
        names = make_adapters(work, args.adapters, args.rank)
        run(work, names, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, names: list[str], args) -> None:
    import httpx

    from specialize.serve.app import create_app
    from specialize.serve.options import ServeOptions

    options = ServeOptions(
        model=MODEL,
        registry=work / "registry",
        adapters=names,
        max_batch=args.max_batch,
        max_queue=args.clients,
        max_resident_adapters=len(names),
        request_log_path=work / "requests.sqlite",
    )
    app = create_app(options)
    with http_server(app) as url:
        for name in names:
            httpx.post(url + "/v1/adapters", json={"name": name}, timeout=120).raise_for_status()
        result = asyncio.run(load(url, names, args))
    latencies = sorted(result["latencies"])
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    print(
        f"{args.clients} clients, {args.seconds:.0f} s, {len(names)} adapters round-robin, "
        f"{args.max_tokens} tokens per request, engine batch {args.max_batch}"
    )
    print(
        f"completed {len(latencies)}, lost {result['lost']}, 503 retries {result['retries']}, "
        f"{result['tokens'] / result['wall']:.1f} tok/s; latency p50 {p50:.2f} s, p95 {p95:.2f} s, "
        f"max {latencies[-1]:.2f} s"
    )
    for reason in result["reasons"][:5]:
        print(f"  lost: {reason}")
    print(f"RESULT lost {result['lost']} of {len(latencies) + result['lost']}; latency p50 {p50:.2f} s")


async def load(url: str, names: list[str], args) -> dict:
    import httpx

    deadline = time.perf_counter() + args.seconds
    counter = iter(range(10**9))
    latencies: list[float] = []
    reasons: list[str] = []
    totals = {"lost": 0, "retries": 0, "tokens": 0}

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            n = next(counter)
            body = {
                "model": names[n % len(names)],
                "messages": [{"role": "user", "content": PROMPTS[n % len(PROMPTS)]}],
                "temperature": 0,
                "max_tokens": args.max_tokens,
                "ignore_eos": True,
            }
            sent = time.perf_counter()
            while True:
                try:
                    response = await http.post(url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    totals["lost"] += 1
                    reasons.append(f"{type(exc).__name__}: {exc}")
                    break
                if response.status_code == 503:
                    totals["retries"] += 1
                    await asyncio.sleep(0.2)
                    continue
                used = (
                    response.json().get("usage", {}).get("completion_tokens") if response.is_success else None
                )
                if used != args.max_tokens:
                    totals["lost"] += 1
                    reasons.append(f"HTTP {response.status_code}: {response.text[:200]}")
                else:
                    latencies.append(time.perf_counter() - sent)
                    totals["tokens"] += used
                break

    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.clients)))
        wall = time.perf_counter() - began
    return {"latencies": latencies, "reasons": reasons, "wall": wall, **totals}


if __name__ == "__main__":
    sys.exit(main())
