"""specialize: turn a general pre-trained LLM into a specialist for one task, and prove it paid off.

The public surface is listed in `__all__` (a test checks it). Heavy dependencies (torch,
transformers) are imported lazily, so `import specialize` stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "DataReport",
    "EvalReport",
    "RunConfig",
    "RunRecord",
    "SpecializeError",
    "TrainResult",
    "__version__",
    "check_data",
    "drift",
    "evaluate",
    "export",
    "generate",
    "load_config",
    "load_run",
    "serve",
    "train",
]

# name -> (module, attribute): what a Python user does, one function each (`specialize.api`),
# and the records those functions return.
_LAZY = {
    "RunConfig": ("specialize.config", "RunConfig"),
    "load_config": ("specialize.config", "load_config"),
    "SpecializeError": ("specialize.errors", "SpecializeError"),
    "DataReport": ("specialize.data.checks", "DataReport"),
    "EvalReport": ("specialize.records.eval", "EvalReport"),
    "RunRecord": ("specialize.records.run", "RunRecord"),
    "TrainResult": ("specialize.train.sft", "TrainResult"),
    "check_data": ("specialize.api", "check_data"),
    "train": ("specialize.api", "train"),
    "evaluate": ("specialize.api", "evaluate"),
    "generate": ("specialize.api", "generate"),
    "serve": ("specialize.api", "serve"),
    "drift": ("specialize.api", "drift"),
    "export": ("specialize.api", "export"),
    "load_run": ("specialize.inference", "load_run"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'specialize' has no attribute {name!r}")
