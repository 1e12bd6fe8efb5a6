"""GET /metrics: the exposition parses as Prometheus text, exposes exactly the documented series
(names, types, buckets; no `_created` series), and a completion request moves its counters. Each
server counts in a registry of its own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from specialize.registry import AdapterRegistry
from specialize.serve.metrics import ServerMetrics
from tests.conftest import make_adapter_run

# The names dashboards and the README rely on, as exposed (counters with `_total`).
EXPOSED = {
    "specialize_http_requests_total": "counter",
    "specialize_requests_total": "counter",
    "specialize_prompt_tokens_total": "counter",
    "specialize_completion_tokens_total": "counter",
    "specialize_request_latency_seconds": "histogram",
    "specialize_time_to_first_token_seconds": "histogram",
    "specialize_queue_wait_seconds": "histogram",
    "specialize_queue_depth": "gauge",
    "specialize_running_requests": "gauge",
    "specialize_resident_adapters": "gauge",
    "specialize_served_adapters": "gauge",
    "specialize_adapter_loads_total": "counter",
    "specialize_adapter_evictions_total": "counter",
    "specialize_adapter_load_seconds_total": "counter",
    "specialize_decode_steps_total": "counter",
    "specialize_decode_rows_total": "counter",
}
BUCKETS = [
    "0.025",
    "0.05",
    "0.1",
    "0.25",
    "0.5",
    "1.0",
    "2.5",
    "5.0",
    "10.0",
    "30.0",
    "60.0",
    "120.0",
    "+Inf",
]


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from specialize.serve.app import create_app
    from specialize.serve.options import ServeOptions

    root = tmp_path_factory.mktemp("metrics")
    AdapterRegistry(root / "registry").add("alpha", make_adapter_run(root / "alpha", tiny_model_dir, seed=1))
    options = ServeOptions(
        model=str(tiny_model_dir), registry=root / "registry", request_log_path=root / "requests.sqlite"
    )
    with TestClient(create_app(options)) as client:
        yield client


def scrape(client) -> dict[str, object]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families, family: str, sample: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled series not yet created."""
    found = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
    return found[0] if found else 0.0


def test_the_exposition_parses_and_has_exactly_the_documented_series(client):
    families = scrape(client)
    exposed = {(f.name + "_total" if f.type == "counter" else f.name): f.type for f in families.values()}
    assert exposed == EXPOSED
    samples = [s for f in families.values() for s in f.samples]
    assert not [s.name for s in samples if s.name.endswith("_created")]
    for histogram in ("specialize_request_latency_seconds", "specialize_queue_wait_seconds"):
        les = [s.labels["le"] for s in families[histogram].samples if s.name == histogram + "_bucket"]
        assert les == BUCKETS
    assert value(families, "specialize_served_adapters", "specialize_served_adapters") == 1


def test_a_request_increments_the_request_counters(client):
    before = scrape(client)
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "alpha",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3,
            "ignore_eos": True,
        },
    )
    assert response.status_code == 200, response.text
    after = scrape(client)

    def delta(family: str, sample: str, **labels: str) -> float:
        return value(after, family, sample, **labels) - value(before, family, sample, **labels)

    assert delta("specialize_requests", "specialize_requests_total", model="alpha", status="200") == 1
    assert delta("specialize_completion_tokens", "specialize_completion_tokens_total", model="alpha") == 3
    http = {"method": "POST", "route": "/v1/chat/completions", "status": "200"}
    assert delta("specialize_http_requests", "specialize_http_requests_total", **http) == 1
    latency = "specialize_request_latency_seconds"
    assert delta(latency, latency + "_count") == 1
    assert delta("specialize_decode_steps", "specialize_decode_steps_total") >= 1


class NoAdapters:
    loads = evictions = 0
    load_seconds = 0.0

    def __len__(self) -> int:
        return 0


def test_each_server_counts_in_its_own_registry():
    """Two servers in one process (as in these tests) must not share or clash over series."""
    engine = SimpleNamespace(queue_depth=0, running=0, steps=0, step_rows=0)
    first, second = (ServerMetrics(engine, NoAdapters(), lambda: 0) for _ in range(2))
    first.request("alpha", 200, None)
    counts = [
        value(
            {f.name: f for f in text_string_to_metric_families(m.exposition().decode())},
            "specialize_requests",
            "specialize_requests_total",
            model="alpha",
            status="200",
        )
        for m in (first, second)
    ]
    assert counts == [1, 0]
