"""Llama-family decoders (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM).

:class:`LlamaConfig` validates config.json; :func:`build_prefill_graph` and
:func:`build_decode_graph` turn it and the weights into the two graphs a
:class:`~rtserve.models.decoder.DecoderModel` compiles once:

- **prefill** — inputs ``input_ids``, ``positions`` (rope positions) and ``attention_mask``
  (1 = token, 0 = right padding), all int64 ``[batch, seq]``; outputs ``logits`` f32
  ``[batch, seq, vocab]`` and, per layer L, ``k{L}`` / ``v{L}`` f32
  ``[batch, seq, kv_heads, head_dim]`` (keys after rope) for the KV cache.
- **decode** — one new token per sequence: ``input_ids`` and ``positions`` int64
  ``[batch, 1]``, ``past_k{L}`` / ``past_v{L}`` f32 ``[batch, ctx, kv_heads, head_dim]``
  (each sequence's cache, zero-padded to ``ctx``) and ``kv_mask`` int64 ``[batch, ctx]``
  (1 where a cached key is valid). Attention reads the cache in place and takes the new
  token's key and value as appended keys (``k_append``/``v_append``), so nothing copies
  the cache. Where the device's attention takes no appended keys (cuda, wgpu), the graph
  has an input ``new_slot`` int64 ``[batch, ctx]`` (1 at the slot where the new token
  goes), ``kv_mask`` also marks that slot, and the new key is placed with
  ``where(new_slot, k_new, past_k)`` (the graph compiler cannot concatenate along a
  symbolic dim). Outputs ``logits`` ``[batch, 1, vocab]`` and the new token's keys and
  values of every layer, ``k`` / ``v`` ``[batch, layers, kv_heads, head_dim]``, which the
  caller appends to the cache.

Each layer is Hugging Face's ``LlamaDecoderLayer``: RMSNorm, Q/K/V projections (bias for
Qwen2 or ``attention_bias``), rope, grouped-query attention, output projection + residual,
RMSNorm, SwiGLU MLP + residual. Linear weights are f32 or bf16; norms and embeddings f32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._core import Graph, Tensor, UnsupportedError, Value, WeightsError
from .hf import Weights

__all__ = ["ARCHITECTURES", "LlamaConfig", "build_decode_graph", "build_prefill_graph", "is_decoder"]

#: architectures value -> model_type handled here.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
MODEL_TYPES = tuple(sorted(set(ARCHITECTURES.values())))
ROPE_TYPES = ("default", "linear", "llama3")


def is_decoder(config: dict[str, Any]) -> bool:
    """Whether config.json declares a decoder handled here (by model_type or architectures)."""
    if config.get("model_type") in MODEL_TYPES:
        return True
    archs = config.get("architectures") or []
    return isinstance(archs, list) and any(a in ARCHITECTURES for a in archs)


def supported_text() -> str:
    return ", ".join(ARCHITECTURES) + f" (model_type {', '.join(MODEL_TYPES)})"


@dataclass(frozen=True)
class LlamaConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    #: the rope inverse frequencies (float32, [rotary_dim / 2]) as transformers computes them.
    inv_freq: tuple[float, ...]
    rotary_dim: int
    rope_type: str
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    max_position_embeddings: int
    #: tokens a sequence may hold (prompt + generated): min(max_position_embeddings, max_context).
    max_context: int

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path, max_context: int | None = None) -> LlamaConfig:
        """Validate config.json's fields; ``path`` names the file in errors.

        ``max_context`` caps the tokens per sequence (default: max_position_embeddings); a
        sliding window smaller than that context is unsupported.
        """

        def need_int(key: str, minimum: int = 1, default: int | None = None) -> int:
            value = config.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise WeightsError(f"{path}: {key!r} must be an integer >= {minimum}, got {value!r}")
            return value

        def need_float(key: str, default: float, low: float, high: float) -> float:
            value = config.get(key, default)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value < high:
                raise WeightsError(f"{path}: {key!r} must be a number in [{low}, {high}), got {value!r}")
            return float(value)

        model_type = _model_type(config, path)
        act = config.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedError(f"{path}: hidden_act {act!r} is not supported (only 'silu': a SwiGLU MLP)")
        hidden = need_int("hidden_size")
        heads = need_int("num_attention_heads")
        kv_heads = need_int("num_key_value_heads", default=heads)
        if config.get("head_dim") is not None:
            head_dim = need_int("head_dim")
        else:
            if hidden % heads:
                raise WeightsError(f"{path}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}")
            head_dim = hidden // heads
        if heads % kv_heads:
            raise WeightsError(
                f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
            )
        max_pos = need_int("max_position_embeddings", default=2048)
        if max_context is not None and (not isinstance(max_context, int) or max_context < 2):
            raise ValueError(f"max_context must be an integer >= 2, got {max_context!r}")
        context = max_pos if max_context is None else min(max_pos, max_context)
        _check_sliding_window(config, model_type, context, path)
        theta, rope_type, inv_freq, rotary_dim = _rope(config, head_dim, path)
        attention_bias = config.get("attention_bias", model_type == "qwen2")
        if model_type == "qwen2":
            attention_bias = True  # Qwen2 always has q/k/v biases (no o_proj bias)
        for key, value in (("attention_bias", attention_bias), ("mlp_bias", config.get("mlp_bias", False))):
            if not isinstance(value, bool):
                raise WeightsError(f"{path}: {key!r} must be true or false, got {value!r}")
        tie = config.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise WeightsError(f"{path}: 'tie_word_embeddings' must be true or false, got {tie!r}")
        return cls(
            model_type=model_type,
            vocab_size=need_int("vocab_size"),
            hidden_size=hidden,
            num_layers=need_int("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            intermediate_size=need_int("intermediate_size"),
            rms_norm_eps=need_float("rms_norm_eps", 1e-6, 0.0, 1.0),
            rope_theta=theta,
            inv_freq=tuple(float(f) for f in inv_freq),
            rotary_dim=rotary_dim,
            rope_type=rope_type,
            tie_word_embeddings=tie,
            attention_bias=bool(attention_bias),
            mlp_bias=bool(config.get("mlp_bias", False)),
            max_position_embeddings=max_pos,
            max_context=context,
        )


def _model_type(config: dict[str, Any], path: Path) -> str:
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return str(model_type)
    archs = config.get("architectures") or []
    for a in archs if isinstance(archs, list) else []:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    raise UnsupportedError(
        f"{path}: model_type {model_type!r} (architectures {archs}) is not supported; "
        f"supported decoders: {supported_text()}"
    )


def _check_sliding_window(config: dict[str, Any], model_type: str, context: int, path: Path) -> None:
    """Sliding-window attention changes results only past the window: refuse such contexts."""
    window = config.get("sliding_window")
    layer_types = config.get("layer_types")  # transformers 5: per layer, "full_attention" or "sliding_attention"
    if layer_types is not None:
        kinds = set(layer_types) if isinstance(layer_types, list) else {layer_types}
        unknown = kinds - {"full_attention", "sliding_attention"}
        if unknown:
            raise UnsupportedError(f"{path}: layer_types {sorted(map(str, unknown))} are not supported (only full_attention)")
        if "sliding_attention" not in kinds:
            return
    elif model_type == "llama":
        return
    elif model_type == "qwen2" and not config.get("use_sliding_window", False):
        return  # Qwen2 configs carry a sliding_window that is off unless use_sliding_window
    if window is None:
        if model_type == "qwen2" or layer_types is not None:
            raise UnsupportedError(f"{path}: sliding-window attention without a sliding_window size is not supported")
        return
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise WeightsError(f"{path}: 'sliding_window' must be null or an integer >= 1, got {window!r}")
    if window < context:
        raise UnsupportedError(
            f"{path}: sliding_window {window} is smaller than the context of {context} tokens; "
            f"sliding-window attention is not supported (load with max_context <= {window})"
        )


def _rope(config: dict[str, Any], head_dim: int, path: Path) -> tuple[float, str, np.ndarray, int]:
    """(theta, rope type, inv_freq float32 [rotary_dim / 2], rotary_dim) as transformers computes them.

    Reads the legacy ``rope_theta`` + ``rope_scaling`` fields and transformers 5's
    ``rope_parameters``. The base frequencies are computed in float32 like torch does
    (``1 / theta ** (arange(0, dim, 2) / dim)``), then scaled.
    """
    params = config.get("rope_parameters")
    scaling = config.get("rope_scaling")
    if params is not None and not isinstance(params, dict):
        raise WeightsError(f"{path}: 'rope_parameters' must be an object, got {params!r}")
    if scaling is not None and not isinstance(scaling, dict):
        raise WeightsError(f"{path}: 'rope_scaling' must be null or an object, got {scaling!r}")
    merged: dict[str, Any] = {}
    merged.update(scaling or {})
    merged.update(params or {})
    field = "rope_parameters" if params is not None else "rope_scaling"
    theta = merged.get("rope_theta", config.get("rope_theta", 10000.0))
    if not isinstance(theta, (int, float)) or isinstance(theta, bool) or not theta > 0:
        raise WeightsError(f"{path}: 'rope_theta' must be a number > 0, got {theta!r}")
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedError(
            f"{path}: {field}.rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    partial = merged.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    if not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise WeightsError(f"{path}: 'partial_rotary_factor' must be in (0, 1], got {partial!r}")
    dim = int(head_dim * partial)
    if dim < 2 or dim % 2:
        raise WeightsError(f"{path}: the rotary dim {dim} (head_dim x partial_rotary_factor) must be even")
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)

    def number(key: str) -> float:
        value = merged.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise WeightsError(f"{path}: {field}.{key} must be a number > 0 for rope_type {rope_type!r}, got {value!r}")
        return float(value)

    if rope_type == "linear":
        inv_freq = (inv_freq / np.float32(number("factor"))).astype(np.float32)
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(
            inv_freq,
            factor=number("factor"),
            low_freq_factor=number("low_freq_factor"),
            high_freq_factor=number("high_freq_factor"),
            old_context_len=number("original_max_position_embeddings"),
        )
    return float(theta), str(rope_type), inv_freq, dim


def _llama3_inv_freq(
    inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float, old_context_len: float
) -> np.ndarray:
    """transformers' ``_compute_llama3_parameters``, in float32 like torch."""
    f32 = np.float32
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = (f32(2 * math.pi) / inv_freq).astype(f32)
    scaled = np.where(wavelen > f32(low_freq_wavelen), inv_freq / f32(factor), inv_freq).astype(f32)
    smooth = ((f32(old_context_len) / wavelen - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)).astype(f32)
    smoothed = ((f32(1) - smooth) * scaled / f32(factor) + smooth * scaled).astype(f32)
    medium = ~(wavelen < f32(high_freq_wavelen)) & ~(wavelen > f32(low_freq_wavelen))
    return np.where(medium, smoothed, scaled).astype(f32)


