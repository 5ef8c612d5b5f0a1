"""Encoder benchmark: rtserve beside sentence-transformers (torch) and ONNX Runtime, in one process run.

On all-MiniLM-L6-v2 (f32, CPU, 2 threads by default) it measures, for each library:

- batch-1 latency of one short sentence: p50 and p90 over >= 200 calls;
- throughput in sentences/s: 512 mixed-length sentences (seeded, 5-60 words) embedded with
  batch size 64, best of 3 runs;
- cold start: a fresh Python process timing its imports + model load + first embedding
  (median of 3; the interpreter's own start-up is not counted, the page cache is warm).

All models are loaded first; then the libraries take turns (latency in 6 blocks, throughput
one run each per round), so load from other tenants of a shared machine falls on all alike.

Every library is timed like-for-like, text in and unit-norm vectors out: tokenization, the
model, mean pooling and L2 normalization. Each peer's vectors are compared with rtserve's
(min cosine over all sentences). ONNX Runtime gets the model exported from transformers'
``BertModel`` into a temporary folder at start-up (``torch.onnx.export``, opset 17, dynamic
batch/seq axes), run as exported and, when ``onnxruntime.transformers`` is importable, after
its BERT fusions (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu); the
"vs ORT" ratios use the best ORT variant for each figure.

    python benches/embeddings.py              # progress and a summary on stdout
    python benches/embeddings.py --markdown   # plus the table for docs/benchmarks.md
    python benches/embeddings.py --quick      # few iterations, for checking the script

Peers are optional: a missing one is skipped with a message, so the script also runs where
only rtserve is installed. Keep torch out of the main environment; give the peers a venv:

    python -m venv ~/venvs/rtserve-bench
    ~/venvs/rtserve-bench/bin/pip install sentence-transformers transformers torch onnxruntime onnx
    ~/venvs/rtserve-bench/bin/pip install .          # rtserve itself (builds the extension)
    python -m rtserve pull minilm                     # the model folder; everything else is offline
    ~/venvs/rtserve-bench/bin/python benches/embeddings.py --markdown

(Re-run the ``pip install .`` after changing Rust code.) No model hub is contacted: all
libraries load the folder that ``rtserve pull`` made. This machine kind sets
``OPENBLAS_CORETYPE`` / ``OPENBLAS_L2_SIZE``, which slow numpy's OpenBLAS; the script re-runs
itself without them.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402  (benches/machine.py)

SHORT = "The quick brown fox jumps over the lazy dog."
N_SENTENCES = 512
BATCH = 64
ST = "sentence-transformers"
ORT_PLAIN = "onnxruntime"
ORT_FUSED = "onnxruntime + BERT fusions"

_BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# fmt: off
WORDS = """
the a of and to in is was for on that with as by at from it this be are or an which have
has not but had they his her their we you he she can will one all would there were been
more when who also its time people year new first two some could them other than then
into only over after most made about years such out these may many work state between
city world system part under government group number high school during long small
without company well large water music family public home since human early great
several best life same while another river later because found national war each
through known still world area different power based both end form land early country
century however given second example major united general important history building
research market language development international university information community
particular experience relationship environment technology population available
significant individual following especially structure beautiful knowledge direction
performance production computer embedding transformer inference throughput latency
quickly carefully morning evening mountain ocean village garden kitchen library
engineer teacher doctor student scientist musician painter farmer writer traveller
""".split()
# fmt: on

COLD_START_RTSERVE = """
import json, sys, time
t0 = time.perf_counter()
import rtserve as rt
t1 = time.perf_counter()
model = rt.load(sys.argv[1])
t2 = time.perf_counter()
model.embed([sys.argv[2]])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2}))
"""

COLD_START_ST = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[3]))
from sentence_transformers import SentenceTransformer
t1 = time.perf_counter()
model = SentenceTransformer(sys.argv[1], device="cpu", local_files_only=True)
t2 = time.perf_counter()
model.encode([sys.argv[2]], batch_size=64, show_progress_bar=False)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2}))
"""

COLD_START_ORT = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import numpy, onnxruntime, tokenizers
spec = importlib.util.spec_from_file_location("embeddings_bench", sys.argv[5])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
t1 = time.perf_counter()
model = bench.OrtEncoder(sys.argv[4], sys.argv[1], int(sys.argv[3]))
t2 = time.perf_counter()
model.embed([sys.argv[2]])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "first": t3 - t2}))
"""


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def sentences(n: int, seed: int = 0) -> list[str]:
    """n English-looking sentences, lengths spread like real data (5-60 words, mean ~15)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = min(60, max(5, round(rng.lognormvariate(2.55, 0.55))))
        chosen = [rng.choice(WORDS) for _ in range(words)]
        for i in range(4, words - 2, rng.randint(6, 14)):
            chosen[i] += ","
        out.append(" ".join(chosen).capitalize() + ".")
    return out


