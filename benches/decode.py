"""Decode benchmark: a Llama with SmolLM2-135M's shape, rtserve beside transformers (torch).

A random-init model (hidden 576, 30 layers, 9 heads, 3 kv heads, intermediate 1536, vocab
49152, tied embeddings) is written as a Hugging Face folder in a temp dir; each library
greedily continues a 32-token prompt by 128 tokens (eos ignored) at 2 threads, in f32 and
bf16 weights. Reported: prefill tokens/s (the prompt's forward pass), decode tokens/s (the
128 new tokens after the first), and decode as a share of the memory-bandwidth bound: the
weight bytes read per token divided by this machine's measured read bandwidth (a 256 MiB
reduction on all threads).

    python benches/decode.py --markdown        # rtserve only, or beside transformers when
                                               # torch + transformers are importable
    python benches/decode.py --quick           # fewer tokens, for checking the script

Keep torch out of the main environment; the peer runs from a venv holding torch,
transformers and rtserve (see benches/embeddings.py for the setup).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

THREADS = int(os.environ.get("RTSERVE_NUM_THREADS", "2"))

import numpy as np  # noqa: E402

import rtserve as rt  # noqa: E402
from rtserve.bench import read_bandwidth_gbs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402  (benches/machine.py)

SHAPE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def write_model(folder: Path, seed: int = 0, config: dict | None = None) -> int:
    """The random model (``config``, default SHAPE) as an HF folder; returns the weights
    (parameters) read per decoded token."""
    c = config or SHAPE
    h, inter, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": np.ones(h, np.float32)}
    per_token = v * h  # the tied lm_head reads the whole embedding matrix
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes = {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (inter, h),
            "mlp.up_proj": (inter, h),
            "mlp.down_proj": (h, inter),
        }
        for name, shape in shapes.items():
            w[f"{p}.{name}.weight"] = rand(*shape)
            per_token += shape[0] * shape[1]
        w[f"{p}.input_layernorm.weight"] = np.ones(h, np.float32)
        w[f"{p}.post_attention_layernorm.weight"] = np.ones(h, np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    rt.save_safetensors(w, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(c))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    write_tokenizer(folder, v)
    return per_token


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A word-level tokenizer covering every id (the model is random; text is not the point)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "t2", "bos_token": "t1"}))


def run_rtserve(folder: Path, dtype: str, prompt: list[int], new: int, rounds: int) -> tuple[float, float]:
    model = rt.load(folder, dtype=dtype)
    model.generate(prompt, max_tokens=4, ignore_eos=True)  # warm-up: both graphs, first plans
    prefill, decode = [], []
    for _ in range(rounds):
        seq = model.new_sequence(prompt, max_tokens=new, ignore_eos=True)
        t0 = time.perf_counter()
        model.step([seq])
        t1 = time.perf_counter()
        while not seq.finished:
            model.step([seq])
        t2 = time.perf_counter()
        assert len(seq.token_ids) == new, len(seq.token_ids)
        prefill.append(len(prompt) / (t1 - t0))
        decode.append((new - 1) / (t2 - t1))
    return median(prefill), median(decode)


def run_transformers(folder: Path, dtype: str, prompt: list[int], new: int, rounds: int) -> tuple[float, float] | str:
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError as e:
        return f"skipped ({e.name} not installed)"
    torch.set_num_threads(THREADS)
    tdtype = torch.float32 if dtype == "f32" else torch.bfloat16
    model = LlamaForCausalLM.from_pretrained(folder, dtype=tdtype).eval()
    ids = torch.tensor([prompt])
    prefill, decode = [], []
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        for _ in range(rounds):
            t0 = time.perf_counter()
            model(ids)
            t1 = time.perf_counter()
            t2 = time.perf_counter()
            out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            t3 = time.perf_counter()
            assert out.shape[1] == len(prompt) + new
            prefill.append(len(prompt) / (t1 - t0))
            # generate = one prefill + (new - 1) decode steps
            decode.append((new - 1) / max((t3 - t2) - (t1 - t0), 1e-9))
    return median(prefill), median(decode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()
    rt.set_num_threads(THREADS)
    new = 16 if args.quick else 128
    rounds = 1 if args.quick else 3
    prompt = [int(x) for x in np.random.default_rng(1).integers(3, SHAPE["vocab_size"], 32)]
    bw = read_bandwidth_gbs()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtserve-decode-") as tmp:
        folder = Path(tmp) / "smollm2-135m-shape"
        params = write_model(folder)
        for dtype in ("f32", "bf16"):
            per_token = params * (4 if dtype == "f32" else 2)
            bound = bw * 1e9 / per_token
            pre, dec = run_rtserve(folder, dtype, prompt, new, rounds)
            rows.append(("rtserve", dtype, pre, dec, dec / bound, bound))
            print(f"rtserve {dtype}: prefill {pre:.0f} tok/s, decode {dec:.1f} tok/s ({dec / bound:.0%} of the {bound:.0f} tok/s bound)", flush=True)
            if not args.skip_transformers:
                peer = run_transformers(folder, dtype, prompt, new, rounds)
                if isinstance(peer, str):
                    print(f"transformers {dtype}: {peer}")
                else:
                    rows.append(("transformers", dtype, peer[0], peer[1], peer[1] / bound, bound))
                    print(f"transformers {dtype}: prefill {peer[0]:.0f} tok/s, decode {peer[1]:.1f} tok/s", flush=True)
    machine = (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, rtserve ISA {rt.isa()}, {THREADS} threads, "
        f"measured read bandwidth {bw:.1f} GB/s"
    )
    print(f"machine: {machine}")
    if args.markdown:
        ref = {d: dec for lib, d, _, dec, _, _ in rows if lib == "transformers"}
        print()
        print(f"- **Machine**: {machine}")
        print(f"- **Command**: `python benches/decode.py --markdown`{' (quick)' if args.quick else ''}")
        print(f"- **Work**: prompt 32 tokens, {new} new tokens greedy (eos ignored), median of {rounds}")
        print()
        print("| library | weights | prefill tok/s | decode tok/s | % of bandwidth bound | bound tok/s | decode ÷ transformers f32 |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for lib, d, pre, dec, frac, bound in rows:
            vs = f"{dec / ref['f32']:.2f}" if "f32" in ref else "n/a"
            print(f"| {lib} | {d} | {pre:.0f} | {dec:.1f} | {frac:.0%} | {bound:.0f} | {vs} |")


if __name__ == "__main__":
    main()
