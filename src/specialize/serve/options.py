"""What `specialize serve` can be told: one validated record, shared by the CLI, `create_app` and
the server, so that a limit is named and checked in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from specialize.evaluate.abstention import parse_threshold
from specialize.models.bundled import DEFAULT_MODEL
from specialize.registry.store import data_home


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
    prefill_chunk: int = Field(
        256,
        ge=1,
        description="Longer prompts arriving while others decode are prefilled this many tokens at a time.",
    )
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
    abstain_below: float | Literal["recommended"] | None = Field(
        None,
        description="Label replies less confident than this answer the fallback label instead; "
        "'recommended': each adapter's threshold from its run's evaluation.",
    )
    fallback_label: str | None = Field(
        None, description="What an abstaining reply says; default: the catch-all label, else 'unknown'."
    )

    @field_validator("abstain_below", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        return parse_threshold(value)


def default_request_log_path() -> Path:
    """Where the request log goes when no path is given: the user's data home, which also holds the
    registry, so that one server's traffic lands in one known file across restarts."""
    return data_home() / "requests.sqlite"
