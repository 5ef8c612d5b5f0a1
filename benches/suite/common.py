"""Helpers shared by the asv suite: smoke mode, timing, the measured peak, model folders."""

from __future__ import annotations

import json
import os
import time
from functools import cache
from pathlib import Path

import numpy as np
import rtserve as rt
from rtserve import bench

BENCHES = Path(__file__).resolve().parent.parent

SMOKE = os.environ.get("RTSERVE_BENCH_SMOKE") == "1"
"""Tiny parameters and models (tests/test_bench_smoke.py); the figures mean nothing then."""

MIN_TIME = 0.02 if SMOKE else 0.25
"""Seconds each track_ figure keeps repeating its call for (best of the repeats)."""


def best_time(fn, min_time: float = MIN_TIME, min_runs: int = 3) -> float:
    """Fastest of repeated calls of ``fn`` over at least ``min_time`` seconds (after one warm-up)."""
    fn()
    best, runs, start = float("inf"), 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


@cache
def peak_gflops(kind: str) -> float:
    """This machine's measured peak (``rtserve.bench``) at the current thread count.

    ``kind`` "bf16" falls back to the f32 FMA peak on CPUs without a bf16 dot instruction
    (rtserve then computes bf16 weights with f32 FMAs); NaN where there is no probe (not x86-64).
    """
    repeats = 1 if SMOKE else 3
    return bench.peak_gflops(kind, repeats) or bench.peak_gflops("f32", repeats) or float("nan")


@cache
def read_bandwidth_gbs() -> float:
    """Measured read bandwidth (``rtserve.bench``) at the current thread count."""
    return bench.read_bandwidth_gbs(nbytes=(16 << 20) if SMOKE else (256 << 20), repeats=2 if SMOKE else 5)


# --- MiniLM: the real folder when pulled, else a random-init folder of the same shape --------

MINILM_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_size": 384,
    "intermediate_size": 1536,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 6,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30522,
}
TINY_BERT_CONFIG = {**MINILM_CONFIG, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                    "num_hidden_layers": 2}


def real_minilm() -> Path | None:
    """The pulled all-MiniLM-L6-v2 folder, or None (never downloads)."""
    from rtserve import catalog

    return catalog.resolve("minilm", quiet=True) if catalog.is_pulled("minilm") else None


def write_random_bert(folder: Path, config: dict = MINILM_CONFIG, seed: int = 0) -> Path:
    """A sentence-transformers-style BERT folder with random weights (scale 0.02) of ``config``'s
    shape and a WordPiece tokenizer over benches/embeddings.py's words (one token per word, as
    the real vocabulary gives for most of them; other ids are filler)."""
    from embeddings import WORDS  # benches/embeddings.py
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    h, inter, layers, vocab = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                   "vocab_size"))
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    w = {
        "embeddings.word_embeddings.weight": rand(vocab, h),
        "embeddings.position_embeddings.weight": rand(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": rand(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": np.ones(h, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(h, np.float32),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, (rows, cols) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                                   "attention.self.value": (h, h), "attention.output.dense": (h, h),
                                   "intermediate.dense": (inter, h), "output.dense": (h, inter)}.items():
            w[p + name + ".weight"] = rand(rows, cols)
            w[p + name + ".bias"] = np.zeros(rows, np.float32)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + norm + ".weight"] = np.ones(h, np.float32)
            w[p + norm + ".bias"] = np.zeros(h, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    rt.save_safetensors(w, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))

    tokens = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    words = [".", ",", *sorted(set(WORDS)), *"abcdefghijklmnopqrstuvwxyz", *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    free = (i for i in range(vocab) if i not in tokens.values())
    for word in words:
        tokens.setdefault(word, next(free))
    for i in free:
        tokens[f"[unused{i}]"] = i
    tok = Tokenizer(models.WordPiece(tokens, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 101), ("[SEP]", 102)]
    )
    tok.decoder = decoders.WordPiece()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": h,
                                                                  "pooling_mode_mean_tokens": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))
    return folder
