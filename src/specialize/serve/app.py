"""The OpenAI-compatible HTTP API over the engine: one base model, many adapters.

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (optionally streamed as server-sent
events in OpenAI's chunk format), `GET /v1/models`, `POST /v1/adapters` and
`DELETE /v1/adapters/{name}` (load and unload registry adapters while serving),
`GET /v1/adapters/{name}/drift` (when a drift provider is given), `GET /health`, `GET /metrics`
(Prometheus text). Every error is OpenAI's JSON, `{"error": {"message", "type", "param", "code"}}`,
with the matching status, so the official `openai` client raises its usual exceptions.

A request's `model` is the base model's id (e.g. `smollm2-135m-instruct`) or an adapter name.
Adapters come only from the registry, never from a path in a request, and only when they were
trained on exactly the served base weights.

Guaranteed output formats: both completion routes take OpenAI's `response_format`
({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name", "schema"}}, {"type": "text"}).
A request to an adapter whose run recorded an output contract (a label set, a JSON schema) is
decoded under that contract unless its `response_format` says otherwise ({"type": "text"} turns it
off); the base model has no contract of its own. The contract applied is named in the response
header `x-specialize-constraint` (labels, json_schema, json_object or none).

This module only wires routes, error handlers and middleware to a `ModelServer` (server.py),
which does the work; the wire format is in protocol.py, errors in errors.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from specialize.serve.errors import APIError, validation_error
from specialize.serve.middleware import CountResponses, LimitBodySize, RequireApiKey
from specialize.serve.options import ServeOptions
from specialize.serve.protocol import ChatCompletionRequest, CompletionRequest, LoadAdapterRequest
from specialize.serve.server import DriftProvider, ModelServer


def create_app(
    options: ServeOptions | None = None,
    *,
    loaded: Any = None,
    server: ModelServer | None = None,
    drift: DriftProvider | None = None,
) -> FastAPI:
    """The FastAPI app. Loads the model (or takes `loaded`, a LoadedModel) before returning, so a
    bad model reference fails here rather than on the first request. `drift` computes the drift
    route's reports (`specialize.monitor.drift.drift_for_adapter`); without it that route is 501.
    It is ignored when a ready `server` is given, which already has its own."""
    server = server or ModelServer(options or ServeOptions(), loaded=loaded, drift=drift)

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
        return validation_error(exc).response()

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
    async def metrics() -> Response:
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        server.follow_registry()  # show the current versions after a promote or rollback
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

    # The last added runs first: count every response, then check the key, then the body size.
    app.add_middleware(LimitBodySize, limit=server.options.max_body_bytes)
    app.add_middleware(RequireApiKey, keys=server.options.api_keys)
    app.add_middleware(CountResponses, metrics=server.metrics)
    return app


def serve(
    options: ServeOptions | None = None,
    *,
    loaded: Any = None,
    ready: Callable[[ModelServer], None] | None = None,
    drift: DriftProvider | None = None,
) -> None:
    """Load the model and serve until interrupted (Ctrl-C drains in-flight requests first).
    `ready(server)` is called once the model is loaded, before the port opens."""
    import uvicorn

    options = options or ServeOptions()
    server = ModelServer(options, loaded=loaded, drift=drift)
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
