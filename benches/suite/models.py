"""Model benchmarks: all-MiniLM-L6-v2 embeddings and decoding on SmolLM2-135M's shape.

MiniLM: the ``weights`` parameter says which model ran. With the real folder pulled
(``python -m rtserve pull minilm``) it is "all-MiniLM-L6-v2"; without it the benchmarks run on
"random init, MiniLM shape": a random-init BERT of the same shape (6 layers, hidden 384, 12 heads,
intermediate 1536, vocab 30522) with a synthetic one-token-per-word tokenizer: the same
work per token, about the same tokens per sentence (19.7 vs 20.0 on average), not the same
vectors. Sentences: benches/embeddings.py's 512 seeded 5-60-word sentences.

Decoding: benches/decode.py's random-init Llama of SmolLM2-135M's shape, a 32-token prompt
continued greedily by 128 tokens (eos ignored), median of 3; the bound is the measured read
bandwidth divided by the weight bytes read per token.
"""

from __future__ import annotations

import time
from pathlib import Path

import decode  # benches/decode.py
import embeddings  # benches/embeddings.py

from .common import MINILM_CONFIG, SMOKE, TINY_BERT_CONFIG, read_bandwidth_gbs, real_minilm, rt, write_random_bert

SENTENCES = 32 if SMOKE else embeddings.N_SENTENCES
BATCH_SIZES = [1, 8, 32, 64, 128] if not SMOKE else [1, 8]


def _weights() -> str:
    """The weights parameter: which MiniLM this machine runs (decided at import, no download)."""
    if SMOKE:
        return "random init, tiny (smoke run)"
    return "all-MiniLM-L6-v2" if real_minilm() else "random init, MiniLM shape"


WEIGHTS = [_weights()]


def minilm_folder() -> str:
    """The pulled all-MiniLM-L6-v2, or a random-init folder of its shape written here (asv runs
    setup_cache in a temporary folder that it keeps for the class's benchmarks)."""
    real = None if SMOKE else real_minilm()
    if real:
        return str(real)
    return str(write_random_bert(Path("random-minilm").resolve(), TINY_BERT_CONFIG if SMOKE else MINILM_CONFIG))


class MiniLMLatency:
    """Batch-1 latency of one short sentence (12 tokens), text in, unit vector out."""

    params = WEIGHTS
    param_names = ["weights"]
    timeout = 300

    def setup_cache(self) -> str:
        return minilm_folder()

    def setup(self, folder: str, weights: str) -> None:
        self.model = rt.load(folder)
        self.model.embed([embeddings.SHORT])

    def time_embed_one_sentence(self, folder: str, weights: str) -> None:
        self.model.embed([embeddings.SHORT])


class MiniLMThroughput:
    """Sentences/s embedding the 512 sentences with ``embed(texts, batch_size=B)``, best of 3."""

    params = (WEIGHTS, BATCH_SIZES)
    param_names = ["weights", "batch_size"]
    timeout = 300

    def setup_cache(self) -> str:
        return minilm_folder()

    def setup(self, folder: str, weights: str, batch_size: int) -> None:
        self.model = rt.load(folder)
        self.texts = embeddings.sentences(SENTENCES)
        self.model.embed(self.texts[:batch_size], batch_size=batch_size)

    def track_sentences_per_s(self, folder: str, weights: str, batch_size: int) -> float:
        best = float("inf")
        for _ in range(1 if SMOKE else 3):
            started = time.perf_counter()
            self.model.embed(self.texts, batch_size=batch_size)
            best = min(best, time.perf_counter() - started)
        return len(self.texts) / best

    track_sentences_per_s.unit = "sentences/s"


TINY_LLAMA = {**decode.SHAPE, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}


class RandomSmolLM2ShapeDecode:
    """Random-init Llama of SmolLM2-135M's shape: prefill and decode tokens/s at batch 1.

    Both dtypes are measured once, in ``setup_cache`` (one model load each); the ``track_``
    methods report those figures.
    """

    params = ["f32", "bf16"]
    param_names = ["weights"]
    timeout = 600

    def setup_cache(self) -> dict:
        config = TINY_LLAMA if SMOKE else decode.SHAPE
        new, rounds, prompt_len = (4, 1, 8) if SMOKE else (128, 3, 32)
        folder = Path("smollm2-135m-shape").resolve()
        params = decode.write_model(folder, config=config)
        import numpy as np

        prompt = [int(x) for x in np.random.default_rng(1).integers(3, config["vocab_size"], prompt_len)]
        results = {}
        for dtype in self.params:
            prefill, tokens = decode.run_rtserve(folder, dtype, prompt, new, rounds)
            bound = read_bandwidth_gbs() * 1e9 / (params * (4 if dtype == "f32" else 2))
            results[dtype] = {"prefill": prefill, "decode": tokens, "bound": bound}
        return results

    def track_prefill_tokens_per_s(self, results: dict, weights: str) -> float:
        return results[weights]["prefill"]

    track_prefill_tokens_per_s.unit = "tokens/s"

    def track_decode_tokens_per_s(self, results: dict, weights: str) -> float:
        return results[weights]["decode"]

    track_decode_tokens_per_s.unit = "tokens/s"

    def track_decode_percent_of_bandwidth_bound(self, results: dict, weights: str) -> float:
        return 100.0 * results[weights]["decode"] / results[weights]["bound"]

    track_decode_percent_of_bandwidth_bound.unit = "% of bandwidth bound"
