"""Errors in OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with the
matching status: the official `openai` client turns exactly this shape into its usual exceptions
(`BadRequestError`, `NotFoundError`, ...), so every failure the server reports goes through here,
from route handlers (`APIError`) and from ASGI middleware that answers before FastAPI runs
(`send_error`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Send


class APIError(Exception):
    """A failure to report to the client; `type` defaults by status as OpenAI's API does."""

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


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 list of errors as one OpenAI 400 naming the first bad field in `param`, which
    is what clients show; a `path` key on an adapter load gets the reason paths are refused."""
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
    return APIError(400, message, param=loc[0] if loc else None)


async def send_error(send: Send, status: int, message: str, type: str, code: str) -> None:
    """A complete JSON error response on a raw ASGI `send`, for middleware that refuses a request
    before the app (and its exception handlers) sees it."""
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
