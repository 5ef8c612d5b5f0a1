"""Compiled graphs: memory plans of full-size models, and compiled vs eager speed.

(1) For BERT-base and a SmolLM2-135M-shaped Llama (random weights, tests/graph_models.py), the
memory plan at batch 1, 8, 32 x seq 8, 128, 512: planned bytes, the lower bound (most bytes
live at one time), naive bytes (no reuse) and planned / lower bound.
(2) BERT-base forward at batch 8 x seq 128: the compiled graph (passes on, and off) against the
same ops called one by one eagerly on the same kernels (weights as rt.Tensors, and prepacked),
median wall time over interleaved rounds.

    python benches/graph.py              # progress and tables on stdout
    python benches/graph.py --markdown   # the tables for docs/benchmarks.md
    python benches/graph.py --quick      # small models, for checking the script
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path
from statistics import median

import numpy as np

import rtserve as rt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import graph_models as gm  # noqa: E402  (lives beside the tests that use it)
from machine import cpu_model  # noqa: E402  (benches/machine.py)

BATCHES = (1, 8, 32)
SEQS = (8, 128, 512)


def mib(n: int) -> str:
    return f"{n / 2**20:,.2f}"


def memory_rows(name: str, compiled: rt.Compiled) -> list[tuple]:
    rows = []
    for batch in BATCHES:
        for seq in SEQS:
            p = compiled.memory_plan(batch=batch, seq=seq)
            planned, lower, naive = p["planned_bytes"], p["lower_bound_bytes"], p["naive_bytes"]
            rows.append((name, batch, seq, planned, lower, naive, planned / lower, naive / planned))
            print(f"  {name} batch={batch:>2} seq={seq:>3}: planned {mib(planned):>9} MiB, lower bound "
                  f"{mib(lower):>9} MiB, naive {mib(naive):>10} MiB, planned/LB {planned / lower:.3f}", flush=True)
    return rows


def timed_rounds(variants: dict, rounds: int) -> dict[str, list[float]]:
    """Each round runs every variant once, so drift on a shared machine hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up: caches, arenas, page faults
        fn()
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny models, few rounds")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, help="rtserve threads (default: RTSERVE_NUM_THREADS or cores)")
    args = parser.parse_args()
    if args.threads:
        rt.set_num_threads(args.threads)
    bert_cfg = gm.BERT_TINY if args.quick else gm.BERT_BASE
    llama_cfg = gm.LLAMA_TINY if args.quick else gm.SMOLLM2_135M
    rounds = 3 if args.quick else args.rounds
    bert_name = "BERT tiny" if args.quick else "BERT-base"
    llama_name = "Llama tiny" if args.quick else "Llama (SmolLM2-135M shape)"

    machine = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()} "
               f"(available: {', '.join(rt.available_isas())}), {rt.num_threads()} rtserve threads, "
               f"numpy {np.__version__}, Python {platform.python_version()}")
    print(f"machine: {machine}")

    print(f"memory plans ({llama_cfg}):")
    llama = gm.build_llama(llama_cfg, gm.llama_weights(llama_cfg)).compile()
    rows = memory_rows(llama_name, llama)
    del llama
    gc.collect()

    print(f"memory plans and timing ({bert_cfg}):")
    weights = gm.bert_weights(bert_cfg)
    graph = gm.build_bert(bert_cfg, weights)
    started = time.perf_counter()
    compiled = graph.compile(optimize=True)
    compile_s = time.perf_counter() - started
    compiled_no_passes = graph.compile(optimize=False)
    graph_fused = gm.build_bert(bert_cfg, weights, fused_attention=True)
    compiled_fused, compiled_fused_no_passes = graph_fused.compile(), graph_fused.compile(optimize=False)
    rows = memory_rows(bert_name, compiled) + rows

    batch, seq = (2, 16) if args.quick else (8, 128)
    feed = gm.bert_inputs(bert_cfg, batch, seq)
    plain = gm.eager_weights(weights)
    packed = gm.eager_weights(weights, prepack=True)
    # Two forms of the same model: attention written out with primitive ops, and attention as
    # one op (g.attention / rt.attention). Each compiled graph is timed against the same ops
    # called one by one (weights as rt.Tensors, and prepacked once with rt.prepack).
    variants = {
        "written-out attention: compiled, passes on": lambda: compiled.run(feed),
        "written-out attention: compiled, passes off": lambda: compiled_no_passes.run(feed),
        "written-out attention: eager, same ops": lambda: gm.bert_eager(bert_cfg, plain, feed),
        "written-out attention: eager, same ops, prepacked weights": lambda: gm.bert_eager(
            bert_cfg, packed, feed
        ),
        "attention op: compiled, passes on": lambda: compiled_fused.run(feed),
        "attention op: compiled, passes off": lambda: compiled_fused_no_passes.run(feed),
        "attention op: eager, same ops": lambda: gm.bert_eager(bert_cfg, plain, feed, fused_attention=True),
        "attention op: eager, same ops, prepacked weights": lambda: gm.bert_eager(
            bert_cfg, packed, feed, fused_attention=True
        ),
    }
    def hidden(result) -> np.ndarray:
        return (result["last_hidden_state"] if isinstance(result, dict) else result).numpy()

    reference = hidden(variants["written-out attention: eager, same ops"]())
    for name, fn in variants.items():
        diff = float(np.abs(hidden(fn()) - reference).max())
        print(f"  {name}: max |diff| vs eager {diff:.2e}")
    times = timed_rounds(variants, rounds)
    medians = {name: median(t) for name, t in times.items()}
    def base(name: str) -> float:
        return medians[name.split(":")[0] + ": compiled, passes on"]

    flops = 2.0 * batch * seq * sum(w.size for n, w in weights.items() if n.startswith("encoder") and w.ndim == 2)
    flops += bert_cfg.layers * 4.0 * batch * bert_cfg.heads * seq * seq * bert_cfg.head_dim
    for name, t in medians.items():
        print(f"  {name:<58} median {t * 1e3:7.1f} ms (min {min(times[name]) * 1e3:.1f}, max "
              f"{max(times[name]) * 1e3:.1f}) {flops / t / 1e9:5.0f} GFLOP/s  time / compiled {t / base(name):.2f}")
    print(f"  compile time (passes on): {compile_s * 1e3:.0f} ms")

    if args.markdown:
        print()
        print(f"Machine: {machine}")
        print()
        print("| model | batch | seq | planned MiB | lower bound MiB | naive MiB | planned / lower bound | naive / planned |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, b, s, planned, lower, naive, ratio, saving in rows:
            print(f"| {name} | {b} | {s} | {mib(planned)} | {mib(lower)} | {mib(naive)} | {ratio:.3f} | {saving:.1f}x |")
        print()
        print(f"{bert_name} forward, batch {batch} x seq {seq}, {rounds} interleaved rounds, "
              f"{flops / 1e9:.1f} GFLOP per forward:")
        print()
        print("| attention | variant | median ms | min ms | GFLOP/s | time / compiled with passes |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, t in medians.items():
            form, variant = name.split(": ")
            print(f"| {form} | {variant} | {t * 1e3:.1f} | {min(times[name]) * 1e3:.1f} | "
                  f"{flops / t / 1e9:.0f} | {t / base(name):.2f} |")


if __name__ == "__main__":
    main()
