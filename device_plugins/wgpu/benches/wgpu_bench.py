"""Benchmarks of the wgpu device, for docs/benchmarks.md's "wgpu" section.

- GEMM 1024x1024x1024 f32: a graph ``x @ W`` with W a constant (resident on the device) and x
  a graph input; ms per ``run`` (upload x, one GEMM dispatch, download the product) and GFLOP/s,
  median of 5 after a warm-up.
- MiniLM (all-MiniLM-L6-v2, f32): sentences/s of ``model.embed(texts, batch_size=64)`` over
  256 sentences (``--sentences``) from benches/embeddings.py (5-60 words), best of 3
  (``--rounds``) after a warm-up batch; the whole
  user-level call (tokenize, upload, run, download, pool).

Each figure is also taken on the CPU device for scale. On a machine with a GPU the same
command measures the GPU (wgpu prefers a high-performance adapter over lavapipe;
``WGPU_BACKEND=vulkan|metal|dx12`` picks the backend):

    python device_plugins/wgpu/benches/wgpu_bench.py                 # minilm from the catalog
    python device_plugins/wgpu/benches/wgpu_bench.py --minilm FOLDER
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import rtserve as rt

BENCHES = Path(__file__).resolve().parents[3] / "benches"
sys.path.insert(0, str(BENCHES))


def gemm(device: str, n: int = 1024, rounds: int = 5) -> float:
    """Median ms of one n^3 product through a compiled graph."""
    rng = np.random.default_rng(0)
    g = rt.Graph()
    x = g.input("x", (n, n), "f32")
    g.output("y", g.matmul(x, g.constant(rng.standard_normal((n, n)).astype(np.float32))))
    m = g.compile(device=device)
    a = rng.standard_normal((n, n)).astype(np.float32)
    m.run({"x": a})
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        m.run({"x": a})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def embed(device: str, folder: str | Path, n: int = 256, batch: int = 64, rounds: int = 3) -> float:
    from embeddings import sentences  # benches/embeddings.py

    texts = sentences(n)
    model = rt.load(folder, device=device)
    model.embed(texts[:batch], batch_size=batch)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        model.embed(texts, batch_size=batch)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", default="minilm", help="model folder or catalog name")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--sentences", type=int, default=256, help="sentences per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (best is kept)")
    args = parser.parse_args()
    info = next(d for d in rt.devices() if d["name"] == "wgpu")
    print(f"wgpu: {info['description']}")
    if not info["available"]:
        sys.exit("wgpu unavailable")
    devices = ("wgpu",) if args.skip_cpu else ("wgpu", "cpu")
    print("| device | work | result |")
    print("| --- | --- | --- |")
    for device in devices:
        ms = gemm(device)
        print(f"| {device} | GEMM 1024³ f32 (graph run: upload, product, download) | {ms:.1f} ms, {2 * 1024**3 / ms / 1e6:.1f} GFLOP/s |")
    for device in devices:
        sps = embed(device, args.minilm, n=args.sentences, rounds=args.rounds)
        print(f"| {device} | all-MiniLM-L6-v2 f32, batch 64 | {sps:.1f} sentences/s |")


if __name__ == "__main__":
    main()