def max_seq_length(folder: Path) -> int:
    """sentence-transformers' max_seq_length of the folder (256 for all-MiniLM-L6-v2)."""
    try:
        return int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, KeyError, ValueError):
        return 256


class OrtEncoder:
    """An exported BertModel in an ONNX Runtime session, with the same tokenizer and pooling.

    Tokenize all texts (truncated, unpadded), sort by length, run ``batch_size`` at a time
    padded to the longest in the batch, mean-pool under the mask and L2-normalize: what
    rtserve's ``EncoderModel.embed`` does, in numpy.
    """

    def __init__(self, onnx_path: str | Path, folder: str | Path, threads: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_seq_length(Path(folder)))
        self.pad_id = self.tokenizer.token_to_id("[PAD]") or 0

    def embed(self, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(texts)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        pooled = []
        for start in range(0, len(order), batch_size):
            rows = [encodings[i] for i in order[start : start + batch_size]]
            seq = max(len(e.ids) for e in rows)
            ids = np.full((len(rows), seq), self.pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), seq), dtype=np.int64)
            types = np.zeros((len(rows), seq), dtype=np.int64)
            for r, e in enumerate(rows):
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = e.attention_mask
                types[r, : len(e.ids)] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = self.session.run([self.output], {k: v for k, v in feeds.items() if k in self.inputs})[0]
            m = mask.astype(np.float32)[:, :, None]
            pooled.append((hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9))
        out = np.empty((len(texts), pooled[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(pooled)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def export_onnx(folder: Path, out_dir: Path, opset: int) -> dict[str, tuple[Path, str]]:
    """BertModel -> ONNX in out_dir; returns {variant: (path, how it was made)}."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # Eager attention exports as plain MatMul/Softmax, the pattern ORT's BERT fusion knows;
    # the SDPA path exports a graph it does not fuse.
    bert = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # keyword call: HF's positional order varies
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
    enc = tok.encode_batch([SHORT, "A second, longer sentence to give the export two rows."])
    ids, mask, types = (torch.tensor([getattr(e, f) for e in enc]) for f in ("ids", "attention_mask", "type_ids"))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    plain = out_dir / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState(bert),
            (ids, mask, types),
            str(plain),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the dynamo exporter needs onnxscript; the TorchScript one does not
        )
    variants = {ORT_PLAIN: (plain, f"torch.onnx.export (TorchScript, opset {opset}), session ORT_ENABLE_ALL")}
    try:
        from onnxruntime.transformers import optimizer
    except ImportError as e:
        print(f"  onnxruntime.transformers not importable ({e}): only the plain export is run")
        return variants
    cfg = bert.config
    fused = optimizer.optimize_model(
        str(plain), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size, opt_level=0
    )
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    fused_path = out_dir / "model_fused.onnx"
    fused.save_model_to_file(str(fused_path))
    ops = ", ".join(f"{k} {v}" for k, v in stats.items())
    variants[ORT_FUSED] = (fused_path, f"onnxruntime.transformers optimize_model(model_type='bert') [{ops}], then ORT_ENABLE_ALL")
    return variants


def measure(embedders: dict, texts: list[str], calls: int, runs: int, rounds: int, warmup: int) -> dict:
    """Batch-1 latency (p50/p90 ms over ``calls``) and throughput (sentences/s, best of ``runs``).

    The libraries take turns: latency in ``rounds`` blocks of calls / rounds each, then one
    throughput run each per round, so a co-tenant's load, which comes and goes on this
    shared machine, falls on every library alike rather than on whichever ran at the time.
    """
    results = {}
    for name, embed in embedders.items():
        for _ in range(warmup):
            embed([SHORT])
        # Warm-up of the batched path, and the vectors for the agreement check.
        results[name] = {"vectors": np.asarray(embed(texts), np.float32),
                         "short": np.asarray(embed([SHORT]), np.float32), "times": [], "runs": []}
        settle()
    per_round = -(-calls // rounds)
    for _ in range(rounds):
        for name, embed in embedders.items():
            times = results[name]["times"]
            for _ in range(per_round):
                t0 = time.perf_counter()
                embed([SHORT])
                times.append(time.perf_counter() - t0)
            settle()
    for _ in range(runs):
        for name, embed in embedders.items():
            gc.collect()
            t0 = time.perf_counter()
            embed(texts)
            results[name]["runs"].append(time.perf_counter() - t0)
            settle()
    for name, r in results.items():
        r["p50"], r["p90"] = np.percentile(r["times"], [50, 90]) * 1e3
        r["rate"] = len(texts) / min(r["runs"])
        runs_text = ", ".join(f"{len(texts) / t:.0f}" for t in r["runs"])
        print(f"  {name}: batch-1 p50 {r['p50']:.2f} ms, p90 {r['p90']:.2f} ms ({len(r['times'])} calls); "
              f"{r['rate']:.0f} sentences/s (runs: {runs_text})", flush=True)
    return results


def settle(seconds: float = 0.2) -> None:
    """Pause between libraries so one's spinning worker threads are asleep before the next runs.

    Pools spin for some milliseconds after their work (ONNX Runtime, OpenMP); one still
    busy in the second half of the pause would steal the next library's cores: warn then.
    """
    time.sleep(seconds / 2)
    cpu0 = time.process_time()
    time.sleep(seconds / 2)
    busy = (time.process_time() - cpu0) / (seconds / 2)
    if busy > 0.05:
        print(f"  warning: this process used {busy:.0%} of a CPU while idle (spinning threads?)")


def cold_start(code: str, args: list[str], runs: int, env: dict[str, str]) -> dict | None:
    results = []
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"  cold start failed:\n{proc.stderr[-2000:]}")
            return None
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    totals = [sum(r.values()) for r in results]
    mid = results[totals.index(median(totals))] if len(totals) % 2 else results[0]
    return {"total": median(totals) * 1e3, "parts": {k: v * 1e3 for k, v in mid.items()}, "all": [t * 1e3 for t in totals]}


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def repo_commit() -> str:
    """This checkout's commit (the installed rtserve may be an older build: re-run pip install)."""
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}", f"repo HEAD {repo_commit()}"]
    for pkg in ("rtserve", "numpy", "tokenizers", "torch", "transformers", "sentence-transformers", "onnxruntime", "onnx"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} -")
    return ", ".join(parts)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def ratio(x: float | None, ref: float | None) -> str:
    return "n/a" if x is None or ref is None else f"{x / ref:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="also print the table for docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="few iterations, for checking the script")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="minilm", help="catalog name or HF folder (default: minilm)")
    parser.add_argument("--skip", action="append", default=[], choices=[ST, "onnxruntime", "cold-start"],
                        help="leave out a peer or the cold-start runs (repeatable)")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    calls, runs, rounds, warmup, cold_runs = (30, 1, 2, 3, 1) if args.quick else (300, 3, 6, 10, 3)
    command = shlex.join([sys.executable, *sys.argv])

    os.environ["RTSERVE_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import rtserve as rt
    from rtserve import catalog

    rt.set_num_threads(args.threads)
    folder = catalog.resolve(args.model, quiet=True)
    texts = sentences(N_SENTENCES)
    load_start = load_average()
    machine = (f"{cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()}, "
               f"{args.threads} threads for every library (rtserve pool: {rt.num_threads()})")
    print(f"machine: {machine}")
    print(f"versions: {versions()}")
    print(f"load average (1/5/15 min) at start: {load_start}")
    print(f"model: {folder}")
    lengths = rt.Tokenizer.from_folder(folder).count(texts, max_seq_length(folder))
    words = [len(t.split()) for t in texts]
    print(f"sentences: {len(texts)}, words {min(words)}-{max(words)} (mean {np.mean(words):.1f}), "
          f"tokens {min(lengths)}-{max(lengths)} (mean {np.mean(lengths):.1f}); batch {BATCH}; "
          f"{'quick' if args.quick else 'full'} run: {calls} batch-1 calls, best of {runs} throughput run(s)")

    embedders: dict = {}
    notes: dict[str, str] = {}
    model = rt.load(folder)
    notes["rtserve"] = f"rt.load(folder) (dtype {model.dtype}), embed(texts, batch_size={BATCH})"
    embedders["rtserve"] = lambda t: model.embed(t, batch_size=BATCH)

    have_torch = has_module("torch")
    if ST in args.skip:
        print(f"  {ST}: skipped (--skip)")
    elif not (have_torch and has_module("sentence_transformers")):
        print(f"  {ST}: skipped (torch / sentence-transformers not installed; see the docstring for the venv)")
    else:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(args.threads)
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        notes[ST] = (f"SentenceTransformer(folder, device='cpu').encode(texts, batch_size={BATCH}), "
                     f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        embedders[ST] = lambda t: st.encode(t, batch_size=BATCH, show_progress_bar=False)

    tmp = tempfile.TemporaryDirectory(prefix="rtserve-bench-onnx-")
    ort_paths: dict[str, Path] = {}
    if "onnxruntime" in args.skip:
        print("  onnxruntime: skipped (--skip)")
    elif not has_module("onnxruntime"):
        print("  onnxruntime: skipped (not installed; see the docstring for the venv)")
    elif not (have_torch and has_module("transformers") and has_module("onnx")):
        print("  onnxruntime: skipped (exporting the model needs torch, transformers and onnx)")
    else:
        t0 = time.perf_counter()
        variants = export_onnx(folder, Path(tmp.name), args.opset)
        print(f"  exported to ONNX in {time.perf_counter() - t0:.1f} s")
        for name, (path, how) in variants.items():
            notes[name] = how
            print(f"  {name}: {how}")
            embedders[name] = OrtEncoder(path, folder, args.threads).embed
            ort_paths[name] = path

    results = measure(embedders, texts, calls, runs, rounds, warmup)
    embedders.clear()
    settle()

    cold: dict[str, dict | None] = {}
    if "cold-start" in args.skip:
        print("cold start: skipped (--skip)")
    else:
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
        common = [str(folder), SHORT, str(args.threads)]
        jobs = [("rtserve", COLD_START_RTSERVE, common)]
        if ST in results:
            jobs.append((ST, COLD_START_ST, common))
        for name, path in ort_paths.items():
            jobs.append((name, COLD_START_ORT, [*common, str(path), str(Path(__file__).resolve())]))
        print(f"cold start (fresh process: imports + load + first embedding, median of {cold_runs}; "
              "interpreter start-up not counted; ONNX export not counted):")
        for name, code, job_args in jobs:
            cold[name] = c = cold_start(code, job_args, cold_runs, env)
            if c:
                parts = ", ".join(f"{k} {v:.0f}" for k, v in c["parts"].items())
                runs_text = ", ".join(f"{t:.0f}" for t in c["all"])
                print(f"  {name}: {c['total']:.0f} ms ({parts}; runs {runs_text})", flush=True)
    tmp.cleanup()

    ref = results["rtserve"]
    agreement = {}
    for name, r in results.items():
        if name != "rtserve":
            agreement[name] = min(min_cosine(r["vectors"], ref["vectors"]), min_cosine(r["short"], ref["short"]))
            print(f"agreement: {name} vs rtserve, min cosine over {len(texts) + 1} sentences: {agreement[name]:.7f}")

    ort_names = [n for n in results if n.startswith("onnxruntime")]
    ort_p50 = min((results[n]["p50"] for n in ort_names), default=None)
    ort_rate = max((results[n]["rate"] for n in ort_names), default=None)
    st_rate = results[ST]["rate"] if ST in results else None
    load_end = load_average()
    print(f"load average (1/5/15 min) at end: {load_end}")
    if ort_names:
        best_lat = min(ort_names, key=lambda n: results[n]["p50"])
        best_rate = max(ort_names, key=lambda n: results[n]["rate"])
        print(f"ORT reference: best p50 from '{best_lat}', best throughput from '{best_rate}'")
        print(f"target p50 <= ORT: rtserve {ref['p50']:.2f} ms vs {ort_p50:.2f} ms ({ratio(ref['p50'], ort_p50)}x)")
        print(f"target throughput >= 1.2x ORT: {ratio(ref['rate'], ort_rate)}x")
    if st_rate:
        print(f"target throughput >= 2x {ST}: {ratio(ref['rate'], st_rate)}x")
    if cold.get("rtserve"):
        print(f"target cold start < 300 ms: rtserve {cold['rtserve']['total']:.0f} ms")

    if args.markdown:
        print()
        print(f"- **Run**: {'quick (`--quick`: ' + str(calls) + ' batch-1 calls, 1 throughput run)' if args.quick else 'full'}")
        print(f"- **Machine**: {machine}; load average {load_start} at start, {load_end} at end")
        print(f"- **Versions**: {versions()}")
        print(f"- **Command**: `{command}`")
        for name, how in notes.items():
            print(f"- **{name}**: {how}")
        print()
        print("| library | batch-1 p50 ms | batch-1 p90 ms | sentences/s | sent/s ÷ ORT | sent/s ÷ sentence-transformers "
              "| p50 ÷ ORT | cold start ms | min cosine vs rtserve |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, r in results.items():
            c = cold.get(name)
            cold_text = f"{c['total']:.0f}" if c else "—"
            cos = "—" if name == "rtserve" else f"{agreement[name]:.7f}"
            print(f"| {name} | {r['p50']:.2f} | {r['p90']:.2f} | {r['rate']:.0f} | {ratio(r['rate'], ort_rate)} "
                  f"| {ratio(r['rate'], st_rate)} | {ratio(r['p50'], ort_p50)} | {cold_text} | {cos} |")


if __name__ == "__main__":
    if any(v in os.environ for v in _BLAS_VARS) and "RTSERVE_BENCH_CHILD" not in os.environ:
        env = {k: v for k, v in os.environ.items() if k not in _BLAS_VARS}
        env["RTSERVE_BENCH_CHILD"] = "1"
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    main()
