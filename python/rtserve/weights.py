"""Loading and saving safetensors weights, including Hugging Face sharded checkpoints.

The per-file work (mapping, validation, writing) is in the Rust core; this
module only resolves which files to read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union

from ._core import Tensor, WeightsError, load_safetensors_file, save_safetensors_file, tensor

__all__ = ["INDEX_NAME", "SINGLE_NAME", "load_safetensors", "save_safetensors", "weights_path"]

PathLike = Union[str, "os.PathLike[str]"]

SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def weights_path(path_or_dir: PathLike) -> Path:
    """Return the file to read for a path: a ``.safetensors`` file, an index, or an HF folder.

    Example: ``weights_path("models/minilm")  # .../minilm/model.safetensors``
    """
    path = Path(path_or_dir)
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        return path
    for name in (INDEX_NAME, SINGLE_NAME):
        if (path / name).is_file():
            return path / name
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    found = ", ".join(c.name for c in candidates) or "none"
    raise WeightsError(
        f"{path}: no {SINGLE_NAME} or {INDEX_NAME} in this folder (*.safetensors found: {found})"
    )


def load_safetensors(path_or_dir: PathLike) -> dict[str, Tensor]:
    """Map a safetensors file, a sharded index, or an HF folder into read-only tensors.

    No data is copied (tensors borrow one shared mmap per file), so the time
    does not grow with the file size. Example::

        w = rt.load_safetensors("model.safetensors")
        w["bert.pooler.dense.weight"].shape   # (384, 384)
    """
    path = weights_path(path_or_dir)
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    tensors, _metadata = load_safetensors_file(path)
    return dict(tensors)


def _load_sharded(index_path: Path) -> dict[str, Tensor]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(f"{index_path}: cannot read the shard index: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
    ):
        raise WeightsError(f"{index_path}: 'weight_map' must be an object of tensor name -> file name")
    folder = index_path.parent.resolve()
    shards: dict[str, dict[str, Tensor]] = {}
    for shard in dict.fromkeys(weight_map.values()):
        shard_path = (folder / shard).resolve()
        if Path(shard).is_absolute() or folder not in shard_path.parents:
            raise WeightsError(f"{index_path}: shard '{shard}' lies outside the checkpoint folder")
        if not shard_path.is_file():
            raise WeightsError(f"{index_path}: shard '{shard}' does not exist")
        shards[shard] = dict(load_safetensors_file(shard_path)[0])
    out: dict[str, Tensor] = {}
    for name, shard in weight_map.items():
        t = shards[shard].get(name)
        if t is None:
            raise WeightsError(f"{index_path}: tensor '{name}' is not in its shard '{shard}'")
        out[name] = t
    return out


def save_safetensors(
    tensors: Mapping[str, Any], path: PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors (rt.Tensor or anything ``rt.tensor`` accepts) to a safetensors file.

    The file is written to a temporary name and renamed, so readers never see a
    partial file. Example: ``rt.save_safetensors({"w": np.eye(3, dtype=np.float32)}, "w.safetensors")``
    """
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save_safetensors: expected a mapping of name -> tensor, got {type(tensors).__name__}")
    items = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_safetensors: tensor names must be str, got {name!r}")
        items.append((name, value if isinstance(value, Tensor) else tensor(value)))
    meta = None
    if metadata is not None:
        meta = dict(metadata)
        bad = [k for k, v in meta.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"save_safetensors: metadata keys and values must be str (bad keys: {bad})")
    save_safetensors_file(items, os.fspath(path), meta)
