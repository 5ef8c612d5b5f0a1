"""Choosing the next token from a row of logits (numpy), as transformers' logits processors do.

Order (transformers ``generate``): repetition penalty, then temperature, top-k, top-p,
min-p, then a draw from the softmax. ``temperature == 0`` is greedy: the argmax after the
repetition penalty.

Example::

    params = SamplingParams(temperature=0.8, top_p=0.9, seed=1)
    rng = params.rng()
    token = sample(logits_row, params, rng, seen=np.array([5, 7]))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SamplingParams", "apply_repetition_penalty", "sample", "warp"]


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens; ``seed`` makes a sampled sequence repeatable."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        def number(name: str, value: object) -> float:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
                raise ValueError(f"{name} must be a number, got {value!r}")
            return float(value)

        if number("temperature", self.temperature) < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not 0 < number("top_p", self.top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= number("min_p", self.min_p) <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if number("repetition_penalty", self.repetition_penalty) <= 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def rng(self) -> np.random.Generator:
        """A fresh generator for one sequence (seeded when ``seed`` is set)."""
        return np.random.default_rng(self.seed)


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """transformers' RepetitionPenaltyLogitsProcessor: seen tokens' positive logits / penalty, negative * penalty."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    ids = np.unique(seen)
    s = out[ids]
    out[ids] = np.where(s < 0, s * np.float32(penalty), s / np.float32(penalty))
    return out


def sample(
    logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, seen: np.ndarray | None = None
) -> int:
    """The next token id from ``logits`` [vocab] (f32); ``seen`` = ids so far (prompt included)."""
    scores = np.asarray(logits, dtype=np.float32)
    if seen is not None:
        scores = apply_repetition_penalty(scores, np.asarray(seen, dtype=np.int64), params.repetition_penalty)
    if params.greedy:
        return int(np.argmax(scores))
    probs = _softmax(warp(scores, params))
    return int(rng.choice(probs.size, p=probs))


def warp(scores: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Scores (float64) after temperature, top-k, top-p and min-p; removed tokens are -inf."""
    scores = np.asarray(scores, dtype=np.float64) / max(params.temperature, 1e-30)
    scores = np.where(np.isnan(scores), -np.inf, scores)
    if 0 < params.top_k < scores.size:
        kth = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores >= kth, scores, -np.inf)
    if params.top_p < 1.0:
        order = np.argsort(scores, kind="stable")  # ascending, as transformers' TopPLogitsWarper
        cumulative = np.cumsum(_softmax(scores[order]))
        remove = cumulative <= 1 - params.top_p
        remove[-1] = False  # keep at least one token
        scores[order[remove]] = -np.inf
    if params.min_p > 0.0:
        probs = _softmax(scores)
        remove = probs < params.min_p * probs.max()
        remove[np.argmax(probs)] = False
        scores = np.where(remove, -np.inf, scores)
    return scores


def _softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x)
    e = np.exp(x - m)
    return e / e.sum()
