"""BERT-family encoders (BertModel; all-MiniLM, bge, e5 and other BERT-style checkpoints).

:func:`build_graph` turns a config and its weights into an ``rt.Graph``:

- inputs ``input_ids``, ``attention_mask`` (1 = token, 0 = padding) and, when the model
  has token-type embeddings, ``token_type_ids``, all int64 ``[batch, seq]``, plus
  ``position_ids`` int64 ``[seq]`` (absolute positions 0..seq-1);
- output ``last_hidden_state`` f32 ``[batch, seq, hidden]``.

With ``packed=True`` the graph runs texts of different lengths in one row with no
padding: batch is 1, the texts' tokens follow each other along seq, ``position_ids``
holds each token's position within its own text, and the extra input ``segments``
(int64 offsets ``[n + 1]``, FlashAttention's ``cu_seqlens``) tells attention where
each text starts, so a text attends only its own tokens. The linear layers then see
only real tokens, however mixed the lengths are.

Each layer is the Hugging Face ``BertLayer``: Q/K/V projections, fused attention with
the key padding mask, output projection + residual + LayerNorm, then the MLP
(``hidden_act``) + residual + LayerNorm. The graph compiler fuses bias, activation and
residual into the GEMMs and pre-packs the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._core import Graph, Tensor, UnsupportedError, Value, WeightsError
from .hf import Weights

__all__ = ["BertConfig", "build_graph", "ACTIVATIONS"]

#: hidden_act values of config.json and the GEMM epilogue activation each maps to.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

#: model_type values handled here.
MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    activation: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: Path) -> BertConfig:
        """Validate config.json's fields; ``path`` names the file in errors."""

        def need_int(key: str, minimum: int = 1, default: int | None = None) -> int:
            value = config.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise WeightsError(f"{path}: {key!r} must be an integer >= {minimum}, got {value!r}")
            return value

        act = config.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            raise UnsupportedError(
                f"{path}: hidden_act {act!r} is not supported (supported: {', '.join(ACTIVATIONS)})"
            )
        pet = config.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise UnsupportedError(
                f"{path}: position_embedding_type {pet!r} is not supported (only 'absolute')"
            )
        eps = config.get("layer_norm_eps", 1e-12)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 <= eps < 1:
            raise WeightsError(f"{path}: 'layer_norm_eps' must be a number in [0, 1), got {eps!r}")
        c = cls(
            vocab_size=need_int("vocab_size"),
            hidden_size=need_int("hidden_size"),
            num_layers=need_int("num_hidden_layers"),
            num_heads=need_int("num_attention_heads"),
            intermediate_size=need_int("intermediate_size"),
            max_position_embeddings=need_int("max_position_embeddings", default=512),
            type_vocab_size=need_int("type_vocab_size", minimum=0, default=2),
            layer_norm_eps=float(eps),
            activation=ACTIVATIONS[act],
        )
        if c.hidden_size % c.num_heads:
            raise WeightsError(
                f"{path}: hidden_size {c.hidden_size} is not a multiple of "
                f"num_attention_heads {c.num_heads}"
            )
        return c


def check_architecture(config: dict[str, Any], path: Path) -> None:
    """Raise UnsupportedError unless config.json declares a BERT-style encoder."""
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return
    raise UnsupportedError(
        f"{path}: model_type {model_type!r} (architectures {archs}) is not supported; "
        f"supported encoders: model_type {', '.join(MODEL_TYPES)} (BertModel and BERT-style "
        "checkpoints such as all-MiniLM, bge, e5)"
    )


def build_graph(config: BertConfig, weights: Weights, linear_dtype: str = "f32", packed: bool = False) -> Graph:
    """The encoder as a graph; linear weights in ``linear_dtype`` (f32 or bf16); ``packed``:
    the packed-sequence form (see the module docstring)."""
    c = config
    h, inter = c.hidden_size, c.intermediate_size
    g = Graph()

    def const(name: str, shape: tuple[int, ...], dtype: str = "f32") -> Value:
        t = weights.get(name, shape)
        return g.constant(_as(t, dtype))

    def linear(x: Value, name: str, n_out: int, n_in: int, activation: str | None = None) -> Value:
        w = const(f"{name}.weight", (n_out, n_in), linear_dtype)
        b = const(f"{name}.bias", (n_out,))
        return g.linear(x, w, b, activation=activation)

    def layer_norm(x: Value, name: str) -> Value:
        return g.layer_norm(
            x, const(f"{name}.weight", (h,)), const(f"{name}.bias", (h,)), eps=c.layer_norm_eps
        )

    ids = g.input("input_ids", ("batch", "seq"), "i64")
    mask = g.input("attention_mask", ("batch", "seq"), "i64")
    positions = g.input("position_ids", ("seq",), "i64")
    segments = g.input("segments", ("segments",), "i64") if packed else None
    x = g.embedding(const("embeddings.word_embeddings.weight", (c.vocab_size, h)), ids)
    x = g.add(x, g.embedding(const("embeddings.position_embeddings.weight", (c.max_position_embeddings, h)), positions))
    if c.type_vocab_size > 0 and weights.has("embeddings.token_type_embeddings.weight"):
        types = g.input("token_type_ids", ("batch", "seq"), "i64")
        table = const("embeddings.token_type_embeddings.weight", (c.type_vocab_size, h))
        x = g.add(x, g.embedding(table, types))
    x = layer_norm(x, "embeddings.LayerNorm")
    heads = ("batch", "seq", c.num_heads, c.head_dim)
    for i in range(c.num_layers):
        p = f"encoder.layer.{i}"
        q = g.reshape(linear(x, f"{p}.attention.self.query", h, h), heads)
        k = g.reshape(linear(x, f"{p}.attention.self.key", h, h), heads)
        v = g.reshape(linear(x, f"{p}.attention.self.value", h, h), heads)
        a = g.reshape(g.attention(q, k, v, key_padding_mask=mask, segments=segments), ("batch", "seq", h))
        a = g.add(linear(a, f"{p}.attention.output.dense", h, h), x)
        x = layer_norm(a, f"{p}.attention.output.LayerNorm")
        m = linear(x, f"{p}.intermediate.dense", inter, h, activation=c.activation)
        m = g.add(linear(m, f"{p}.output.dense", h, inter), x)
        x = layer_norm(m, f"{p}.output.LayerNorm")
    g.output("last_hidden_state", x)
    return g


def _as(t: Tensor, dtype: str) -> Tensor:
    return t if t.dtype == dtype else t.astype(dtype)
