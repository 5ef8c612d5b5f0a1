"""Command-line interface: ``python -m rtserve`` / ``rtserve``.

Each subcommand is one ``_cmd_<name>(args) -> int`` function registered in ``_build_parser``;
``serve`` (the default: ``rtserve`` alone serves the demo model), ``pull``, ``inspect`` and
``embed`` and ``bench`` (``rtserve.bench``). Errors the user can
fix (bad path, unknown model, network, corrupt weights) print ``error: ...`` on stderr and exit
with status 1, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import bench as _bench
from . import catalog, config
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
    args = parser.parse_args(_default_to_serve(parser, sys.argv[1:] if argv is None else list(argv)))
    if args.version:
        print(f"rtserve {_version()}")
        return 0
    try:
        status: int = args.run(args)
    except BrokenPipeError:
        # The reader of stdout went away (``rtserve inspect x | head``): stop quietly, and point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (RtserveError, OSError, _UsageError) as error:
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
        help="list the tensors of a model, or summarize a graph",
        description="List the tensors of a .safetensors file, a model.safetensors.index.json, "
        "a Hugging Face model folder or a catalog model (pulled on first use). "
        "Given MODULE:FUNCTION (a module on sys.path or the current folder, or a .py file "
        "path, e.g. tests/graph_models.py:bert_base), call FUNCTION() for an rt.Graph (compiled "
        "here) or an rt.Compiled and print its summary: nodes after passes, FLOPs, memory plan.",
    )
    inspect.add_argument(
        "model", metavar="PATH_OR_NAME", help="file, folder, catalog name or MODULE:FUNCTION"
    )
    inspect.add_argument("-q", "--quiet", action="store_true", help="no pull progress output")
    inspect.add_argument(
        "--no-optimize",
        action="store_true",
        help="MODULE:FUNCTION only: compile the graph without its passes",
    )
    inspect.add_argument(
        "--dims",
        nargs="+",
        metavar="SYMBOL=N",
        default=[],
        help="MODULE:FUNCTION only: also print the memory plan at these dims (batch=8 seq=128)",
    )
    inspect.set_defaults(run=_cmd_inspect)

    embed = commands.add_parser(
        "embed",
        help="embed texts with an encoder model (a quick check)",
        description="Load an encoder (Hugging Face folder or catalog name, pulled on first use), "
        "embed the texts and print the vectors' shape and first values.",
    )
    embed.add_argument("model", metavar="PATH_OR_NAME", help="model folder or catalog name")
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    embed.add_argument("--dtype", default="f32", choices=["f32", "bf16", "auto"])
    embed.add_argument("--device", default="cpu")
    embed.set_defaults(run=_cmd_embed)

    bench = commands.add_parser(
        "bench",
        help="measure this machine's peak FLOP/s and memory bandwidth (--peak)",
        description="Measure this machine's peak: f32 FMA and bf16/int8 dot throughput and read "
        "bandwidth, at 1 thread and the current pool size (see rtserve.bench). The benchmark "
        "suites themselves live in the repository's benches/ (docs/benchmarks.md).",
    )
    _bench.add_arguments(bench)
    bench.set_defaults(run=_bench.run)

    serve = commands.add_parser(
        "serve",
        help="serve models over HTTP (OpenAI and KServe v2 APIs); the default command",
        description="Serve models over HTTP: OpenAI /v1/models, /v1/embeddings, /v1/completions, "
        "/v1/chat/completions and KServe v2 /v2/... . With no model, serves the demo model minilm "
        "(pulled on first use). `rtserve` with no command, or with a model or an option first, "
        "runs serve.",
    )
    serve.add_argument(
        "models",
        nargs="*",
        metavar="[NAME=]MODEL",
        help="Hugging Face folder or catalog name, served as NAME (default: the folder's name)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--device", default="cpu")
    serve.add_argument("--dtype", default="f32", choices=["f32", "bf16", "auto"])
    serve.add_argument(
        "--api-key",
        default=os.environ.get(config.ENV_API_KEY) or None,
        help="require 'Authorization: Bearer KEY' (default: $RTSERVE_API_KEY; none: no check)",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        default=1 << 20,
        help="largest request body accepted, in bytes (default 1 MiB; larger gets 413)",
    )
    serve.add_argument(
        "--max-batch-tokens",
        type=int,
        default=8192,
        help="embedding requests are batched per model up to this many tokens (default 8192)",
    )
    serve.add_argument(
        "--instances",
        type=int,
        default=None,
        help="encoder instances per model on the CPU, each running its own batches on its share of "
        "the threads (default: 2 when RTSERVE_NUM_THREADS is 2 or more, else 1)",
    )
    serve.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin each encoder instance to CPUs of its own (pinned by default when there are "
        "several)",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests that may wait per model (embedding batches, decoder joins); more get 429 with "
        "Retry-After (default 256)",
    )
    serve.add_argument(
        "--max-input-tokens",
        type=int,
        default=131072,
        help="tokens one request may bring, all its inputs or prompts together; more gets 400 (default 131072)",
    )
    serve.add_argument(
        "--max-batch-sequences",
        type=int,
        default=16,
        help="decoders advance up to this many sequences per step (continuous batching; default 16)",
    )
    serve.add_argument(
        "--memory-budget",
        type=_byte_size,
        default=None,
        metavar="BYTES",
        help="memory the loaded models may hold (e.g. 2G, 512M, 1500000000); loading one that does not "
        "fit unloads the least recently used idle models (default: no limit)",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="on SIGTERM or Ctrl-C, seconds to let in-flight requests finish (default 10)",
    )
    serve.add_argument(
        "--idle-unload",
        type=float,
        default=None,
        metavar="SECONDS",
        help="unload a model after SECONDS without requests; its next request loads it again (default: never)",
    )
    serve.set_defaults(run=_cmd_serve)
    return parser


def _default_to_serve(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``rtserve`` alone, or followed by a model or a serve option, means ``rtserve serve ...``."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    if not argv:
        return ["serve"]
    first = argv[0]
    if first in commands or first in ("-h", "--help", "--version"):
        return argv
    return ["serve", *argv]


def _version() -> str:
    try:
        return importlib.metadata.version("rtserve")
    except importlib.metadata.PackageNotFoundError:
        import rtserve

        return str(getattr(rtserve, "__version__", "unknown"))


def _progress_to_stderr(message: str) -> None:
    print(f"rtserve: {message}", file=sys.stderr, flush=True)


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from .models import load

    start = time.perf_counter()
    model = load(args.model, device=args.device, dtype=args.dtype)
    if not hasattr(model, "embed"):
        raise _UsageError(f"{args.model}: embed needs an encoder model; this is {type(model).__name__}")
    loaded = time.perf_counter()
    vectors = model.embed(args.texts)
    done = time.perf_counter()
    print(model)
    print(f"embeddings: shape {vectors.shape}, dtype {vectors.dtype}")
    with np.printoptions(precision=4, suppress=True):
        for text, vec in zip(args.texts, vectors):
            shown = text if len(text) <= 40 else text[:37] + "..."
            print(f"{shown!r}: {vec[:6]} ...")
    print(f"load {1e3 * (loaded - start):.0f} ms, embed {1e3 * (done - loaded):.1f} ms")
    return 0


def _byte_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"64k"``, ``"1.5GiB"`` or plain bytes -> bytes (powers of 1024)."""
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    value = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = value[-1:] if value[-1:] in units and value[-1:] else ""
    number = value[: len(value) - len(unit)]
    try:
        size = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 2G, 512M, 1500000000)") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the size must be positive")
    return int(size)


