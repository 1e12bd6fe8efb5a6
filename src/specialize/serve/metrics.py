"""The server's Prometheus metrics, on the official `prometheus-client`.

Each server owns its own `CollectorRegistry`, so that several apps in one process (tests,
benchmarks, an embedding program) keep separate counts instead of colliding in the library's
global registry. Two kinds of series:

- counted here, as requests finish: HTTP responses, completion requests, tokens, latencies;
- read at scrape time from the engine and the resident-adapter cache, which keep their own
  counters (the engine knows nothing of Prometheus); reading them when scraped keeps one source
  of truth instead of two tallies that could disagree.

The exposed names are the contract with dashboards and the README: counters end in `_total`
(the library appends it, so they are declared without it), histograms use `_LATENCY_BUCKETS`,
and no `_created` series are exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from specialize.batching.requests import Completion

# Seconds; from one fast token to a long generation on a busy CPU.
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class EngineCounters(Protocol):
    """What the metrics read from the batching engine at scrape time."""

    @property
    def queue_depth(self) -> int: ...
    @property
    def running(self) -> int: ...

    steps: int
    step_rows: int


class AdapterCounters(Protocol):
    """What the metrics read from the resident-adapter cache at scrape time."""

    loads: int
    evictions: int
    load_seconds: float

    def __len__(self) -> int: ...


class ServerMetrics:
    """Every series `GET /metrics` exposes, in one registry of its own."""

    def __init__(self, engine: EngineCounters, adapters: AdapterCounters, served: Callable[[], int]):
        # prometheus-client adds a `<name>_created` series to every counter and histogram unless
        # told not to. The switch is process-wide (the library has no per-registry one); it only
        # drops series that the Prometheus text format has no use for.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self._http = Counter(
            "specialize_http_requests",
            "HTTP responses by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._requests = Counter(
            "specialize_requests",
            "Completion requests by model and status.",
            ["model", "status"],
            registry=self.registry,
        )
        self._prompt_tokens = Counter(
            "specialize_prompt_tokens",
            "Prompt tokens processed, by model.",
            ["model"],
            registry=self.registry,
        )
        self._completion_tokens = Counter(
            "specialize_completion_tokens", "Tokens generated, by model.", ["model"], registry=self.registry
        )
        self._latency = Histogram(
            "specialize_request_latency_seconds",
            "Arrival to last token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._first_token = Histogram(
            "specialize_time_to_first_token_seconds",
            "Arrival to first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._queue_wait = Histogram(
            "specialize_queue_wait_seconds",
            "Arrival to admission into the batch.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine, adapters, served))

    def http_response(self, method: str, route: str, status: int) -> None:
        self._http.labels(method=method, route=route, status=str(status)).inc()

    def request(self, model: str, status: int, done: Completion | None) -> None:
        """A completion request ended with `status`; `done` when it generated (tokens, timings)."""
        self._requests.labels(model=model, status=str(status)).inc()
        if done is None:
            return
        self._prompt_tokens.labels(model=model).inc(done.prompt_tokens)
        self._completion_tokens.labels(model=model).inc(done.completion_tokens)
        self._latency.observe(done.total_seconds)
        self._queue_wait.observe(done.queued_seconds)
        if done.first_token_seconds is not None:
            self._first_token.observe(done.first_token_seconds)

    def exposition(self) -> bytes:
        """The Prometheus text format of every series (serve with `CONTENT_TYPE_LATEST`)."""
        return generate_latest(self.registry)


class _EngineCollector:
    """Gauges and counters owned by the engine and the adapter cache, read when scraped."""

    def __init__(self, engine: EngineCounters, adapters: AdapterCounters, served: Callable[[], int]):
        self.engine = engine
        self.adapters = adapters
        self.served = served

    def describe(self) -> Iterable[Metric]:
        # Lets the registry refuse a second collector with the same names.
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        engine, adapters = self.engine, self.adapters
        return [
            GaugeMetricFamily(
                "specialize_queue_depth", "Requests waiting for a place in the batch.", engine.queue_depth
            ),
            GaugeMetricFamily(
                "specialize_running_requests", "Requests in the running batch.", engine.running
            ),
            GaugeMetricFamily("specialize_resident_adapters", "Adapters loaded in memory.", len(adapters)),
            GaugeMetricFamily("specialize_served_adapters", "Adapters requests may name.", self.served()),
            CounterMetricFamily(
                "specialize_adapter_loads", "Adapter loads from the registry.", adapters.loads
            ),
            CounterMetricFamily(
                "specialize_adapter_evictions", "Adapters evicted from memory.", adapters.evictions
            ),
            CounterMetricFamily(
                "specialize_adapter_load_seconds", "Time spent loading adapters.", adapters.load_seconds
            ),
            CounterMetricFamily("specialize_decode_steps", "Batched decode steps.", engine.steps),
            CounterMetricFamily(
                "specialize_decode_rows",
                "Rows over all decode steps (/ steps = mean batch).",
                engine.step_rows,
            ),
        ]
