"""The asv suite (benches/suite) runs: ``asv run --quick`` on tiny shapes, then ``asv publish``.

This keeps the benchmarks from rotting; it measures nothing (``RTSERVE_BENCH_SMOKE=1`` shrinks
every shape and model, and the results go to a temporary folder). asv runs against this
interpreter and the installed rtserve (``--python=same``), offline, without torch. The
checked-in ``asv.conf.json`` is used with its output folders moved to the temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

asv_util = pytest.importorskip("asv.util", reason="asv is in the test extra: pip install '.[test]'")

ROOT = Path(__file__).resolve().parents[1]


def _head_commit() -> str:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("asv results are keyed by commit: needs a git checkout")
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_asv_quick_run_and_publish(tmp_path: Path) -> None:
    commit = _head_commit()
    config = asv_util.load_json(str(ROOT / "asv.conf.json"), js_comments=True)
    assert (ROOT / config["benchmark_dir"] / "__init__.py").is_file()
    config.update(
        repo=str(ROOT),
        benchmark_dir=str(ROOT / config["benchmark_dir"]),
        results_dir=str(tmp_path / "results"),
        html_dir=str(tmp_path / "html"),
        env_dir=str(tmp_path / "env"),
    )
    config_path = tmp_path / "asv.conf.json"
    config_path.write_text(json.dumps(config))
    # HOME: asv keeps its machine file there (smoke mode never reads the model cache: its
    # models are tiny and random).
    env = {**os.environ, "HOME": str(tmp_path), "RTSERVE_BENCH_SMOKE": "1"}
    asv = [sys.executable, "-m", "asv", "--config", str(config_path)]

    def run(*args: str) -> str:
        proc = subprocess.run([*asv, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"asv {args[0]} exited {proc.returncode}:\n{output[-6000:]}"
        return output

    run("machine", "--yes", "--machine", "smoke")
    output = run("run", "--python=same", "--quick", "--show-stderr", "--machine", "smoke", "--set-commit-hash", commit)
    assert "Discovering benchmarks" in output
    failed = [line for line in output.splitlines() if line.rstrip().endswith(("failed", "skipped"))]
    assert not failed, "benchmarks failed or were skipped:\n" + "\n".join(failed) + "\n" + output[-6000:]

    results = [p for p in (tmp_path / "results" / "smoke").glob("*.json") if p.name != "machine.json"]
    assert len(results) == 1
    recorded = json.loads(results[0].read_text())["results"]
    suites = {name.split(".")[0] for name in recorded}
    assert suites == {"kernels", "graph", "models", "server"}
    empty = [name for name, value in recorded.items() if value[0] is None or None in value[0]]
    assert not empty, f"no figure recorded for {empty}"

    run("publish")
    assert (tmp_path / "html" / "index.html").is_file()