# --- graphs ----------------------------------------------------------------------------------


class _Layers:
    """The weights as graph constants of one graph, and the layer body both graphs share."""

    def __init__(self, g: Graph, c: LlamaConfig, tensors: dict[str, Tensor]) -> None:
        self.g, self.c, self.t = g, c, tensors
        self.inv_freq = g.constant(np.asarray(c.inv_freq, dtype=np.float32))

    def const(self, name: str) -> Value:
        return self.g.constant(self.t[name])

    def linear(self, x: Value, name: str, activation: str | None = None) -> Value:
        bias = self.const(f"{name}.bias") if f"{name}.bias" in self.t else None
        return self.g.linear(x, self.const(f"{name}.weight"), bias, activation=activation)

    def embed(self, ids: Value) -> Value:
        return self.g.embedding(self.const("model.embed_tokens.weight"), ids)

    def qkv(self, x: Value, i: int, positions: Value, seq: str | int) -> tuple[Value, Value, Value]:
        """Normed input -> (q, k after rope, v), BSHD."""
        g, c, p = self.g, self.c, f"model.layers.{i}.self_attn"
        q = g.reshape(self.linear(x, f"{p}.q_proj"), ("batch", seq, c.num_heads, c.head_dim))
        k = g.reshape(self.linear(x, f"{p}.k_proj"), ("batch", seq, c.num_kv_heads, c.head_dim))
        v = g.reshape(self.linear(x, f"{p}.v_proj"), ("batch", seq, c.num_kv_heads, c.head_dim))
        rope = {"positions": positions, "inv_freq": self.inv_freq, "rotary_dim": c.rotary_dim}
        return g.rope(q, **rope), g.rope(k, **rope), v

    def finish_layer(self, h: Value, ctx: Value, i: int, seq: str | int) -> Value:
        """Attention output projection + residual, then the SwiGLU MLP + residual."""
        g, c, p = self.g, self.c, f"model.layers.{i}"
        ctx = g.reshape(ctx, ("batch", seq, c.num_heads * c.head_dim))
        h = g.add(self.linear(ctx, f"{p}.self_attn.o_proj"), h)
        x = g.rms_norm(h, self.const(f"{p}.post_attention_layernorm.weight"), eps=c.rms_norm_eps)
        gate = self.linear(x, f"{p}.mlp.gate_proj", activation="silu")
        up = self.linear(x, f"{p}.mlp.up_proj")
        return g.add(self.linear(g.mul(gate, up), f"{p}.mlp.down_proj"), h)

    def input_norm(self, h: Value, i: int) -> Value:
        w = self.const(f"model.layers.{i}.input_layernorm.weight")
        return self.g.rms_norm(h, w, eps=self.c.rms_norm_eps)

    def logits(self, h: Value) -> Value:
        h = self.g.rms_norm(h, self.const("model.norm.weight"), eps=self.c.rms_norm_eps)
        return self.g.linear(h, self.const("lm_head.weight"))


