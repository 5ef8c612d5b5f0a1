"""A loaded encoder: tokenizer + compiled graph + pooling, with ``embed`` for sentences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._core import Compiled
from ..tokenizer import Batch, Encoded, Tokenizer
from .bert import BertConfig
from .hf import SentenceConfig

__all__ = ["EncoderModel"]


class EncoderModel:
    """A BERT-style encoder compiled for one device.

    Example::

        model = rt.load("minilm")
        vecs = model.embed(["a sentence", "another one"])   # (2, 384) float32, unit norm
    """

    def __init__(
        self,
        *,
        folder: Path,
        config: BertConfig,
        sentence: SentenceConfig,
        tokenizer: Tokenizer,
        compiled: Compiled,
        dtype: str,
        device: str,
        has_token_types: bool,
    ) -> None:
        self.folder = folder
        self.config = config
        self.sentence = sentence
        self.tokenizer = tokenizer
        self.compiled = compiled
        self.dtype = dtype
        self.device = device
        self._has_token_types = has_token_types
        self._positions: np.ndarray = np.arange(config.max_position_embeddings, dtype=np.int64)
        #: the graph takes packed sequences (bert.build_graph(packed=True)): texts of
        #: different lengths run in one call with no padding
        self.packed = "segments" in compiled.inputs

    @property
    def dim(self) -> int:
        """Length of the embedding vectors."""
        return self.config.hidden_size

    @property
    def max_length(self) -> int:
        """Tokens per text after truncation (sentence-transformers max_seq_length, else the positions)."""
        limit = self.config.max_position_embeddings
        return min(self.sentence.max_seq_length or limit, limit)

    def __repr__(self) -> str:
        return (
            f"EncoderModel({str(self.folder)!r}, dim={self.dim}, layers={self.config.num_layers}, "
            f"pooling={self.sentence.pooling.mode}, normalize={self.sentence.normalize}, "
            f"dtype={self.dtype}, device={self.device!r})"
        )

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> Batch:
        """Token ids, attention mask and token types, right-padded (numpy int64 [n, seq])."""
        return self.tokenizer.encode(texts, self._limit(max_length))

    def forward(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray | None = None,
        token_type_ids: np.ndarray | None = None,
    ) -> np.ndarray:
        """The last hidden state, float32 [batch, seq, hidden]."""
        ids = _int64_2d("input_ids", input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _int64_2d("attention_mask", attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
        seq = ids.shape[1]
        self._check_positions(seq)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": self._positions[:seq]}
        if self._has_token_types:
            types = np.zeros_like(ids) if token_type_ids is None else _int64_2d("token_type_ids", token_type_ids)
            if types.shape != ids.shape:
                raise ValueError(f"token_type_ids has shape {types.shape}, input_ids {ids.shape}")
            inputs["token_type_ids"] = types
        batch = ids.shape[0]
        if batch == 0 or seq == 0:
            return np.zeros((batch, seq, self.dim), dtype=np.float32)
        if self.packed:  # the rows one after another, each its own segment: the same sums
            inputs = {name: a.reshape(1, -1) for name, a in inputs.items() if name != "position_ids"}
            inputs["position_ids"] = np.tile(self._positions[:seq], batch)
            inputs["segments"] = np.arange(0, batch * seq + 1, seq, dtype=np.int64)
            hidden = self.compiled.run(inputs)["last_hidden_state"].numpy()
            return hidden.reshape(batch, seq, self.dim)
        return self.compiled.run(inputs)["last_hidden_state"].numpy()

    def embed(
        self,
        texts: Sequence[str],
        normalize: bool | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> np.ndarray:
        """One vector per text, float32 [n, dim].

        Texts are truncated to ``max_length`` tokens (default: the model's), sorted by
        length and run ``batch_size`` at a time so padding stays small; pooling follows
        the model's sentence-transformers config, and ``normalize`` (default: whether
        the model has a Normalize module) scales each vector to unit length.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        encoded = self.tokenizer.encode_each(texts, self._limit(max_length))
        return self.embed_encoded(encoded, normalize, batch_size=batch_size)

    def embed_encoded(
        self,
        items: list[Encoded],
        normalize: bool | None = None,
        batch_size: int | None = None,
        max_batch_tokens: int | None = None,
        on_rows: Callable[[list[int], np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """``embed`` of already tokenized texts: sorted by length and run in batches of at
        most ``batch_size`` rows and ``max_batch_tokens`` padded tokens (rows x longest; a
        text longer than that runs alone), then normalized as ``embed`` does. Where the
        batches are cut is chosen by :func:`length_buckets` (padding against calls).
        ``on_rows(rows, out)``, if given, is called after each batch with the indices of the
        items it finished (their rows of ``out`` are final), so a caller can hand them on early."""
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        normalize = self.sentence.normalize if normalize is None else normalize
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids))
        lengths = [len(items[i].ids) for i in order]
        cut = packed_batches if self.packed else length_buckets
        for start, end in cut(lengths, batch_size, max_batch_tokens, self.config.hidden_size):
            rows = order[start:end]
            vectors = self.embed_tokens([items[i] for i in rows])
            if normalize:
                vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            out[rows] = vectors
            if on_rows is not None:
                on_rows(rows, out)
        return out

    def embed_tokens(self, items: list[Encoded]) -> np.ndarray:
        """Pooled, unnormalized vectors of already tokenized texts, run as one call: packed
        one after another where the graph takes packed sequences, else as one padded batch
        (``embed_encoded`` calls it per batch)."""
        if self.packed:
            return self._embed_packed(items)
        batch = self.tokenizer.pad(items)
        hidden = self.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
        return pool(self.sentence.pooling.mode, hidden, batch.attention_mask)

    def _embed_packed(self, items: list[Encoded]) -> np.ndarray:
        lengths = np.array([len(e.ids) for e in items], dtype=np.int64)
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._check_positions(int(lengths.max()))
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total == 0:
            return np.zeros((len(items), self.dim), dtype=np.float32)
        ids = np.fromiter((t for e in items for t in e.ids), dtype=np.int64, count=total)
        mask = np.fromiter((t for e in items for t in e.attention_mask), dtype=np.int64, count=total)
        inputs = {
            "input_ids": ids.reshape(1, total),
            "attention_mask": mask.reshape(1, total),
            "position_ids": np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths),
            "segments": offsets,
        }
        if self._has_token_types:
            types = np.fromiter((t for e in items for t in e.type_ids), dtype=np.int64, count=total)
            inputs["token_type_ids"] = types.reshape(1, total)
        hidden = self.compiled.run(inputs)["last_hidden_state"].numpy().reshape(total, self.dim)
        return pool_packed(self.sentence.pooling.mode, hidden, mask, offsets)

    def _check_positions(self, seq: int) -> None:
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"sequence of {seq} tokens is longer than the model's "
                f"max_position_embeddings {self.config.max_position_embeddings}"
            )

    def _limit(self, max_length: int | None) -> int:
        if max_length is None:
            return self.max_length
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        return min(max_length, self.config.max_position_embeddings)


