"""A promotion (and a rollback) while 16 clients send requests over real HTTP: none is lost, and
every reply comes wholly from the old or wholly from the new version.

The two versions are random LoRA adapters of different seeds on the tiny model, so their greedy
replies to every prompt differ (checked first): a reply that mixed tokens of both, or came from
the base, would match neither.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from specialize.registry import AdapterRegistry
from tests.conftest import make_adapter_run
from tests.serve.test_app import running_server

PROMPTS = ["My card payment was declined.", "What is the exchange rate?", "hi", "top up by cheque"]
CLIENTS = 16
PER_CLIENT = 6


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("promotion")
    store = AdapterRegistry(root / "registry")
    store.add("bank", make_adapter_run(root / "v1", tiny_model_dir, seed=11))
    store.add("bank", make_adapter_run(root / "v2", tiny_model_dir, seed=12), make_current=False)
    return store


def _chat(url: str, model: str, prompt: str) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 16,
        "ignore_eos": True,
    }
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_promotion_and_rollback_under_load_lose_and_mix_nothing(registry, tiny_model_dir, tmp_path):
    with running_server(tiny_model_dir, registry.root, tmp_path, max_batch=8) as (url, server, _):
        expected = {
            version: {
                p: _chat(url, f"bank@v{version}", p).json()["choices"][0]["message"]["content"]
                for p in PROMPTS
            }
            for version in (1, 2)
        }
        assert all(expected[1][p] != expected[2][p] for p in PROMPTS), "the versions must be distinguishable"
        assert {
            p: _chat(url, "bank", p).json()["choices"][0]["message"]["content"] for p in PROMPTS
        } == expected[1]
        cards = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert cards["bank"]["version"] == 1

        results: list[tuple[float, float, str, int, str]] = []  # sent, answered, prompt, status, reply
        lock = threading.Lock()
        started = threading.Barrier(CLIENTS + 1)

        def client(i: int) -> None:
            started.wait()
            for j in range(PER_CLIENT):
                prompt = PROMPTS[(i + j) % len(PROMPTS)]
                sent = time.monotonic()
                response = _chat(url, "bank", prompt)
                reply = (
                    response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else ""
                )
                with lock:
                    results.append((sent, time.monotonic(), prompt, response.status_code, reply))

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, i) for i in range(CLIENTS)]
            started.wait()
            # Switch once the first replies are back, while the other requests are in flight.
            deadline = time.monotonic() + 60
            while len(results) < CLIENTS and time.monotonic() < deadline:
                time.sleep(0.005)
            switching = time.monotonic()
            registry.promote("bank", 2, reason="test")
            switched = time.monotonic()
            for future in futures:
                future.result()

        assert len(results) == CLIENTS * PER_CLIENT
        assert all(status == 200 for _, _, _, status, _ in results), "a request was lost"
        version_of = []
        for sent, answered, prompt, _, reply in results:
            assert reply in (expected[1][prompt], expected[2][prompt]), f"a reply mixed versions: {reply!r}"
            version = 1 if reply == expected[1][prompt] else 2
            version_of.append(version)
            if answered < switching:
                assert version == 1, "answered before the switch, yet by the new version"
            if sent > switched:
                assert version == 2, "sent after the switch, yet answered by the old version"
        assert {1, 2} <= set(version_of), "the switch did not happen during the load"
        cards = {m["id"]: m for m in httpx.get(url + "/v1/models").json()["data"]}
        assert cards["bank"]["version"] == 2

        registry.rollback("bank", reason="test")
        assert {
            p: _chat(url, "bank", p).json()["choices"][0]["message"]["content"] for p in PROMPTS
        } == expected[1]
        assert httpx.get(url + "/v1/models/bank").json()["version"] == 1
        assert _chat(url, "bank@v9", "hi").status_code == 404
        server.request_log.flush()
    logged = [r for r in _logged(tmp_path / "requests.sqlite") if r[0] == "bank"]
    assert {version for _, version in logged} == {1, 2}


def _logged(path):
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT model, adapter_version FROM requests").fetchall()
    finally:
        conn.close()
