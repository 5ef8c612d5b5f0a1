"""BERT-style encoders against reference outputs of Hugging Face transformers and
sentence-transformers (golden files made by tests/fixtures/make_golden.py, so no torch here).

Tolerances: MiniLM sentence embeddings need cosine >= 0.9999 to sentence-transformers in
f32 and >= 0.999 with bf16 weights; the tiny random BERTs (std 0.2 weights, so errors are
not hidden by small activations) match transformers' last hidden state to 1e-4 max abs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rtserve as rt

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["tiny_bert", "tiny_bert_gelu_new", "tiny_bert_type_vocab_1"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def minilm_golden() -> tuple[list[str], dict[str, np.ndarray]]:
    folder = FIXTURES / "minilm_golden"
    sentences = json.loads((folder / "sentences.json").read_text(encoding="utf-8"))
    with np.load(folder / "golden.npz") as z:
        golden = {k: z[k] for k in z.files}
    return sentences, golden


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> rt.EncoderModel:
    return rt.load(minilm_dir)


# --- MiniLM parity --------------------------------------------------------------------


def test_minilm_tokenizes_like_sentence_transformers(minilm, minilm_golden):
    sentences, golden = minilm_golden
    batch = minilm.tokenize(sentences)
    assert minilm.max_length == 256
    for i, n in enumerate(golden["token_counts"]):
        assert batch.lengths[i] == n, sentences[i]
        assert np.array_equal(batch.input_ids[i, :n], golden["input_ids"][i, :n]), sentences[i]
    # At least one text was longer than 256 word pieces and got cut.
    assert (golden["untruncated_token_counts"] > 256).any()


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_minilm_f32_matches_sentence_transformers(minilm, minilm_golden, batch_size):
    sentences, golden = minilm_golden
    got = minilm.embed(sentences, batch_size=batch_size)
    assert got.shape == (len(sentences), 384) and got.dtype == np.float32
    cos = _cosines(got, golden["embeddings"])
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, (worst, sentences[worst], cos.min())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_minilm_bf16_within_tolerance(minilm_dir, minilm_golden):
    sentences, golden = minilm_golden
    model = rt.load(minilm_dir, dtype="bf16")
    assert model.dtype == "bf16"
    cos = _cosines(model.embed(sentences), golden["embeddings"])
    assert cos.min() >= 0.999, cos.min()


def test_minilm_debug_batch_hidden_states(minilm):
    with np.load(FIXTURES / "minilm_golden" / "debug.npz") as z:
        ids, mask, types, want = z["input_ids"], z["attention_mask"], z["token_type_ids"], z["last_hidden_state"]
    got = minilm.forward(ids, mask, types)
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], atol=2e-4, rtol=0)


def test_embed_options_and_edge_cases(minilm):
    assert minilm.embed([]).shape == (0, 384)
    empty = minilm.embed([""])
    assert empty.shape == (1, 384) and np.isfinite(empty).all()
    raw = minilm.embed(["hello world"], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3  # mean pooling alone is not unit length
    unit = minilm.embed(["hello world"])
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw), rtol=1e-5, atol=1e-7)
    short = minilm.embed(["word " * 400], max_length=16)
    full = minilm.embed(["word " * 400])
    assert not np.allclose(short, full)
    with pytest.raises(TypeError, match="single str"):
        minilm.embed("not a list")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        minilm.embed(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        minilm.embed(["x"], batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        minilm.embed(["x"], max_length=1)


def test_forward_validates_inputs(minilm):
    ids = np.array([[101, 7592, 2088, 102]])
    out = minilm.forward(ids)
    assert out.shape == (1, 4, 384)
    with pytest.raises(ValueError, match="2-D"):
        minilm.forward(ids[0])
    with pytest.raises(TypeError, match="integers"):
        minilm.forward(ids.astype(np.float32))
    with pytest.raises(ValueError, match="attention_mask"):
        minilm.forward(ids, np.ones((1, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        minilm.forward(np.ones((1, 513), dtype=np.int64))
    with pytest.raises(IndexError):
        minilm.forward(np.array([[101, 10**6, 102]]))


# --- tiny random BERTs with odd sizes ---------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_tiny_bert_matches_transformers(name):
    folder = FIXTURES / name
    model = rt.load(folder)
    with np.load(folder / "golden.npz") as z:
        ids, mask, types = z["input_ids"], z["attention_mask"], z["token_type_ids"]
        want, pooled = z["last_hidden_state"], z["mean_pooled"]
    got = model.forward(ids, mask, types)
    valid = mask.astype(bool)
    assert np.abs(got[valid] - want[valid]).max() <= 1e-4
    # Sentences without a pair tokenize to the golden ids.
    inputs = json.loads((folder / "golden_inputs.json").read_text(encoding="utf-8"))
    singles = [i for i, x in enumerate(inputs) if not x.get("text_pair")]
    batch = model.tokenize([inputs[i]["text"] for i in singles])
    for row, i in enumerate(singles):
        n = int(mask[i].sum())
        assert np.array_equal(batch.input_ids[row, :n], ids[i, :n]), inputs[i]["text"]
    # Mean pooling of the padded batch matches too (model has no Normalize module).
    emb = model.embed([inputs[i]["text"] for i in singles], batch_size=3)
    np.testing.assert_allclose(emb, pooled[singles], atol=1e-4, rtol=0)


def test_dtype_auto_follows_the_file(tmp_path):
    folder = tmp_path / "bf16"
    shutil.copytree(FIXTURES / "tiny_bert", folder)
    w = rt.load_safetensors(folder)
    rt.save_safetensors({k: (v.astype("bf16") if v.dtype == "f32" else v) for k, v in w.items()}, folder / "model.safetensors")
    assert rt.load(folder, dtype="auto").dtype == "bf16"
    assert rt.load(FIXTURES / "tiny_bert", dtype="auto").dtype == "f32"
    with pytest.raises(ValueError, match="dtype"):
        rt.load(FIXTURES / "tiny_bert", dtype="f8")


def test_weight_names_with_bert_prefix(tmp_path):
    folder = tmp_path / "prefixed"
    shutil.copytree(FIXTURES / "tiny_bert", folder)
    w = rt.load_safetensors(folder)
    rt.save_safetensors({f"bert.{k}": v for k, v in w.items()}, folder / "model.safetensors")
    with np.load(folder / "golden.npz") as z:
        ids, mask, types, want = z["input_ids"], z["attention_mask"], z["token_type_ids"], z["last_hidden_state"]
    got = rt.load(folder).forward(ids, mask, types)
    valid = mask.astype(bool)
    assert np.abs(got[valid] - want[valid]).max() <= 1e-4


# --- bad folders ----------------------------------------------------------------------


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / "tiny_bert", folder)
    return folder


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def test_missing_config(tmp_path):
    folder = _copy(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(rt.WeightsError, match=r"config\.json is missing"):
        rt.load(folder)


def test_missing_and_misshapen_tensors(tmp_path):
    folder = _copy(tmp_path)
    w = rt.load_safetensors(folder)
    rt.save_safetensors(
        {k: v for k, v in w.items() if "layer.2.output.dense" not in k}, folder / "model.safetensors"
    )
    with pytest.raises(rt.WeightsError, match=r"model\.safetensors.*layer\.2\.output\.dense\.(weight|bias).*missing"):
        rt.load(folder)
    folder = _copy(tmp_path / "b")
    _edit_config(folder, intermediate_size=131)
    with pytest.raises(rt.WeightsError, match=r"intermediate\.dense\.weight.*\[130, 72\].*\[131, 72\]"):
        rt.load(folder)


def test_bad_config_values(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, num_attention_heads=5)
    with pytest.raises(rt.WeightsError, match="not a multiple of num_attention_heads 5"):
        rt.load(folder)
    _edit_config(folder, num_attention_heads="6")
    with pytest.raises(rt.WeightsError, match="'num_attention_heads' must be an integer"):
        rt.load(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(rt.WeightsError, match="not valid JSON"):
        rt.load(folder)


def test_unknown_architecture_and_settings(tmp_path):
    folder = _copy(tmp_path)
    _edit_config(folder, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(rt.UnsupportedError, match=r"gpt2.*GPT2LMHeadModel.*supported encoders: model_type bert"):
        rt.load(folder)
    _edit_config(folder, model_type="bert", architectures=["BertModel"], hidden_act="mish")
    with pytest.raises(rt.UnsupportedError, match="hidden_act 'mish'"):
        rt.load(folder)
    _edit_config(folder, hidden_act="gelu", position_embedding_type="relative_key")
    with pytest.raises(rt.UnsupportedError, match="relative_key"):
        rt.load(folder)


def test_corrupt_tokenizer(tmp_path):
    folder = _copy(tmp_path)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": 17}')
    with pytest.raises(rt.WeightsError, match=r"tokenizer\.json: not a valid tokenizer"):
        rt.load(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(rt.WeightsError, match=r"tokenizer\.json is missing"):
        rt.load(folder)


def test_not_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        rt.load(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(rt.WeightsError, match="not a model folder"):
        rt.load(tmp_path / "file.txt")


def test_embed_cli_prints_shape_and_values():
    proc = subprocess.run(
        [sys.executable, "-m", "rtserve", "embed", str(FIXTURES / "tiny_bert"), "hello world", "a"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(2, 72)" in proc.stdout, proc.stdout


def test_embed_cli_refuses_a_decoder():
    proc = subprocess.run(
        [sys.executable, "-m", "rtserve", "embed", str(FIXTURES / "tiny_llama_mqa"), "hi"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "needs an encoder model" in proc.stderr, proc.stderr


def test_concurrent_embeds_with_different_max_lengths_truncate_their_own_way(minilm):
    from conftest import run_in_threads

    text = "word " * 300
    want = {n: minilm.embed([text], max_length=n) for n in (8, 16, 256)}

    def worker(i: int) -> list[str]:
        n = (8, 16, 256)[i % 3]
        return [
            f"thread {i}: max_length {n} gave another vector"
            for _ in range(20)
            if not np.array_equal(minilm.embed([text], max_length=n), want[n])
        ]

    errors = run_in_threads(worker)
    assert not errors, errors[:3]


# --- length buckets -------------------------------------------------------------------------

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rtserve.models.encoder import CALL_COST_TOKENS, length_buckets  # noqa: E402


@given(
    st.lists(st.integers(1, 300), max_size=200),
    st.one_of(st.none(), st.integers(1, 70)),
    st.one_of(st.none(), st.integers(1, 9000)),
)
def test_length_buckets_cover_every_input_within_the_limits(lengths, batch_size, budget):
    lengths = sorted(lengths)
    buckets = length_buckets(lengths, batch_size, budget, hidden=384)
    assert [i for s, e in buckets for i in range(s, e)] == list(range(len(lengths)))  # in order, each once
    for start, end in buckets:
        rows, longest = end - start, lengths[end - 1]
        assert rows >= 1
        if batch_size is not None:
            assert rows <= batch_size
        if budget is not None and rows > 1:
            assert rows * longest <= budget


def test_length_buckets_cut_mixed_lengths_and_keep_equal_ones_together():
    # equal lengths: one call (cutting would only add calls)
    assert length_buckets([20] * 40, None, 8192, hidden=384) == [(0, 40)]
    # a few long texts among short ones get their own call instead of padding every row
    lengths = [10] * 30 + [200] * 2
    assert length_buckets(lengths, None, 8192, hidden=384) == [(0, 30), (30, 32)]
    # but a cut that saves less than a call's cost is not made
    assert length_buckets([10, 11], None, None, hidden=384) == [(0, 2)]
    assert CALL_COST_TOKENS > 2
    # over the budget: equal shares, not a full batch and a runt
    assert length_buckets([8] * 10, None, 8 * 6, hidden=384) == [(0, 5), (5, 10)]


def test_embed_is_the_same_however_the_batches_are_cut(minilm):
    texts = ["short", "a somewhat longer sentence about nothing much at all", "x " * 90, "mid length text here"]
    together = minilm.embed(texts, batch_size=64)
    one_by_one = np.concatenate([minilm.embed([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-5, atol=1e-6)


# --- packed sequences ----------------------------------------------------------------

from rtserve.models import bert  # noqa: E402
from rtserve.models.encoder import PACKED_CALL_TOKENS, EncoderModel, packed_batches, pool, pool_packed  # noqa: E402
from rtserve.models.hf import Weights  # noqa: E402


def _padded_twin(model: EncoderModel) -> EncoderModel:
    """The same model compiled from the padded graph (the form other devices run)."""
    weights = Weights(model.folder, prefixes=("bert.", ""))
    compiled = bert.build_graph(model.config, weights, model.dtype).compile()
    twin = EncoderModel(
        folder=model.folder, config=model.config, sentence=model.sentence, tokenizer=model.tokenizer,
        compiled=compiled, dtype=model.dtype, device="cpu", has_token_types="token_type_ids" in compiled.inputs,
    )
    assert not twin.packed
    return twin


def test_cpu_encoders_run_packed_and_agree_with_the_padded_graph(minilm):
    """On the CPU an encoder packs texts of different lengths into one row (no padding);
    its vectors and forward() outputs equal the padded graph's."""
    assert minilm.packed
    padded = _padded_twin(minilm)
    texts = ["short", "a somewhat longer sentence about nothing much at all", "x " * 90, "", "mid length text here"]
    np.testing.assert_allclose(minilm.embed(texts), padded.embed(texts), rtol=1e-5, atol=2e-6)
    batch = minilm.tokenize(texts)
    got = minilm.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    want = padded.forward(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)  # padded positions included


