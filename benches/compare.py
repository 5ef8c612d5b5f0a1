"""rtserve beside the installed peers, in one process run, as one table of ratios.

- **GEMM** (f32, the kernels issue's shapes): ``rt.matmul`` vs numpy's BLAS (OpenBLAS; the
  kernel it picked is printed, from threadpoolctl), and the measured f32 FMA peak
  (``python -m rtserve bench --peak``).
- **MiniLM** (all-MiniLM-L6-v2, text in, unit vectors out): rtserve vs sentence-transformers
  (torch) and ONNX Runtime (transformers' BertModel exported at start-up, as in
  benches/embeddings.py): batch-1 latency and sentences/s at several batch sizes.
- **Decoding** (random-init Llama of SmolLM2-135M's shape, benches/decode.py): prefill and
  decode tokens/s vs transformers, f32 and bf16 weights, and the bandwidth bound.

Every library uses the same number of threads (``--threads``, default: rtserve's pool).
A peer that is not installed is skipped with a message. The last column is rtserve's
speed-up: peer time ÷ rtserve time (above 1: rtserve is faster).

    python benches/compare.py                     # all sections, table on stdout
    python benches/compare.py --quick             # fewer shapes, sizes and rounds
    python benches/compare.py --json out.json     # also the raw figures (benches/plots.py reads them)
    python benches/compare.py --only gemm decode  # some sections

The peers live in the ``bench`` extra (``pip install ".[bench]"``; see pyproject.toml for
torch). numpy's OpenBLAS is run without ``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE`` (the
script re-runs itself without them). The MiniLM section needs the model folder
(``python -m rtserve pull minilm``); it is skipped if the folder is not there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if __name__ == "__main__" and any(v in os.environ for v in _BLAS_VARS) and "RTSERVE_BENCH_CHILD" not in os.environ:
    _env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
    _env["RTSERVE_BENCH_CHILD"] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

import numpy as np  # noqa: E402  (after the environment is settled)

import rtserve as rt  # noqa: E402
from rtserve import bench  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import decode  # noqa: E402  (benches/decode.py)
import embeddings  # noqa: E402  (benches/embeddings.py)
from machine import cpu_model  # noqa: E402

GEMM_SHAPES = [(1024, 1024, 1024), (2048, 2048, 2048), (1, 768, 3072), (1, 576, 1536), (32, 384, 1536),
               (128, 384, 384), (512, 768, 3072)]
BATCH_SIZES = [1, 8, 32, 64, 128]
SECTIONS = ("gemm", "minilm", "decode")


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def best_time(fn, min_time: float) -> float:
    fn()
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


class Table:
    """Rows of (benchmark, unit, rtserve value, peer, peer value, higher_is_better)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, str, float | None, bool]] = []

    def add(self, name: str, unit: str, ours: float, peer: str, theirs: float | None, higher_is_better: bool = True) -> None:
        self.rows.append((name, unit, ours, peer, theirs, higher_is_better))
        print(f"  {name}: rtserve {ours:.4g} {unit}, {peer} {'-' if theirs is None else f'{theirs:.4g}'}", flush=True)

    def markdown(self) -> str:
        lines = ["| benchmark | unit | rtserve | peer | peer value | rtserve speed-up |", "| --- | --- | --- | --- | --- | --- |"]
        for name, unit, ours, peer, theirs, higher in self.rows:
            if theirs is None:
                speed = "—"
            else:
                speed = f"{(ours / theirs) if higher else (theirs / ours):.2f}x"
            lines.append(f"| {name} | {unit} | {ours:.4g} | {peer} | {'—' if theirs is None else f'{theirs:.4g}'} | {speed} |")
        return "\n".join(lines)


