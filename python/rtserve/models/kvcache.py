"""Per-sequence key/value cache of a decoder, owned by the runtime (numpy f32 buffers).

Each sequence gets two arrays ``[layers, capacity, kv_heads, head_dim]`` allocated once
(capacity = prompt + max_tokens, at most the model's context), so decoding never
reallocates. Slot ``t`` holds token ``t``'s key (after rope) and value. The decode graph
reads ``cache[layer, :ctx]`` for every layer: a zero-copy view for a batch of one, a
zero-padded stack (:func:`gather`) for a batch of several.
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
        shape = (layers, capacity, kv_heads, head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.length = 0

    @property
    def capacity(self) -> int:
        """Tokens the cache can hold."""
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys and values together."""
        return self.k.nbytes + self.v.nbytes

    def write(self, start: int, k: np.ndarray, v: np.ndarray) -> None:
        """Stores k, v ``[layers, n, kv_heads, head_dim]`` at slots start..start+n-1."""
        n = k.shape[1]
        if start + n > self.capacity:
            raise ValueError(f"KV cache full: {start + n} tokens for a capacity of {self.capacity}")
        self.k[:, start : start + n] = k
        self.v[:, start : start + n] = v
        self.length = max(self.length, start + n)

    def __repr__(self) -> str:
        layers, cap, kvh, hd = self.k.shape
        return f"KVCache(layers={layers}, length={self.length}, capacity={cap}, kv_heads={kvh}, head_dim={hd}, nbytes={self.nbytes})"


def gather(caches: Sequence[KVCache], ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values ``[layers, batch, ctx, kv_heads, head_dim]`` of several caches.

    Row b holds cache b's first ``min(length, ctx)`` slots and zeros after them. For one
    cache that is large enough, the result is a view (no copy).
    """
    if len(caches) == 1 and caches[0].capacity >= ctx:
        c = caches[0]
        return c.k[:, None, :ctx], c.v[:, None, :ctx]
    layers, _, kvh, hd = caches[0].k.shape
    k = np.zeros((layers, len(caches), ctx, kvh, hd), dtype=np.float32)
    v = np.zeros_like(k)
    for b, c in enumerate(caches):
        n = min(c.length, ctx)
        k[:, b, :n] = c.k[:, :n]
        v[:, b, :n] = c.v[:, :n]
    return k, v
