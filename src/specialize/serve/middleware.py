"""ASGI middleware in front of the routes: response counting, API keys and the body-size cap.

These are raw ASGI rather than FastAPI dependencies because they must act before FastAPI reads
anything: a refused key or an oversized body is answered without parsing the body at all, and
the counter sees every response, including the ones middleware sends itself and 404s of unknown
paths. `create_app` stacks them as CountResponses > RequireApiKey > LimitBodySize > routes.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from specialize.serve.errors import send_error
from specialize.serve.metrics import ServerMetrics

# Route labels of specialize_http_requests_total: a fixed set, so that paths with ids in them
# (/v1/models/x, /v1/adapters/x/drift) or junk paths cannot grow the number of series.
_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/adapters", "/health", "/metrics")
_HAS_BODY = ("POST", "PUT", "PATCH")


def _route(path: str) -> str:
    return next((r for r in _ROUTES if path == r or path.startswith(r + "/")), "other")


class CountResponses:
    """Counts every HTTP response by method, route and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status_seen = 0

        async def counting_send(message: Message) -> None:
            nonlocal status_seen
            if message["type"] == "http.response.start":
                status_seen = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            if status_seen:  # a client that left before the response started is not counted
                self.metrics.http_response(
                    scope.get("method", ""), _route(scope.get("path", "")), status_seen
                )


class RequireApiKey:
    """401 unless `Authorization: Bearer <key>` names one of `keys`; /health stays open so that
    load balancers and orchestrators can probe without a secret. No keys: everything is open."""

    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [k for k in keys if k]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and scope.get("path", "") != "/health":
            if not self._authorized(scope):
                await send_error(
                    send,
                    401,
                    "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                    "invalid_request_error",
                    "invalid_api_key",
                )
                return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        # Constant-time comparison, so response timing does not reveal how much of a key matched.
        return any(hmac.compare_digest(token.strip().encode(), key.encode()) for key in self.keys)


class LimitBodySize:
    """413 for a request body over `limit` bytes, by its declared length or, for chunked bodies,
    as soon as the bytes received pass it, so a large upload is never held in memory whole."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _HAS_BODY:
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            await send_error(
                send,
                413,
                f"the request body exceeds {self.limit} bytes",
                "invalid_request_error",
                "request_too_large",
            )
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
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


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: http.disconnect, which streaming responses watch for

    return replay
