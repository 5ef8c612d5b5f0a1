"""Fused attention timing: batch 1, seq 4096, 8 heads, head_dim 64, causal and not,
at 1 and 2 threads, for every ISA tier this CPU has.

    python benches/attention.py
"""

from __future__ import annotations

import time

import numpy as np

import rtserve as rt


def main() -> None:
    rng = np.random.default_rng(0)
    b, s, h, d = 1, 4096, 8, 64
    q, k, v = (rng.standard_normal((b, s, h, d), dtype=np.float32) for _ in range(3))
    tq, tk, tv = rt.tensor(q), rt.tensor(k), rt.tensor(v)
    flops = 4.0 * b * h * s * s * d  # QK^T and PV
    print(f"attention b={b} seq={s} heads={h} head_dim={d}")
    for isa in rt.available_isas():
        rt.set_isa(isa)
        for threads in (1, 2):
            rt.set_num_threads(threads)
            for causal in (False, True):
                rt.attention(tq, tk, tv, causal=causal)
                best = float("inf")
                for _ in range(2 if isa == "generic" else 3):
                    t0 = time.perf_counter()
                    rt.attention(tq, tk, tv, causal=causal)
                    best = min(best, time.perf_counter() - t0)
                work = flops / 2 if causal else flops
                print(f"  {isa:8} threads={threads} causal={causal!s:5}: {best * 1e3:8.1f} ms  {work / best / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
