"""Per-sequence key/value cache of a decoder, owned by the runtime (numpy f32 buffers).

Each sequence gets two arrays ``[layers, kv_heads, capacity, head_dim]`` allocated once
(capacity = prompt + max_tokens, at most the model's context), so decoding never
reallocates. Slot ``t`` of head ``h`` holds token ``t``'s key (after rope) and value. The
decode graph reads every layer as ``[batch, ctx, kv_heads, head_dim]``: a zero-copy strided
view for a batch of one, a zero-padded stack (:func:`gather`) for a batch of several.

Head-major, each kv head's keys are one contiguous run, which attention reads as one
sequential stream; slot-major, they were 256-byte pieces 768 bytes apart (SmolLM2's 3
heads of 64), and a decode step read the whole cache from DRAM at latency speed (Zen 5,
1 query x 9 heads over 160 cold keys, 2 threads: 11.7 µs per layer against 17.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["KVCache", "gather"]


class KVCache:
    """Keys and values of one sequence; ``length`` slots are filled.

    Example::

        cache = KVCache(layers=2, capacity=64, kv_heads=2, head_dim=16)
        cache.nbytes   # 2 * 2 * 64 * 2 * 16 * 4 = 32768
    """

    def __init__(self, layers: int, capacity: int, kv_heads: int, head_dim: int) -> None:
        shape = (layers, kv_heads, capacity, head_dim)
        #: keys, ``[layers, kv_heads, capacity, head_dim]``
        self.k = np.zeros(shape, dtype=np.float32)
        #: values, the same shape
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        """Tokens the cache can hold."""
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys and values together."""
        return self.k.nbytes + self.v.nbytes

    def write(self, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Stores k, v ``[layers, n, kv_heads, head_dim]`` at slots start..start+n-1."""
        n = k.shape[1]
        if start + n > self.capacity:
            raise ValueError(f"KV cache full: {start + n} tokens for a capacity of {self.capacity}")
        self.k[:, :, start : start + n] = k.transpose(0, 2, 1, 3)
        self.v[:, :, start : start + n] = v.transpose(0, 2, 1, 3)
        self.length = max(self.length, start + n)

    def view(self, ctx: int) -> tuple[np.ndarray, np.ndarray]:
        """Slots 0..ctx-1 as ``[layers, 1, ctx, kv_heads, head_dim]`` views (no copy)."""
        return self.k[:, None, :, :ctx].transpose(0, 1, 3, 2, 4), self.v[:, None, :, :ctx].transpose(0, 1, 3, 2, 4)

    def __repr__(self) -> str:
        layers, kvh, cap, hd = self.k.shape
        return f"KVCache(layers={layers}, length={self.length}, capacity={cap}, kv_heads={kvh}, head_dim={hd}, nbytes={self.nbytes})"


def gather(caches: Sequence[KVCache], ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values ``[layers, batch, ctx, kv_heads, head_dim]`` of several caches.

    Row b holds cache b's first ``min(length, ctx)`` slots and zeros after them. For one
    cache that is large enough, the result is a view (no copy). Either way each head's keys
    stay contiguous (the arrays are strided views of head-major buffers).
    """
    if len(caches) == 1 and caches[0].capacity >= ctx:
        return caches[0].view(ctx)
    layers, kvh, _, hd = caches[0].k.shape
    k = np.zeros((layers, len(caches), kvh, ctx, hd), dtype=np.float32)
    v = np.zeros_like(k)
    for b, c in enumerate(caches):
        n = min(c.length, ctx)
        k[:, b, :, :n] = c.k[:, :, :n]
        v[:, b, :, :n] = c.v[:, :, :n]
    return k.transpose(0, 1, 3, 2, 4), v.transpose(0, 1, 3, 2, 4)
