"""Handing torch's CPU worker threads to the engine thread.

torch's CPU wheels parallelise each op with GNU OpenMP (libgomp). Every thread that runs a
parallel op gets its own pool of worker threads, kept for the thread's lifetime. libgomp counts
the threads of all pools, and once there are more than CPUs it stops letting idle workers spin
and puts them to sleep after a few iterations (its "throttled" spin count), so every parallel
op then pays a futex wake-up of its workers. A decode step is a few thousand small ops, so that
cost dominates: the engine's thread, started after the main thread loaded the model (and so
already holds a pool), decodes markedly slower than the same thread with no other pool alive,
and even slower than with a single torch thread (`benchmarks/engine_thread_pool.py`).

`release_thread_pool` frees the calling thread's pool (OpenMP 5's `omp_pause_resource_all`,
soft: the runtime stays usable and the pool is re-created on the thread's next parallel op).
The engine calls it from the thread that built it and from the one that starts it, usually
where the model was loaded and the pool created. Nothing else changes: the number of threads,
the results of every op. Through ctypes because neither torch nor any library we use exposes
the call (`torch.set_num_threads` changes the size of future teams, not the pools alive).
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1


@functools.cache
def _openmp_runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime torch's parallel ops use, as loaded in this process; None when torch
    is not built with OpenMP or the runtime has no `omp_pause_resource_all` (before OpenMP 5)."""
    import torch

    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    for path in _loaded_openmp_libraries():
        try:
            runtime = ctypes.CDLL(path)  # already loaded: dlopen returns the same library
        except OSError:
            continue
        if hasattr(runtime, "omp_pause_resource_all"):
            runtime.omp_pause_resource_all.argtypes = [ctypes.c_int]
            runtime.omp_pause_resource_all.restype = ctypes.c_int
            return runtime
    return None


def _loaded_openmp_libraries() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux: /proc/self/maps)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    names = ("libgomp", "libomp", "libiomp")
    paths: list[str] = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)  # address, perms, offset, device, inode[, path]
        path = fields[5].strip() if len(fields) == 6 else ""
        if any(Path(path).name.startswith(name) for name in names) and path not in paths:
            paths.append(path)
    return paths


def release_thread_pool() -> bool:
    """Free the calling thread's OpenMP worker pool, so that the engine thread's pool is the only
    one alive; True if the runtime did. Harmless to call again or from a thread without a pool."""
    runtime = _openmp_runtime()
    if runtime is None:
        return False
    released = runtime.omp_pause_resource_all(_OMP_PAUSE_SOFT) == 0
    if not released:
        log.debug("the OpenMP runtime kept this thread's worker pool")
    return released
