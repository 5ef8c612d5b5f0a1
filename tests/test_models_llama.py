"""Llama-family decoders: rt.load of LlamaForCausalLM / Qwen2 / Mistral folders, forward,
KV-cache decode, generate, streaming, stop strings, chat templates and batched steps.

Two kinds of reference:
- tiny random models written here into tmp folders, checked against a float64 numpy
  implementation of the Hugging Face Llama forward (``reference_logits``);
- golden files from transformers in ``tests/fixtures/tiny_*`` (see tests/fixtures/README.md),
  used when present.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rtserve as rt
from rtserve.models.decoder import Sequence
from rtserve.sampling import SamplingParams, apply_repetition_penalty, sample, warp

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you today?",
    "Once upon a time there was a little model that generated text.",
    "Les élèves étudient à l'école. Ça va très bien, merci.",
    "我爱自然语言处理。你好，世界！",
    "Emoji: 🍕🍕 🎉 👍🏽 and more",
    "def f(x):\n    return x * 2\n",
    "numbers 1234567890 and punctuation ,.;:!?",
]


@dataclass(frozen=True)
class Tiny:
    """A tiny random decoder; fields mirror config.json."""

    model_type: str = "llama"
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int | None = None
    layers: int = 2
    intermediate: int = 96
    eps: float = 1e-5
    theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie: bool = True
    attention_bias: bool = False
    max_positions: int = 256
    seed: int = 0
    rope_parameters: bool = False  # transformers 5's config.json form of theta + scaling
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


def make_tokenizer(folder: Path) -> int:
    """A byte-level BPE trained on CORPUS, BOS added to single texts; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def make_model(folder: Path, t: Tiny = Tiny()) -> dict[str, np.ndarray]:
    """Writes an HF folder (config, weights, tokenizer, generation config); returns the weights."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = make_tokenizer(folder)
    rng = np.random.default_rng(t.seed)
    h, d, f = t.hidden, t.hd, t.intermediate

    def normal(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"model.embed_tokens.weight": normal(vocab, h, scale=1.0), "model.norm.weight": rng.uniform(0.5, 1.5, h).astype(np.float32)}
    bias = t.attention_bias or t.model_type == "qwen2"
    for i in range(t.layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = rng.uniform(0.5, 1.5, h).astype(np.float32)
        w[p + "post_attention_layernorm.weight"] = rng.uniform(0.5, 1.5, h).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(t.heads * d, h)
        w[p + "self_attn.k_proj.weight"] = normal(t.kv_heads * d, h)
        w[p + "self_attn.v_proj.weight"] = normal(t.kv_heads * d, h)
        w[p + "self_attn.o_proj.weight"] = normal(h, t.heads * d)
        if bias:
            for name, n in (("q", t.heads * d), ("k", t.kv_heads * d), ("v", t.kv_heads * d)):
                w[p + f"self_attn.{name}_proj.bias"] = normal(n, scale=0.1)
            if t.model_type != "qwen2":
                w[p + "self_attn.o_proj.bias"] = normal(h, scale=0.1)
        w[p + "mlp.gate_proj.weight"] = normal(f, h)
        w[p + "mlp.up_proj.weight"] = normal(f, h)
        w[p + "mlp.down_proj.weight"] = normal(h, f)
    if not t.tie:
        w["lm_head.weight"] = normal(vocab, h)
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}[t.model_type]
    config: dict[str, Any] = {
        "architectures": [arch],
        "model_type": t.model_type,
        "vocab_size": vocab,
        "hidden_size": h,
        "num_attention_heads": t.heads,
        "num_key_value_heads": t.kv_heads,
        "num_hidden_layers": t.layers,
        "intermediate_size": f,
        "rms_norm_eps": t.eps,
        "rope_theta": t.theta,
        "rope_scaling": t.rope_scaling,
        "tie_word_embeddings": t.tie,
        "max_position_embeddings": t.max_positions,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 1,
    }
    if t.model_type == "llama":
        config["attention_bias"] = t.attention_bias
    if t.head_dim is not None:
        config["head_dim"] = t.head_dim
    if t.rope_parameters:
        del config["rope_theta"], config["rope_scaling"]
        config["rope_parameters"] = {"rope_theta": t.theta, **(t.rope_scaling or {"rope_type": "default"})}
    config.update(t.extra)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
    rt.save_safetensors(w, folder / "model.safetensors")
    return w


def reference_inv_freq(t: Tiny) -> np.ndarray:
    d = t.hd
    inv = 1.0 / (t.theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    s = t.rope_scaling or {}
    kind = s.get("rope_type", s.get("type", "default"))
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv = np.where(medium, (1 - smooth) * inv / factor + smooth * inv, out)
    return inv


def reference_logits(w: dict[str, np.ndarray], t: Tiny, ids: list[int]) -> np.ndarray:
    """float64 numpy Hugging Face Llama forward of one sequence: logits [seq, vocab]."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    n, d = len(ids), t.hd

    def rms(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + t.eps) * weight

    def lin(x: np.ndarray, name: str) -> np.ndarray:
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    angles = np.arange(n)[:, None] * reference_inv_freq(t)[None, :]
    cos, sin = np.cos(np.concatenate([angles] * 2, -1)), np.sin(np.concatenate([angles] * 2, -1))

    def rope(x: np.ndarray) -> np.ndarray:  # [heads, n, d]
        rotated = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], -1)
        return x * cos + rotated * sin

    x = W["model.embed_tokens.weight"][ids]
    causal = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(t.layers):
        p = f"model.layers.{i}."
        a = rms(x, W[p + "input_layernorm.weight"])
        q = rope(lin(a, p + "self_attn.q_proj").reshape(n, t.heads, d).transpose(1, 0, 2))
        k = rope(lin(a, p + "self_attn.k_proj").reshape(n, t.kv_heads, d).transpose(1, 0, 2))
        v = lin(a, p + "self_attn.v_proj").reshape(n, t.kv_heads, d).transpose(1, 0, 2)
        group = t.heads // t.kv_heads
        k, v = np.repeat(k, group, 0), np.repeat(v, group, 0)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        x = x + lin(ctx.transpose(1, 0, 2).reshape(n, t.heads * d), p + "self_attn.o_proj")
        m = rms(x, W[p + "post_attention_layernorm.weight"])
        gate = lin(m, p + "mlp.gate_proj")
        x = x + lin(gate / (1 + np.exp(-gate)) * lin(m, p + "mlp.up_proj"), p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
    return x @ head.T


VARIANTS = {
    "llama_gqa_tied": Tiny(),
    "llama_untied_mha": Tiny(kv_heads=4, tie=False, seed=1),
    "llama_mqa_head_dim": Tiny(kv_heads=1, head_dim=24, seed=2),
    "llama_bias_llama3_rope": Tiny(
        attention_bias=True,
        theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        seed=3,
    ),
    "llama_linear_rope": Tiny(rope_scaling={"type": "linear", "factor": 2.0}, seed=4),
    "llama_rope_parameters": Tiny(rope_scaling={"rope_type": "linear", "factor": 4.0}, theta=5e4, rope_parameters=True, seed=7),
    "qwen2": Tiny(model_type="qwen2", eps=1e-6, theta=1000000.0, seed=5, extra={"use_sliding_window": False, "sliding_window": 32}),
    "mistral": Tiny(model_type="mistral", seed=6, extra={"sliding_window": None}),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray], Tiny]:
    folder = tmp_path_factory.mktemp("tiny_llama")
    t = VARIANTS["llama_gqa_tied"]
    return folder, make_model(folder, t), t


