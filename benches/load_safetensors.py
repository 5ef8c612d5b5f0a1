"""Time rt.load_safetensors against safetensors.numpy.load_file on the real MiniLM weights.

Run: python benches/load_safetensors.py   (pulls `minilm` on first use)
"""

from __future__ import annotations

import time

import rtserve as rt
from rtserve import catalog

try:
    from safetensors.numpy import load_file
except ImportError:  # pragma: no cover - the test extra installs it
    load_file = None


def main() -> None:
    path = catalog.pull("minilm", quiet=True) / "model.safetensors"
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    for _ in range(3):
        t0 = time.perf_counter()
        tensors = rt.load_safetensors(path)
        t1 = time.perf_counter()
        line = f"rt.load_safetensors {1e3 * (t1 - t0):.2f} ms ({len(tensors)} tensors)"
        if load_file is not None:
            load_file(path)
            line += f"   safetensors.numpy.load_file {1e3 * (time.perf_counter() - t1):.2f} ms"
        print(line)


if __name__ == "__main__":
    main()
