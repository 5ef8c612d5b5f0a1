"""Command-line interface: ``python -m rtserve`` / ``rtserve``.

Each subcommand is one ``_cmd_<name>(args) -> int`` function registered in ``_build_parser``;
``serve``, ``embed`` and ``bench`` will join ``pull`` and ``inspect`` there. Errors the user can
fix (bad path, unknown model, network, corrupt weights) print ``error: ...`` on stderr and exit
with status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import catalog
from ._core import RtserveError, WeightsError

__all__ = ["main"]


class _TensorInfo(Protocol):
    """What inspect reads from an ``rtserve.Tensor``."""

    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def nbytes(self) -> int: ...


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Example: ``rtserve.cli.main(["inspect", "minilm"])``
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"rtserve {_version()}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = args.run(args)
    except BrokenPipeError:
        # The reader of stdout went away (``rtserve inspect x | head``): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (RtserveError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return status


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtserve",
        description="rtserve: an open, vendor-neutral inference runtime.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    catalog_names = ", ".join(entry.name for entry in catalog.known())
    pull = commands.add_parser(
        "pull",
        help="download a catalog model into the model cache",
        description=f"Download a catalog model ({catalog_names}) into $RTSERVE_HOME/models "
        "and print its folder.",
    )
    pull.add_argument("name", help=f"catalog model name ({catalog_names})")
    pull.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    pull.set_defaults(run=_cmd_pull)

    inspect = commands.add_parser(
        "inspect",
        help="list the tensors of a safetensors file or model folder",
        description="List the tensors of a .safetensors file, a model.safetensors.index.json, "
        "a Hugging Face model folder or a catalog model (pulled on first use).",
    )
    inspect.add_argument("model", metavar="PATH_OR_NAME", help="file, folder or catalog name")
    inspect.add_argument("-q", "--quiet", action="store_true", help="no pull progress output")
    inspect.set_defaults(run=_cmd_inspect)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("rtserve")
    except importlib.metadata.PackageNotFoundError:
        import rtserve

        return str(getattr(rtserve, "__version__", "unknown"))


def _progress_to_stderr(message: str) -> None:
    print(f"rtserve: {message}", file=sys.stderr, flush=True)


def _cmd_pull(args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress_to_stderr
    folder = catalog.pull(args.name, quiet=args.quiet, progress=progress)
    print(folder)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import load_safetensors

    progress = None if args.quiet else _progress_to_stderr
    path = catalog.resolve(args.model, quiet=args.quiet, progress=progress)
    weights_file = _weights_file(path)
    started = time.perf_counter()
    tensors: Mapping[str, _TensorInfo] = load_safetensors(str(weights_file))
    load_ms = (time.perf_counter() - started) * 1e3

    print(f"{'model':<13}{path}")
    if weights_file != path:
        print(f"{'weights':<13}{weights_file.relative_to(path)}")
    model_folder = path if path.is_dir() else path.parent
    for label, value in _config_summary(model_folder):
        print(f"{label:<13}{value}")
    print()
    _print_tensor_table(tensors)
    print()
    _print_totals(tensors)
    print(f"{'load time':<13}{load_ms:.2f} ms")
    return 0


def _weights_file(path: Path) -> Path:
    """Pick a folder's weights: the shard index, else model.safetensors, else the only file."""
    if not path.is_dir():
        return path
    for candidate in ("model.safetensors.index.json", "model.safetensors"):
        if (path / candidate).is_file():
            return path / candidate
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"no .safetensors weights in folder {path}")
    raise WeightsError(
        f"{len(found)} .safetensors files in {path} but no model.safetensors.index.json; "
        "inspect one file at a time"
    )


def _config_summary(folder: Path) -> list[tuple[str, str]]:
    """Return (label, value) lines for the model type and architecture in ``folder/config.json``."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return []
    try:
        model_config: Any = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return [("config", f"unreadable {config_file}: {error}")]
    if not isinstance(model_config, dict):
        return [("config", f"{config_file} is not a JSON object")]
    lines = []
    if "model_type" in model_config:
        lines.append(("model_type", str(model_config["model_type"])))
    architectures = model_config.get("architectures")
    if isinstance(architectures, list) and architectures:
        lines.append(("architecture", ", ".join(str(name) for name in architectures)))
    return lines


def _print_tensor_table(tensors: Mapping[str, _TensorInfo]) -> None:
    rows = [
        (
            name,
            tensor.dtype,
            _format_shape(tensor.shape),
            _human_bytes(tensor.nbytes),
            f"{tensor.nbytes:,}",
        )
        for name, tensor in tensors.items()
    ]
    header = ("name", "dtype", "shape", "size", "bytes")
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    right_aligned = (False, False, False, True, True)
    for row in [header, *rows]:
        cells = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, right_aligned)
        ]
        print("  ".join(cells).rstrip())


def _print_totals(tensors: Mapping[str, _TensorInfo]) -> None:
    total_bytes = sum(tensor.nbytes for tensor in tensors.values())
    parameters = sum(math.prod(tensor.shape) for tensor in tensors.values())
    print(f"{'tensors':<13}{len(tensors)}")
    print(f"{'total bytes':<13}{_human_bytes(total_bytes)} ({total_bytes:,} bytes)")
    print(f"{'parameters':<13}{parameters:,} ({_human_count(parameters)})")

    by_dtype: dict[str, list[int]] = {}  # dtype -> [tensors, parameters, bytes]
    for tensor in tensors.values():
        counts = by_dtype.setdefault(tensor.dtype, [0, 0, 0])
        counts[0] += 1
        counts[1] += math.prod(tensor.shape)
        counts[2] += tensor.nbytes
    ordered = sorted(by_dtype.items(), key=lambda item: -item[1][2])
    for index, (dtype, (count, numel, nbytes)) in enumerate(ordered):
        label = "by dtype" if index == 0 else ""
        print(
            f"{label:<13}{dtype:<5} {count:>6,} tensors {numel:>16,} params "
            f"{_human_bytes(nbytes):>10} ({nbytes:,} bytes)"
        )


def _format_shape(shape: Sequence[int]) -> str:
    return " x ".join(str(dim) for dim in shape) if shape else "scalar"


def _human_bytes(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def _human_count(count: int) -> str:
    for threshold, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if count >= threshold:
            return f"{count / threshold:.1f}{suffix}"
    return str(count)
