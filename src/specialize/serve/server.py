"""Request handling behind the HTTP routes: one base model, its batching engine, the adapters
requests may name, the request log and the metrics.

`ModelServer` turns a validated OpenAI request into an engine submission and the engine's result
into OpenAI's response, and owns everything that outlives one request. It knows nothing of
routing or middleware (see `app.py`), nor of the drift monitor, which sits in a layer above
serving: the drift report is computed by a `DriftProvider` that the caller passes in.

Slightly over 500 lines: request handling from admission to streamed reply; the token budget
(serve/budget.py), logprobs and abstention (serve/logprobs.py) and the engine are apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fastapi.responses import JSONResponse, StreamingResponse

from specialize.batching.adapters import ResidentAdapters
from specialize.batching.engine import Engine
from specialize.batching.requests import Completion, EngineStopped, QueueFull, RequestHandle
from specialize.constrain import NONE, OutputContract, contract_from_response_format
from specialize.errors import ConstraintError, DataError, RunError, SpecializeError
from specialize.models.chat import render_prompt
from specialize.models.load import inference_dtype, load_model
from specialize.models.registry import weights_fingerprint
from specialize.registry.errors import AdapterNotFoundError, IncompatibleAdapterError
from specialize.registry.store import AdapterRecord, AdapterRegistry, check_compatible, check_name
from specialize.serve.budget import sampling_params
from specialize.serve.errors import APIError, error_body
from specialize.serve.logprobs import Annotation, Annotator
from specialize.serve.metrics import ServerMetrics
from specialize.serve.options import ServeOptions, default_request_log_path
from specialize.serve.protocol import (
    SSE_END,
    ChatCompletionRequest,
    CompletionRequest,
    LoadAdapterRequest,
    Reply,
    SamplingBody,
    finish_reason,
    sse,
)
from specialize.serve.request_log import RequestLog

log = logging.getLogger(__name__)

CONSTRAINT_HEADER = "x-specialize-constraint"


class DriftProvider(Protocol):
    """Computes an adapter's drift report: `(run_dir, request_log_path, adapter_name, window,
    tokenizer=...)` to JSON-ready data, as `specialize.monitor.drift.drift_for_adapter` does.
    It may raise `RunError` (no training profile) or `DataError` (the log cannot be read)."""

    def __call__(
        self, run_dir: Path, log_path: Path, adapter: str, window: int, /, *, tokenizer: Any
    ) -> dict[str, Any]: ...


@dataclass
class _Context:
    """What one completion request needs for its response, metrics and log row."""

    endpoint: str
    adapter: AdapterRecord | None
    prompt_log: str
    prompt_tokens: int
    arrived: float
    reply: Reply
    constraint: str = "none"  # the kind of output contract applied
    annotation: Annotation | None = None  # logprobs, label distribution, abstention

    @property
    def model(self) -> str:
        return self.reply.model

    @property
    def headers(self) -> dict[str, str]:
        return {CONSTRAINT_HEADER: self.constraint}


class ModelServer:
    """The base model, its engine, the served adapters, metrics and the request log."""

    def __init__(self, options: ServeOptions, loaded: Any = None, *, drift: DriftProvider | None = None):
        import torch

        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        self.loaded = (
            loaded if loaded is not None else load_model(options.model, dtype=inference_dtype(options.dtype))
        )
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
            prefill_chunk=options.prefill_chunk,
        )
        self.served: dict[str, AdapterRecord] = {}  # name -> its current version
        self._versions: dict[str, AdapterRecord] = {}  # "NAME@vN" -> that version, once asked for
        self._stamp = self._registry_stamp()
        self.skipped: list[str] = []
        self._adapter_contracts: dict[str, OutputContract] = {}  # by AdapterRecord.key
        self.annotator = Annotator(self.tokenizer, sorted(self.engine.eos_ids), self.options)
        self._select_adapters(options.adapters)
        self.metrics = ServerMetrics(self.engine, self.resident, lambda: len(self.served))
        self.request_log = None
        if options.request_log:
            path = options.request_log_path or default_request_log_path()
            self.request_log = RequestLog(path, store_text=options.log_text)
        self._drift = drift
        self.started = int(time.time())

    def _select_adapters(self, names: list[str] | None) -> None:
        if names is None:
            for record in self.registry.current_all():
                try:
                    self._check_servable(record)
                except SpecializeError as exc:
                    self.skipped.append(record.name)
                    log.warning("not serving adapter %s: %s", record.name, exc)
                    continue
                self.served[record.name] = record
        else:
            for name in names:
                record = self.registry.current(check_name(name))
                self._check_servable(record)
                self.served[record.name] = record
        for record in self.served.values():
            if record.contract_off_reason:
                log.warning(
                    "adapter %s: not applying its output contract by default: %s",
                    record.name,
                    record.contract_off_reason,
                )

    def contracts_off(self) -> dict[str, str]:
        """Served adapters whose recorded output contract is off by default, with the reason."""
        return {n: r.contract_off_reason for n, r in self.served.items() if r.contract_off_reason}

    def _check_servable(self, record: AdapterRecord) -> None:
        check_compatible(record, self.base_fingerprint, self.base_id)
        if record.name in self.base_aliases:
            raise IncompatibleAdapterError(f"adapter name '{record.name}' is the base model's id; rename it")

    async def drift(self, name: str, window: int) -> dict[str, Any]:
        """The drift report of an adapter's recent traffic against its run's training profile
        (the same checks as `specialize drift`), computed off the event loop."""
        if self._drift is None:
            raise APIError(
                501,
                "drift reports are not available on this server: it was started without a drift "
                "provider (`specialize serve` has one; `create_app(..., drift=...)` takes one)",
                code="not_implemented",
            )
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
                self._drift,
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

    def _registry_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.registry.stamp_path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def follow_registry(self) -> None:
        """Serve each name's current version: when `adapters promote` / `rollback` (or `retrain`)
        switched one, the registry's stamp file changed, and the pointer is read again. Called at
        request admission; a stat when nothing changed. Requests admitted before hold their own
        record (and its pinned adapter slot), so they finish on the version they started on."""
        stamp = self._registry_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        for name, served in list(self.served.items()):
            try:
                record = self.registry.current(name)
                self._check_servable(record)
            except SpecializeError as exc:
                log.warning("adapter %s: keeping v%d: %s", name, served.version, exc)
                continue
            if record.key != served.key:
                self.served[name] = record
                log.info("adapter %s: now serving v%d (was v%d)", name, record.version, served.version)

    def resolve(self, model: str) -> AdapterRecord | None:
        """The served adapter a request's `model` names (`NAME`: its current version, `NAME@vN`:
        that version); None for the base model."""
        if model in self.base_aliases:
            return None
        self.follow_registry()
        name, _, version = model.rpartition("@v")
        record = self.served.get(model)
        if record is None and name in self.served and version.isdigit():
            record = self._version(name, int(version))
        if record is None:
            known = ", ".join([self.base_id, *sorted(self.served)][:20])
            raise APIError(
                404,
                f"The model '{model}' does not exist on this server; available: {known}",
                param="model",
                code="model_not_found",
            )
        return record

    def _version(self, name: str, version: int) -> AdapterRecord | None:
        key = f"{name}@v{version}"
        if key not in self._versions:
            try:
                record = self.registry.get(name, version)
                self._check_servable(record)
            except AdapterNotFoundError:
                return None
            except SpecializeError as exc:
                raise APIError(400, str(exc), param="model", code="invalid_adapter") from None
            self._versions[key] = record
        return self._versions[key]

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
            "output_contract": (record.default_contract or {}).get("kind", "none"),
            **({"output_contract_off": record.contract_off_reason} if record.contract_off_reason else {}),
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
        reply = Reply(
            chat=endpoint == "chat.completions",
            id=f"{prefix}-{uuid.uuid4().hex[:24]}",
            created=int(arrived),
            model=body.model,
            system_fingerprint=f"fp_{self.base_fingerprint[:12]}",
            include_usage=body.include_usage,
        )
        ctx = _Context(endpoint, adapter, prompt_log, len(ids), arrived, reply)
        try:
            params = sampling_params(
                body,
                len(ids),
                max_tokens,
                default_max,
                param,
                limit=self.options,
                max_model_len=self.max_model_len,
            )
            contract = self._contract(body, adapter)
            if contract.kind != "none":
                # Compiling (the tokenizer's table once, then each new contract) is off the event loop.
                constraint = await asyncio.to_thread(self._compile, contract, body.response_format is None)
                params = dataclasses.replace(params, constraint=constraint)
            ctx.constraint = contract.kind
            params, ctx.annotation = self.annotator.annotate(body, adapter, contract, params)
        except APIError as exc:
            self._record(ctx, exc.status, None)
            raise
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_event(event: tuple[str, Any]) -> None:
            if body.stream or event[0] in ("done", "error"):
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
        content, logprobs, extra = ctx.annotation.finish(payload) if ctx.annotation else (None, None, None)
        return JSONResponse(
            reply.response(payload, content=content, logprobs=logprobs, extra=extra), headers=ctx.headers
        )

    def _contract(self, body: SamplingBody, adapter: AdapterRecord | None) -> OutputContract:
        """The request's response_format if it has one, else the adapter's default contract: the
        run's recorded one, unless its evaluation found it harmful (`contract_off_reason`)."""
        if body.response_format is not None:
            try:
                return contract_from_response_format(body.response_format)
            except ConstraintError as exc:
                raise APIError(400, str(exc), param="response_format", code="invalid_value") from None
        if adapter is None or not adapter.default_contract:
            return NONE
        contract = self._adapter_contracts.get(adapter.key)
        if contract is None:
            try:
                contract = OutputContract.from_dict(adapter.default_contract)
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

    async def _stream(self, ctx: _Context, handle: RequestHandle, events: asyncio.Queue):
        reply = ctx.reply
        ann = ctx.annotation
        finished = False
        pending = None  # the logprobs of the next delta's tokens
        try:
            if reply.chat:
                yield reply.chunk(None, None, first=True)
            while True:
                kind, payload = await events.get()
                if kind == "logprobs":
                    pending = payload
                elif kind == "delta":
                    if ann is None:
                        yield reply.chunk(payload, None)
                    elif not ann.holds_text:
                        yield reply.chunk(payload, None, logprobs=ann.logprobs(pending, payload))
                    pending = None
                elif kind == "done":
                    finished = True
                    self._record(ctx, 200, payload)
                    if ann is None:
                        yield reply.chunk(None, finish_reason(payload))
                    else:
                        content, logprobs, extra = ann.finish(payload)
                        if ann.holds_text:
                            yield reply.chunk(content, None, logprobs=logprobs)
                            logprobs = None
                        yield reply.chunk(None, finish_reason(payload), logprobs=logprobs, extra=extra)
                    if reply.include_usage:
                        yield reply.usage_chunk(payload)
                    yield SSE_END
                    return
                else:
                    finished = True
                    self._record(ctx, 500, None)
                    yield sse(error_body(f"generation failed: {payload}", "server_error"))
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
