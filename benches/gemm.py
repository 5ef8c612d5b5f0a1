"""GEMM benchmark: rtserve beside numpy (OpenBLAS) in one process run.

Prints GFLOP/s, the ratio to numpy, and % of this machine's measured peak for the
shapes of the kernels issue, at 1 and 2 threads, with f32 and bf16 weights. The two
libraries take turns on each shape (three rounds, best round each), so both are timed
under the same drift of this machine's speed.

    python benches/gemm.py              # table on stdout
    python benches/gemm.py --markdown   # the table for docs/benchmarks.md

This machine kind sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which slow numpy's
OpenBLAS; the script re-runs itself without them (for the peer's sake) and prints
which BLAS kernel numpy used (threadpoolctl).
"""

from __future__ import annotations

import argparse
import os
from statistics import median
import sys
import time

SHAPES = [  # (M, K, N)
    (1024, 1024, 1024),
    (2048, 2048, 2048),
    (1, 768, 3072),
    (1, 576, 1536),
    (32, 384, 1536),
    (128, 384, 384),
    (512, 768, 3072),
]
THREADS = (1, 2)
PLACEMENTS = 5  # allocations of B per small-M shape (see below)
ROUNDS = 3  # turns each library takes per shape (see below)
SETTLE = 0.3  # seconds between numpy's turn and ours

if any(v in os.environ for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")) and "RTSERVE_BENCH_CHILD" not in os.environ:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["RTSERVE_BENCH_CHILD"] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)

import numpy as np  # noqa: E402  (after the environment is settled)

import rtserve as rt  # noqa: E402
from machine import cpu_model  # noqa: E402  (benches/machine.py)

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None
try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_info = threadpool_limits = None


def best_time(fn, min_time: float = 0.25, min_runs: int = 3) -> float:
    fn()
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def blas_info() -> str:
    if threadpool_info is None:
        return "threadpoolctl not installed"
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')}" for i in infos) or "none"


def limits(threads: int):
    if threadpool_limits is None:
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quick", action="store_true", help="two small shapes, short timings")
    args = parser.parse_args()
    shapes = [(1, 768, 3072), (128, 384, 384)] if args.quick else SHAPES
    min_time = 0.05 if args.quick else 0.1
    rounds = 1 if args.quick else ROUNDS
    rng = np.random.default_rng(0)
    features = dict(rt.cpu_features())
    print(f"machine: {cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()} "
          f"(avx512_bf16={features.get('avx512_bf16')}), numpy {np.__version__} BLAS: {blas_info()}")
    rows = []
    for threads in THREADS:
        rt.set_num_threads(threads)
        peak = rt.peak_gflops("f32")
        peak_bf16 = rt.peak_gflops("bf16") if features.get("avx512_bf16") else float("nan")
        print(f"threads={threads}: measured peak f32 FMA {peak:.0f} GFLOP/s, bf16 dot {peak_bf16:.0f} GFLOP/s")
        # B in PLACEMENTS separate allocations: small-M GEMM is bandwidth-bound and its speed
        # depends on where B's pages land (±20% here); each library's figure is its median over
        # the placements, each placement timed best-of-many.
        # The libraries take turns, ROUNDS times per shape, and each keeps its best round:
        # this machine's speed drifts by 10-30% within minutes, and turns put both under
        # the same drift. Each turn runs alone, so one's spinning worker threads never
        # steal the other's cores: OpenBLAS's helpers keep spinning for up to 200 ms after
        # a call (measured), so our turn starts SETTLE seconds after numpy's.
        for m, k, n in shapes:
            b = rng.standard_normal((k, n), dtype=np.float32)
            bs = [b] + [b.copy() for _ in range(PLACEMENTS - 1)] if m <= 8 else [b]
            a = rng.standard_normal((m, k), dtype=np.float32)
            ta, tbs = rt.tensor(a), [rt.tensor(x) for x in bs]
            flops = 2.0 * m * n * k
            ours, peer = [0.0] * len(bs), [0.0] * len(bs)
            for _ in range(rounds):
                time.sleep(SETTLE)
                with limits(1):  # OpenBLAS's own helper threads stay asleep during our turn
                    for i, tb in enumerate(tbs):
                        ours[i] = max(ours[i], flops / best_time(lambda: rt.matmul(ta, tb), min_time) / 1e9)
                with limits(threads):
                    for i, x in enumerate(bs):
                        peer[i] = max(peer[i], flops / best_time(lambda: a @ x, min_time) / 1e9)
            g_rt, g_np = median(ours), median(peer)
            time.sleep(SETTLE)
            g_bf = g_bfp = float("nan")
            if ml_dtypes is not None:
                with limits(1):
                    tbf = rt.tensor(b.astype(ml_dtypes.bfloat16))
                    g_bf = flops / best_time(lambda: rt.matmul(ta, tbf), min_time) / 1e9
                    packed = rt.prepack(rt.tensor(b.T.astype(ml_dtypes.bfloat16)))
                    g_bfp = flops / best_time(lambda: rt.linear(ta, packed), min_time) / 1e9
            rows.append((threads, f"{m}x{k}x{n}", g_rt, g_np, g_rt / g_np, 100 * g_rt / peak, g_bf, g_bfp, g_bfp / g_rt))
            r = rows[-1]
            print(f"  t={threads} {r[1]:>15}: rtserve f32 {g_rt:7.1f} GF/s | numpy {g_np:7.1f} | ratio {r[4]:.2f} "
                  f"| {r[5]:5.1f}% of peak | bf16 weights {g_bf:7.1f} (prepacked {g_bfp:7.1f}, {r[8]:.2f}x f32)", flush=True)
    if args.markdown:
        print()
        print("| threads | M×K×N | rtserve f32 GFLOP/s | numpy GFLOP/s | rtserve / numpy | % of measured peak | rtserve bf16 weights | bf16 prepacked | bf16 prepacked / f32 |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for t, shape, g_rt, g_np, ratio, pct, g_bf, g_bfp, x in rows:
            print(f"| {t} | {shape} | {g_rt:.1f} | {g_np:.1f} | {ratio:.2f} | {pct:.0f}% | {g_bf:.1f} | {g_bfp:.1f} | {x:.2f} |")


if __name__ == "__main__":
    main()
