"""Models built from Hugging Face folders: ``rt.load(name_or_folder)``.

Supported now: BERT-style encoders (``model_type: bert``) -> :class:`EncoderModel`.
"""

from __future__ import annotations

from pathlib import Path

from .._core import WeightsError
from ..tokenizer import Tokenizer
from . import bert
from .encoder import EncoderModel
from .hf import Weights, read_config, read_sentence_config

__all__ = ["EncoderModel", "load"]

DTYPES = ("f32", "bf16", "auto")


def load(name_or_path: str | Path, device: str = "cpu", dtype: str = "f32") -> EncoderModel:
    """Load a catalog model (``"minilm"``, pulled on first use) or an HF folder and compile it.

    ``dtype``: ``"f32"``, ``"bf16"`` (bf16 linear weights, f32 accumulation and
    activations) or ``"auto"`` (bf16 when the file's weights are bf16, else f32).

    Example::

        model = rt.load("minilm")
        model.embed(["hello world"]).shape   # (1, 384)
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = _resolve(name_or_path)
    config = read_config(folder)
    config_path = folder / "config.json"
    bert.check_architecture(config, config_path)
    cfg = bert.BertConfig.from_dict(config, config_path)
    sentence = read_sentence_config(folder)
    tokenizer = Tokenizer.from_folder(folder)
    weights = Weights(folder, prefixes=("bert.", ""))
    linear_dtype = dtype
    if dtype == "auto":
        probe = weights.get("encoder.layer.0.attention.self.query.weight", (cfg.hidden_size, cfg.hidden_size))
        linear_dtype = "bf16" if probe.dtype == "bf16" else "f32"
    graph = bert.build_graph(cfg, weights, linear_dtype)
    compiled = graph.compile(device=device)
    has_types = "token_type_ids" in compiled.inputs
    return EncoderModel(
        folder=folder,
        config=cfg,
        sentence=sentence,
        tokenizer=tokenizer,
        compiled=compiled,
        dtype=linear_dtype,
        device=device,
        has_token_types=has_types,
    )


def _resolve(name_or_path: str | Path) -> Path:
    from .. import catalog

    path = catalog.resolve(name_or_path, quiet=True)
    if not path.is_dir():
        raise WeightsError(f"{path}: not a model folder (expected a directory with config.json)")
    return path
