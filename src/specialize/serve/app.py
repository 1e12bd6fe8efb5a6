"""The OpenAI-compatible HTTP API over the engine: one base model, many adapters.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (optionally streamed as server-sent
events in OpenAI's chunk format), `GET /v1/models`, `POST /v1/adapters` and
`DELETE /v1/adapters/{name}` (load and unload registry adapters while serving), `GET /health`,
`GET /metrics` (Prometheus text). Every error is OpenAI's JSON,
`{"error": {"message", "type", "param", "code"}}`, with the matching status, so the official
`openai` client raises its usual exceptions.

A request's `model` is the base model's id (e.g. `smollm2-135m-instruct`) or an adapter name.
Adapters come only from the registry, never from a path in a request, and only when they were
trained on exactly the served base weights.

Guaranteed output formats: both completion routes take OpenAI's `response_format`
({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name", "schema"}}, {"type": "text"}).
A request to an adapter whose run recorded an output contract (a label set, a JSON schema) is
decoded under that contract unless its `response_format` says otherwise ({"type": "text"} turns it
off); the base model has no contract of its own. The contract applied is named in the response
header `x-specialize-constraint` (labels, json_schema, json_object or none).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from specialize.constrain import NONE, OutputContract, contract_from_response_format
from specialize.errors import ConstraintError, SpecializeError
from specialize.models.bundled import DEFAULT_MODEL
from specialize.models.chat import render_prompt
from specialize.registry.store import (
    AdapterNotFoundError,
    AdapterRecord,
    AdapterRegistry,
    IncompatibleAdapterError,
    check_compatible,
    check_name,
    data_home,
)
from specialize.serve.engine import (
    Completion,
    Engine,
    EngineStopped,
    QueueFull,
    RequestHandle,
    SamplingParams,
)

log = logging.getLogger(__name__)


class ServeOptions(BaseModel):
    """Everything `specialize serve` can be told; field docs double as `--help` text."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_MODEL, description="Base model: bundled alias, HF dir, .gguf or cached hub id."
    )
    dtype: str = Field("auto", description="auto, f32, f16 or bf16.")
    registry: Path | None = Field(
        None, description="Adapter registry directory (default: the user registry)."
    )
    adapters: list[str] | None = Field(None, description="Adapters to serve; default: every compatible one.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[str] = Field(default_factory=list, description="Accepted bearer tokens; empty = no auth.")
    max_batch: int = Field(16, ge=1, description="Requests decoded together in one forward pass.")
    max_queue: int = Field(64, ge=1, description="Waiting requests beyond the batch; more get 503.")
    max_resident_adapters: int = Field(32, ge=1, description="Adapters kept in memory (LRU).")
    max_lora_rank: int = Field(64, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_prompt_tokens: int = Field(2048, ge=1)
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of chat requests that give none.")
    max_model_len: int | None = Field(
        None, ge=2, description="Prompt + completion limit; default: the model's."
    )
    request_log: bool = Field(True, description="Log every request to SQLite (for drift monitoring).")
    request_log_path: Path | None = Field(None, description="Default: $SPECIALIZE_HOME/requests.sqlite.")
    log_text: bool = Field(True, description="Keep prompt and completion text; False keeps only hashes.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores.")


def default_request_log_path() -> Path:
    return data_home() / "requests.sqlite"


# Request bodies ------------------------------------------------------------------------------


class _Lenient(BaseModel):
    # OpenAI clients send fields we may not know; unsupported ones that change results are refused.
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def as_dict(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                raise APIError(400, "only text content parts are supported", param="messages")
            content = "".join(part.text or "" for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(_Lenient):
    include_usage: bool = False


class _SamplingBody(_Lenient):
    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens
    user: str | None = None
    # OpenAI's {"type": "text" | "json_object" | "json_schema", ...}; parsed (with clear messages)
    # by specialize.constrain.contract_from_response_format, hence Any. None: the adapter's default.
    response_format: Any = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.n != 1:
            return "n", "n > 1 is not supported; send separate requests"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty", "presence and frequency penalties are not supported"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        if isinstance(self.stop, list) and len(self.stop) > 16:
            return "stop", "at most 16 stop sequences"
        return None

    def stop_list(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)


class ChatCompletionRequest(_SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    tools: list[Any] | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if self.tools:
            return "tools", "tool calling is not supported"
        return super().unsupported()


class CompletionRequest(_SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported"
        if self.best_of not in (None, 1):
            return "best_of", "best_of is not supported"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        return super().unsupported()


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a `path` key must fail loudly, not be ignored
    name: str
    version: int | None = Field(None, ge=1)


# Errors --------------------------------------------------------------------------------------


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(
            error_body(self.message, self.type, self.param, self.code), self.status, self.headers
        )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# Metrics -------------------------------------------------------------------------------------

_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.count}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {self.count}",
        ]
        return out


class Metrics:
    """Prometheus counters and histograms, rendered by hand (no client library needed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.http: dict[tuple[str, str, str], int] = {}
        self.model_requests: dict[tuple[str, str], int] = {}
        self.prompt_tokens: dict[str, int] = {}
        self.completion_tokens: dict[str, int] = {}
        self.latency = _Histogram(_LATENCY_BUCKETS)
        self.first_token = _Histogram(_LATENCY_BUCKETS)
        self.queue_wait = _Histogram(_LATENCY_BUCKETS)

    def http_response(self, method: str, route: str, status: int) -> None:
        with self._lock:
            key = (method, route, str(status))
            self.http[key] = self.http.get(key, 0) + 1

    def request(self, model: str, status: int, done: Completion | None) -> None:
        with self._lock:
            key = (model, str(status))
            self.model_requests[key] = self.model_requests.get(key, 0) + 1
            if done is None:
                return
            self.prompt_tokens[model] = self.prompt_tokens.get(model, 0) + done.prompt_tokens
            self.completion_tokens[model] = self.completion_tokens.get(model, 0) + done.completion_tokens
            self.latency.observe(done.total_seconds)
            self.queue_wait.observe(done.queued_seconds)
            if done.first_token_seconds is not None:
                self.first_token.observe(done.first_token_seconds)

    def render(self, server: ModelServer) -> str:
        engine, resident = server.engine, server.resident
        out: list[str] = []

        def family(name: str, kind: str, help: str, samples: list[str]) -> None:
            out.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *samples])

        with self._lock:
            family(
                "specialize_http_requests_total",
                "counter",
                "HTTP responses by method, route and status.",
                [
                    f"specialize_http_requests_total{_labels(method=m, route=r, status=s)} {v}"
                    for (m, r, s), v in sorted(self.http.items())
                ],
            )
            family(
                "specialize_requests_total",
                "counter",
                "Completion requests by model and status.",
                [
                    f"specialize_requests_total{_labels(model=m, status=s)} {v}"
                    for (m, s), v in sorted(self.model_requests.items())
                ],
            )
            family(
                "specialize_prompt_tokens_total",
                "counter",
                "Prompt tokens processed, by model.",
                [
                    f"specialize_prompt_tokens_total{_labels(model=m)} {v}"
                    for m, v in sorted(self.prompt_tokens.items())
                ],
            )
            family(
                "specialize_completion_tokens_total",
                "counter",
                "Tokens generated, by model.",
                [
                    f"specialize_completion_tokens_total{_labels(model=m)} {v}"
                    for m, v in sorted(self.completion_tokens.items())
                ],
            )
            family(
                "specialize_request_latency_seconds",
                "histogram",
                "Arrival to last token.",
                self.latency.lines("specialize_request_latency_seconds"),
            )
            family(
                "specialize_time_to_first_token_seconds",
                "histogram",
                "Arrival to first token.",
                self.first_token.lines("specialize_time_to_first_token_seconds"),
            )
            family(
                "specialize_queue_wait_seconds",
                "histogram",
                "Arrival to admission into the batch.",
                self.queue_wait.lines("specialize_queue_wait_seconds"),
            )
        family(
            "specialize_queue_depth",
            "gauge",
            "Requests waiting for a place in the batch.",
            [f"specialize_queue_depth {engine.queue_depth}"],
        )
        family(
            "specialize_running_requests",
            "gauge",
            "Requests in the running batch.",
            [f"specialize_running_requests {engine.running}"],
        )
        family(
            "specialize_resident_adapters",
            "gauge",
            "Adapters loaded in memory.",
            [f"specialize_resident_adapters {len(resident)}"],
        )
        family(
            "specialize_served_adapters",
            "gauge",
            "Adapters requests may name.",
            [f"specialize_served_adapters {len(server.served)}"],
        )
        family(
            "specialize_adapter_loads_total",
            "counter",
            "Adapter loads from the registry.",
            [f"specialize_adapter_loads_total {resident.loads}"],
        )
        family(
            "specialize_adapter_evictions_total",
            "counter",
            "Adapters evicted from memory.",
            [f"specialize_adapter_evictions_total {resident.evictions}"],
        )
        family(
            "specialize_adapter_load_seconds_total",
            "counter",
            "Time spent loading adapters.",
            [f"specialize_adapter_load_seconds_total {resident.load_seconds:.6f}"],
        )
        family(
            "specialize_decode_steps_total",
            "counter",
            "Batched decode steps.",
            [f"specialize_decode_steps_total {engine.steps}"],
        )
        family(
            "specialize_decode_rows_total",
            "counter",
            "Rows over all decode steps (/ steps = mean batch).",
            [f"specialize_decode_rows_total {engine.step_rows}"],
        )
        return "\n".join(out) + "\n"


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items()) + "}"


# The server state ----------------------------------------------------------------------------

CONSTRAINT_HEADER = "x-specialize-constraint"


@dataclass
class _Context:
    """What one completion request needs for its response, metrics and log row."""

    endpoint: str
    model: str
    adapter: AdapterRecord | None
    prompt_log: str
    prompt_tokens: int
    arrived: float
    rid: str
    created: int
    include_usage: bool = False
    constraint: str = "none"  # the kind of output contract applied

    @property
    def headers(self) -> dict[str, str]:
        return {CONSTRAINT_HEADER: self.constraint}


class ModelServer:
    """The base model, its engine, the served adapters, metrics and the request log."""

    def __init__(self, options: ServeOptions, loaded: Any = None):
        import torch

        from specialize.models.load import load_model
        from specialize.models.registry import weights_fingerprint
        from specialize.serve.adapters import ResidentAdapters

        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        self.loaded = loaded if loaded is not None else load_model(options.model, dtype=options.dtype)
        self.tokenizer = self.loaded.tokenizer
        self.base_id = self.loaded.ref.model_id
        self.base_aliases = {self.base_id, self.loaded.ref.ref}
        self.base_fingerprint = weights_fingerprint(self.loaded.ref)
        model = self.loaded.model
        self.max_model_len = options.max_model_len or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self.registry = AdapterRegistry(options.registry)
        self.resident = ResidentAdapters(
            model, capacity=options.max_resident_adapters, max_rank=options.max_lora_rank
        )
        self.engine = Engine(
            model,
            self.tokenizer,
            adapters=self.resident,
            max_batch=options.max_batch,
            max_queue=options.max_queue,
        )
        self.served: dict[str, AdapterRecord] = {}
        self.skipped: list[str] = []
        self._adapter_contracts: dict[str, OutputContract] = {}  # by AdapterRecord.key
        self._select_adapters(options.adapters)
        self.metrics = Metrics()
        self.request_log = None
        if options.request_log:
            from specialize.serve.request_log import RequestLog

            path = options.request_log_path or default_request_log_path()
            self.request_log = RequestLog(path, store_text=options.log_text)
        self.started = int(time.time())

    def _select_adapters(self, names: list[str] | None) -> None:
        if names is None:
            for record in self.registry.list():
                try:
                    self._check_servable(record)
                except SpecializeError as exc:
                    self.skipped.append(record.name)
                    log.warning("not serving adapter %s: %s", record.name, exc)
                    continue
                self.served[record.name] = record
            return
        for name in names:
            record = self.registry.get(check_name(name))
            self._check_servable(record)
            self.served[record.name] = record

    def _check_servable(self, record: AdapterRecord) -> None:
        check_compatible(record, self.base_fingerprint, self.base_id)
        if record.name in self.base_aliases:
            raise IncompatibleAdapterError(f"adapter name '{record.name}' is the base model's id; rename it")

    async def drift(self, name: str, window: int) -> dict[str, Any]:
        """The drift report of an adapter's recent traffic against its run's training profile
        (the same checks as `specialize drift`), computed off the event loop."""
        from specialize.errors import DataError, RunError
        from specialize.monitor.drift import drift_for_adapter

        record = self.resolve(name)
        if record is None:
            raise APIError(
                400, "drift is measured per adapter; the base model has no training profile", param="name"
            )
        if not 1 <= window <= 10_000:
            raise APIError(400, "window must be between 1 and 10000 requests", param="window")
        if self.request_log is None:
            raise APIError(503, "the request log is off on this server (started with --no-request-log)")
        self.request_log.flush()
        try:
            return await asyncio.to_thread(
                drift_for_adapter,
                Path(record.source),
                self.request_log.path,
                name,
                window,
                tokenizer=self.tokenizer,
            )
        except RunError as exc:
            raise APIError(
                404, f"no training profile for adapter '{name}': {exc}", code="profile_not_found"
            ) from None
        except DataError as exc:
            raise APIError(503, str(exc)) from None

    def resolve(self, model: str) -> AdapterRecord | None:
        if model in self.base_aliases:
            return None
        record = self.served.get(model)
        if record is None:
            known = ", ".join([self.base_id, *sorted(self.served)][:20])
            raise APIError(
                404,
                f"The model '{model}' does not exist on this server; available: {known}",
                param="model",
                code="model_not_found",
            )
        return record

    def model_card(self, record: AdapterRecord | None) -> dict[str, Any]:
        if record is None:
            return {
                "id": self.base_id,
                "object": "model",
                "created": self.started,
                "owned_by": "specialize",
                "root": self.base_id,
                "parent": None,
                "output_contract": "none",
            }
        return {
            "id": record.name,
            "object": "model",
            "created": int(record.created),
            "owned_by": "specialize",
            "root": self.base_id,
            "parent": self.base_id,
            "version": record.version,
            "eval_headline": record.eval_headline,
            # What the adapter replies by default: labels, json_schema or none (free text).
            "output_contract": (record.output_contract or {}).get("kind", "none"),
        }

    # Adapters, while serving ---------------------------------------------------------------

    async def load_adapter(self, body: LoadAdapterRequest) -> dict[str, Any]:
        try:
            check_name(body.name)
            record = self.registry.get(body.name, body.version)
            self._check_servable(record)
        except AdapterNotFoundError as exc:
            raise APIError(404, str(exc), param="name", code="adapter_not_found") from None
        except SpecializeError as exc:
            raise APIError(400, str(exc), param="name", code="invalid_adapter") from None
        try:
            resident = await asyncio.wrap_future(self.engine.call(lambda: self.resident.warm(record)))
        except SpecializeError as exc:
            raise APIError(400, str(exc), param="name", code="invalid_adapter") from None
        previous = self.served.get(record.name)
        self.served[record.name] = record
        if previous is not None and previous.key != record.key:
            self.engine.call(lambda: self.resident.unload(previous.key))
        return {**self.model_card(record), "resident": resident}

    async def unload_adapter(self, name: str) -> dict[str, Any]:
        record = self.served.pop(name, None)
        if record is None:
            raise APIError(404, f"no adapter '{name}' is being served", param="name", code="model_not_found")
        await asyncio.wrap_future(self.engine.call(lambda: self.resident.unload(record.key)))
        return {"id": name, "object": "model", "deleted": True}

    # Completions ---------------------------------------------------------------------------

    async def complete(self, body: ChatCompletionRequest | CompletionRequest) -> Any:
        arrived = time.time()
        adapter = self.resolve(body.model)
        problem = body.unsupported()
        if problem is not None:
            raise APIError(400, problem[1], param=problem[0], code="unsupported_parameter")
        if isinstance(body, ChatCompletionRequest):
            endpoint, prefix = "chat.completions", "chatcmpl"
            messages = [m.as_dict() for m in body.messages]
            prompt_log = json.dumps(messages, ensure_ascii=False)
            ids = self.tokenizer(render_prompt(self.tokenizer, messages), add_special_tokens=False)[
                "input_ids"
            ]
            max_tokens = body.max_completion_tokens or body.max_tokens
            default_max = self.options.default_max_tokens
            param = "messages"
        else:
            endpoint, prefix, param = "completions", "cmpl", "prompt"
            prompt_log, ids = self._completion_prompt(body.prompt)
            max_tokens, default_max = body.max_tokens, 16  # OpenAI's default for completions
        ctx = _Context(
            endpoint,
            body.model,
            adapter,
            prompt_log,
            len(ids),
            arrived,
            f"{prefix}-{uuid.uuid4().hex[:24]}",
            int(arrived),
            bool(body.stream and body.stream_options and body.stream_options.include_usage),
        )
        try:
            params = self._sampling(body, len(ids), max_tokens, default_max, param)
            contract = self._contract(body, adapter)
            if contract.kind != "none":
                # Compiling (the tokenizer's table once, then each new contract) is off the event loop.
                constraint = await asyncio.to_thread(self._compile, contract, body.response_format is None)
                params = dataclasses.replace(params, constraint=constraint)
            ctx.constraint = contract.kind
        except APIError as exc:
            self._record(ctx, exc.status, None)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event: tuple[str, Any]) -> None:
            if body.stream or event[0] != "delta":
                loop.call_soon_threadsafe(events.put_nowait, event)

        try:
            handle = self.engine.submit(ids, params, adapter, on_event)
        except QueueFull as exc:
            self._record(ctx, 503, None)
            raise APIError(
                503, f"the server is busy: {exc}", code="queue_full", headers={"Retry-After": "1"}
            ) from None
        except EngineStopped as exc:
            self._record(ctx, 503, None)
            raise APIError(503, str(exc), code="shutting_down") from None
        if body.stream:
            return StreamingResponse(
                self._stream(ctx, handle, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **ctx.headers},
            )
        try:
            kind, payload = await events.get()
        except asyncio.CancelledError:
            handle.cancel()
            raise
        if kind == "error":
            self._record(ctx, 500, None)
            raise APIError(500, f"generation failed: {payload}")
        self._record(ctx, 200, payload)
        return JSONResponse(self._response(ctx, payload), headers=ctx.headers)

    def _contract(self, body: _SamplingBody, adapter: AdapterRecord | None) -> OutputContract:
        """The request's response_format if it has one, else the adapter's recorded contract."""
        if body.response_format is not None:
            try:
                return contract_from_response_format(body.response_format)
            except ConstraintError as exc:
                raise APIError(400, str(exc), param="response_format", code="invalid_value") from None
        if adapter is None or not adapter.output_contract:
            return NONE
        contract = self._adapter_contracts.get(adapter.key)
        if contract is None:
            try:
                contract = OutputContract.from_dict(adapter.output_contract)
            except ConstraintError as exc:  # the registry validated it when the adapter was added
                raise APIError(
                    500, f"adapter '{adapter.name}' has an invalid output contract: {exc}"
                ) from None
            self._adapter_contracts[adapter.key] = contract
        return contract

    def _compile(self, contract: OutputContract, from_adapter: bool) -> Any:
        try:
            return self.engine.compile(contract)
        except ConstraintError as exc:
            if from_adapter:
                raise APIError(
                    500,
                    f"the adapter's output contract cannot be enforced on this model: {exc}; send "
                    'response_format {"type": "text"} for free text',
                ) from None
            raise APIError(400, str(exc), param="response_format", code="invalid_value") from None

    def _completion_prompt(
        self, prompt: str | list[str] | list[int] | list[list[int]]
    ) -> tuple[str, list[int]]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, self.tokenizer(prompt)["input_ids"]
        if prompt and all(isinstance(t, int) for t in prompt):
            vocab = len(self.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):  # type: ignore[operator]
                raise APIError(400, f"token ids must be in [0, {vocab})", param="prompt")
            ids = list(prompt)  # type: ignore[arg-type]
            return self.tokenizer.decode(ids), ids
        raise APIError(400, "send one prompt (a string or a list of token ids) per request", param="prompt")

    def _sampling(
        self, body: _SamplingBody, n_prompt: int, max_tokens: int | None, default_max: int, param: str
    ) -> SamplingParams:
        limit = self.options
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty", param=param)
        if n_prompt > limit.max_prompt_tokens:
            raise APIError(
                400,
                f"the prompt has {n_prompt} tokens; this server accepts at most {limit.max_prompt_tokens}",
                param=param,
                code="context_length_exceeded",
            )
        room = self.max_model_len - n_prompt
        if room < 1:
            raise APIError(
                400,
                f"the prompt has {n_prompt} tokens; the model's context is {self.max_model_len}",
                param=param,
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > limit.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {max_tokens}; this server allows at most {limit.max_tokens_limit}",
                param="max_tokens",
                code="invalid_value",
            )
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                400,
                f"this model's context is {self.max_model_len} tokens: the prompt has {n_prompt} and "
                f"max_tokens asks for {max_tokens}; reduce the prompt or max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return SamplingParams(
            max_tokens=max_tokens or min(default_max, room, limit.max_tokens_limit),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            stop=body.stop_list(),
            seed=body.seed,
            ignore_eos=body.ignore_eos,
        )

    def _response(self, ctx: _Context, done: Completion) -> dict[str, Any]:
        usage = _usage(done)
        if ctx.endpoint == "chat.completions":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "finish_reason": _finish(done),
                "logprobs": None,
            }
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": done.text, "finish_reason": _finish(done), "logprobs": None}
            kind = "text_completion"
        return {
            "id": ctx.rid,
            "object": kind,
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": f"fp_{self.base_fingerprint[:12]}",
            "choices": [choice],
            "usage": usage,
        }

    async def _stream(self, ctx: _Context, handle: RequestHandle, events: asyncio.Queue):
        chat = ctx.endpoint == "chat.completions"
        kind = "chat.completion.chunk" if chat else "text_completion"
        head = {
            "id": ctx.rid,
            "object": kind,
            "created": ctx.created,
            "model": ctx.model,
            "system_fingerprint": f"fp_{self.base_fingerprint[:12]}",
        }

        def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
            if chat:
                delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
                if text:
                    delta["content"] = text
                choice: dict[str, Any] = {
                    "index": 0,
                    "delta": delta,
                    "finish_reason": finish,
                    "logprobs": None,
                }
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            body = {**head, "choices": [choice]}
            if ctx.include_usage:
                body["usage"] = None
            return _sse(body)

        finished = False
        try:
            if chat:
                yield chunk(None, None, first=True)
            while True:
                kind_, payload = await events.get()
                if kind_ == "delta":
                    yield chunk(payload, None)
                elif kind_ == "done":
                    finished = True
                    self._record(ctx, 200, payload)
                    yield chunk(None, _finish(payload))
                    if ctx.include_usage:
                        yield _sse({**head, "choices": [], "usage": _usage(payload)})
                    yield "data: [DONE]\n\n"
                    return
                else:
                    finished = True
                    self._record(ctx, 500, None)
                    yield _sse(error_body(f"generation failed: {payload}", "server_error"))
                    return
        finally:
            if not finished:  # the client went away: free the batch row
                handle.cancel()
                self._record(ctx, 499, None)

    def _record(self, ctx: _Context, status: int, done: Completion | None) -> None:
        self.metrics.request(ctx.model, status, done)
        if self.request_log is None:
            return
        adapter = ctx.adapter
        self.request_log.record(
            ts=ctx.arrived,
            model=ctx.model,
            adapter=adapter.name if adapter else None,
            adapter_version=adapter.version if adapter else None,
            endpoint=ctx.endpoint,
            prompt=ctx.prompt_log,
            completion=done.text if done else None,
            prompt_tokens=ctx.prompt_tokens,
            completion_tokens=done.completion_tokens if done else None,
            latency_ms=(time.time() - ctx.arrived) * 1000.0,
            finish_reason=done.finish_reason if done else ("cancelled" if status == 499 else "error"),
            status=status,
        )

    def close(self) -> None:
        self.engine.stop(drain=True, timeout=300)
        if self.request_log is not None:
            self.request_log.close()


def _finish(done: Completion) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


# ASGI gate: metrics of every response, API keys, body size ----------------------------------

_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/adapters", "/health", "/metrics")


class _Gate:
    """Counts every response, checks the API key (all routes but /health) and caps body size."""

    def __init__(self, app: Any, server: ModelServer):
        self.app = app
        self.server = server
        self.keys = [k for k in server.options.api_keys if k]
        self.limit = server.options.max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = next((r for r in _ROUTES if path == r or path.startswith(r + "/")), "other")
        status_seen = 0

        async def counting_send(message: dict[str, Any]) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
            await send(message)

        try:
            if self.keys and path != "/health" and not self._authorized(scope):
                await _send_error(
                    counting_send,
                    401,
                    "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                    "invalid_request_error",
                    "invalid_api_key",
                )
                return
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                body = await self._read_body(scope, receive)
                if body is None:
                    await _send_error(
                        counting_send,
                        413,
                        f"the request body exceeds {self.limit} bytes",
                        "invalid_request_error",
                        "request_too_large",
                    )
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, counting_send)
        finally:
            if status_seen:
                self.server.metrics.http_response(scope.get("method", ""), route, status_seen)

    def _authorized(self, scope: dict[str, Any]) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in self.keys)

    async def _read_body(self, scope: dict[str, Any], receive: Any) -> bytes | None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: http.disconnect, which streaming responses watch for

    return replay


async def _send_error(send: Any, status: int, message: str, type: str, code: str) -> None:
    payload = json.dumps(error_body(message, type, None, code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


# The app -------------------------------------------------------------------------------------


def create_app(
    options: ServeOptions | None = None, *, loaded: Any = None, server: ModelServer | None = None
) -> FastAPI:
    """The FastAPI app. Loads the model (or takes `loaded`, a LoadedModel) before returning, so a
    bad model reference fails here rather than on the first request."""
    server = server or ModelServer(options or ServeOptions(), loaded=loaded)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.engine.start()
        try:
            yield
        finally:
            # uvicorn has already waited for in-flight HTTP requests; drain whatever is left.
            await asyncio.to_thread(server.close)

    app = FastAPI(title="specialize", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
            loc = []
        if first.get("type") == "extra_forbidden" and loc and loc[-1] in ("path", "lora_path", "source"):
            message = (
                "adapters are loaded only from the registry, never from a path; add it with "
                "`specialize adapters add NAME DIR` and load it by name"
            )
        return APIError(400, message, param=loc[0] if loc else None).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return APIError(
            exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None
        ).response()

    @app.get("/health")
    async def health() -> JSONResponse:
        engine = server.engine
        stopping = not engine.accepting
        body = {
            "status": "stopping" if stopping else "ok",
            "model": server.base_id,
            "adapters": len(server.served),
            "resident_adapters": len(server.resident),
            "queue_depth": engine.queue_depth,
            "running": engine.running,
        }
        return JSONResponse(body, status_code=503 if stopping else 200)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(server), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [server.model_card(None)] + [server.model_card(r) for _, r in sorted(server.served.items())]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        return server.model_card(server.resolve(model_id))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        return await server.complete(body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        return await server.complete(body)

    @app.post("/v1/adapters")
    async def load_adapter(body: LoadAdapterRequest) -> dict[str, Any]:
        return await server.load_adapter(body)

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        return await server.unload_adapter(name)

    @app.get("/v1/adapters/{name}/drift")
    async def adapter_drift(name: str, window: int = 500) -> dict[str, Any]:
        return await server.drift(name, window)

    app.add_middleware(_Gate, server=server)
    return app


def serve(options: ServeOptions | None = None, *, loaded: Any = None, ready: Any = None) -> None:
    """Load the model and serve until interrupted (Ctrl-C drains in-flight requests first).
    `ready(server)` is called once the model is loaded, before the port opens."""
    import uvicorn

    options = options or ServeOptions()
    server = ModelServer(options, loaded=loaded)
    app = create_app(server=server)
    if ready is not None:
        ready(server)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level="warning",
        timeout_graceful_shutdown=60,
        lifespan="on",
    )
    uvicorn.Server(config).run()
