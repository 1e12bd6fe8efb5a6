"""Serving: one base model, many LoRA adapters, an OpenAI-compatible HTTP API.

`serve(ServeOptions(...))` runs the server; `create_app` gives the FastAPI app (tests, embedding);
`Engine` (from `specialize.batching`) is the batching scheduler, usable without HTTP.
"""

from specialize.batching.engine import Engine
from specialize.batching.requests import Completion, EngineStopped, QueueFull, SamplingParams
from specialize.serve.app import create_app, serve
from specialize.serve.errors import APIError
from specialize.serve.options import ServeOptions
from specialize.serve.server import ModelServer

__all__ = [
    "APIError",
    "Completion",
    "Engine",
    "EngineStopped",
    "ModelServer",
    "QueueFull",
    "SamplingParams",
    "ServeOptions",
    "create_app",
    "serve",
]
