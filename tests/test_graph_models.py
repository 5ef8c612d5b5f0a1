"""BERT- and Llama-shaped graphs (tests/graph_models.py) against the same ops run eagerly,
with and without passes; concurrent runs, cancellation, memory plans of the full-size
models and the arena's shrink policy.

Tolerances (f32). Without passes the graph runs the eager kernels in the same order, so it
agrees to rounding (in-place elementwise steps aside, it is bitwise equal): rtol 1e-5,
atol 1e-6. Passes fold bias, activation and residual into the GEMM epilogue, run prepacked
weights and may fuse written-out attention into the fused kernel (another summation order),
so with passes the bound is rtol 1e-4, atol 1e-5; outputs are layer/RMS-normalized, of
order 1 (logits up to ~3). Measured: at most 4e-6 absolute with passes, 3e-7 without.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import graph_models as gm
import rtserve as rt
from conftest import run_in_threads

EXACT = {"rtol": 1e-5, "atol": 1e-6}
PASSES = {"rtol": 1e-4, "atol": 1e-5}
SMOLLM2_4_LAYERS = gm.LlamaConfig(layers=4)  # SmolLM2-135M's layer shape, fewer layers


def tolerance(optimize: bool) -> dict[str, float]:
    return PASSES if optimize else EXACT


@pytest.fixture(scope="module")
def bert_tiny():
    return gm.bert_weights(gm.BERT_TINY, seed=1)


@pytest.fixture(scope="module")
def llama_tiny():
    return gm.llama_weights(gm.LLAMA_TINY, seed=2)


@pytest.fixture(scope="module")
def bert_base():
    """Full BERT-base: weights and the graph compiled with and without passes."""
    weights = gm.bert_weights(gm.BERT_BASE, seed=3)
    graph = gm.build_bert(gm.BERT_BASE, weights)
    return weights, {opt: graph.compile(optimize=opt) for opt in (True, False)}


@pytest.mark.parametrize("optimize", [True, False], ids=["passes", "no_passes"])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused_attention", "fused_attention"])
def test_small_bert_matches_eager(bert_tiny, fused: bool, optimize: bool) -> None:
    cfg = gm.BERT_TINY
    compiled = gm.build_bert(cfg, bert_tiny, fused_attention=fused).compile(optimize=optimize)
    eager = gm.eager_weights(bert_tiny)
    for batch, seq in ((1, 8), (3, 17), (2, 64)):
        feed = gm.bert_inputs(cfg, batch, seq, seed=batch)
        got = compiled.run(feed)["last_hidden_state"].numpy()
        want = gm.bert_eager(cfg, eager, feed, fused_attention=fused).numpy()
        assert got.shape == (batch, seq, cfg.hidden)
        np.testing.assert_allclose(got, want, **tolerance(optimize), err_msg=f"batch {batch} seq {seq}")


def test_unfused_and_fused_bert_agree(bert_tiny) -> None:
    """The written-out attention pattern and g.attention compute the same function."""
    cfg = gm.BERT_TINY
    feed = gm.bert_inputs(cfg, 3, 17)
    unfused, fused = (
        gm.build_bert(cfg, bert_tiny, fused_attention=f).compile(optimize=False).run(feed)
        for f in (False, True)
    )
    np.testing.assert_allclose(
        unfused["last_hidden_state"].numpy(), fused["last_hidden_state"].numpy(), **PASSES
    )


@pytest.mark.parametrize("optimize", [True, False], ids=["passes", "no_passes"])
@pytest.mark.parametrize(
    "cfg", [gm.LLAMA_TINY, SMOLLM2_4_LAYERS], ids=["tiny_gqa_8_2", "smollm2_shape_4_layers"]
)
def test_llama_matches_eager(cfg: gm.LlamaConfig, optimize: bool) -> None:
    weights = gm.llama_weights(cfg, seed=4)
    compiled = gm.build_llama(cfg, weights).compile(optimize=optimize)
    eager = gm.eager_weights(weights)
    for batch, seq in ((1, 8), (2, 33)):
        feed = gm.llama_inputs(cfg, batch, seq, seed=seq)
        got = compiled.run(feed)["logits"].numpy()
        want = gm.llama_eager(cfg, eager, feed).numpy()
        assert got.shape == (batch, seq, cfg.vocab)
        np.testing.assert_allclose(got, want, **tolerance(optimize), err_msg=f"batch {batch} seq {seq}")


@pytest.mark.parametrize("optimize", [True, False], ids=["passes", "no_passes"])
def test_bert_base_matches_eager(bert_base, optimize: bool) -> None:
    """The full 12-layer, hidden-768, 12-head model at one small shape."""
    weights, compiled = bert_base
    feed = gm.bert_inputs(gm.BERT_BASE, 2, 16, seed=5)
    got = compiled[optimize].run(feed)["last_hidden_state"].numpy()
    want = gm.bert_eager(gm.BERT_BASE, gm.eager_weights(weights), feed).numpy()
    assert got.shape == (2, 16, 768)
    np.testing.assert_allclose(got, want, **tolerance(optimize))


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_four_threads_match_serial_runs_bitwise(bert_tiny, llama_tiny, model: str) -> None:
    if model == "bert":
        cfg, compiled = gm.BERT_TINY, gm.build_bert(gm.BERT_TINY, bert_tiny).compile()
        inputs, name = gm.bert_inputs, "last_hidden_state"
    else:
        cfg, compiled = gm.LLAMA_TINY, gm.build_llama(gm.LLAMA_TINY, llama_tiny).compile()
        inputs, name = gm.llama_inputs, "logits"
    feeds = [inputs(cfg, b, s, seed=b + s) for b, s in ((1, 8), (3, 17), (4, 33), (2, 64))]
    serial = [compiled.run(feed)[name].numpy().copy() for feed in feeds]

    def worker(n: int) -> list[str]:
        problems = []
        for round_ in range(6):
            i = (n + round_) % len(feeds)  # threads run different shapes at the same time
            if not np.array_equal(compiled.run(feeds[i])[name].numpy(), serial[i]):
                problems.append(f"thread {n} round {round_}: shape {i} differs from the serial run")
        return problems

    errors = run_in_threads(worker)
    assert not errors, errors


def test_cancel_and_deadline_stop_a_model_run_and_it_still_works(bert_base) -> None:
    _, compiled = bert_base
    m = compiled[True]
    small = gm.bert_inputs(gm.BERT_BASE, 1, 8)
    expected = m.run(small)["last_hidden_state"].numpy().copy()
    big = gm.bert_inputs(gm.BERT_BASE, 8, 512)  # seconds of work on a laptop-class CPU

    token = rt.CancelToken()
    outcome: list[BaseException | None] = []

    def runner() -> None:
        try:
            m.run(big, cancel=token)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 (checked below)
            outcome.append(error)

    thread = threading.Thread(target=runner)
    thread.start()
    time.sleep(0.05)
    token.cancel()
    thread.join(timeout=120)
    assert not thread.is_alive()
    assert isinstance(outcome[0], rt.CancelledError), outcome

    with pytest.raises(rt.CancelledError, match="deadline"):
        m.run(big, timeout=0.01)

    # Both stopped runs left the program as it was.
    np.testing.assert_array_equal(m.run(small)["last_hidden_state"].numpy(), expected)


@pytest.fixture(scope="module")
def smollm2():
    return gm.build_llama(gm.SMOLLM2_135M, gm.llama_weights(gm.SMOLLM2_135M)).compile()


@pytest.mark.parametrize("model", ["bert_base", "bert_base_no_passes", "smollm2_135m"])
def test_memory_plan_within_5_percent_of_the_lower_bound(bert_base, smollm2, model: str) -> None:
    models = {"bert_base": bert_base[1][True], "bert_base_no_passes": bert_base[1][False], "smollm2_135m": smollm2}
    compiled = models[model]
    too_big = []
    for batch in (1, 8, 32):
        for seq in (8, 128, 512):
            plan = compiled.memory_plan(batch=batch, seq=seq)
            planned, lower = plan["planned_bytes"], plan["lower_bound_bytes"]
            assert lower <= planned <= plan["naive_bytes"], (batch, seq, plan)
            if planned > 1.05 * lower:
                too_big.append(f"batch {batch} seq {seq}: planned {planned} > 1.05 x {lower}")
    assert not too_big, too_big


def test_arena_shrinks_back_after_a_large_run(bert_tiny) -> None:
    cfg = gm.BERT_TINY
    m = gm.build_bert(cfg, bert_tiny).compile()
    small = gm.bert_inputs(cfg, 1, 8)
    m.run(small)
    before = m.memory_stats()
    assert before["runs"] == 1
    m.run(gm.bert_inputs(cfg, 16, 64))
    after_big = m.memory_stats()
    big_need = m.memory_plan(batch=16, seq=64)["planned_bytes"]
    assert after_big["arena_bytes"] >= big_need  # kept for the next run of that size
    for _ in range(8):  # the large run drops out of the last 8
        m.run(small)
    after_small = m.memory_stats()
    small_need = m.memory_plan(batch=1, seq=8)["planned_bytes"]
    assert after_small["arena_bytes"] <= 2 * small_need < big_need, (after_big, after_small)
    assert after_small["runs"] == 10
    assert after_small["plans_cached"] >= 2