def build_prefill_graph(config: LlamaConfig, tensors: dict[str, Tensor]) -> Graph:
    """Causal forward over whole (right-padded) prompts; see the module docstring."""
    g = Graph()
    L = _Layers(g, config, tensors)
    ids = g.input("input_ids", ("batch", "seq"), "i64")
    positions = g.input("positions", ("batch", "seq"), "i64")
    mask = g.input("attention_mask", ("batch", "seq"), "i64")
    h = L.embed(ids)
    for i in range(config.num_layers):
        q, k, v = L.qkv(L.input_norm(h, i), i, positions, "seq")
        g.output(f"k{i}", k)
        g.output(f"v{i}", v)
        ctx = g.attention(q, k, v, causal=True, key_padding_mask=mask)
        h = L.finish_layer(h, ctx, i, "seq")
    g.output("logits", L.logits(h))
    return g


def build_decode_graph(config: LlamaConfig, tensors: dict[str, Tensor], append: bool = True) -> Graph:
    """One new token per sequence against its cached keys; see the module docstring.

    ``append=True``: attention reads the cache where it is and takes the new token's key
    and value beside it (``k_append``/``v_append``; ``kv_mask`` marks the cached slots
    only). ``append=False``: the new key is placed into a copy of the cache with
    ``where(new_slot, ...)`` (devices whose attention takes no appended keys).
    """
    c = config
    g = Graph()
    L = _Layers(g, c, tensors)
    ids = g.input("input_ids", ("batch", 1), "i64")
    positions = g.input("positions", ("batch", 1), "i64")
    kv_mask = g.input("kv_mask", ("batch", "ctx"), "i64")
    slot = None
    if not append:
        new_slot = g.input("new_slot", ("batch", "ctx"), "i64")
        slot = g.reshape(g.cast(new_slot, "bool"), ("batch", "ctx", 1, 1))
    cache_shape = ("batch", "ctx", c.num_kv_heads, c.head_dim)
    h = L.embed(ids)
    new_k, new_v = [], []
    for i in range(c.num_layers):
        past_k = g.input(f"past_k{i}", cache_shape, "f32")
        past_v = g.input(f"past_v{i}", cache_shape, "f32")
        q, k, v = L.qkv(L.input_norm(h, i), i, positions, 1)
        new_k.append(k)
        new_v.append(v)
        if slot is None:
            ctx = g.attention(q, past_k, past_v, key_padding_mask=kv_mask, k_append=k, v_append=v)
        else:
            ctx = g.attention(q, g.where(slot, k, past_k), g.where(slot, v, past_v), key_padding_mask=kv_mask)
        h = L.finish_layer(h, ctx, i, 1)
    # One output for all layers' new keys (and one for values): handing 2 × layers small
    # outputs to Python and stacking them took 0.22 ms of a 7 ms SmolLM2-shape step.
    g.output("k", g.concat(new_k, axis=1))
    g.output("v", g.concat(new_v, axis=1))
    g.output("logits", L.logits(h))
    return g