@pytest.fixture(scope="module")
def model(tiny: tuple[Path, dict[str, np.ndarray], Tiny]) -> rt.DecoderModel:
    return rt.load(tiny[0])


# --- forward and cache against the float64 reference ---------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_matches_float64_reference(tmp_path: Path, name: str) -> None:
    t = VARIANTS[name]
    w = make_model(tmp_path, t)
    m = rt.load(tmp_path)
    assert isinstance(m, rt.DecoderModel)
    ids = m.tokenizer.encode_ids("Hello world! Ça va? 你好 🍕")
    ids = ids + list(range(40, 80))  # positions up to ~60: the llama3 scaling bands all matter
    got = m.forward(np.asarray([ids]))[0]
    ref = reference_logits(w, t, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    # greedy decoding through the KV cache = argmax of full forwards
    gen = m.generate(ids[:5], max_tokens=12, ignore_eos=True)
    seq = ids[:5]
    for token in gen.token_ids:
        expected = int(np.argmax(reference_logits(w, t, seq)[-1]))
        assert token == expected
        seq = seq + [token]


def test_decode_logits_match_prefill(model: rt.DecoderModel) -> None:
    ids = model.tokenizer.encode_ids("The quick brown fox jumps over")
    full = model.forward(np.asarray([ids]))[0]
    seq = model.new_sequence(ids[:3], max_tokens=50)
    model.step([seq])  # prefill of 3 tokens
    # teacher-force the rest through decode steps and compare each step's logits
    for pos in range(3, len(ids)):
        seq.token_ids[-1] = ids[pos]
        logits = model._decode([seq])[0]
        assert np.abs(logits - full[pos]).max() < 1e-4 * max(1.0, np.abs(full[pos]).max())


def test_batched_forward_with_padding(model: rt.DecoderModel) -> None:
    texts = ["Hello", "Once upon a time there was", "我爱"]
    rows = [model.tokenizer.encode_ids(s) for s in texts]
    n = max(map(len, rows))
    ids = np.zeros((3, n), np.int64)
    mask = np.zeros((3, n), np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    batch = model.forward(ids, mask)
    for i, r in enumerate(rows):
        alone = model.forward(np.asarray([r]))[0]
        assert np.abs(batch[i, : len(r)] - alone).max() < 1e-4


def test_kv_cache_is_preallocated_and_reported(model: rt.DecoderModel) -> None:
    seq = model.new_sequence("Hello", max_tokens=20)
    model.step([seq])
    c = model.config
    cache = seq.cache
    assert cache is not None and cache.length == len(seq.prompt_ids)
    assert cache.capacity >= len(seq.prompt_ids) + 19
    assert cache.nbytes == 2 * c.num_layers * cache.capacity * c.num_kv_heads * c.head_dim * 4
    assert model.kv_bytes_per_token == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4
    before = cache.k
    while not seq.finished:
        model.step([seq])
    assert seq.cache.k is before  # never reallocated
    assert seq.finish_reason in ("length", "stop")


# --- batched steps ---------------------------------------------------------------------------


def test_batched_step_equals_each_alone(model: rt.DecoderModel) -> None:
    prompts = ["Hi", "The quick brown fox", "Once upon a time there was a little", "我爱自然语言处理。你好"]
    alone = [model.generate(p, max_tokens=24, ignore_eos=True).token_ids for p in prompts]
    seqs = [model.new_sequence(p, max_tokens=24, ignore_eos=True) for p in prompts]
    assert len({len(s.prompt_ids) for s in seqs}) == 4
    while not all(s.finished for s in seqs):
        outs = model.step(seqs)
        assert all(o is not None for o, s in zip(outs, seqs) if not s.finished or o is not None)
    assert [s.token_ids for s in seqs] == alone


def test_decode_graph_with_the_cache_copied_gives_the_same_tokens(tiny: tuple[Path, dict[str, np.ndarray], Tiny]) -> None:
    """The decode graph devices without appended-key attention get (the new key placed into a
    copy of the cache with where) decodes the same tokens and logits as the CPU's, which reads
    the cache in place and appends the new key."""
    from rtserve.models import llama
    from rtserve.models.hf import Weights

    appended = rt.load(tiny[0])
    copied = rt.load(tiny[0])
    assert "new_slot" not in appended.decode.inputs
    tensors = llama.load_tensors(copied.config, Weights(tiny[0], prefixes=("",)), copied.dtype)
    copied.decode = llama.build_decode_graph(copied.config, tensors, append=False).compile()
    assert "new_slot" in copied.decode.inputs
    prompts = ["Hi", "The quick brown fox jumps", "Once upon a time"]
    for m in (appended, copied):
        seqs = [m.new_sequence(p, max_tokens=20, ignore_eos=True) for p in prompts]
        while not all(s.finished for s in seqs):
            m.step(seqs)
        m.tokens = [s.token_ids for s in seqs]  # type: ignore[attr-defined]
    assert appended.tokens == copied.tokens  # type: ignore[attr-defined]


def test_sequences_join_and_leave_between_steps(model: rt.DecoderModel) -> None:
    prompts = ["Hello world", "numbers 1234", "def f(x):", "Les élèves"]
    lengths = [5, 20, 12, 16]
    alone = [model.generate(p, max_tokens=n, ignore_eos=True).token_ids for p, n in zip(prompts, lengths)]
    active: list[Sequence] = []
    done: dict[int, list[int]] = {}
    pending = list(enumerate(zip(prompts, lengths)))
    steps = 0
    while pending or active:
        if pending and steps % 3 == 0:  # one joins every third step
            i, (p, n) = pending.pop(0)
            s = model.new_sequence(p, max_tokens=n, ignore_eos=True)
            s.tag = i  # type: ignore[attr-defined]
            active.append(s)
        outs = model.step(active)
        assert all(o is not None for o in outs)
        for s in [s for s in active if s.finished]:
            done[s.tag] = s.token_ids  # type: ignore[attr-defined]
        active = [s for s in active if not s.finished]
        steps += 1
    assert [done[i] for i in range(4)] == alone
    assert [len(d) for d in (done[i] for i in range(4))] == lengths


def test_step_skips_finished_sequences(model: rt.DecoderModel) -> None:
    a = model.new_sequence("Hello", max_tokens=1)
    b = model.new_sequence("Hello", max_tokens=3)
    assert model.step([a, b])[0].finish_reason == "length"  # type: ignore[union-attr]
    outs = model.step([a, b])
    assert outs[0] is None and outs[1] is not None
    with pytest.raises(ValueError, match="twice"):
        model.step([b, b])


# --- generation: text, streaming, stops ------------------------------------------------------


def test_generate_returns_generation(model: rt.DecoderModel) -> None:
    g = model.generate("Hello", max_tokens=8, ignore_eos=True)
    assert isinstance(g, rt.Generation)
    assert len(g.token_ids) == 8 and g.finish_reason == "length"
    assert g.text == model.tokenizer.decode(g.token_ids) == str(g)
    assert g.prompt_token_ids == model.tokenizer.encode_ids("Hello")
    assert g.prompt_token_ids[0] == 0  # the BOS the tokenizer adds


@pytest.mark.parametrize("prompt", ["Hello", "Emoji: 🍕", "我爱", "Les élèves"])
def test_streaming_equals_non_streaming(model: rt.DecoderModel, prompt: str) -> None:
    kwargs: dict[str, Any] = {"max_tokens": 40, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    g = model.generate(prompt, **kwargs)
    stream = model.stream(prompt, **kwargs)
    pieces = list(stream)
    assert "".join(pieces) == g.text
    assert stream.generation is not None and stream.generation.token_ids == g.token_ids
    assert list(model.generate(prompt, stream=True, **kwargs)) == pieces


def feed(tokenizer: rt.Tokenizer, ids: list[int], stop: tuple[str, ...] = (), stop_ids: frozenset[int] = frozenset()) -> tuple[list[str], Sequence]:
    seq = Sequence([0], SamplingParams(), max_tokens=10_000, stop=stop, stop_ids=stop_ids, limit=10_000)
    pieces = []
    for t in ids:
        out = seq._append(t, tokenizer)
        pieces.append(out.text)
        if seq.finished:
            break
    return pieces, seq


def test_incremental_detokenization_of_multibyte_characters(model: rt.DecoderModel) -> None:
    tok = model.tokenizer
    text = "Ça va? 我爱 🍕👍🏽 done"
    ids = tok.encode_ids(text, add_special_tokens=False)
    # byte-level BPE splits some characters over several tokens: make sure some do here
    assert any("\ufffd" in tok.decode(ids[:i]) for i in range(1, len(ids)))
    pieces, seq = feed(tok, ids)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text == seq.text


def metaspace_tokenizer() -> rt.Tokenizer:
    """A SentencePiece-style tokenizer (Llama 2, TinyLlama): "▁" for spaces, byte fallback,
    and a decoder that strips the leading space of the whole text, which a window decoded
    alone would strip wrongly."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    bytes_ = {f"<0x{b:02X}>": b for b in range(256)}
    pieces = ["<unk>", "<s>", "</s>", *bytes_, "▁", "a", "b", "é", "▁a", "▁b", "ab", "▁ab", "▁é"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "a"), ("▁", "b"), ("a", "b"), ("▁a", "b"), ("▁", "é")]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")  # type: ignore[arg-type]
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    return rt.Tokenizer(tok, Path("metaspace"))


@pytest.mark.parametrize("name", ["tiny_llama_gqa_tied", "tiny_qwen2", "metaspace"])
def test_incremental_detokenization_equals_decoding_every_id(name: str) -> None:
    """At every step the text a sequence decodes incrementally (a short window past what has
    settled) is what decoding all its ids gives: random ids (bytes of partial characters
    and special tokens among them) and real multilingual text."""
    tok = metaspace_tokenizer() if name == "metaspace" else rt.Tokenizer.from_folder(FIXTURES / name)
    rng = np.random.default_rng(len(name))
    texts = ["Ça va? 我爱 🍕👍🏽 done", "  two  spaces, é é", "ab ab aé"]
    cases = [tok.encode_ids(t, add_special_tokens=False) for t in texts]
    cases += [[int(i) for i in rng.integers(0, tok.vocab_size, size=300)] for _ in range(4)]
    for ids in cases:
        seq = Sequence([0], SamplingParams(), max_tokens=10_000, stop=(), stop_ids=frozenset(), limit=10_000)
        for n in range(1, len(ids) + 1):
            assert seq._decoded(ids[:n], tok) == tok.decode(ids[:n]), (name, ids[:n])


def test_stop_strings_cut_the_text(model: rt.DecoderModel) -> None:
    tok = model.tokenizer
    ids = tok.encode_ids("Hello there, how are you today?", add_special_tokens=False)
    pieces, seq = feed(tok, ids, stop=("how are",))
    assert seq.finish_reason == "stop" and seq.text == "Hello there, "
    assert "".join(pieces) == seq.text
    # a stop string spanning tokens is never partly shown, even when it fails to match
    pieces, seq = feed(tok, ids[: len(tok.encode_ids("Hello there", add_special_tokens=False))], stop=("there, who",))
    assert seq.finish_reason is None and "".join(pieces) == "Hello "  # "there" held back: it may begin the stop
    # stop token ids end generation and their text is left out
    comma = tok.encode_ids(",", add_special_tokens=False)[0]
    pieces, seq = feed(tok, ids, stop_ids=frozenset([comma]))
    assert seq.finish_reason == "stop" and seq.text == "Hello there" and seq.token_ids[-1] == comma


def test_stop_string_end_to_end(model: rt.DecoderModel) -> None:
    g = model.generate("Once upon", max_tokens=40, temperature=1.0, seed=3, ignore_eos=True)
    text = g.text
    assert len(text) > 10
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text.index(stop)
    g2 = model.generate("Once upon", max_tokens=40, temperature=1.0, seed=3, ignore_eos=True, stop=stop)
    assert g2.finish_reason == "stop" and g2.text == text[:cut]
    assert "".join(model.stream("Once upon", max_tokens=40, temperature=1.0, seed=3, ignore_eos=True, stop=[stop, "zzz"])) == text[:cut]


def test_eos_from_generation_config(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path) -> None:
    folder, _, _ = tiny
    m = rt.load(folder)
    assert m.eos_token_ids == [1]
    g = m.generate("Hello", max_tokens=30, ignore_eos=True)
    first = g.token_ids[3]
    # make that token an eos through generation_config.json (a list of ids)
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    (copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, first]}))
    m2 = rt.load(copy)
    assert m2.eos_token_ids == [1, first]
    g2 = m2.generate("Hello", max_tokens=30)
    assert g2.finish_reason == "stop"
    assert g2.token_ids == g.token_ids[: g.token_ids.index(first) + 1]
    assert g2.text == m.tokenizer.decode(g2.token_ids[:-1])
    # no generation_config.json: config.json, then tokenizer_config's eos_token
    (copy / "generation_config.json").unlink()
    assert rt.load(copy).eos_token_ids == [1]
    cfg = json.loads((copy / "config.json").read_text())
    del cfg["eos_token_id"]
    (copy / "config.json").write_text(json.dumps(cfg))
    assert rt.load(copy).eos_token_ids == [1]  # "</s>" is id 1


def test_context_limit_ends_generation(tiny: tuple[Path, dict[str, np.ndarray], Tiny]) -> None:
    m = rt.load(tiny[0], max_context=12)
    assert m.max_context == 12
    g = m.generate(list(range(2, 10)), max_tokens=100, ignore_eos=True)  # 8 prompt tokens
    assert g.finish_reason == "length" and len(g.token_ids) == 5  # the last one never needs a slot
    with pytest.raises(ValueError, match="context"):
        m.generate(list(range(2, 20)))
    with pytest.raises(ValueError, match="context"):
        m.forward(np.zeros((1, 13), np.int64))


def test_generate_argument_errors(model: rt.DecoderModel) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        model.generate("Hi", max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate("Hi", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate("Hi", top_p=0)
    with pytest.raises(ValueError, match="stop"):
        model.generate("Hi", stop=[""])
    with pytest.raises(ValueError, match="token ids"):
        model.generate([0, 10**6])
    with pytest.raises(ValueError, match="no tokens"):
        model.generate([])
    with pytest.raises(TypeError, match="prompt"):
        model.generate([[1, 2]])


# --- sampling ----------------------------------------------------------------------------------


def test_seeded_sampling_is_repeatable(model: rt.DecoderModel) -> None:
    kw: dict[str, Any] = {"max_tokens": 16, "temperature": 1.2, "top_p": 0.95, "seed": 11, "ignore_eos": True}
    a = model.generate("Hello", **kw).token_ids
    assert model.generate("Hello", **kw).token_ids == a
    assert model.generate("Hello", **{**kw, "seed": 12}).token_ids != a
    greedy = model.generate("Hello", max_tokens=16, ignore_eos=True).token_ids
    assert model.generate("Hello", max_tokens=16, temperature=5.0, top_k=1, seed=1, ignore_eos=True).token_ids == greedy


def test_warpers_match_transformers_semantics() -> None:
    logits = np.log(np.asarray([0.5, 0.2, 0.15, 0.1, 0.05]))
    keep = lambda **kw: np.isfinite(warp(logits, SamplingParams(temperature=1.0, **kw))).tolist()  # noqa: E731
    assert keep(top_k=2) == [True, True, False, False, False]
    assert keep(top_p=0.7) == [True, True, False, False, False]  # smallest set reaching 0.7
    assert keep(top_p=0.71) == [True, True, True, False, False]
    assert keep(top_p=0.01) == [True, False, False, False, False]
    assert keep(min_p=0.3) == [True, True, True, False, False]  # p >= 0.3 * 0.5
    scaled = warp(logits, SamplingParams(temperature=0.5))
    assert np.allclose(scaled, logits * 2)
    pen = apply_repetition_penalty(np.asarray([2.0, -2.0, 1.0], np.float32), np.asarray([0, 1, 1]), 2.0)
    assert pen.tolist() == [1.0, -4.0, 1.0]
    # greedy with a penalty picks the best unseen token when the seen one drops below it
    row = np.asarray([3.0, 2.0, 0.5], np.float32)
    assert sample(row, SamplingParams(repetition_penalty=2.0), np.random.default_rng(0), seen=np.asarray([0])) == 1
    # sampling follows the distribution
    rng = np.random.default_rng(0)
    draws = [sample(logits.astype(np.float32), SamplingParams(temperature=1.0), rng) for _ in range(4000)]
    freq = np.bincount(draws, minlength=5) / 4000
    assert np.abs(freq - np.exp(logits)).max() < 0.03


# --- chat templates ------------------------------------------------------------------------------


def test_chat_renders_the_template_and_generates(model: rt.DecoderModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🍕"}]
    text = model.apply_chat_template(messages)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 🍕<|im_end|>\n<|im_start|>assistant\n"
    assert model.apply_chat_template(messages, add_generation_prompt=False).endswith("<|im_end|>\n")
    ids = model.tokenizer.encode_ids(text, add_special_tokens=False)
    assert ids[0] == model.tokenizer.token_to_id("<|im_start|>")  # no BOS added by chat
    g = model.chat(messages, max_tokens=6, ignore_eos=True)
    assert g.prompt_token_ids == ids
    assert g.token_ids == model.generate(ids, max_tokens=6, ignore_eos=True).token_ids
    assert "".join(model.chat(messages, max_tokens=6, ignore_eos=True, stream=True)) == g.text


def test_chat_template_features(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny[0], copy)
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "  {{ m['role'] }}: {{ m['content'] | tojson }}\n"
        "{% generation %}{{ eos_token }}{% endgeneration %}"
        "{% endfor %}{% if tools is not none %}tools{% endif %}"
    )
    cfg = json.loads((copy / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "default", "template": template}, {"name": "tool_use", "template": "x"}]
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = rt.load(copy)
    # lstrip_blocks/trim_blocks as transformers; tojson keeps non-ASCII
    assert m.apply_chat_template([{"role": "user", "content": "é"}]) == '<s>  user: "é"\n</s>'
    with pytest.raises(ValueError, match="no system role"):
        m.apply_chat_template([{"role": "system", "content": "x"}])
    with pytest.raises(TypeError, match="role"):
        m.apply_chat_template([{"content": "x"}])
    # chat_template.jinja (transformers 5 writes it beside tokenizer_config.json) wins
    (copy / "chat_template.jinja").write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert rt.load(copy).apply_chat_template([{"role": "user", "content": "a"}]) == "[a]"
    # no template at all: a clear error naming tokenizer_config.json
    (copy / "chat_template.jinja").unlink()
    del cfg["chat_template"]
    (copy / "tokenizer_config.json").write_text(json.dumps(cfg))
    m = rt.load(copy)
    with pytest.raises(rt.UnsupportedError, match=r"tokenizer_config\.json.*chat_template"):
        m.chat([{"role": "user", "content": "a"}])


# --- dtypes ------------------------------------------------------------------------------------


def test_bf16_top1_agreement(tiny: tuple[Path, dict[str, np.ndarray], Tiny]) -> None:
    f32 = rt.load(tiny[0])
    bf16 = rt.load(tiny[0], dtype="bf16")
    assert bf16.dtype == "bf16"
    ids = np.asarray([f32.tokenizer.encode_ids(" ".join(CORPUS[:4]))])
    a, b = f32.forward(ids)[0], bf16.forward(ids)[0]
    agree = (a.argmax(-1) == b.argmax(-1)).mean()
    assert agree >= 0.95
    assert rt.load(tiny[0], dtype="auto").dtype == "f32"


# --- config errors -------------------------------------------------------------------------------


def edit_config(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path, **changes: Any) -> Path:
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(tiny[0], copy)
    cfg = json.loads((copy / "config.json").read_text())
    for k, v in changes.items():
        if v is None and k.startswith("drop_"):
            cfg.pop(k[5:], None)
        else:
            cfg[k] = v
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, rt.UnsupportedError, r"rope_scaling\.rope_type 'yarn'"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, rt.UnsupportedError, r"rope_scaling\.rope_type 'dynamic'"),
        ({"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, rt.UnsupportedError, r"rope_parameters\.rope_type 'longrope'"),
        ({"hidden_act": "gelu"}, rt.UnsupportedError, r"hidden_act 'gelu'"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"], "sliding_window": 64}, rt.UnsupportedError, "sliding_window 64"),
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True, "sliding_window": 64}, rt.UnsupportedError, "sliding_window 64"),
        ({"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 64}, rt.UnsupportedError, "sliding_window 64"),
        ({"layer_types": ["full_attention", "chunked_attention"]}, rt.UnsupportedError, "layer_types.*chunked_attention"),
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, rt.UnsupportedError, r"gpt2.*supported encoders.*supported decoders: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, rt.WeightsError, r"rope_scaling\.low_freq_factor"),
        ({"num_key_value_heads": 3}, rt.WeightsError, "not a multiple of num_key_value_heads 3"),
        ({"num_hidden_layers": "2"}, rt.WeightsError, "'num_hidden_layers' must be an integer"),
        ({"vocab_size": 1000}, rt.WeightsError, r"embed_tokens\.weight.*shape"),
    ],
)
def test_config_errors(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path, changes: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        rt.load(edit_config(tiny, tmp_path, **changes))


def test_sliding_window_within_context_is_fine(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path) -> None:
    folder = edit_config(tiny, tmp_path, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64)
    m = rt.load(folder, max_context=64)  # the window never slides within 64 tokens
    assert m.max_context == 64 and m.config.model_type == "mistral"


def test_missing_lm_head_when_untied(tiny: tuple[Path, dict[str, np.ndarray], Tiny], tmp_path: Path) -> None:
    with pytest.raises(rt.WeightsError, match=r"lm_head\.weight.*missing"):
        rt.load(edit_config(tiny, tmp_path, tie_word_embeddings=False))


def test_repr_and_public_names(model: rt.DecoderModel) -> None:
    assert "DecoderModel(" in repr(model) and "heads=4/2" in repr(model)
    assert rt.DecoderModel is type(model)


# --- golden files from transformers (tests/fixtures/README.md) ---------------------------------

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = sorted(p.parent.name for p in FIXTURES.glob("tiny_*/golden_prompts.json"))
TOKENIZER_DIR = FIXTURES / "tiny_bpe_tokenizer"
needs_golden = pytest.mark.skipif(not GOLDEN, reason="decoder golden files not generated yet")


@dataclass
class Golden:
    folder: Path
    prompts: list[dict[str, Any]]
    logits: np.ndarray
    lengths: list[int]
    continuations: list[list[int]]
    eos_ids: list[int]


_golden_cache: dict[str, Golden] = {}
_model_cache: dict[tuple[str, str], rt.DecoderModel] = {}


def golden(name: str) -> Golden:
    if name not in _golden_cache:
        folder = FIXTURES / name
        meta = json.loads((folder / "golden_prompts.json").read_text(encoding="utf-8"))
        data = np.load(folder / "golden.npz")
        lengths = [int(n) for n in data["prompt_lengths"]]
        gen = json.loads((folder / "generation_config.json").read_text())
        eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
        _golden_cache[name] = Golden(
            folder, meta["prompts"], data["logits"], lengths, data["continuations"].astype(int).tolist(), eos
        )
    return _golden_cache[name]


def golden_model(name: str, dtype: str = "f32") -> rt.DecoderModel:
    if (name, dtype) not in _model_cache:
        _model_cache[(name, dtype)] = rt.load(FIXTURES / name, dtype=dtype)
    return _model_cache[(name, dtype)]


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_logits(name: str) -> None:
    g, m = golden(name), golden_model(name)
    for i, p in enumerate(g.prompts):
        ids = p["input_ids"]
        assert m.tokenizer.encode_ids(p["text"]) == ids
        got = m.forward(np.asarray([ids]))[0]
        err = np.abs(got - g.logits[i, : g.lengths[i]]).max()
        assert err < 1e-4, (p["name"], err)


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_greedy_continuations(name: str) -> None:
    g, m = golden(name), golden_model(name)
    for p, expected in zip(g.prompts, g.continuations):
        out = m.generate(p["input_ids"], max_tokens=len(expected), ignore_eos=True)
        assert out.token_ids == expected, p["name"]
        assert out.finish_reason == "length"
        assert out.text == m.tokenizer.decode(expected, skip_special_tokens=True)
        # streaming yields the same text, piece by piece
        assert "".join(m.stream(p["input_ids"], max_tokens=len(expected), ignore_eos=True)) == out.text


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_batched_step_equals_alone(name: str) -> None:
    g, m = golden(name), golden_model(name)
    seqs = [m.new_sequence(p["input_ids"], max_tokens=len(c), ignore_eos=True) for p, c in zip(g.prompts, g.continuations)]
    assert len({len(s.prompt_ids) for s in seqs}) >= 4  # different prompt lengths
    while not all(s.finished for s in seqs):
        m.step(seqs)
    assert [s.token_ids for s in seqs] == g.continuations


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_eos_stops_generation(name: str) -> None:
    g, m = golden(name), golden_model(name)
    assert m.eos_token_ids == g.eos_ids
    for p, expected in zip(g.prompts, g.continuations):
        stops = [i for i, t in enumerate(expected) if t in g.eos_ids]
        out = m.generate(p["input_ids"], max_tokens=len(expected))
        if stops:
            assert out.finish_reason == "stop" and out.token_ids == expected[: stops[0] + 1]
        else:
            assert out.finish_reason == "length" and out.token_ids == expected


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_bf16_top1_agreement(name: str) -> None:
    g, m = golden(name), golden_model(name, "bf16")
    same = total = 0
    for i, (p, cont) in enumerate(zip(g.prompts, g.continuations)):
        ids = p["input_ids"]
        n = len(ids)
        logits = m.forward(np.asarray([ids + cont]))[0]
        top = logits.argmax(-1)
        # float64 argmax at each position: the golden logits over the prompt (the last one
        # predicts cont[0]), then the greedy continuation (position n + j predicts cont[j + 1])
        expected = np.concatenate([g.logits[i, :n].argmax(-1), np.asarray(cont[1:])])
        same += int((top[: len(expected)] == expected).sum())
        total += len(expected)
    assert same / total >= 0.95, same / total
    weights_dtype = json.loads((g.folder / "golden_prompts.json").read_text())["weights_dtype"]
    assert rt.load(g.folder, dtype="auto").dtype == ("bf16" if weights_dtype == "bfloat16" else "f32")


@needs_golden
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_stop_string(name: str) -> None:
    g, m = golden(name), golden_model(name)
    p, expected = g.prompts[-1], g.continuations[-1]
    full = m.generate(p["input_ids"], max_tokens=len(expected), ignore_eos=True).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    out = m.generate(p["input_ids"], max_tokens=len(expected), ignore_eos=True, stop=stop)
    assert out.finish_reason == "stop" and out.text == full[: full.index(stop)]
    assert "".join(m.stream(p["input_ids"], max_tokens=len(expected), ignore_eos=True, stop=stop)) == out.text


@pytest.mark.skipif(not (TOKENIZER_DIR / "chat_golden.json").is_file(), reason="tokenizer golden files not generated yet")
def test_golden_chat_template_and_tokenizer() -> None:
    name = GOLDEN[0] if GOLDEN else None
    if name is None:
        pytest.skip("no decoder golden model")
    m = golden_model(name)
    for entry in json.loads((TOKENIZER_DIR / "chat_golden.json").read_text(encoding="utf-8")):
        for suffix, add in (("", True), ("_no_generation_prompt", False)):
            text = m.apply_chat_template(entry["messages"], add_generation_prompt=add)
            assert text == entry["rendered" + suffix]
            assert m.tokenizer.encode_ids(text, add_special_tokens=False) == entry["input_ids" + suffix]
    for case in json.loads((TOKENIZER_DIR / "tokenizer_golden.json").read_text(encoding="utf-8")):
        assert m.tokenizer.encode_ids(case["text"]) == case["ids"]
        assert m.tokenizer.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"]
        # streaming detokenization of the ids never shows a broken character and ends equal
        pieces, seq = feed(m.tokenizer, case["ids"])
        assert "".join(pieces) == case["decoded_skip_special"] and all("\ufffd" not in x for x in pieces[:-1])