def compare_gemm(table: Table, out: dict, quick: bool, threads: int) -> None:
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_info = threadpool_limits = None
        print("  threadpoolctl not installed: numpy's BLAS threads are not pinned, its kernel not printed")
    blas = "unknown"
    if threadpool_info is not None:
        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        blas = "; ".join(f"{i.get('internal_api')} {i.get('version')} kernel={i.get('architecture')}" for i in infos) or "none"
    print(f"  numpy {np.__version__}, BLAS: {blas}")
    peak = bench.peak_gflops("f32") or float("nan")
    shapes = [(1, 768, 3072), (128, 384, 384), (512, 768, 3072)] if quick else GEMM_SHAPES
    min_time = 0.05 if quick else 0.25
    rng = np.random.default_rng(0)
    data = {}
    for m, k, n in shapes:
        # Batch-1 shapes are bandwidth-bound and move ±20% with where B's pages land: both
        # libraries get the median over 3 separately allocated copies of B.
        data[(m, k, n)] = (rng.standard_normal((m, k), dtype=np.float32),
                           [rng.standard_normal((k, n), dtype=np.float32) for _ in range(3 if m <= 8 else 1)])
    # Each library in its own phase (all shapes), so one's spinning worker threads never steal
    # the other's cores; OpenBLAS is held at 1 thread (asleep) during rtserve's phase.
    quiet = threadpool_limits(1) if threadpool_limits is not None else None
    ours = {}
    for (m, k, n), (a, bs) in data.items():
        ta = rt.tensor(a)
        ours[(m, k, n)] = median(2.0 * m * k * n / best_time(lambda: rt.matmul(ta, tb), min_time) / 1e9
                                 for tb in map(rt.tensor, bs))
    if quiet is not None:
        quiet.unregister()
    embeddings.settle()
    rows = []
    limits = threadpool_limits(threads) if threadpool_limits is not None else None
    for (m, k, n), (a, bs) in data.items():
        theirs = median(2.0 * m * k * n / best_time(lambda: a @ b, min_time) / 1e9 for b in bs)
        table.add(f"GEMM {m}x{k}x{n} f32", "GFLOP/s", ours[(m, k, n)], "numpy (OpenBLAS)", theirs)
        rows.append({"shape": f"{m}x{k}x{n}", "rtserve": ours[(m, k, n)], "numpy": theirs})
    if limits is not None:
        limits.unregister()
    out["gemm"] = {"threads": threads, "peak_gflops": peak, "blas": blas, "numpy": np.__version__, "rows": rows}
    print(f"  measured f32 FMA peak at {threads} threads: {peak:.0f} GFLOP/s")


def compare_minilm(table: Table, out: dict, quick: bool, threads: int) -> None:
    from rtserve import catalog

    if not catalog.is_pulled("minilm"):
        print("  skipped: the minilm folder is not pulled (python -m rtserve pull minilm)")
        return
    folder = catalog.resolve("minilm", quiet=True)
    texts = embeddings.sentences(128 if quick else embeddings.N_SENTENCES)
    sizes = [1, 32] if quick else BATCH_SIZES
    runtimes: dict = {}
    model = rt.load(folder)
    runtimes["rtserve"] = lambda t, b: model.embed(t, batch_size=b)
    tmp = tempfile.TemporaryDirectory(prefix="rtserve-compare-")
    if not (has("torch") and has("sentence_transformers")):
        print("  sentence-transformers: skipped (torch / sentence-transformers not installed)")
    else:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        runtimes["sentence-transformers"] = lambda t, b: st.encode(t, batch_size=b, show_progress_bar=False)
    if not has("onnxruntime"):
        print("  onnxruntime: skipped (not installed)")
    elif not (has("torch") and has("transformers") and has("onnx")):
        print("  onnxruntime: skipped (exporting the model needs torch, transformers and onnx)")
    else:
        path, _ = embeddings.export_onnx(Path(folder), Path(tmp.name), 17)[embeddings.ORT_PLAIN]
        ort_model = embeddings.OrtEncoder(path, folder, threads)
        runtimes["onnxruntime"] = lambda t, b: ort_model.embed(t, batch_size=b)
    rounds = 1 if quick else 3
    # Latency: batch 1, one short sentence; the runtimes take turns in blocks.
    latency = {name: [] for name in runtimes}
    for name, embed in runtimes.items():
        for _ in range(5):
            embed([embeddings.SHORT], 1)
    for _ in range(3):
        for name, embed in runtimes.items():
            for _ in range(10 if quick else 50):
                t0 = time.perf_counter()
                embed([embeddings.SHORT], 1)
                latency[name].append(time.perf_counter() - t0)
            embeddings.settle()
    p50 = {name: float(np.percentile(times, 50)) * 1e3 for name, times in latency.items()}
    # Throughput at each batch size, best of `rounds`, the runtimes taking turns.
    rates: dict[str, dict[int, float]] = {name: {} for name in runtimes}
    for size in sizes:
        for name, embed in runtimes.items():
            embed(texts[:size], size)
        best = {name: float("inf") for name in runtimes}
        for _ in range(rounds):
            for name, embed in runtimes.items():
                t0 = time.perf_counter()
                embed(texts, size)
                best[name] = min(best[name], time.perf_counter() - t0)
                embeddings.settle()
        for name in runtimes:
            rates[name][size] = len(texts) / best[name]
    for peer in [n for n in runtimes if n != "rtserve"] or [None]:
        table.add("MiniLM batch-1 p50 latency", "ms", p50["rtserve"], peer or "(no peer)",
                  p50.get(peer) if peer else None, higher_is_better=False)
        for size in sizes:
            table.add(f"MiniLM {len(texts)} sentences, batch {size}", "sentences/s", rates["rtserve"][size],
                      peer or "(no peer)", rates[peer][size] if peer else None)
    out["minilm"] = {"sentences": len(texts), "p50_ms": p50, "sentences_per_s": rates, "threads": threads}
    tmp.cleanup()


