"""BERT- and Llama-shaped models built twice: as an ``rt.Graph`` and as eager rt ops.

Both forms run the same ops on the same kernels, so the graph tests and ``benches/graph.py``
can compare a compiled graph with the eager calls it stands for. Weights are random (numpy,
seeded, scaled ~0.02 like the Hugging Face initialisers) under Hugging Face tensor names.

    cfg = BertConfig(layers=2, hidden=64, heads=4, intermediate=128, vocab=100)
    weights = bert_weights(cfg)
    graph = build_bert(cfg, weights)                       # unfused attention pattern
    feed = bert_inputs(cfg, batch=2, seq=16)
    out = graph.compile().run(feed)["last_hidden_state"]
    ref = bert_eager(cfg, eager_weights(weights), feed)     # same ops, one call each

The zero-argument functions at the end (``bert_base``, ``smollm2_135m_like``, ...) return a
Graph, for ``python -m rtserve inspect tests/graph_models.py:bert_base``.

BERT takes ``position_ids`` [seq] as a third input: the graph has no op that makes 0..seq-1
for a symbolic seq (no arange, and a slice of a known dim cannot have a symbolic length).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import rtserve as rt

WEIGHT_SCALE = 0.02
MASK_NEG = -1e9  # added to the scores of padded keys (exp underflows to exactly 0 in f32)


@dataclass(frozen=True)
class BertConfig:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    intermediate: int = 3072
    vocab: int = 30522
    max_positions: int = 512
    eps: float = 1e-12

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class LlamaConfig:
    layers: int = 30
    hidden: int = 576
    heads: int = 9
    kv_heads: int = 3
    intermediate: int = 1536
    vocab: int = 49152
    theta: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


BERT_BASE = BertConfig()
BERT_TINY = BertConfig(layers=2, hidden=64, heads=4, intermediate=128, vocab=100, max_positions=64)
SMOLLM2_135M = LlamaConfig()  # SmolLM2-135M's shape (its rope theta is 1e5; 1e4 here)
LLAMA_TINY = LlamaConfig(layers=2, hidden=512, heads=8, kv_heads=2, intermediate=1024, vocab=256)  # head_dim 64


# --- weights and inputs --------------------------------------------------------------------


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_SCALE)


def _norm_weight(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.float32(1.0) + _normal(rng, n)


def bert_weights(cfg: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random f32 weights under Hugging Face BertModel names."""
    rng = np.random.default_rng(seed)
    h, f = cfg.hidden, cfg.intermediate
    w = {
        "embeddings.word_embeddings.weight": _normal(rng, cfg.vocab, h),
        "embeddings.position_embeddings.weight": _normal(rng, cfg.max_positions, h),
        "embeddings.token_type_embeddings.weight": _normal(rng, 2, h),
        "embeddings.LayerNorm.weight": _norm_weight(rng, h),
        "embeddings.LayerNorm.bias": _normal(rng, h),
    }
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"] = _normal(rng, h, h)
            w[f"{p}attention.self.{name}.bias"] = _normal(rng, h)
        w[f"{p}attention.output.dense.weight"] = _normal(rng, h, h)
        w[f"{p}attention.output.dense.bias"] = _normal(rng, h)
        w[f"{p}attention.output.LayerNorm.weight"] = _norm_weight(rng, h)
        w[f"{p}attention.output.LayerNorm.bias"] = _normal(rng, h)
        w[f"{p}intermediate.dense.weight"] = _normal(rng, f, h)
        w[f"{p}intermediate.dense.bias"] = _normal(rng, f)
        w[f"{p}output.dense.weight"] = _normal(rng, h, f)
        w[f"{p}output.dense.bias"] = _normal(rng, h)
        w[f"{p}output.LayerNorm.weight"] = _norm_weight(rng, h)
        w[f"{p}output.LayerNorm.bias"] = _normal(rng, h)
    return w


