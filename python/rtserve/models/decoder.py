"""A loaded causal language model: ``forward``, ``generate``, ``stream``, ``chat`` and batched ``step``.

The model compiles two graphs once (:mod:`rtserve.models.llama`): *prefill* runs a whole
prompt and returns its keys and values, *decode* runs one new token for each of a batch of
sequences against their caches. A :class:`Sequence` owns its :class:`KVCache`, its token
ids, its sampling settings and its incremental detokenizer. :meth:`DecoderModel.step`
advances any set of sequences by one token together: sequences not yet started are
prefilled (one prompt at a time), the others decode as one batch, so sequences may join
and leave between steps. ``generate`` is ``step`` on a batch of one.

Example::

    model = rt.load("path/to/SmolLM2-135M-Instruct")
    model.generate("The capital of France is", max_tokens=16).text
    for piece in model.stream("Once upon a time", max_tokens=32):
        print(piece, end="")
    model.chat([{"role": "user", "content": "Hi!"}], max_tokens=32).text
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._core import Compiled
from ..sampling import SamplingParams, sample
from ..tokenizer import Tokenizer
from .chat import ChatTemplate, no_template_error
from .kvcache import KVCache, gather
from .llama import LlamaConfig

__all__ = ["DecoderModel", "Generation", "Sequence", "StepOutput", "TextStream"]

#: decode contexts are rounded up to a multiple of this many slots, so the compiled decode
#: graph sees few distinct shapes (each new shape costs a memory plan) and a lone sequence's
#: cache can be passed without a copy; the extra slots are masked out.
CTX_BUCKET = 32
#: ids before the unsettled ones that incremental detokenization decodes again, so that
#: decoders that look at neighbours (a leading space stripped at the start, byte fallback)
#: see the same context as in a whole decode
DETOKENIZE_CONTEXT = 4


@dataclass(frozen=True)
class Generation:
    """The result of ``generate``/``chat``: ``text`` (``str(g)`` gives it too), the generated
    ``token_ids`` (a final stop/eos token included, its text not), ``finish_reason`` "stop"
    (eos, stop token or stop string) or "length" (max_tokens or the context is full)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_token_ids: list[int]

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class StepOutput:
    """What one step did to one sequence: the new token, the text it made available (may be ""
    while a multi-byte character or a possible stop string is incomplete) and, when the
    sequence ended at this step, why."""

    sequence: Sequence
    token_id: int
    text: str
    finish_reason: str | None