#: tokens one packed call takes at most: activations of about 1024 rows stay in the caches,
#: 8192 (the server's batch budget) measured 8% slower on MiniLM
PACKED_CALL_TOKENS = 1024

#: the fixed cost of one model call (dispatch, thread wake-ups, small-batch inefficiency),
#: in padded tokens: about what one call of a short text costs beyond its tokens on MiniLM
CALL_COST_TOKENS = 32


def length_buckets(
    lengths: Sequence[int], batch_size: int | None, max_batch_tokens: int | None, hidden: int
) -> list[tuple[int, int]]:
    """Cuts inputs sorted by length (``lengths``, ascending) into batches ``[start, end)``.

    Each batch holds at most ``batch_size`` rows and ``max_batch_tokens`` padded tokens
    (rows x its longest; one row always fits). Within those limits the cuts minimise the
    estimated work: padded tokens, each costing ``1 + L / (3 * hidden)`` (attention grows with
    the padded length L), plus :data:`CALL_COST_TOKENS` per call. Cuts are only placed
    between different lengths (dynamic programming over the distinct lengths), so one
    batch of mixed-length texts is split where its padding would cost more than a call.
    """
    n = len(lengths)
    if n == 0:
        return []
    starts = [0] + [k for k in range(1, n) if lengths[k] != lengths[k - 1]]
    ends = [*starts[1:], n]

    def cap(longest: int) -> int:
        rows = n if batch_size is None else batch_size
        if max_batch_tokens is not None:
            rows = min(rows, max(1, max_batch_tokens // max(longest, 1)))
        return max(rows, 1)

    def cost(first: int, last: int) -> float:
        rows = ends[last] - starts[first]
        longest = lengths[ends[last] - 1]
        calls = -(-rows // cap(longest))
        return rows * longest * (1.0 + longest / (3.0 * hidden)) + calls * CALL_COST_TOKENS

    groups = len(starts)
    best = [0.0] * (groups + 1)
    cut = [0] * (groups + 1)
    for last in range(groups):
        best[last + 1], cut[last + 1] = min((best[first] + cost(first, last), first) for first in range(last + 1))
    spans = []
    last = groups
    while last > 0:
        first = cut[last]
        spans.append((starts[first], ends[last - 1]))
        last = first
    batches = []
    for start, end in reversed(spans):
        rows = end - start
        calls = -(-rows // cap(lengths[end - 1]))
        size = -(-rows // calls)  # equal shares, not a full batch and a runt
        batches += [(b, min(b + size, end)) for b in range(start, end, size)]
    return batches


def packed_batches(
    lengths: Sequence[int], batch_size: int | None, max_batch_tokens: int | None, hidden: int
) -> list[tuple[int, int]]:
    """Cuts inputs (``lengths`` in order) into packed batches ``[start, end)`` of at most
    ``batch_size`` inputs and ``min(max_batch_tokens, PACKED_CALL_TOKENS)`` tokens (one input
    always fits). Packed, a batch costs its real tokens whatever their lengths, so batches
    are filled, to even shares (no runt at the end). (``hidden``: unused, the signature of
    :func:`length_buckets`.)"""
    del hidden
    n = len(lengths)
    if n == 0:
        return []
    cap = PACKED_CALL_TOKENS if max_batch_tokens is None else min(max_batch_tokens, PACKED_CALL_TOKENS)
    rows_cap = n if batch_size is None else batch_size
    total = sum(lengths)
    share_tokens = -(-total // -(-total // cap)) if total else cap  # <= cap
    share_rows = -(-n // -(-n // rows_cap))  # <= rows_cap
    cuts = []
    start, tokens = 0, 0
    for i, length in enumerate(lengths):
        if i > start and (i - start >= share_rows or tokens + length > share_tokens):
            cuts.append((start, i))
            start, tokens = i, 0
        tokens += length
    cuts.append((start, n))
    return cuts


def pool_packed(mode: str, hidden: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """:func:`pool` of packed sequences: ``hidden`` [tokens, dim], ``mask`` [tokens], text i
    being rows ``offsets[i]:offsets[i+1]``; an empty text gets zeros."""
    n, dim = len(offsets) - 1, hidden.shape[1]
    out = np.zeros((n, dim), dtype=np.float32)
    starts = offsets[:-1]
    full = np.flatnonzero(offsets[1:] > starts)
    if len(full) == 0:
        return out
    if mode == "cls":
        out[full] = hidden[starts[full]]
        return out
    m = mask.astype(np.float32)[:, None]
    count = np.add.reduceat(m[:, 0], starts[full])
    if mode == "last":
        out[full] = hidden[starts[full] + np.maximum(count.astype(np.int64) - 1, 0)]
        return out
    if mode == "max":
        out[full] = np.maximum.reduceat(np.where(m > 0, hidden, np.float32(-1e9)), starts[full], axis=0)
        return out
    total = np.add.reduceat(hidden * m, starts[full], axis=0)
    count = np.maximum(count, 1e-9)[:, None]
    out[full] = total / (np.sqrt(count) if mode == "mean_sqrt_len" else count)
    return out


def pool(mode: str, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers pooling of ``hidden`` [n, seq, dim] under ``mask`` [n, seq]."""
    m = mask.astype(np.float32)[:, :, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "last":
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        return hidden[np.arange(hidden.shape[0]), last]
    if mode == "max":
        return np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1)
    total = (hidden * m).sum(axis=1)
    count = np.maximum(m.sum(axis=1), 1e-9)
    if mode == "mean_sqrt_len":
        return total / np.sqrt(count)
    return total / count


def _int64_2d(name: str, a: np.ndarray) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, seq], got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)