@pytest.mark.parametrize("mode", ["mean", "cls", "last", "max", "mean_sqrt_len"])
def test_pool_packed_equals_pool_of_the_padded_batch(mode):
    rng = np.random.default_rng(0)
    lengths = [3, 1, 7, 2]
    seq, dim = max(lengths), 5
    hidden = rng.standard_normal((len(lengths), seq, dim), dtype=np.float32)
    mask = np.array([[1] * n + [0] * (seq - n) for n in lengths])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    packed = np.concatenate([hidden[i, :n] for i, n in enumerate(lengths)])
    got = pool_packed(mode, packed, np.ones(len(packed), dtype=np.int64), offsets)
    np.testing.assert_allclose(got, pool(mode, hidden, mask), rtol=1e-6, atol=1e-6)
    # an empty text (token ids sent as []) pools to zeros
    with_empty = pool_packed(mode, packed, np.ones(len(packed)), np.array([0, 3, 3, 4, 11, 13]))
    assert not with_empty[1].any() and np.allclose(with_empty[[0, 2, 3, 4]], got)


@given(
    st.lists(st.integers(1, 300), max_size=200),
    st.one_of(st.none(), st.integers(1, 70)),
    st.one_of(st.none(), st.integers(1, 9000)),
)
def test_packed_batches_cover_every_input_within_the_limits(lengths, batch_size, budget):
    batches = packed_batches(lengths, batch_size, budget, hidden=384)
    assert [i for s, e in batches for i in range(s, e)] == list(range(len(lengths)))  # in order, each once
    for start, end in batches:
        assert end > start
        if batch_size is not None:
            assert end - start <= batch_size
        if end - start > 1:
            assert sum(lengths[start:end]) <= min(budget or PACKED_CALL_TOKENS, PACKED_CALL_TOKENS)
    # even shares, not a full call and a runt
    assert packed_batches([10] * 150, None, None, hidden=384) == [(0, 75), (75, 150)]
