"""Reading a Hugging Face model folder: config.json, weights, sentence-transformers files.

Every problem raises a typed error naming the file and what is wrong:
``WeightsError`` for missing or malformed files and weights, ``UnsupportedError``
for architectures or settings rtserve does not implement.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core import Tensor, UnsupportedError, WeightsError
from ..weights import load_safetensors

__all__ = ["Pooling", "SentenceConfig", "read_config", "read_sentence_config", "Weights"]


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise WeightsError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{path}: not valid JSON ({e})") from e


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict (it must be a JSON object)."""
    path = folder / "config.json"
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a model folder (no such directory)")
    if not path.is_file():
        raise WeightsError(f"{path}: config.json is missing (a Hugging Face model folder needs one)")
    config = read_json(path)
    if not isinstance(config, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


@dataclass(frozen=True)
class Pooling:
    """How token vectors become one sentence vector (sentence-transformers Pooling)."""

    mode: str = "mean"  # mean, cls, max, last, mean_sqrt_len

    MODES = ("mean", "cls", "max", "last", "mean_sqrt_len")


@dataclass(frozen=True)
class SentenceConfig:
    """What the sentence-transformers files say (defaults when they are absent)."""

    pooling: Pooling
    normalize: bool
    max_seq_length: int | None
    is_sentence_transformer: bool


def read_sentence_config(folder: Path) -> SentenceConfig:
    """Pooling, Normalize and max_seq_length from modules.json and friends."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return SentenceConfig(Pooling("mean"), False, _max_seq(folder), False)
    modules = read_json(modules_path)
    if not isinstance(modules, list):
        raise WeightsError(f"{modules_path}: expected a JSON list of modules")
    pooling = Pooling("mean")
    normalize = False
    for m in modules:
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            raise WeightsError(f"{modules_path}: each module needs a 'type' string, got {m!r}")
        kind = m["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            pooling = _read_pooling(folder / str(m.get("path", "")) / "config.json")
        elif kind == "Normalize":
            normalize = True
        elif kind in ("Transformer",):
            continue
        else:
            raise UnsupportedError(
                f"{modules_path}: sentence-transformers module {m['type']!r} is not supported "
                "(supported: Transformer, Pooling, Normalize)"
            )
    return SentenceConfig(pooling, normalize, _max_seq(folder), True)


def _read_pooling(path: Path) -> Pooling:
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    modes = {
        "cls": cfg.get("pooling_mode_cls_token", False),
        "mean": cfg.get("pooling_mode_mean_tokens", False),
        "max": cfg.get("pooling_mode_max_tokens", False),
        "mean_sqrt_len": cfg.get("pooling_mode_mean_sqrt_len_tokens", False),
        "last": cfg.get("pooling_mode_lasttoken", False),
    }
    if cfg.get("pooling_mode_weightedmean_tokens"):
        raise UnsupportedError(f"{path}: weighted-mean pooling is not supported")
    chosen = [m for m, on in modes.items() if on]
    if len(chosen) != 1:
        raise UnsupportedError(
            f"{path}: exactly one pooling mode must be set (got {chosen or 'none'}); "
            "concatenated pooling modes are not supported"
        )
    return Pooling(chosen[0])


def _max_seq(folder: Path) -> int | None:
    path = folder / "sentence_bert_config.json"
    if not path.is_file():
        return None
    cfg = read_json(path)
    value = cfg.get("max_seq_length") if isinstance(cfg, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or value < 2:
        raise WeightsError(f"{path}: max_seq_length must be an integer >= 2, got {value!r}")
    return value


class Weights:
    """A model's tensors by name, with checked lookups (``prefix`` tried first)."""

    def __init__(self, folder: Path, prefixes: tuple[str, ...] = ("",)) -> None:
        self.folder = folder
        try:
            self.tensors: dict[str, Tensor] = load_safetensors(folder)
        except FileNotFoundError as e:
            raise WeightsError(f"{folder}: no model.safetensors (or sharded index) in the folder") from e
        self.file = _weights_file(folder)
        self.prefix = next(
            (p for p in prefixes if any(k.startswith(p) for k in self.tensors)), prefixes[-1]
        )

    def get(self, name: str, shape: tuple[int, ...]) -> Tensor:
        """The tensor ``prefix + name``, which must have ``shape``."""
        t = self.tensors.get(self.prefix + name)
        if t is None:
            t = self.tensors.get(name)
        if t is None:
            raise WeightsError(
                f"{self.file}: tensor {self.prefix + name!r} is missing "
                f"({len(self.tensors)} tensors in the file)"
            )
        if tuple(t.shape) != tuple(shape):
            raise WeightsError(
                f"{self.file}: tensor {self.prefix + name!r} has shape {list(t.shape)}, "
                f"but config.json implies {list(shape)}"
            )
        return t

    def has(self, name: str) -> bool:
        return self.prefix + name in self.tensors or name in self.tensors


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json"):
        if (folder / name).exists():
            return folder / name
    return folder / "model.safetensors"
