"""The plots in docs/benchmarks.md, drawn from benches/compare.py's raw figures (matplotlib).

    python benches/compare.py --json compare.json
    python benches/plots.py compare.json            # writes docs/img/*.png

- ``gemm.png``: GEMM GFLOP/s by shape, rtserve and numpy (OpenBLAS), with the measured f32
  FMA peak as a line;
- ``minilm_throughput.png``: MiniLM sentences/s against batch size, one line per runtime;
- ``decode.png``: decode tokens/s of rtserve and transformers, f32 and bf16 weights, against
  the bandwidth bound (measured read bandwidth ÷ weight bytes per token).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
COLORS = {"rtserve": "#d62728", "numpy": "#1f77b4", "sentence-transformers": "#ff7f0e",
          "onnxruntime": "#2ca02c", "transformers": "#ff7f0e"}


def subtitle(data: dict) -> str:
    return f"{data.get('machine_short', data['machine'])}, {data['date']}, python benches/compare.py"


def plot_gemm(data: dict, out: Path) -> Path:
    gemm = data["gemm"]
    rows = gemm["rows"]
    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = range(len(rows))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["rtserve"] for r in rows], width, label="rtserve (f32)", color=COLORS["rtserve"])
    ax.bar([i + width / 2 for i in x], [r["numpy"] for r in rows], width, color=COLORS["numpy"],
           label=f"numpy {gemm['numpy']} ({gemm['blas'].split(' kernel=')[0]}, kernel {gemm['blas'].split('kernel=')[-1]})")
    ax.axhline(gemm["peak_gflops"], color="black", linestyle="--", linewidth=1,
               label=f"measured f32 FMA peak ({gemm['peak_gflops']:.0f} GFLOP/s)")
    ax.set_xticks(list(x), [r["shape"] for r in rows], rotation=20)
    ax.set_xlabel("M×K×N")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"GEMM f32, {gemm['threads']} threads\n" + subtitle(data), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, gemm["peak_gflops"] * 1.25)
    return _save(fig, out / "gemm.png")


def plot_minilm(data: dict, out: Path) -> Path:
    minilm = data["minilm"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rates in minilm["sentences_per_s"].items():
        sizes = sorted(int(s) for s in rates)
        ax.plot(sizes, [rates[str(s)] if str(s) in rates else rates[s] for s in sizes], marker="o", label=name,
                color=COLORS.get(name))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("sentences/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"all-MiniLM-L6-v2, {minilm['sentences']} sentences (text in, unit vectors out), "
                 f"{minilm['threads']} threads\n" + subtitle(data), fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out / "minilm_throughput.png")


def plot_decode(data: dict, out: Path) -> Path:
    dec = data["decode"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for i, row in enumerate(dec["rows"]):
        ax.bar(i - width / 2, row["rtserve_decode"], width, color=COLORS["rtserve"], label="rtserve" if i == 0 else None)
        if row["transformers_decode"] is not None:
            ax.bar(i + width / 2, row["transformers_decode"], width, color=COLORS["transformers"],
                   label="transformers (torch)" if i == 0 else None)
        ax.hlines(row["bound"], i - 0.45, i + 0.45, color="black", linestyle="--", linewidth=1,
                  label=f"bandwidth bound ({dec['read_gbs']:.0f} GB/s read)" if i == 0 else None)
        ax.annotate(f"{row['bound']:.0f}", (i + 0.45, row["bound"]), fontsize=8, va="bottom", ha="right")
    ax.set_xticks(range(len(dec["rows"])), [f"{r['dtype']} weights" for r in dec["rows"]])
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(f"Decoding, random-init Llama of SmolLM2-135M's shape, {dec['new_tokens']} new tokens, "
                 f"{dec['threads']} threads\n" + subtitle(data), fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, max(r["bound"] for r in dec["rows"]) * 1.3)
    return _save(fig, out / "decode.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figures", type=Path, help="the JSON file of python benches/compare.py --json")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder for the PNGs (default {OUT})")
    args = parser.parse_args()
    data = json.loads(args.figures.read_text())
    for section, plot in (("gemm", plot_gemm), ("minilm", plot_minilm), ("decode", plot_decode)):
        if section in data:
            print(plot(data, args.out))
        else:
            print(f"{section}: not in {args.figures}, no plot")


if __name__ == "__main__":
    main()
