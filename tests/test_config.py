from __future__ import annotations

from pathlib import Path

import pytest

from rtserve import config


def test_home_reads_the_environment_on_every_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTSERVE_HOME", str(tmp_path))
    assert config.home() == tmp_path
    assert config.models_dir() == tmp_path / "models"
    monkeypatch.setenv("RTSERVE_HOME", str(tmp_path / "other"))
    assert config.models_dir() == tmp_path / "other" / "models"


def test_home_defaults_to_the_user_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTSERVE_HOME", raising=False)
    assert config.home() == Path.home() / ".cache" / "rtserve"


def test_home_expands_a_tilde(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTSERVE_HOME", "~/rtserve-cache")
    assert config.home() == Path.home() / "rtserve-cache"