def listen_socket(host: str, port: int) -> Any:
    """A listening TCP socket for the server, with TCP_NODELAY on (accepted connections
    inherit it). The explicit IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets
    whose protocol is IPPROTO_TCP, and without it a response whose headers and body go out
    in two writes waits for the client's delayed ACK (about 40 ms per request)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import socket

    import uvicorn

    from .server import ModelRegistry, create_app

    counts = ("max_request_bytes", "max_batch_tokens", "max_queue", "max_batch_sequences", "max_input_tokens", "instances")
    for flag in counts:
        value = getattr(args, flag)
        if value is not None and value < 1:  # None: --instances not given
            raise _UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.idle_unload is not None and args.idle_unload <= 0:
        raise _UsageError("--idle-unload must be a positive number of seconds")
    if args.shutdown_timeout < 0:
        raise _UsageError("--shutdown-timeout must be at least 0")
    if not 0 <= args.port <= 65535:
        raise _UsageError(f"--port must be in 0..65535, got {args.port}")
    # The worker threads tokenize each batch on their own thread: with the tokenizers
    # package's own thread pool, its idle threads spin (sched_yield) against the model's
    # threads while a batch computes (A/B at concurrency 32, one text per request: +6-8%).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        registry = ModelRegistry.from_specs(
            args.models or ["minilm"], device=args.device, dtype=args.dtype, memory_budget=args.memory_budget
        )
    except ValueError as error:
        raise _UsageError(str(error)) from None
    for entry in registry:
        started = time.perf_counter()
        # Resolve here, not in rt.load, so a first-use pull shows its progress.
        entry.source = str(catalog.resolve(entry.source, progress=_progress_to_stderr))
        if not registry.fits(entry):
            _progress_to_stderr(f"{entry.name} does not fit the memory budget now; it loads on its first request")
            continue
        entry.load_now()
        _progress_to_stderr(f"loaded {entry.name} in {time.perf_counter() - started:.1f} s: {entry.model!r}")
    app = create_app(
        registry,
        api_key=args.api_key,
        max_request_bytes=args.max_request_bytes,
        max_batch_tokens=args.max_batch_tokens,
        max_queue=args.max_queue,
        max_batch_sequences=args.max_batch_sequences,
        max_input_tokens=args.max_input_tokens,
        idle_unload=args.idle_unload,
        instances=args.instances,
        pin=args.pin,
    )
    if not args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        _progress_to_stderr(f"warning: listening on {args.host} with no API key; anyone who can reach it can use it")

    # Bind before printing the ready line, so the URL holds the real port (--port 0) and a
    # client that reads the line can connect at once (the kernel queues it until uvicorn accepts).
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = listen_socket(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    url = f"http://{host}:{port}"
    print(f"rtserve: serving {', '.join(registry.names())} on {url} (try: {_example_curl(url, registry, args.api_key)})", flush=True)
    # SIGTERM/SIGINT: uvicorn stops accepting, lets open requests finish for up to
    # --shutdown-timeout seconds, then returns; the exit status is 0.
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=args.shutdown_timeout)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; SIGTERM is how a
    # server is told to stop (Kubernetes, systemd), so it ends with status 0, not -15.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _run_loop(server.serve(sockets=[sock]), config)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped, not an error
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    _progress_to_stderr("stopped")
    return 0


def _run_loop(main: Any, config: Any) -> None:
    """Runs ``main`` in the event loop uvicorn would pick (uvloop when installed)."""
    import asyncio

    get_factory = getattr(config, "get_loop_factory", None)  # uvicorn >= 0.36
    factory = get_factory() if get_factory is not None else None
    if factory is None or sys.version_info < (3, 11):
        if get_factory is None:
            config.setup_event_loop()  # older uvicorn: installs uvloop's policy when it is there
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def _example_curl(url: str, registry: Any, api_key: str | None) -> str:
    auth = " -H 'Authorization: Bearer $RTSERVE_API_KEY'" if api_key else ""
    first = next(iter(registry))
    from .models import DecoderModel

    if isinstance(first.model, DecoderModel):
        body = json.dumps({"model": first.name, "messages": [{"role": "user", "content": "hello"}]})
        path = "/v1/chat/completions"
    else:
        body = json.dumps({"model": first.name, "input": "hello"})
        path = "/v1/embeddings"
    return f"curl {url}{path} -H 'Content-Type: application/json'{auth} -d '{body}'"


def _cmd_pull(args: argparse.Namespace) -> int:
    progress = None if args.quiet else _progress_to_stderr
    folder = catalog.pull(args.name, quiet=args.quiet, progress=progress)
    print(folder)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from . import load_safetensors

    target = _graph_target(args.model)
    if target is not None:
        return _inspect_graph(*target, optimize=not args.no_optimize, dims=args.dims)
    if args.no_optimize or args.dims:
        raise _UsageError("--no-optimize and --dims apply to MODULE:FUNCTION graphs only")
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


class _UsageError(Exception):
    """A mistake on the command line the user can fix (printed as ``error: ...``)."""


_GRAPH_TARGET = re.compile(r"(?P<module>.+):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)")
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")


def _graph_target(spec: str) -> tuple[str, str] | None:
    """Split ``module:function`` or ``path/file.py:function``; None for paths and catalog names."""
    match = _GRAPH_TARGET.fullmatch(spec)
    if match is None or Path(spec).exists():
        return None
    module = match["module"]
    if module.endswith(".py") or _MODULE_NAME.fullmatch(module):
        return module, match["attr"]
    return None


def _load_graph_factory(module_spec: str, attr: str) -> Any:
    """Import ``module_spec`` (a module name or a .py file) and return its ``attr``."""
    if module_spec.endswith(".py"):
        path = Path(module_spec)
        if not path.is_file():
            raise _UsageError(f"no such Python file: {module_spec}")
        # Its folder goes on sys.path so that the file can import its neighbours.
        folder = str(path.resolve().parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise _UsageError(f"cannot import {module_spec}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up here
        try:
            spec.loader.exec_module(module)
        except ImportError as error:
            raise _UsageError(f"cannot import {module_spec}: {error}") from error
    else:
        # Like uvicorn: modules in the current folder are found without installing them.
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_spec)
        except ImportError as error:
            hint = ""
            if isinstance(error, ModuleNotFoundError) and error.name == module_spec.split(".")[0]:
                hint = " (run from its folder, add it to PYTHONPATH, or give a file: path/to/module.py:FUNCTION)"
            raise _UsageError(f"cannot import module '{module_spec}': {error}{hint}") from error
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise _UsageError(f"{module_spec} has no attribute '{attr}'")
        target = getattr(target, part)
    if not callable(target):
        raise _UsageError(f"{module_spec}:{attr} is not callable")
    return target


def _inspect_graph(module_spec: str, attr: str, *, optimize: bool, dims: Sequence[str]) -> int:
    from ._core import Compiled, Graph

    sizes = _parse_dims(dims)
    factory = _load_graph_factory(module_spec, attr)
    started = time.perf_counter()
    made = factory()
    build_ms = (time.perf_counter() - started) * 1e3
    compile_ms = None
    if isinstance(made, Graph):
        started = time.perf_counter()
        compiled = made.compile() if optimize else made.compile(optimize=False)
        compile_ms = (time.perf_counter() - started) * 1e3
    elif isinstance(made, Compiled):
        if not optimize:
            raise _UsageError(
                f"{module_spec}:{attr}() returned an rt.Compiled; --no-optimize needs an rt.Graph"
            )
        compiled = made
    else:
        raise _UsageError(
            f"{module_spec}:{attr}() returned {type(made).__name__}, not an rt.Graph or rt.Compiled"
        )

    plan = compiled.memory_plan(**sizes) if sizes else None  # a bad symbol fails before output
    print(f"{'graph':<13}{module_spec}:{attr}")
    print(f"{'device':<13}{compiled.device}")
    if compile_ms is not None:
        print(f"{'passes':<13}{'on' if optimize else 'off (--no-optimize)'}")
        print(f"{'build time':<13}{build_ms:.2f} ms")
        print(f"{'compile time':<13}{compile_ms:.2f} ms")
    print()
    print(compiled.summary().rstrip("\n"))
    if plan is not None:
        at = ", ".join(f"{name}={value}" for name, value in sizes.items())
        lower_bound = plan["lower_bound_bytes"]
        ratio = plan["planned_bytes"] / lower_bound if lower_bound else float("nan")
        print()
        print(f"memory plan at {at}:")
        for key in ("planned_bytes", "lower_bound_bytes", "naive_bytes"):
            print(f"  {key:<23}{_human_bytes(plan[key]):>10} ({plan[key]:,} bytes)")
        print(f"  {'planned / lower bound':<23}{ratio:>10.3f}")
    return 0


def _parse_dims(items: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value.isdigit():
            raise _UsageError(f"--dims takes SYMBOL=N items (batch=8 seq=128), got '{item}'")
        sizes[name] = int(value)
    return sizes


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
