"""Freeing a thread's OpenMP worker pool (`release_thread_pool`): the runtime torch uses is found,
the release works from any thread, and torch computes the same afterwards."""

from __future__ import annotations

import threading

import pytest
import torch

from specialize.batching.threads import _loaded_openmp_libraries, _openmp_runtime, release_thread_pool

OPENMP = "parallel backend: OpenMP" in torch.__config__.parallel_info()


@pytest.mark.skipif(not OPENMP, reason="torch is not built with OpenMP here")
def test_the_loaded_openmp_runtime_is_found_and_releases_a_pool():
    assert any("gomp" in path or "omp" in path for path in _loaded_openmp_libraries())
    assert _openmp_runtime() is not None
    x = torch.randn(1 << 20)
    before = (x * 3).sum()  # a parallel op: this thread has a pool
    assert release_thread_pool() is True
    assert release_thread_pool() is True, "releasing again, with no pool, is fine"
    assert torch.equal((x * 3).sum(), before), "the pool comes back on the next parallel op"


@pytest.mark.skipif(not OPENMP, reason="torch is not built with OpenMP here")
def test_a_released_pool_in_another_thread_leaves_this_one_working():
    x = torch.randn(1 << 20)
    expected = (x * 3).sum()
    done = []

    def other():
        (x * 2).sum()
        done.append(release_thread_pool())

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert done == [True] and torch.equal((x * 3).sum(), expected)
