"""Models built from Hugging Face folders: ``rt.load(name_or_folder)``.

Supported now: BERT-style encoders (``model_type: bert``) -> :class:`EncoderModel`;
Llama-family decoders (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM) ->
:class:`DecoderModel`.
"""

from __future__ import annotations

from pathlib import Path

from .._core import UnsupportedError, WeightsError
from ..tokenizer import Tokenizer
from . import bert, llama
from .chat import ChatTemplate, read_eos_ids, read_tokenizer_config
from .decoder import DecoderModel, Generation, Sequence, StepOutput, TextStream
from .encoder import EncoderModel
from .hf import Weights, read_config, read_sentence_config

__all__ = ["DecoderModel", "EncoderModel", "Generation", "Sequence", "StepOutput", "TextStream", "load"]

DTYPES = ("f32", "bf16", "auto")


def load(
    name_or_path: str | Path, device: str = "cpu", dtype: str = "f32", max_context: int | None = None
) -> EncoderModel | DecoderModel:
    """Load a catalog model (``"minilm"``, pulled on first use) or an HF folder and compile it.

    ``dtype``: ``"f32"``, ``"bf16"`` (bf16 linear weights, f32 accumulation and
    activations) or ``"auto"`` (bf16 when the file's weights are bf16, else f32).
    ``max_context`` (decoders only): tokens per sequence, prompt and generated, at most
    the model's max_position_embeddings (the default).

    Example::

        model = rt.load("minilm")
        model.embed(["hello world"]).shape   # (1, 384)
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = _resolve(name_or_path)
    config = read_config(folder)
    config_path = folder / "config.json"
    if llama.is_decoder(config):
        return _load_decoder(folder, config, device, dtype, max_context)
    try:
        bert.check_architecture(config, config_path)
    except UnsupportedError as e:
        raise UnsupportedError(f"{e}; supported decoders: {llama.supported_text()}") from None
    cfg = bert.BertConfig.from_dict(config, config_path)
    sentence = read_sentence_config(folder)
    tokenizer = Tokenizer.from_folder(folder)
    weights = Weights(folder, prefixes=("bert.", ""))
    linear_dtype = dtype
    if dtype == "auto":
        probe = weights.get("encoder.layer.0.attention.self.query.weight", (cfg.hidden_size, cfg.hidden_size))
        linear_dtype = "bf16" if probe.dtype == "bf16" else "f32"
    try:  # packed sequences (no padding) where the device's attention takes them
        compiled = bert.build_graph(cfg, weights, linear_dtype, packed=True).compile(device=device)
    except UnsupportedError:
        compiled = bert.build_graph(cfg, weights, linear_dtype).compile(device=device)
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


def _load_decoder(folder: Path, config: dict, device: str, dtype: str, max_context: int | None) -> DecoderModel:
    cfg = llama.LlamaConfig.from_dict(config, folder / "config.json", max_context)
    tokenizer = Tokenizer.from_folder(folder)
    tokenizer_config = read_tokenizer_config(folder)
    weights = Weights(folder, prefixes=("",))
    linear_dtype = dtype
    if dtype == "auto":
        probe = weights.get("model.layers.0.self_attn.q_proj.weight", (cfg.num_heads * cfg.head_dim, cfg.hidden_size))
        linear_dtype = "bf16" if probe.dtype == "bf16" else "f32"
    tensors = llama.load_tensors(cfg, weights, linear_dtype)
    prefill = llama.build_prefill_graph(cfg, tensors).compile(device=device)
    try:  # attention reading the cache in place, where the device's attention can
        decode = llama.build_decode_graph(cfg, tensors).compile(device=device)
    except UnsupportedError:
        decode = llama.build_decode_graph(cfg, tensors, append=False).compile(device=device)
    return DecoderModel(
        folder=folder,
        config=cfg,
        tokenizer=tokenizer,
        prefill=prefill,
        decode=decode,
        dtype=linear_dtype,
        device=device,
        eos_token_ids=read_eos_ids(folder, config, tokenizer_config, tokenizer.token_to_id),
        chat_template=ChatTemplate.from_folder(folder, tokenizer_config),
    )


def _resolve(name_or_path: str | Path) -> Path:
    from .. import catalog

    path = catalog.resolve(name_or_path, quiet=True)
    if not path.is_dir():
        raise WeightsError(f"{path}: not a model folder (expected a directory with config.json)")
    return path
