"""This machine's measured peak: arithmetic throughput and memory bandwidth.

``python -m rtserve bench --peak`` prints them; the asv suite (``benches/suite``) and the
benchmark scripts divide their GFLOP/s and GB/s by these figures to report "% of peak", so
the percentages come from a measurement on the machine that ran them, not a datasheet.

- **f32 FMA**: ``rt.peak_gflops("f32")``, independent FMA chains on every pool thread
  (the Rust probe in ``rust/core/src/kernels/x86_64/peak.rs``), at the kernels' ISA tier.
- **bf16 dot**: ``rt.peak_gflops("bf16")`` (``vdpbf16ps``), where the CPU has AVX512_BF16.
- **int8 dot**: ``rt.peak_gflops("i8")`` (``vpdpbusd``, u8 x i8 into i32), where the CPU has
  AVX512_VNNI, in GOP/s; otherwise the line says which int8 dot flags the CPU has and that
  it was not measured.
- **read bandwidth**: ``rt.sum`` over a 256 MiB f32 buffer of random values on every pool
  thread, best of 5
  (the figure that bounds bandwidth-bound work such as batch-1 decoding).

Example::

    from rtserve import bench
    peak = bench.measure_peak()
    print(peak.f32_gflops, peak.read_gbs)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

from . import _core

__all__ = ["Peak", "measure_peak", "peak_gflops", "read_bandwidth_gbs", "cpu_flags", "main"]

_BANDWIDTH_BYTES = 256 << 20


@dataclass(frozen=True)
class Peak:
    """Measured peak of this machine at one thread count (None: not measurable here)."""

    threads: int
    isa: str
    f32_gflops: float
    bf16_gflops: float | None
    int8_gops: float | None
    read_gbs: float


def peak_gflops(kind: str = "f32", repeats: int = 3) -> float | None:
    """Best of ``repeats`` runs of the probe ``kind`` ("f32", "bf16", "i8") on the current
    pool; None when this CPU or this build has no such probe.

    Example: ``rtserve.bench.peak_gflops("f32")``
    """
    try:
        return max(_core.peak_gflops(kind) for _ in range(repeats))
    except _core.UnsupportedError:
        return None


def read_bandwidth_gbs(nbytes: int = _BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: ``rt.sum`` over ``nbytes`` of f32 on the current pool, best of ``repeats``.

    Example: ``rtserve.bench.read_bandwidth_gbs()``
    """
    import numpy as np

    # Distinct values: a buffer of one repeated value (np.ones) reads at twice this machine's
    # bandwidth, apparently from pages the host merged (KSM / same-page merging).
    buffer = _core.tensor(np.random.default_rng(0).random(nbytes // 4, dtype=np.float32))
    _core.sum(buffer)  # first touch and warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _core.sum(buffer)
        best = min(best, time.perf_counter() - started)
    return buffer.nbytes / best / 1e9


def measure_peak(threads: int | None = None, repeats: int = 3) -> Peak:
    """All probes at ``threads`` pool threads (default: the current pool); restores the pool.

    Example: ``rtserve.bench.measure_peak(threads=1).f32_gflops``
    """
    before = _core.num_threads()
    if threads is not None and threads != before:
        _core.set_num_threads(threads)
    try:
        return Peak(
            threads=_core.num_threads(),
            isa=_core.isa(),
            f32_gflops=peak_gflops("f32", repeats) or float("nan"),
            bf16_gflops=peak_gflops("bf16", repeats),
            int8_gops=peak_gflops("i8", repeats),
            read_gbs=read_bandwidth_gbs(),
        )
    finally:
        if _core.num_threads() != before:
            _core.set_num_threads(before)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _int8_note(flags: set[str]) -> str:
    has = [name for name in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp") if name in flags]
    cpu = f"the CPU has {', '.join(has)}" if has else "the CPU reports no int8 dot instruction"
    return f"not measured ({cpu}; rtserve's int8 probe needs AVX512_VNNI)"


def main(argv: list[str] | None = None) -> int:
    """``python -m rtserve bench --peak [--threads N ...] [--json]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="rtserve bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options (shared by ``rtserve.cli`` and :func:`main`)."""
    parser.add_argument("--peak", action="store_true", help="measure peak FLOP/s and memory bandwidth")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        metavar="N",
        help="pool sizes to measure at (default: 1 and the current pool size)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per thread count")


def run(args: argparse.Namespace) -> int:
    """Run what ``args`` asks for (``--peak``); print a table or JSON lines."""
    if not args.peak:
        print(
            "rtserve bench: nothing to run; use --peak. The benchmark suites live in the repository: "
            "asv (benches/suite) and python benches/compare.py (see docs/benchmarks.md)."
        )
        return 2
    counts = args.threads or sorted({1, _core.num_threads()})
    if any(n < 1 for n in counts):
        raise ValueError("--threads takes positive numbers")
    flags = cpu_flags()
    if not args.json:
        features = ", ".join(name for name, on in _core.cpu_features().items() if on) or "none"
        print(f"cpu          {_cpu_model()}, {_logical_cpus()} logical CPUs")
        print(f"isa          {_core.isa()} (features: {features})")
    for threads in counts:
        peak = measure_peak(threads)
        if args.json:
            print(json.dumps(asdict(peak)))
            continue
        print()
        print(f"threads      {peak.threads}")
        print(f"f32 FMA      {peak.f32_gflops:8.1f} GFLOP/s")
        bf16 = f"{peak.bf16_gflops:8.1f} GFLOP/s" if peak.bf16_gflops else "not measured (no AVX512_BF16 probe for this CPU)"
        print(f"bf16 dot     {bf16}")
        int8 = f"{peak.int8_gops:8.1f} GOP/s" if peak.int8_gops else _int8_note(flags)
        print(f"int8 dot     {int8}")
        print(f"read         {peak.read_gbs:8.1f} GB/s (rt.sum over {_BANDWIDTH_BYTES >> 20} MiB)")
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def _logical_cpus() -> int:
    import os

    return os.cpu_count() or 1