class Sequence:
    """One prompt being continued: its cache, tokens, sampling settings and text so far.

    Made by :meth:`DecoderModel.new_sequence`; advanced by :meth:`DecoderModel.step`.
    """

    _ids = itertools.count()

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens: int,
        stop: tuple[str, ...],
        stop_ids: frozenset[int],
        limit: int,
    ) -> None:
        self.id = next(Sequence._ids)
        self.prompt_ids = prompt_ids
        self.params = params
        self.max_tokens = max_tokens
        self.stop = stop
        self.stop_ids = stop_ids
        #: tokens (prompt + generated) the sequence may hold in its cache
        self.limit = limit
        self.token_ids: list[int] = []
        self.cache: KVCache | None = None
        self.finish_reason: str | None = None
        self._rng = params.rng()
        self._emitted = ""  # text handed out so far
        self._final: str | None = None
        # Incremental detokenization (see _decoded): the generated ids settled so far decode
        # to `_settled_text`; those from `_window` on decode to `_head`.
        self._settled_text = ""
        self._window = 0
        self._head = ""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The generated text: final once finished, else what steps have handed out."""
        return self._final if self._final is not None else self._emitted

    def result(self) -> Generation:
        """The finished sequence as a :class:`Generation`."""
        if self.finish_reason is None:
            raise ValueError("the sequence is not finished")
        return Generation(self.text, list(self.token_ids), self.finish_reason, list(self.prompt_ids))

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.id}, prompt={len(self.prompt_ids)} tokens, generated={len(self.token_ids)}, "
            f"finish_reason={self.finish_reason!r})"
        )

    # --- called by DecoderModel.step ---

    def _choose(self, logits: np.ndarray) -> int:
        seen = None
        if self.params.repetition_penalty != 1.0:
            seen = np.asarray(self.prompt_ids + self.token_ids, dtype=np.int64)
        return sample(logits, self.params, self._rng, seen)

    def _append(self, token: int, tokenizer: Tokenizer) -> StepOutput:
        """Records a new token, ends the sequence if it should, returns the text now safe to show."""
        self.token_ids.append(token)
        text_ids = self.token_ids
        if token in self.stop_ids:
            self.finish_reason = "stop"
            text_ids = self.token_ids[:-1]
        full = self._decoded(text_ids, tokenizer)
        end = len(full)
        if self.stop:
            start = max(0, len(self._emitted) - max(len(s) for s in self.stop))
            found = [i for i in (full.find(s, start) for s in self.stop) if i >= 0]
            if found:
                end = max(min(found), len(self._emitted))
                self.finish_reason = "stop"
        if self.finish_reason is None and (len(self.token_ids) >= self.max_tokens or self._pending_slot() >= self.limit):
            self.finish_reason = "length"
        if self.finish_reason is None:
            end = _safe_end(full, self.stop)
        piece = full[len(self._emitted) : max(end, len(self._emitted))]
        self._emitted += piece
        if self.finish_reason is not None:
            self._final = self._emitted
        return StepOutput(self, token, piece, self.finish_reason)

    def _decoded(self, ids: list[int], tokenizer: Tokenizer) -> str:
        """``tokenizer.decode(ids, skip_special_tokens=True)``, where ``ids`` extend the ids of
        the previous call (or repeat them): the text of ids settled by earlier calls is kept,
        and only a window from DETOKENIZE_CONTEXT ids before the unsettled ones is decoded
        again, so a step costs the same at token 20 as at token 20,000 (decoding every id
        each step took 8 µs at 100 tokens and 128 µs at 2000, per sequence). Ids settle
        once their text ends in a whole character (no U+FFFD of a partial UTF-8 sequence)
        and the last id is no byte-fallback token (a run of those decodes as one byte
        string: the next byte may change it); a decoder whose text does not extend the
        window's (none seen) is decoded whole."""
        text = tokenizer.decode(ids[self._window :], skip_special_tokens=True)
        if text.startswith(self._head):
            full = self._settled_text + text[len(self._head) :]
        else:
            full = tokenizer.decode(ids, skip_special_tokens=True)
        if not full.endswith("\ufffd") and not (ids and ids[-1] in tokenizer.byte_token_ids):
            self._settled_text = full
            self._window = max(0, len(ids) - DETOKENIZE_CONTEXT)
            self._head = tokenizer.decode(ids[self._window :], skip_special_tokens=True)
        return full

    def _pending_slot(self) -> int:
        """The cache slot the latest token will take when the next step decodes it."""
        return len(self.prompt_ids) + len(self.token_ids) - 1


def _safe_end(full: str, stop: tuple[str, ...]) -> int:
    """How much of ``full`` may be shown while generation goes on: not a trailing incomplete
    UTF-8 character (U+FFFD) and not a suffix that could begin a stop string."""
    end = len(full)
    while end > 0 and full[end - 1] == "\ufffd":
        end -= 1
    hold = 0
    for s in stop:
        for n in range(min(len(s) - 1, end), hold, -1):
            if full.endswith(s[:n], 0, end):
                hold = n
                break
    return end - hold


class TextStream:
    """An iterator of text pieces from one generation; after it ends, ``generation`` holds
    the :class:`Generation` (``"".join(pieces) == generation.text``)."""

    def __init__(self, model: DecoderModel, sequence: Sequence) -> None:
        self.model = model
        self.sequence = sequence
        self.generation: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        seq = self.sequence
        while not seq.finished:
            out = self.model.step([seq])[0]
            if out is not None and out.text:
                return out.text
        if self.generation is None:
            self.generation = seq.result()
        raise StopIteration


