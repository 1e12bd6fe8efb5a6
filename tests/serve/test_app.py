"""The server over real HTTP on a loopback port: the official `openai` client, mixed-adapter
batches that give the same greedy tokens as requests served alone (and as PEFT), errors, auth,
loading and unloading while requests are in flight, back-pressure and a clean shutdown.

The model is the tiny random Llama of the fixtures plus two tiny random LoRA adapters made here
with PEFT, so these run in seconds and need no bundled model.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from specialize.registry import AdapterRegistry
from tests.conftest import make_adapter_run

PROMPTS = ["My card payment was declined.", "What is the exchange rate?", "hi"]
GREEDY = {"temperature": 0, "max_tokens": 10, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("serve")
    store = AdapterRegistry(root / "registry")
    store.add("alpha", make_adapter_run(root / "alpha", tiny_model_dir, seed=1, rank=4))
    store.add("beta", make_adapter_run(root / "beta", tiny_model_dir, seed=2, rank=8))
    store.add(
        "foreign", make_adapter_run(root / "foreign", tiny_model_dir, seed=3, rank=4, fingerprint="0" * 16)
    )
    (root / "gamma").mkdir()
    make_adapter_run(root / "gamma", tiny_model_dir, seed=4, rank=4)  # registered later, while serving
    return root / "registry"


@contextlib.contextmanager
def running_server(tiny_model_dir: Path, registry_dir: Path, tmp_path: Path, drift=None, **options):
    """create_app + uvicorn in a thread on a free loopback port; yields (base_url, ModelServer, uvicorn).
    `drift` is the drift provider, as `specialize serve` passes it."""
    import uvicorn

    from specialize.serve.app import create_app
    from specialize.serve.options import ServeOptions

    settings = ServeOptions(
        model=str(tiny_model_dir),
        registry=registry_dir,
        request_log_path=tmp_path / "requests.sqlite",
        **options,
    )
    app = create_app(settings, drift=drift)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", app.state.server, server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def submit_chats(pool, client, jobs):
    """Send each (model, prompt) job as a greedy chat request from the pool; futures by job."""
    return {
        job: pool.submit(
            client.chat.completions.create,
            model=job[0],
            messages=[{"role": "user", "content": job[1]}],
            **GREEDY,
        )
        for job in jobs
    }


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def served(tiny_model_dir, registry_dir, tmp_path_factory):
    with running_server(tiny_model_dir, registry_dir, tmp_path_factory.mktemp("log")) as running:
        yield running


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def alone(client, served):
    """Greedy completions of every prompt under every model, each request served on its own."""
    base = served[1].base_id
    return {
        (model, p): client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": p}], **GREEDY
        )
        .choices[0]
        .message.content
        for model in (base, "alpha", "beta")
        for p in PROMPTS
    }


def test_openai_client_models_chat_and_completions(client, served):
    server = served[1]
    ids = [m.id for m in client.models.list().data]
    assert ids == [server.base_id, "alpha", "beta"]  # 'foreign' was trained on another base
    assert "foreign" in server.skipped

    chat = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=6
    )
    assert chat.object == "chat.completion" and chat.model == "alpha"
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in ("stop", "length") and 1 <= chat.usage.completion_tokens <= 6
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    text = client.completions.create(
        model=server.base_id,
        prompt="The quick brown",
        max_tokens=5,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert text.object == "text_completion" and text.usage.completion_tokens == 5
    assert text.choices[0].finish_reason == "length"

    sampled = [
        client.chat.completions.create(
            model="beta",
            messages=[{"role": "user", "content": "hi"}],
            temperature=1.0,
            top_p=0.9,
            seed=7,
            max_tokens=8,
            extra_body={"ignore_eos": True},
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # a seed makes sampling reproducible

    stopped = client.completions.create(
        model=server.base_id,
        prompt="The quick brown",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    stop = stopped.choices[0].text[2:5]
    if stop.strip():
        cut = client.completions.create(
            model=server.base_id,
            prompt="The quick brown",
            max_tokens=10,
            temperature=0,
            stop=[stop],
            extra_body={"ignore_eos": True},
        )
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == stopped.choices[0].text[: stopped.choices[0].text.index(stop)]


def test_streaming_matches_the_whole_answer(client, alone):
    messages = [{"role": "user", "content": PROMPTS[0]}]
    chunks = list(
        client.chat.completions.create(
            model="alpha", messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone[("alpha", PROMPTS[0])]
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].usage.completion_tokens == 10 and chunks[-1].choices == []

    pieces = list(
        client.completions.create(
            model="beta",
            prompt="hello",
            max_tokens=6,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    whole = client.completions.create(
        model="beta", prompt="hello", max_tokens=6, temperature=0, extra_body={"ignore_eos": True}
    )
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "length"


def test_a_mixed_adapter_burst_gives_the_same_greedy_outputs_as_alone(client, served, alone):
    server = served[1]
    jobs = [(model, p) for model in ("alpha", server.base_id, "beta") for p in PROMPTS]
    server.engine.pause()  # hold the burst until all of it is queued, so it runs as one batch
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = submit_chats(pool, client, jobs)
            wait_until(lambda: server.engine.queue_depth == len(jobs))
            server.engine.resume()
            burst = {job: f.result().choices[0].message.content for job, f in futures.items()}
    finally:
        server.engine.resume()
    assert burst == {job: alone[job] for job in jobs}
    assert len({alone[(m, PROMPTS[0])] for m in ("alpha", "beta", server.base_id)}) == 3  # adapters matter


def test_engine_tokens_equal_peft_alone_and_in_a_mixed_batch(tiny_model_dir, registry_dir):
    """Token-for-token: our batched LoRA == PEFT's own forward, alone or mixed with other adapters."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.batching.adapters import ResidentAdapters
    from specialize.batching.engine import Engine
    from specialize.batching.requests import SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    store = AdapterRegistry(registry_dir)
    records = {None: None, "alpha": store.get("alpha"), "beta": store.get("beta")}
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    reference = {}
    for name, record in records.items():
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        if record is not None:
            model = PeftModel.from_pretrained(model, str(record.path))
        for i, ids in enumerate(prompts):
            out = model.eval().generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=tokenizer.pad_token_id,
            )
            reference[(name, i)] = out[0, len(ids) :].tolist()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    engine = Engine(model, tokenizer, adapters=ResidentAdapters(model, capacity=2), max_batch=16)
    engine.start()
    try:
        params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
        solo = {key: engine.generate(prompts[key[1]], params, records[key[0]]).token_ids for key in reference}
        handles = {key: engine.submit(prompts[key[1]], params, records[key[0]]) for key in reference}
        mixed = {key: h.wait(30).token_ids for key, h in handles.items()}
        # Requests joining a running batch at different steps (the cache is re-padded on each join).
        staggered = {}
        for key in reference:
            staggered[key] = engine.submit(prompts[key[1]], params, records[key[0]])
            time.sleep(0.002)
        joined = {key: h.wait(30).token_ids for key, h in staggered.items()}
    finally:
        engine.stop()
    assert solo == reference
    assert mixed == reference
    assert joined == reference


