"""Kernel benchmarks: GEMM (the kernels issue's shapes), fused attention, layer/RMS norm.

``track_*`` report GFLOP/s (or GB/s for the bandwidth-bound norms) and the share of this
machine's measured peak (``python -m rtserve bench --peak``, measured in the same process);
``time_*`` report the latency of one call. Threads: the rtserve pool's default
(``RTSERVE_NUM_THREADS``, else the physical cores).
"""

from __future__ import annotations

import numpy as np

from .common import SMOKE, best_time, peak_gflops, read_bandwidth_gbs, rt

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

# (M, K, N) of the kernels issue (benches/gemm.py): square, batch-1 decode, small-batch encoder.
GEMM_SHAPES = ["1x768x3072", "1x576x1536", "32x384x1536", "128x384x384", "512x768x3072",
               "1024x1024x1024", "2048x2048x2048"]
if SMOKE:
    GEMM_SHAPES = ["1x64x96", "16x64x48"]


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split("x")]


class Gemm:
    """C = A·B with f32 A; B f32 (``rt.matmul``) or bf16 weights prepacked once (``rt.linear``)."""

    params = (GEMM_SHAPES, ["f32", "bf16 prepacked"])
    param_names = ["MxKxN", "weights"]
    timeout = 300

    def setup(self, shape: str, weights: str) -> None:
        m, k, n = _dims(shape)
        rng = np.random.default_rng(0)
        a = rt.tensor(rng.standard_normal((m, k), dtype=np.float32))
        b = rng.standard_normal((k, n), dtype=np.float32)
        if weights == "f32":
            tb = rt.tensor(b)
            self.call = lambda: rt.matmul(a, tb)
            self.peak = "f32"
        else:
            if ml_dtypes is None:
                raise NotImplementedError("bf16 weights need ml_dtypes")
            packed = rt.prepack(rt.tensor(b.T.astype(ml_dtypes.bfloat16)))
            self.call = lambda: rt.linear(a, packed)
            self.peak = "bf16"
        self.flops = 2.0 * m * k * n

    def time_gemm(self, shape: str, weights: str) -> None:
        self.call()

    def track_gflops(self, shape: str, weights: str) -> float:
        return self.flops / best_time(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_percent_of_peak(self, shape: str, weights: str) -> float:
        """% of the measured f32 FMA peak (f32 weights) or bf16 dot peak (bf16 weights)."""
        return 100.0 * self.track_gflops(shape, weights) / peak_gflops(self.peak)

    track_percent_of_peak.unit = "% of measured peak"


# batch x seq x heads x head_dim: BERT-base at batch 8 x seq 128, and benches/attention.py's long sequence.
ATTENTION_SHAPES = ["8x128x12x64", "1x4096x8x64"] if not SMOKE else ["1x64x2x32"]


class Attention:
    """``rt.attention`` (fused, f32), causal and not; FLOPs 4·b·h·s²·d, halved for causal."""

    params = (ATTENTION_SHAPES, [False, True])
    param_names = ["BxSxHxD", "causal"]
    timeout = 300

    def setup(self, shape: str, causal: bool) -> None:
        b, s, h, d = _dims(shape)
        rng = np.random.default_rng(0)
        q, k, v = (rt.tensor(rng.standard_normal((b, s, h, d), dtype=np.float32)) for _ in range(3))
        self.call = lambda: rt.attention(q, k, v, causal=causal)
        self.flops = 4.0 * b * h * s * s * d / (2 if causal else 1)

    def time_attention(self, shape: str, causal: bool) -> None:
        self.call()

    def track_gflops(self, shape: str, causal: bool) -> float:
        return self.flops / best_time(self.call) / 1e9

    track_gflops.unit = "GFLOP/s"

    def track_percent_of_peak(self, shape: str, causal: bool) -> float:
        return 100.0 * self.track_gflops(shape, causal) / peak_gflops("f32")

    track_percent_of_peak.unit = "% of measured f32 FMA peak"


# rows x hidden: a MiniLM batch (64 x 32 tokens x 384) and a tensor far larger than the caches.
NORM_SHAPES = ["2048x384", "16384x1024"] if not SMOKE else ["64x64"]


class Norms:
    """``rt.layer_norm`` / ``rt.rms_norm`` over the last dim, f32 with weights. They are
    bandwidth-bound: the figure is GB/s moved (read x + write out) and its share of the
    measured read bandwidth (above 100% when the tensor fits in the caches)."""

    params = (NORM_SHAPES, ["layer_norm", "rms_norm"])
    param_names = ["rowsxhidden", "op"]
    timeout = 120

    def setup(self, shape: str, op: str) -> None:
        rows, hidden = _dims(shape)
        rng = np.random.default_rng(0)
        x = rt.tensor(rng.standard_normal((rows, hidden), dtype=np.float32))
        w, b = rt.tensor(np.ones(hidden, np.float32)), rt.tensor(np.zeros(hidden, np.float32))
        self.call = (lambda: rt.layer_norm(x, w, b)) if op == "layer_norm" else (lambda: rt.rms_norm(x, w))
        self.bytes = 2.0 * rows * hidden * 4

    def time_norm(self, shape: str, op: str) -> None:
        self.call()

    def track_gbs(self, shape: str, op: str) -> float:
        return self.bytes / best_time(self.call) / 1e9

    track_gbs.unit = "GB/s"

    def track_percent_of_bandwidth(self, shape: str, op: str) -> float:
        return 100.0 * self.track_gbs(shape, op) / read_bandwidth_gbs()

    track_percent_of_bandwidth.unit = "% of measured read bandwidth"
