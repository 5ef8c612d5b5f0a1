"""Rules about the source tree that a reviewer would otherwise check by hand."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rust_sources() -> list[Path]:
    return sorted(p for p in ROOT.glob("**/*.rs") if "target" not in p.parts)


def test_every_unsafe_block_has_a_safety_comment():
    missing = []
    for path in rust_sources():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            code = line.split("//", 1)[0]
            # `unsafe {` blocks and `unsafe impl`; `unsafe fn`/`unsafe extern` declarations are
            # contracts, documented where they are called.
            if re.search(r"\bunsafe\s*(\{|impl\b)", code):
                window = "\n".join(lines[max(0, i - 4) : i + 1])
                if "SAFETY:" not in window:
                    missing.append(f"{path.relative_to(ROOT)}:{i + 1}: {line.strip()}")
    assert not missing, "unsafe without a // SAFETY: comment:\n" + "\n".join(missing)


def test_core_crate_has_no_python_dependency():
    manifest = (ROOT / "rust" / "core" / "Cargo.toml").read_text(encoding="utf-8")
    assert "pyo3" not in manifest and "numpy" not in manifest


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2
    install_run, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert install_run.startswith("pip install .") and "\n" not in install_run
    assert "pytest" in test_cmd and "cargo test" in test_cmd and "\n" not in test_cmd
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "README.md" in ci and "fence == 3" in ci
