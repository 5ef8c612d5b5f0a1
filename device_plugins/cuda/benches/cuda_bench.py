"""Model-level benchmarks of the cuda device, for docs/benchmarks.md's CUDA section.

- MiniLM (all-MiniLM-L6-v2, f32): sentences/s of ``model.embed(texts, batch_size=256)`` over
  2048 sentences from benches/embeddings.py (5-60 words), best of 3 after a warm-up; the whole
  user-level call (tokenize, upload, run, download, pool) on one GPU.
- Decode on the SmolLM2-135M shape (random weights, benches/decode.py's model): a 32-token
  prompt continued greedily by 128 tokens, batch 1, f32 and bf16 weights; prefill tokens/s and
  decode tokens/s (median of 3), on cuda and, for scale, on the CPU.

    python device_plugins/cuda/benches/cuda_bench.py --minilm FOLDER   # FOLDER: the model
    python device_plugins/cuda/benches/cuda_bench.py                   # minilm from the catalog
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import rtserve as rt

BENCHES = Path(__file__).resolve().parents[3] / "benches"
sys.path.insert(0, str(BENCHES))


def embed_throughput(folder: str | Path, n: int = 2048, batch: int = 256) -> tuple[float, int]:
    from embeddings import sentences  # benches/embeddings.py

    texts = sentences(n)
    model = rt.load(folder, device="cuda")
    model.embed(texts[:batch], batch_size=batch)  # warm-up: kernels, plans, arena
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        model.embed(texts, batch_size=batch)
        best = max(best, n / (time.perf_counter() - t0))
    return best, batch


def decode(device: str, dtype: str, rounds: int = 3, new: int = 128) -> tuple[float, float]:
    from decode import run_rtserve, write_model  # benches/decode.py

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        write_model(folder)
        prompt = [int(t) for t in np.random.default_rng(1).integers(3, 49152, 32)]
        if device == "cpu":
            return run_rtserve(folder, dtype, prompt, new, rounds)
        original = rt.load

        def load_on_device(*args, **kwargs):
            kwargs.setdefault("device", device)
            return original(*args, **kwargs)

        import decode as decode_module

        decode_module.rt.load = load_on_device
        try:
            return run_rtserve(folder, dtype, prompt, new, rounds)
        finally:
            decode_module.rt.load = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minilm", default="minilm", help="model folder or catalog name")
    parser.add_argument("--skip-cpu", action="store_true", help="decode on cuda only")
    parser.add_argument("--embed-only", action="store_true")
    parser.add_argument("--decode-only", action="store_true")
    args = parser.parse_args()
    cuda = next(d for d in rt.devices() if d["name"] == "cuda")
    print(f"device: {cuda['description']}")
    if not cuda["available"]:
        sys.exit("cuda unavailable")
    if not args.decode_only:
        sps, batch = embed_throughput(args.minilm)
        print(f"| MiniLM-L6 f32 embed, batch {batch} | {sps:.0f} sentences/s |")
    if args.embed_only:
        return
    print("| decode, SmolLM2-135M shape | device | weights | prefill tok/s | decode tok/s |")
    for dtype in ("f32", "bf16"):
        for device in ("cuda",) if args.skip_cpu else ("cuda", "cpu"):
            prefill, dec = decode(device, dtype)
            print(f"| decode | {device} | {dtype} | {prefill:.0f} | {dec:.1f} |")


if __name__ == "__main__":
    main()
