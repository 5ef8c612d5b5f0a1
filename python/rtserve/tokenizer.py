"""Text to token ids with a Hugging Face ``tokenizer.json`` (the ``tokenizers`` package).

``Tokenizer.from_folder(folder)`` reads ``tokenizer.json``; ``encode(texts, max_length)``
returns a :class:`Batch` of numpy arrays (``input_ids``, ``attention_mask``,
``token_type_ids``, all int64 ``[batch, seq]``), right-padded to the longest text and
truncated to ``max_length`` tokens (special tokens included), as Hugging Face
tokenizers do with ``padding=True, truncation=True``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._core import WeightsError

__all__ = ["Batch", "Encoded", "Tokenizer"]


@dataclass(frozen=True)
class Encoded:
    """One text's token ids, attention mask and token type ids (unpadded)."""

    ids: list[int]
    attention_mask: list[int]
    type_ids: list[int]


@dataclass(frozen=True)
class Batch:
    """Token ids of a batch of texts, right-padded; ``lengths`` counts real tokens."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)


class Tokenizer:
    """A fast (Rust) Hugging Face tokenizer loaded from ``tokenizer.json``.

    Example::

        tok = Tokenizer.from_folder(folder)
        batch = tok.encode(["hello world"], max_length=256)
        batch.input_ids  # array([[ 101, 7592, 2088,  102]])
    """

    def __init__(self, inner: object, path: Path) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.path = path
        self.pad_id = _pad_id(inner)
        self._byte_ids: frozenset[int] | None = None
        # tokenizers >= 0.21 can skip the character offsets, which nothing here reads: the
        # same ids, 20-30% less time per text (MiniLM's tokenizer, one thread: 16.5 vs
        # 12.0 us for a 12-token sentence).
        self._encode_batch = getattr(inner, "encode_batch_fast", None) or inner.encode_batch  # type: ignore[attr-defined]

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        """Load ``folder/tokenizer.json``; a missing or unreadable file raises WeightsError."""
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise WeightsError(f"{path}: tokenizer.json is missing (the model folder needs one)")
        try:
            from tokenizers import Tokenizer as HfTokenizer
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise ImportError("rtserve needs the 'tokenizers' package: pip install tokenizers") from e
        try:
            inner = HfTokenizer.from_file(str(path))
        except Exception as e:  # the Rust tokenizer raises its own Exception type
            raise WeightsError(f"{path}: not a valid tokenizer.json ({e})") from e
        inner.no_padding()
        inner.no_truncation()
        return cls(inner, path)

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> Batch:
        """Token ids for ``texts`` (each truncated to ``max_length`` tokens), right-padded."""
        return self.pad(self.encode_each(texts, max_length))

    def encode_each(self, texts: Sequence[str], max_length: int | None = None) -> list[Encoded]:
        """Each text's (ids, attention mask, type ids), truncated, unpadded."""
        texts = _check_texts(texts)
        if not texts:
            return []
        inner = self._inner
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        # Truncation is a setting of the shared tokenizer: one caller at a time.
        with self._lock:
            if max_length is not None:
                inner.enable_truncation(max_length)  # type: ignore[attr-defined]
            try:
                encodings = self._encode_batch(texts)
            finally:
                inner.no_truncation()  # type: ignore[attr-defined]
        return [Encoded(e.ids, e.attention_mask, e.type_ids) for e in encodings]

    def pad(self, items: Sequence[Encoded]) -> Batch:
        """Right-pads encodings to the longest one."""
        n = len(items)
        seq = max((len(e.ids) for e in items), default=0)
        ids = np.full((n, seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, seq), dtype=np.int64)
        types = np.zeros((n, seq), dtype=np.int64)
        for i, e in enumerate(items):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = e.attention_mask
            types[i, :k] = e.type_ids
        return Batch(ids, mask, types)

    def count(self, texts: Sequence[str], max_length: int | None = None) -> list[int]:
        """The number of tokens of each text (special tokens included), after truncation."""
        return [len(e.ids) for e in self.encode_each(texts, max_length)]

    def encode_ids(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One text's token ids, untruncated; ``add_special_tokens`` as in transformers (a BOS, say)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self._inner.encode(text, add_special_tokens=add_special_tokens).ids)  # type: ignore[attr-defined]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; bytes of an incomplete UTF-8 character decode to U+FFFD."""
        return str(self._inner.decode(list(ids), skip_special_tokens=skip_special_tokens))  # type: ignore[attr-defined]

    @property
    def byte_token_ids(self) -> frozenset[int]:
        """Ids of byte-fallback tokens (``<0x41>``...): a run of them decodes as one byte
        string, so a later byte can change how the earlier ones of its run decode."""
        found = self._byte_ids
        if found is None:
            vocab = self._inner.get_vocab(with_added_tokens=False)  # type: ignore[attr-defined]
            found = frozenset(i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t.endswith(">"))
            self._byte_ids = found
        return found

    def token_to_id(self, token: str) -> int | None:
        """The id of a token of the vocabulary (added tokens included), or None."""
        found = self._inner.token_to_id(token)  # type: ignore[attr-defined]
        return None if found is None else int(found)

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return int(self._inner.get_vocab_size(with_added_tokens=True))  # type: ignore[attr-defined]


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got a single str (wrap it in a list)")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return out


def _pad_id(inner: object) -> int:
    """The id of the padding token ([PAD], <pad>), or 0 when the vocabulary has none."""
    for token in ("[PAD]", "<pad>", "<|pad|>"):
        found = inner.token_to_id(token)  # type: ignore[attr-defined]
        if found is not None:
            return int(found)
    return 0