def test_unknown_model_is_404(client):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", b"{not json", None),
        ("/v1/chat/completions", {"model": "alpha"}, "messages"),
        ("/v1/chat/completions", {"model": "alpha", "messages": "hi"}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "temperature": 5},
            "temperature",
        ),
        (
            "/v1/chat/completions",
            {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "n": 3},
            "n",
        ),
        (
            "/v1/chat/completions",
            {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000},
            "max_tokens",
        ),
        ("/v1/completions", {"model": "alpha", "prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"model": "alpha", "prompt": "x" * 3000}, "prompt"),
        ("/v1/adapters", {"name": "gamma", "path": "/tmp/evil"}, "path"),
    ],
)
def test_malformed_bodies_are_400_in_openai_error_format(served, path, body, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(served[0] + path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param == "path":
        assert "registry" in error["message"]


def test_body_size_limit_is_413(served):
    body = {"model": "alpha", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    response = httpx.post(served[0] + "/v1/chat/completions", json=body)
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_auth_is_enforced_on_every_route_but_health(tiny_model_dir, registry_dir, tmp_path):
    import openai

    with running_server(tiny_model_dir, registry_dir, tmp_path, api_keys=["s3cret"]) as (url, server, _):
        assert httpx.get(url + "/health").status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("GET", "/metrics"),
            ("POST", "/v1/chat/completions"),
            ("POST", "/v1/adapters"),
            ("DELETE", "/v1/adapters/alpha"),
            ("GET", "/nope"),
        ]:
            response = httpx.request(method, url + path, json={})
            assert response.status_code == 401, (path, response.text)
            assert response.json()["error"]["code"] == "invalid_api_key"
        wrong = openai.OpenAI(base_url=url + "/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert right.models.list().data[0].id == server.base_id
        assert httpx.get(url + "/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_load_and_unload_while_requests_are_in_flight(tiny_model_dir, registry_dir, tmp_path, alone):
    from openai import OpenAI

    store = AdapterRegistry(registry_dir)
    with running_server(tiny_model_dir, registry_dir, tmp_path) as (url, server, _):
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert (
            httpx.post(url + "/v1/adapters", json={"name": "gamma"}).status_code == 404
        )  # not registered yet
        store.add("gamma", registry_dir.parent / "gamma")

        server.engine.pause()
        try:
            with ThreadPoolExecutor(4) as pool:
                in_flight = [
                    pool.submit(
                        client.chat.completions.create,
                        model="alpha",
                        messages=[{"role": "user", "content": p}],
                        **GREEDY,
                    )
                    for p in PROMPTS
                ]
                wait_until(lambda: server.engine.queue_depth == len(PROMPTS))
                server.engine.resume()
                wait_until(lambda: server.engine.running > 0)
                unloaded = httpx.delete(url + "/v1/adapters/alpha")
                loaded = httpx.post(url + "/v1/adapters", json={"name": "gamma"})
                results = [f.result().choices[0].message.content for f in in_flight]
        finally:
            server.engine.resume()
        assert unloaded.status_code == 200 and unloaded.json()["deleted"] is True
        assert loaded.status_code == 200 and loaded.json()["id"] == "gamma" and loaded.json()["resident"]
        assert results == [alone[("alpha", p)] for p in PROMPTS]  # in-flight requests finished intact
        assert (
            httpx.post(
                url + "/v1/chat/completions",
                json={"model": "alpha", "messages": [{"role": "user", "content": "x"}]},
            ).status_code
            == 404
        )
        gamma = client.chat.completions.create(
            model="gamma", messages=[{"role": "user", "content": "x"}], **GREEDY
        )
        assert gamma.usage.completion_tokens == 10
        assert "gamma" in [m.id for m in client.models.list().data]
        assert httpx.delete(url + "/v1/adapters/alpha").status_code == 404
        foreign = httpx.post(url + "/v1/adapters", json={"name": "foreign"})
        assert foreign.status_code == 400 and "trained on" in foreign.json()["error"]["message"]
        wait_until(lambda: "alpha" not in " ".join(server.resident.resident_keys()))
    store.remove("gamma")


def test_lru_of_one_slot_swaps_adapters_without_mixing_them(tiny_model_dir, registry_dir, tmp_path, alone):
    from openai import OpenAI

    with running_server(tiny_model_dir, registry_dir, tmp_path, max_resident_adapters=1) as (url, server, _):
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        jobs = [(m, p) for p in PROMPTS for m in ("alpha", "beta")]
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = submit_chats(pool, client, jobs)
            results = {job: f.result().choices[0].message.content for job, f in futures.items()}
        assert results == {job: alone[job] for job in jobs}
        assert server.resident.evictions >= 1 and len(server.resident) == 1
        metrics = httpx.get(url + "/metrics").text
        assert "specialize_adapter_evictions_total" in metrics and "specialize_resident_adapters 1" in metrics


def test_a_full_queue_answers_503(tiny_model_dir, registry_dir, tmp_path):
    with running_server(tiny_model_dir, registry_dir, tmp_path, max_batch=1, max_queue=2) as (url, server, _):
        body = {"model": "alpha", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        server.engine.pause()
        try:
            with ThreadPoolExecutor(2) as pool:
                queued = [
                    pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=60)
                    for _ in range(2)
                ]
                wait_until(lambda: server.engine.queue_depth == 2)
                rejected = httpx.post(url + "/v1/chat/completions", json=body)
                server.engine.resume()
                statuses = [f.result().status_code for f in queued]
        finally:
            server.engine.resume()
        assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
        assert rejected.json()["error"]["code"] == "queue_full"
        assert statuses == [200, 200]
        metrics = httpx.get(url + "/metrics").text
        assert 'specialize_requests_total{model="alpha",status="503"} 1' in metrics


def test_clean_shutdown_loses_no_in_flight_request(tiny_model_dir, registry_dir, tmp_path):
    from openai import OpenAI

    with running_server(tiny_model_dir, registry_dir, tmp_path) as (url, server, uv):
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        server.engine.pause()
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    client.chat.completions.create,
                    model=m,
                    messages=[{"role": "user", "content": "count"}],
                    max_tokens=30,
                    temperature=0,
                    extra_body={"ignore_eos": True},
                    stream=(i == 3),
                )
                for i, m in enumerate(["alpha", "beta", server.base_id, "alpha"])
            ]
            wait_until(lambda: server.engine.queue_depth == 4)
            uv.should_exit = True  # as Ctrl-C does
            time.sleep(0.3)
            server.engine.resume()
            results = [f.result() for f in futures]
        assert [r.usage.completion_tokens for r in results[:3]] == [30, 30, 30]
        streamed = list(results[3])
        assert streamed[-1].choices[0].finish_reason == "length"
        wait_until(lambda: not server.engine.accepting)
    assert not server.engine.running and not server.engine.queue_depth


def test_health_metrics_and_request_log(served, client):
    url, server, _ = served
    client.chat.completions.create(model="beta", messages=[{"role": "user", "content": "log me"}], **GREEDY)
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["model"] == server.base_id and health["adapters"] == 2
    metrics = httpx.get(url + "/metrics").text
    for family in (
        "specialize_requests_total",
        "specialize_completion_tokens_total",
        "specialize_request_latency_seconds_bucket",
        "specialize_time_to_first_token_seconds_count",
        "specialize_queue_depth",
        "specialize_resident_adapters",
        "specialize_http_requests_total",
    ):
        assert family in metrics
    assert 'specialize_requests_total{model="beta",status="200"}' in metrics
    server.request_log.close()  # flush; the log reopens nothing, so this is the module's last use of it
    with sqlite3.connect(server.request_log.path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM requests WHERE prompt LIKE '%log me%'")]
    assert len(rows) == 1
    row = rows[0]
    assert row["adapter"] == "beta" and row["completion_tokens"] == 10 and row["status"] == 200
    assert row["latency_ms"] > 0 and row["completion"] and len(row["prompt_hash"]) == 64


def test_adapter_drift_endpoint(tiny_model_dir, registry_dir, tmp_path):
    """GET /v1/adapters/{name}/drift: 'not enough data' on a quiet adapter, a verdict once traffic
    arrives, 404 without a training profile, 400 for the base model."""
    from specialize.data.example import Example, Source
    from specialize.monitor.drift import drift_for_adapter
    from specialize.monitor.profile import profile_from_examples

    texts = [f"My card payment number {i} was declined at the shop" for i in range(60)]
    examples = [
        Example([{"role": "user", "content": t}], "declined", Source("t", i)) for i, t in enumerate(texts)
    ]
    profile = profile_from_examples(examples, task="classification", labels=["declined"], embedder="hashed")
    run_root = registry_dir.parent / "alpha"
    (run_root / "profile.json").write_text(profile.json_text())
    try:
        with running_server(tiny_model_dir, registry_dir, tmp_path, drift=drift_for_adapter) as (
            url,
            server,
            _,
        ):
            quiet = httpx.get(f"{url}/v1/adapters/alpha/drift", timeout=60)
            assert quiet.status_code == 200 and quiet.json()["level"] == "not_enough_data"
            body = {"model": "alpha", "max_tokens": 2, "temperature": 0}
            for text in texts[:35]:
                msg = [{"role": "user", "content": text}]
                assert (
                    httpx.post(
                        f"{url}/v1/chat/completions", json={**body, "messages": msg}, timeout=60
                    ).status_code
                    == 200
                )
            report = httpx.get(f"{url}/v1/adapters/alpha/drift", params={"window": 100}, timeout=120).json()
            assert report["level"] in {"ok", "warn", "alert"} and report["checks"]
            missing = httpx.get(f"{url}/v1/adapters/beta/drift", timeout=60)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "profile_not_found"
            base = httpx.get(f"{url}/v1/adapters/{server.base_id}/drift", timeout=60)
            assert base.status_code == 400
            assert httpx.get(f"{url}/v1/adapters/nope/drift", timeout=60).status_code == 404
    finally:
        (run_root / "profile.json").unlink()


# Guaranteed output formats ----------------------------------------------------------------------

LABELS = ["card_arrival", "exchange_rate", "declined_card_payment"]
SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 50},
        "name": {"type": "string", "maxLength": 4},
    },
    "required": ["ok", "n", "name"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
}


def run_with_contract(run: Path, copy: Path, contract: dict) -> Path:
    """A copy of a run dir whose run.json records `contract` (as training does)."""
    import shutil

    shutil.copytree(run, copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["output_contract"] = contract
    (copy / "run.json").write_text(json.dumps(meta))
    return copy


@pytest.fixture(scope="module")
def constrained(tiny_model_dir, registry_dir, tmp_path_factory):
    """A server with 'router' (alpha's weights, a label contract), 'extractor' (beta's, a JSON
    schema) and 'alpha' (no contract: a run from before contracts)."""
    root = tmp_path_factory.mktemp("constrained")
    runs = registry_dir.parent
    store = AdapterRegistry(root / "registry")
    store.add("alpha", runs / "alpha")
    store.add(
        "router", run_with_contract(runs / "alpha", root / "router", {"kind": "labels", "labels": LABELS})
    )
    store.add(
        "extractor",
        run_with_contract(runs / "beta", root / "extractor", {"kind": "json_schema", "schema": SCHEMA}),
    )
    with running_server(tiny_model_dir, root / "registry", root) as (url, server, _):
        from openai import OpenAI

        yield url, server, OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def chat_raw(client, model, content, **kwargs):
    """(parsed completion, the x-specialize-constraint header) of a chat request."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], temperature=0, **kwargs
    )
    return raw.parse(), raw.headers["x-specialize-constraint"]


def test_response_format_json_schema_and_json_object(constrained):
    import jsonschema

    url, server, client = constrained
    for model in (server.base_id, "alpha", "router"):  # a request's format overrides router's labels
        for prompt in PROMPTS[:2]:
            reply, applied = chat_raw(
                client, model, prompt, max_tokens=80, response_format=JSON_SCHEMA_FORMAT
            )
            assert applied == "json_schema" and reply.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    objects = []
    for model in ("alpha", "router"):
        for prompt in (PROMPTS[1], "card lost"):
            reply, applied = chat_raw(
                client, model, prompt, max_tokens=64, response_format={"type": "json_object"}
            )
            text = reply.choices[0].message.content
            assert applied == "json_object" and text.startswith("{")
            if reply.choices[0].finish_reason == "stop":  # a random model's object may outrun max_tokens
                objects.append(json.loads(text))
    assert objects and all(isinstance(o, dict) for o in objects)


def test_an_adapters_contract_is_the_default_and_text_turns_it_off(constrained):
    import jsonschema

    url, server, client = constrained
    for prompt in PROMPTS:
        reply, applied = chat_raw(client, "router", prompt, max_tokens=32)
        assert applied == "labels" and reply.choices[0].message.content in LABELS
        assert reply.choices[0].finish_reason == "stop"
        extracted, applied = chat_raw(client, "extractor", prompt, max_tokens=80)
        assert applied == "json_schema"
        jsonschema.validate(json.loads(extracted.choices[0].message.content), SCHEMA)
    free, applied = chat_raw(
        client,
        "router",
        PROMPTS[0],
        max_tokens=10,
        response_format={"type": "text"},
        extra_body={"ignore_eos": True},
    )
    plain, plain_applied = chat_raw(
        client, "alpha", PROMPTS[0], max_tokens=10, extra_body={"ignore_eos": True}
    )
    assert (applied, plain_applied) == ("none", "none")
    assert free.choices[0].message.content == plain.choices[0].message.content  # same weights, no contract
    assert free.choices[0].message.content not in LABELS and free.usage.completion_tokens == 10
    _, base_applied = chat_raw(client, server.base_id, "hi", max_tokens=2)
    assert base_applied == "none"  # the base model has no contract of its own
    cards = {m["id"]: m["output_contract"] for m in httpx.get(url + "/v1/models").json()["data"]}
    assert cards == {server.base_id: "none", "alpha": "none", "router": "labels", "extractor": "json_schema"}


def test_streaming_under_a_contract(constrained):
    import jsonschema

    url, server, client = constrained
    for prompt in PROMPTS:
        chunks = list(
            client.chat.completions.create(
                model="router",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=32,
                temperature=0,
                stream=True,
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) in LABELS
        assert chunks[-1].choices[0].finish_reason == "stop"
    pieces = list(
        client.completions.create(
            model=server.base_id,
            prompt="The quick brown",
            max_tokens=80,
            temperature=0,
            stream=True,
            extra_body={"response_format": JSON_SCHEMA_FORMAT},
        )
    )
    jsonschema.validate(json.loads("".join(p.choices[0].text for p in pieces)), SCHEMA)
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"model": "router", "messages": [{"role": "user", "content": "x"}], "stream": True},
    ) as response:
        assert response.headers["x-specialize-constraint"] == "labels" and response.status_code == 200
        response.read()


def test_completions_route_takes_response_format_and_the_adapter_default(constrained):
    import jsonschema

    url, server, client = constrained
    raw = client.completions.with_raw_response.create(
        model="alpha",
        prompt="hello",
        max_tokens=80,
        temperature=0,
        extra_body={"response_format": JSON_SCHEMA_FORMAT},
    )
    assert raw.headers["x-specialize-constraint"] == "json_schema"
    jsonschema.validate(json.loads(raw.parse().choices[0].text), SCHEMA)
    routed = client.completions.create(
        model="router", prompt="My card payment was declined.", max_tokens=32, temperature=0
    )
    assert routed.choices[0].text in LABELS and routed.choices[0].finish_reason == "stop"
    free = client.completions.create(
        model="router",
        prompt="hello",
        max_tokens=5,
        temperature=0,
        extra_body={"response_format": {"type": "text"}, "ignore_eos": True},
    )
    assert free.usage.completion_tokens == 5 and free.choices[0].finish_reason == "length"


def test_a_burst_mixing_constrained_and_free_requests(constrained):
    url, server, client = constrained
    free_jobs = [(m, p) for m in ("alpha", server.base_id) for p in PROMPTS]
    alone = {
        job: client.chat.completions.create(
            model=job[0], messages=[{"role": "user", "content": job[1]}], **GREEDY
        )
        .choices[0]
        .message.content
        for job in free_jobs
    }
    server.engine.pause()
    try:
        with ThreadPoolExecutor(2 * len(free_jobs)) as pool:
            futures = submit_chats(pool, client, free_jobs)
            routed = [pool.submit(chat_raw, client, "router", p, max_tokens=32) for p in PROMPTS] + [
                pool.submit(chat_raw, client, "alpha", p, max_tokens=80, response_format=JSON_SCHEMA_FORMAT)
                for p in PROMPTS
            ]
            wait_until(lambda: server.engine.queue_depth == len(free_jobs) + 2 * len(PROMPTS))
            server.engine.resume()
            burst = {job: f.result().choices[0].message.content for job, f in futures.items()}
            replies = [f.result()[0].choices[0].message.content for f in routed]
    finally:
        server.engine.resume()
    assert burst == alone
    assert all(r in LABELS for r in replies[: len(PROMPTS)])
    assert all(isinstance(json.loads(r), dict) for r in replies[len(PROMPTS) :])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize(
    ("response_format", "reason"),
    [
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
            "Invalid type: nope",
        ),
        ({"type": "json_schema"}, "response_format.json_schema must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
        ({"type": "xml"}, "response_format.type must be one of"),
        ("json", "response_format must be an object"),
    ],
)
def test_bad_response_formats_are_400_with_the_reason(constrained, path, response_format, reason):
    url, server, client = constrained
    body = {"model": "router", "max_tokens": 4, "response_format": response_format}
    body.update({"messages": [{"role": "user", "content": "x"}]} if "chat" in path else {"prompt": "x"})
    response = httpx.post(url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "response_format" and error["type"] == "invalid_request_error"
    assert reason in error["message"], error["message"]


def test_the_openai_client_raises_bad_request_for_an_uncompilable_schema(constrained):
    import openai

    url, server, client = constrained
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "two"}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=server.base_id, messages=[{"role": "user", "content": "x"}], response_format=bad
        )
    assert caught.value.body["param"] == "response_format" and "schema" in caught.value.body["message"]
