"""OpenAI's wire format: the request bodies the completion and adapter routes accept, and the
shapes of what they send back (whole responses, server-sent-event chunks, usage).

Request models ignore fields they do not know, as OpenAI clients send many; a known field that
would change the result and is not supported (n > 1, tools, ...) is refused by
`unsupported()` rather than silently dropped. Responses keep OpenAI's key order and its nulls
(`logprobs: null`, `usage: null` on stream chunks when usage was asked for) because some clients
check for the keys, not only their values. `logprobs` are filled when asked for (their shapes:
`serve.logprobs`), and choices may carry that module's documented extension fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from specialize.batching.requests import Completion
from specialize.serve.errors import APIError

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
        """The message as the chat template takes it: text only, `developer` read as `system`."""
        content = self.content
        if isinstance(content, list):
            if any(part.type != "text" for part in content):
                raise APIError(400, "only text content parts are supported", param="messages")
            content = "".join(part.text or "" for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(_Lenient):
    include_usage: bool = False


class SamplingBody(_Lenient):
    """What both completion routes share: the model, sampling, stop sequences and output format."""

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

    def top_logprobs_wanted(self) -> int | None:
        """How many alternatives per token the response lists (None: no logprobs at all)."""
        return None

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) of the first field this server cannot honour, or None."""
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

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk (OpenAI sends one only when asked)."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None

    def top_logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def unsupported(self) -> tuple[str, str] | None:
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "top_logprobs needs logprobs: true"
        if self.tools:
            return "tools", "tool calling is not supported"
        return super().unsupported()


class CompletionRequest(SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    best_of: int | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None

    def top_logprobs_wanted(self) -> int | None:
        return self.logprobs

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported"
        if self.best_of not in (None, 1):
            return "best_of", "best_of is not supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        return super().unsupported()


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a `path` key must fail loudly, not be ignored
    name: str
    version: int | None = Field(None, ge=1)


# Responses -----------------------------------------------------------------------------------

SSE_END = "data: [DONE]\n\n"


def finish_reason(done: Completion) -> str:
    # OpenAI knows "stop" and "length"; an EOS token and a stop sequence are both "stop".
    return "length" if done.finish_reason == "length" else "stop"


def usage(done: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def sse(payload: dict[str, Any]) -> str:
    """One server-sent event carrying `payload` as JSON."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass(frozen=True)
class Reply:
    """What every response body and stream chunk of one request repeats, and how each is shaped
    for its route (`chat.completion` or `text_completion`)."""

    chat: bool
    id: str
    created: int
    model: str
    system_fingerprint: str
    include_usage: bool = False

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
        }

    def response(
        self,
        done: Completion,
        *,
        content: str | None = None,
        logprobs: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The whole (non-streamed) response; `content` replaces the generated text (a fallback
        label), `extra` adds extension fields to the choice."""
        choice: dict[str, Any]
        text = done.text if content is None else content
        if self.chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(done),
                "logprobs": logprobs,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish_reason(done), "logprobs": logprobs}
        choice.update(extra or {})
        head = self._head("chat.completion" if self.chat else "text_completion")
        return {**head, "choices": [choice], "usage": usage(done)}

    def chunk(
        self,
        text: str | None,
        finish: str | None,
        *,
        first: bool = False,
        logprobs: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """One stream event: a piece of text (with its tokens' `logprobs`), or the finish reason.
        A chat stream's `first` chunk carries the assistant role and empty content, as OpenAI's does."""
        choice: dict[str, Any]
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
        choice.update(extra or {})
        body = {**self._stream_head(), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return sse(body)

    def usage_chunk(self, done: Completion) -> str:
        """The last event of a stream that asked for usage: no choices, the token counts."""
        return sse({**self._stream_head(), "choices": [], "usage": usage(done)})

    def _stream_head(self) -> dict[str, Any]:
        return self._head("chat.completion.chunk" if self.chat else "text_completion")