def compare_decode(table: Table, out: dict, quick: bool, threads: int) -> None:
    new, rounds = (16, 1) if quick else (128, 3)
    decode.THREADS = threads  # transformers' torch threads
    prompt = [int(x) for x in np.random.default_rng(1).integers(3, decode.SHAPE["vocab_size"], 32)]
    bandwidth = bench.read_bandwidth_gbs()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtserve-compare-decode-") as tmp:
        folder = Path(tmp) / "smollm2-135m-shape"
        params = decode.write_model(folder)
        for dtype in ("f32", "bf16"):
            bound = bandwidth * 1e9 / (params * (4 if dtype == "f32" else 2))
            pre, dec = decode.run_rtserve(folder, dtype, prompt, new, rounds)
            embeddings.settle()
            peer = decode.run_transformers(folder, dtype, prompt, new, rounds)
            if isinstance(peer, str):
                print(f"  transformers {dtype}: {peer}")
                peer = None
            name = "transformers" if peer else "(no peer)"
            table.add(f"decode SmolLM2-135M shape {dtype}, prefill 32 tokens", "tokens/s", pre, name, peer[0] if peer else None)
            table.add(f"decode SmolLM2-135M shape {dtype}, {new} new tokens", "tokens/s", dec, name, peer[1] if peer else None)
            rows.append({"dtype": dtype, "rtserve_prefill": pre, "rtserve_decode": dec, "bound": bound,
                         "transformers_prefill": peer[0] if peer else None,
                         "transformers_decode": peer[1] if peer else None})
    out["decode"] = {"read_gbs": bandwidth, "params_per_token": params, "new_tokens": new, "rows": rows, "threads": threads}
    print(f"  measured read bandwidth {bandwidth:.1f} GB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes, sizes and rounds (checks the script)")
    parser.add_argument("--threads", type=int, help="threads for every library (default: rtserve's pool)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", type=Path, help="write the raw figures here (for benches/plots.py)")
    args = parser.parse_args()
    if args.threads:
        rt.set_num_threads(args.threads)
    threads = rt.num_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    features = ", ".join(name for name, on in rt.cpu_features().items() if on)
    machine = f"{cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()} ({features}), {threads} threads"
    print(f"machine: {machine}")
    print(f"versions: {embeddings.versions()}")
    print(f"load average at start: {embeddings.load_average()}")
    out: dict = {"machine": machine, "machine_short": f"{cpu_model()}, {os.cpu_count()} logical CPUs, ISA {rt.isa()}", "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                 "versions": embeddings.versions(), "load_start": embeddings.load_average(), "quick": args.quick}
    table = Table()
    for section in args.only:
        print(f"{section}:", flush=True)
        {"gemm": compare_gemm, "minilm": compare_minilm, "decode": compare_decode}[section](table, out, args.quick, threads)
    out["load_end"] = embeddings.load_average()
    print(f"load average at end: {out['load_end']}")
    print()
    print(table.markdown())
    if args.json:
        out["table"] = table.markdown()
        args.json.write_text(json.dumps(out, indent=1))
        print(f"\nraw figures: {args.json}")


if __name__ == "__main__":
    main()
