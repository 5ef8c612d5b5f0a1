"""The runtime thread pool under concurrent Python callers (the GIL is released in kernels)."""

from __future__ import annotations

import numpy as np

import rtserve as rt
from conftest import run_in_threads


def _case(seed: int, m: int, k: int, n: int, rows: int, cols: int):
    """Random matmul (m×k @ k×n) and softmax (rows×cols) inputs, with their results now."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    return a, b, x, rt.matmul(a, b).numpy().copy(), rt.softmax(x).numpy().copy()


def test_concurrent_callers_get_the_serial_results():
    a, b, x, expected_mm, expected_sm = _case(0, 200, 300, 500, 64, 1000)

    def worker(seed: int) -> list[str]:
        errors = []
        for i in range(20):
            if (seed + i) % 2:
                if not np.array_equal(rt.matmul(a, b).numpy(), expected_mm):
                    errors.append(f"matmul differs in thread {seed}")
            elif not np.array_equal(rt.softmax(x).numpy(), expected_sm):
                errors.append(f"softmax differs in thread {seed}")
        return errors

    errors = run_in_threads(worker)
    assert not errors, errors


def test_resizing_the_pool_between_calls():
    before = rt.num_threads()
    a = np.ones((100, 100), np.float32)
    try:
        for n in (1, 3, 2, 1, before):
            rt.set_num_threads(n)
            assert rt.num_threads() == n
            assert float(rt.matmul(a, a).numpy()[0, 0]) == 100.0
    finally:
        rt.set_num_threads(before)


def test_threads_with_pools_of_their_own_get_the_serial_results():
    # Each thread runs its kernels on a pool of its own (the server's model instances): on
    # itself alone, or with helpers; the results are those of the shared pool, and the
    # shared pool's size is untouched.
    a, b, x, expected_mm, expected_sm = _case(1, 130, 257, 333, 65, 999)
    shared = rt.num_threads()

    def worker(i: int) -> list[str]:
        errors = []
        threads = 1 + i % 3
        for j in range(12):
            local = threads if j % 4 != 3 else None  # now and then back on the shared pool
            rt.set_local_threads(local)
            if rt.local_threads() != local:
                errors.append(f"local_threads() {rt.local_threads()} after set_local_threads({local})")
            if rt.num_threads() != (local or shared):
                errors.append(f"num_threads() {rt.num_threads()} with a pool of {local} (shared {shared})")
            if not np.array_equal(rt.matmul(a, b).numpy(), expected_mm):
                errors.append(f"matmul differs on a pool of {local}")
            if not np.array_equal(rt.softmax(x).numpy(), expected_sm):
                errors.append(f"softmax differs on a pool of {local}")
        return errors

    errors = run_in_threads(worker, count=6)
    assert not errors, errors
    assert rt.num_threads() == shared and rt.local_threads() is None  # this thread: untouched


def test_a_pool_of_its_own_takes_a_size_from_1_to_1024():
    import pytest

    for bad in (0, 1025):
        with pytest.raises(rt.UnsupportedError, match="between 1 and 1024"):
            rt.set_local_threads(bad)
    assert rt.local_threads() is None