class DecoderModel:
    """A Llama-family causal LM compiled for one device (see the module docstring).

    Example::

        model = rt.load(folder)
        model.generate("Hello", max_tokens=8, temperature=0).text
    """

    def __init__(
        self,
        *,
        folder: Path,
        config: LlamaConfig,
        tokenizer: Tokenizer,
        prefill: Compiled,
        decode: Compiled,
        dtype: str,
        device: str,
        eos_token_ids: list[int],
        chat_template: ChatTemplate | None,
    ) -> None:
        self.folder = folder
        self.config = config
        self.tokenizer = tokenizer
        self.prefill = prefill
        self.decode = decode  # (the setter notes which cache form the graph takes)
        self.dtype = dtype
        self.device = device
        self.eos_token_ids = list(eos_token_ids)
        self.chat_template = chat_template

    @property
    def decode(self) -> Compiled:
        """The compiled decode graph (see ``models.llama``)."""
        return self._decode_graph

    @decode.setter
    def decode(self, compiled: Compiled) -> None:
        self._decode_graph = compiled
        #: the graph places the new key into a copy of the cache (input new_slot) instead of
        #: taking it as an appended key beside the cache, which it then reads in place.
        self._copies_cache = "new_slot" in compiled.inputs

    @property
    def max_context(self) -> int:
        """Tokens one sequence may hold, prompt and generated together."""
        return self.config.max_context

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token takes (f32 keys and values, all layers)."""
        c = self.config
        return 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4

    def __repr__(self) -> str:
        c = self.config
        return (
            f"DecoderModel({str(self.folder)!r}, {c.model_type}, layers={c.num_layers}, hidden={c.hidden_size}, "
            f"heads={c.num_heads}/{c.num_kv_heads}, vocab={c.vocab_size}, max_context={c.max_context}, "
            f"dtype={self.dtype}, device={self.device!r})"
        )

    # --- plain forward ---

    def forward(self, input_ids: Any, attention_mask: Any = None) -> np.ndarray:
        """Logits float32 [batch, seq, vocab] of right-padded ``input_ids`` (positions 0..seq-1)."""
        ids = _int64_2d("input_ids", input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _int64_2d("attention_mask", attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
        batch, seq = ids.shape
        if seq > self.max_context:
            raise ValueError(f"sequence of {seq} tokens is longer than the model's context of {self.max_context}")
        self._check_ids(ids)
        if batch == 0 or seq == 0:
            return np.zeros((batch, seq, self.config.vocab_size), dtype=np.float32)
        return self._prefill(ids, mask)["logits"].numpy()

    def _prefill(self, ids: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
        return self.prefill.run({"input_ids": ids, "positions": np.ascontiguousarray(positions), "attention_mask": mask})

    def _check_ids(self, ids: np.ndarray) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got {ids.min()}..{ids.max()}")

    # --- sequences and steps ---

    def new_sequence(
        self,
        prompt_or_ids: str | AbcSequence[int] | np.ndarray,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Iterable[str] | None = None,
        stop_token_ids: Iterable[int] | None = None,
        ignore_eos: bool = False,
    ) -> Sequence:
        """A sequence ready for :meth:`step` (nothing runs yet; the first step prefills it).

        A str prompt is tokenized with the tokenizer's special tokens (a BOS, say); a list
        of ids is used as is. Generation ends after ``max_tokens`` tokens, at an eos id
        (generation_config.json; ``ignore_eos`` turns that off), at a ``stop_token_ids``
        token, at a ``stop`` string (cut from the text) or when the context is full.
        """
        ids = self._prompt_ids(prompt_or_ids)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
        stops = _stop_strings(stop)
        stop_ids = set() if ignore_eos else set(self.eos_token_ids)
        for t in stop_token_ids or ():
            if not isinstance(t, int) or isinstance(t, bool):
                raise TypeError(f"stop_token_ids must hold ints, got {t!r}")
            stop_ids.add(t)
        limit = min(self.max_context, len(ids) + max_tokens - 1)
        return Sequence(ids, params, max_tokens, stops, frozenset(stop_ids), max(limit, len(ids)))

    def _prompt_ids(self, prompt_or_ids: str | AbcSequence[int] | np.ndarray) -> list[int]:
        if isinstance(prompt_or_ids, str):
            ids = self.tokenizer.encode_ids(prompt_or_ids, add_special_tokens=True)
        else:
            arr = np.asarray(prompt_or_ids)
            if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
                raise TypeError(f"a prompt must be a str or a 1-D sequence of token ids, got {arr.dtype} {arr.shape}")
            ids = [int(i) for i in arr]
        if not ids:
            raise ValueError("the prompt has no tokens (give at least one, e.g. a BOS id)")
        self._check_ids(np.asarray(ids))
        if len(ids) > self.max_context:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is {self.max_context}")
        return ids

    def step(self, sequences: AbcSequence[Sequence]) -> list[StepOutput | None]:
        """Advances every unfinished sequence by one token; one entry per sequence (None for
        those already finished). New sequences are prefilled, the others decoded as a batch."""
        outputs: dict[int, StepOutput] = {}
        active = [s for s in sequences if not s.finished]
        if len({s.id for s in active}) != len(active):
            raise ValueError("a sequence appears twice in one step")
        running = [s for s in active if s.cache is not None]
        for s in active:
            if s.cache is None:
                logits = self._start(s)
                outputs[s.id] = s._append(s._choose(logits), self.tokenizer)
        if running:
            rows = self._decode(running)
            for s, row in zip(running, rows):
                outputs[s.id] = s._append(s._choose(row), self.tokenizer)
        return [outputs.get(s.id) for s in sequences]

    def _start(self, seq: Sequence) -> np.ndarray:
        """Prefills a new sequence's prompt into a fresh cache; the last position's logits."""
        c = self.config
        n = len(seq.prompt_ids)
        capacity = -(-max(seq.limit, n + 1) // CTX_BUCKET) * CTX_BUCKET
        cache = KVCache(c.num_layers, capacity, c.num_kv_heads, c.head_dim)
        ids = np.asarray([seq.prompt_ids], dtype=np.int64)
        out = self._prefill(ids, np.ones_like(ids))
        k = np.stack([out[f"k{i}"].numpy()[0] for i in range(c.num_layers)])  # [layers, n, kvh, hd]
        v = np.stack([out[f"v{i}"].numpy()[0] for i in range(c.num_layers)])
        cache.write(0, k, v)
        seq.cache = cache
        return out["logits"].numpy()[0, -1]

    def _decode(self, seqs: list[Sequence]) -> np.ndarray:
        """One decode run for the latest token of each sequence; logits [batch, vocab]."""
        c = self.config
        caches = [s.cache for s in seqs]
        assert all(cache is not None for cache in caches)
        lengths = np.asarray([cache.length for cache in caches], dtype=np.int64)  # type: ignore[union-attr]
        ctx = -(-(int(lengths.max()) + 1) // CTX_BUCKET) * CTX_BUCKET
        k, v = gather(caches, ctx)  # type: ignore[arg-type]
        slots = np.arange(ctx, dtype=np.int64)[None, :]
        feed: dict[str, Any] = {
            "input_ids": np.asarray([[s.token_ids[-1]] for s in seqs], dtype=np.int64),
            "positions": lengths[:, None].copy(),
        }
        if self._copies_cache:  # the new key is placed into a copy of the cache
            feed["kv_mask"] = (slots <= lengths[:, None]).astype(np.int64)
            feed["new_slot"] = (slots == lengths[:, None]).astype(np.int64)
        else:  # the new key is appended beside the cache, which is read in place
            feed["kv_mask"] = (slots < lengths[:, None]).astype(np.int64)
        for i in range(c.num_layers):
            feed[f"past_k{i}"] = k[i]
            feed[f"past_v{i}"] = v[i]
        out = self.decode.run(feed)
        new_k, new_v = out["k"].numpy(), out["v"].numpy()  # [b, layers, kvh, hd]
        for b, cache in enumerate(caches):
            cache.write(cache.length, new_k[b][:, None], new_v[b][:, None])  # type: ignore[union-attr]
        return out["logits"].numpy()[:, 0]

    # --- generation ---

    def generate(
        self, prompt_or_ids: str | AbcSequence[int] | np.ndarray, *, stream: bool = False, **kwargs: Any
    ) -> Any:
        """Continues a prompt; returns a :class:`Generation` (or, with ``stream=True``, a
        :class:`TextStream` of text pieces). Keyword arguments: those of :meth:`new_sequence`
        (max_tokens=256, temperature=0 (greedy), top_k, top_p, min_p, repetition_penalty,
        seed, stop, stop_token_ids, ignore_eos).

        Example: ``model.generate("Hello", max_tokens=8).text``
        """
        seq = self.new_sequence(prompt_or_ids, **kwargs)
        if stream:
            return TextStream(self, seq)
        while not seq.finished:
            self.step([seq])
        return seq.result()

    def stream(self, prompt_or_ids: str | AbcSequence[int] | np.ndarray, **kwargs: Any) -> TextStream:
        """``generate(..., stream=True)``: an iterator of text pieces, whose join is the text."""
        return self.generate(prompt_or_ids, stream=True, **kwargs)  # type: ignore[no-any-return]

    def apply_chat_template(self, messages: AbcSequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text the chat template makes of ``messages`` (as transformers renders it)."""
        if self.chat_template is None:
            raise no_template_error(self.folder)
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt, **kwargs)

    def chat(
        self,
        messages: AbcSequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        stream: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Renders ``messages`` with the chat template, tokenizes it without adding special
        tokens (the template has them), and generates like :meth:`generate`.

        Example: ``model.chat([{"role": "user", "content": "Hi"}], max_tokens=32).text``
        """
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        ids = self.tokenizer.encode_ids(text, add_special_tokens=False)
        return self.generate(ids, stream=stream, **kwargs)


def _stop_strings(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else list(stop)
    for s in items:
        if not isinstance(s, str) or not s:
            raise ValueError(f"stop strings must be non-empty str, got {s!r}")
    return tuple(items)


def _int64_2d(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, seq], got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)
