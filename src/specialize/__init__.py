"""specialize: turn a general pre-trained LLM into a specialist for one task, and prove it paid off.

The public surface is listed in `__all__` (a test checks it). Heavy dependencies (torch,
transformers) are imported lazily, so `import specialize` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "RunConfig",
    "SpecializeError",
    "__version__",
    "check_data",
    "load_config",
    "load_run",
    "train",
]

_LAZY = {
    "RunConfig": ("specialize.config", "RunConfig"),
    "load_config": ("specialize.config", "load_config"),
    "SpecializeError": ("specialize.errors", "SpecializeError"),
    "check_data": ("specialize.api", "check_data"),
    "train": ("specialize.train.sft", "train"),
    "load_run": ("specialize.inference", "load_run"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'specialize' has no attribute {name!r}")