def llama_weights(cfg: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random f32 weights under Hugging Face LlamaForCausalLM names (lm_head tied to the embedding)."""
    rng = np.random.default_rng(seed)
    h, f, d = cfg.hidden, cfg.intermediate, cfg.head_dim
    w = {"model.embed_tokens.weight": _normal(rng, cfg.vocab, h)}
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        w[f"{p}input_layernorm.weight"] = _norm_weight(rng, h)
        w[f"{p}self_attn.q_proj.weight"] = _normal(rng, cfg.heads * d, h)
        w[f"{p}self_attn.k_proj.weight"] = _normal(rng, cfg.kv_heads * d, h)
        w[f"{p}self_attn.v_proj.weight"] = _normal(rng, cfg.kv_heads * d, h)
        w[f"{p}self_attn.o_proj.weight"] = _normal(rng, h, cfg.heads * d)
        w[f"{p}post_attention_layernorm.weight"] = _norm_weight(rng, h)
        w[f"{p}mlp.gate_proj.weight"] = _normal(rng, f, h)
        w[f"{p}mlp.up_proj.weight"] = _normal(rng, f, h)
        w[f"{p}mlp.down_proj.weight"] = _normal(rng, h, f)
    w["model.norm.weight"] = _norm_weight(rng, h)
    return w


def bert_inputs(cfg: BertConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """input_ids, attention_mask (rows after the first end in padding) and position_ids."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    for row in range(1, batch):
        mask[row, max(1, seq - row * max(1, seq // (2 * batch))) :] = 0
    return {
        "input_ids": rng.integers(0, cfg.vocab, size=(batch, seq), dtype=np.int64),
        "attention_mask": mask,
        "position_ids": np.arange(seq, dtype=np.int64),
    }


def llama_inputs(cfg: LlamaConfig, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, cfg.vocab, size=(batch, seq), dtype=np.int64)}


# --- graphs --------------------------------------------------------------------------------


def build_bert(cfg: BertConfig, weights: Mapping[str, Any], fused_attention: bool = False) -> rt.Graph:
    """A BertModel encoder; output "last_hidden_state" [batch, seq, hidden].

    fused_attention=False writes attention out with primitive ops (transpose, matmul, scale,
    additive mask, softmax, matmul, transpose back), the pattern the attention-fusion pass
    looks for; True uses ``g.attention`` with the padding mask.
    """
    g = rt.Graph()
    c = {name: g.constant(value) for name, value in weights.items()}
    ids = g.input("input_ids", ("batch", "seq"), "i64")
    mask = g.input("attention_mask", ("batch", "seq"), "i64")
    positions = g.input("position_ids", ("seq",), "i64")
    heads, head_dim = cfg.heads, cfg.head_dim

    h = g.add(
        g.add(
            g.embedding(c["embeddings.word_embeddings.weight"], ids),
            g.embedding(c["embeddings.position_embeddings.weight"], positions),
        ),
        g.constant(np.asarray(weights["embeddings.token_type_embeddings.weight"])[0]),
    )
    h = g.layer_norm(h, c["embeddings.LayerNorm.weight"], c["embeddings.LayerNorm.bias"], eps=cfg.eps)
    if not fused_attention:
        # Hugging Face's extended mask: 0 where attended, a large negative where padded.
        keep = g.reshape(g.cast(mask, "f32"), ("batch", 1, 1, "seq"))
        mask_bias = g.mul(g.sub(1.0, keep), MASK_NEG)

    def split_heads(x: rt.Value) -> rt.Value:
        return g.reshape(x, ("batch", "seq", heads, head_dim))

    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def lin(x: rt.Value, name: str) -> rt.Value:
            return g.linear(x, c[f"{p}{name}.weight"], c[f"{p}{name}.bias"])

        q = split_heads(lin(h, "attention.self.query"))
        k = split_heads(lin(h, "attention.self.key"))
        v = split_heads(lin(h, "attention.self.value"))
        if fused_attention:
            ctx = g.attention(q, k, v, key_padding_mask=mask)
        else:
            scores = g.matmul(g.transpose(q, (0, 2, 1, 3)), g.transpose(k, (0, 2, 3, 1)))
            scores = g.add(g.mul(scores, 1.0 / math.sqrt(head_dim)), mask_bias)
            probs = g.softmax(scores, axis=-1)
            ctx = g.transpose(g.matmul(probs, g.transpose(v, (0, 2, 1, 3))), (0, 2, 1, 3))
        ctx = g.reshape(ctx, ("batch", "seq", cfg.hidden))
        h = g.layer_norm(
            g.add(lin(ctx, "attention.output.dense"), h),
            c[f"{p}attention.output.LayerNorm.weight"],
            c[f"{p}attention.output.LayerNorm.bias"],
            eps=cfg.eps,
        )
        up = g.gelu(lin(h, "intermediate.dense"))
        h = g.layer_norm(
            g.add(lin(up, "output.dense"), h),
            c[f"{p}output.LayerNorm.weight"],
            c[f"{p}output.LayerNorm.bias"],
            eps=cfg.eps,
        )
    g.output("last_hidden_state", h)
    return g


def build_llama(cfg: LlamaConfig, weights: Mapping[str, Any]) -> rt.Graph:
    """A Llama decoder, prefill (causal, positions 0..seq-1): output "logits" [batch, seq, vocab]."""
    g = rt.Graph()
    c = {name: g.constant(value) for name, value in weights.items()}
    ids = g.input("input_ids", ("batch", "seq"), "i64")
    d = cfg.head_dim
    h = g.embedding(c["model.embed_tokens.weight"], ids)
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        x = g.rms_norm(h, c[f"{p}input_layernorm.weight"], eps=cfg.eps)
        q = g.reshape(g.linear(x, c[f"{p}self_attn.q_proj.weight"]), ("batch", "seq", cfg.heads, d))
        k = g.reshape(g.linear(x, c[f"{p}self_attn.k_proj.weight"]), ("batch", "seq", cfg.kv_heads, d))
        v = g.reshape(g.linear(x, c[f"{p}self_attn.v_proj.weight"]), ("batch", "seq", cfg.kv_heads, d))
        q, k = g.rope(q, theta=cfg.theta), g.rope(k, theta=cfg.theta)
        ctx = g.reshape(g.attention(q, k, v, causal=True), ("batch", "seq", cfg.heads * d))
        h = g.add(h, g.linear(ctx, c[f"{p}self_attn.o_proj.weight"]))
        x = g.rms_norm(h, c[f"{p}post_attention_layernorm.weight"], eps=cfg.eps)
        gate = g.silu(g.linear(x, c[f"{p}mlp.gate_proj.weight"]))
        up = g.linear(x, c[f"{p}mlp.up_proj.weight"])
        h = g.add(h, g.linear(g.mul(gate, up), c[f"{p}mlp.down_proj.weight"]))
    h = g.rms_norm(h, c["model.norm.weight"], eps=cfg.eps)
    g.output("logits", g.linear(h, c["model.embed_tokens.weight"]))
    return g


# --- eager references: the same ops, one rt call each -------------------------------------


def eager_weights(weights: Mapping[str, np.ndarray], prepack: bool = False) -> dict[str, Any]:
    """The weights as rt.Tensors (zero-copy); with prepack, linear weights as rt.prepack'ed."""
    out: dict[str, Any] = {}
    for name, value in weights.items():
        linear_weight = value.ndim == 2 and "embed" not in name
        out[name] = rt.prepack(value) if prepack and linear_weight else rt.tensor(value)
    return out


def bert_eager(
    cfg: BertConfig, w: Mapping[str, Any], feed: Mapping[str, np.ndarray], fused_attention: bool = False
) -> rt.Tensor:
    """The forward of ``build_bert`` with eager ops; last_hidden_state."""
    ids, mask = feed["input_ids"], feed["attention_mask"]
    batch, seq = ids.shape
    heads, head_dim = cfg.heads, cfg.head_dim
    h = rt.add(
        rt.add(
            rt.embedding(w["embeddings.word_embeddings.weight"], ids),
            rt.embedding(w["embeddings.position_embeddings.weight"], feed["position_ids"]),
        ),
        w["embeddings.token_type_embeddings.weight"][0],
    )
    h = rt.layer_norm(h, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps=cfg.eps)
    if not fused_attention:
        keep = rt.cast(mask, "f32").reshape(batch, 1, 1, seq)
        mask_bias = rt.mul(rt.sub(1.0, keep), MASK_NEG)
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."

        def lin(x: rt.Tensor, name: str) -> rt.Tensor:
            return rt.linear(x, w[f"{p}{name}.weight"], w[f"{p}{name}.bias"])

        q = lin(h, "attention.self.query").reshape(batch, seq, heads, head_dim)
        k = lin(h, "attention.self.key").reshape(batch, seq, heads, head_dim)
        v = lin(h, "attention.self.value").reshape(batch, seq, heads, head_dim)
        if fused_attention:
            ctx = rt.attention(q, k, v, mask=mask)
        else:
            scores = rt.matmul(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1))
            scores = rt.add(rt.mul(scores, 1.0 / math.sqrt(head_dim)), mask_bias)
            probs = rt.softmax(scores, axis=-1)
            ctx = rt.matmul(probs, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3).contiguous()
        ctx = ctx.reshape(batch, seq, cfg.hidden)
        h = rt.layer_norm(
            rt.add(lin(ctx, "attention.output.dense"), h),
            w[f"{p}attention.output.LayerNorm.weight"],
            w[f"{p}attention.output.LayerNorm.bias"],
            eps=cfg.eps,
        )
        up = rt.gelu(lin(h, "intermediate.dense"))
        h = rt.layer_norm(
            rt.add(lin(up, "output.dense"), h),
            w[f"{p}output.LayerNorm.weight"],
            w[f"{p}output.LayerNorm.bias"],
            eps=cfg.eps,
        )
    return h


def llama_eager(cfg: LlamaConfig, w: Mapping[str, Any], feed: Mapping[str, np.ndarray]) -> rt.Tensor:
    """The forward of ``build_llama`` with eager ops; logits."""
    ids = feed["input_ids"]
    batch, seq = ids.shape
    d = cfg.head_dim
    embed = w["model.embed_tokens.weight"]
    h = rt.embedding(embed, ids)
    for i in range(cfg.layers):
        p = f"model.layers.{i}."
        x = rt.rms_norm(h, w[f"{p}input_layernorm.weight"], eps=cfg.eps)
        q = rt.linear(x, w[f"{p}self_attn.q_proj.weight"]).reshape(batch, seq, cfg.heads, d)
        k = rt.linear(x, w[f"{p}self_attn.k_proj.weight"]).reshape(batch, seq, cfg.kv_heads, d)
        v = rt.linear(x, w[f"{p}self_attn.v_proj.weight"]).reshape(batch, seq, cfg.kv_heads, d)
        q, k = rt.rope(q, theta=cfg.theta), rt.rope(k, theta=cfg.theta)
        ctx = rt.attention(q, k, v, causal=True).reshape(batch, seq, cfg.heads * d)
        h = rt.add(h, rt.linear(ctx, w[f"{p}self_attn.o_proj.weight"]))
        x = rt.rms_norm(h, w[f"{p}post_attention_layernorm.weight"], eps=cfg.eps)
        gate = rt.silu(rt.linear(x, w[f"{p}mlp.gate_proj.weight"]))
        up = rt.linear(x, w[f"{p}mlp.up_proj.weight"])
        h = rt.add(h, rt.linear(rt.mul(gate, up), w[f"{p}mlp.down_proj.weight"]))
    h = rt.rms_norm(h, w["model.norm.weight"], eps=cfg.eps)
    return rt.linear(h, embed)


# --- zero-argument entry points (``python -m rtserve inspect tests/graph_models.py:NAME``) ---


def bert_base() -> rt.Graph:
    """BERT-base (12 layers, hidden 768, 12 heads, vocab 30522), unfused attention pattern."""
    return build_bert(BERT_BASE, bert_weights(BERT_BASE))


def bert_base_fused() -> rt.Graph:
    """BERT-base with ``g.attention``."""
    return build_bert(BERT_BASE, bert_weights(BERT_BASE), fused_attention=True)


def bert_tiny() -> rt.Graph:
    return build_bert(BERT_TINY, bert_weights(BERT_TINY))


def smollm2_135m_like() -> rt.Graph:
    """A SmolLM2-135M-shaped Llama (30 layers, hidden 576, 9 heads, 3 kv heads)."""
    return build_llama(SMOLLM2_135M, llama_weights(SMOLLM2_135M))


def llama_tiny() -> rt.Graph:
    return build_llama(LLAMA_TINY, llama_weights(LLAMA_TINY))
