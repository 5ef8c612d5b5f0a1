"""The runtime thread pool under concurrent Python callers (the GIL is released in kernels)."""

from __future__ import annotations

import numpy as np

import rtserve as rt
from conftest import run_in_threads


def test_concurrent_callers_get_the_serial_results():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 300), dtype=np.float32)
    b = rng.standard_normal((300, 500), dtype=np.float32)
    x = rng.standard_normal((64, 1000), dtype=np.float32)
    expected_mm = rt.matmul(a, b).numpy().copy()
    expected_sm = rt.softmax(x).numpy().copy()

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