def load_tensors(config: LlamaConfig, weights: Weights, linear_dtype: str) -> dict[str, Tensor]:
    """Every tensor the graphs use, checked against the config, in the dtype each needs.

    Linear weights in ``linear_dtype``; norms, biases and the embedding in f32. A tied
    ``lm_head`` is the embedding matrix. Both graphs share these tensors.
    """
    c = config
    h, d, f = c.hidden_size, c.head_dim, c.intermediate_size
    out: dict[str, Tensor] = {}

    def put(name: str, shape: tuple[int, ...], dtype: str = "f32") -> None:
        t = weights.get(name, shape)
        out[name] = t if t.dtype == dtype else t.astype(dtype)

    put("model.embed_tokens.weight", (c.vocab_size, h))
    put("model.norm.weight", (h,))
    for i in range(c.num_layers):
        p = f"model.layers.{i}"
        put(f"{p}.input_layernorm.weight", (h,))
        put(f"{p}.post_attention_layernorm.weight", (h,))
        shapes = {
            "self_attn.q_proj": (c.num_heads * d, h),
            "self_attn.k_proj": (c.num_kv_heads * d, h),
            "self_attn.v_proj": (c.num_kv_heads * d, h),
            "self_attn.o_proj": (h, c.num_heads * d),
            "mlp.gate_proj": (f, h),
            "mlp.up_proj": (f, h),
            "mlp.down_proj": (h, f),
        }
        for name, shape in shapes.items():
            put(f"{p}.{name}.weight", shape, linear_dtype)
            attn = name.startswith("self_attn")
            has_bias = (
                (c.attention_bias and attn and (name != "self_attn.o_proj" or c.model_type != "qwen2"))
                or (c.mlp_bias and not attn)
            )
            if has_bias:
                put(f"{p}.{name}.bias", (shape[0],))
    if c.tie_word_embeddings:
        t = weights.get("model.embed_tokens.weight", (c.vocab_size, h))
        out["lm_head.weight"] = t if t.dtype == linear_dtype else t.astype(linear_dtype)
    else:
        put("lm_head.weight", (c.vocab_size, h), linear_dtype)
    return out
