from __future__ import annotations

import importlib.metadata
import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import rtserve

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rtserve", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """Parse a safetensors header directly: the reference the CLI's totals are checked against."""
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    header.pop("__metadata__", None)
    return header


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """Write a zero-filled safetensors file with ``name -> (dtype, shape)`` tensors."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * DTYPE_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(offset))


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    try:
        expected = importlib.metadata.version("rtserve")
    except importlib.metadata.PackageNotFoundError:
        expected = rtserve.__version__
    assert result.stdout == f"rtserve {expected}\n"


def test_help_lists_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "usage: rtserve" in result.stdout
    for command in ("serve", "inspect", "pull", "embed"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["serve"]),
        (["--port", "9000"], ["serve", "--port", "9000"]),
        (["path/to/model"], ["serve", "path/to/model"]),
        (["serve", "x"], ["serve", "x"]),
        (["pull", "minilm"], ["pull", "minilm"]),
        (["--version"], ["--version"]),
        (["-h"], ["-h"]),
    ],
)
def test_serve_is_the_default_command(argv: list[str], expected: list[str]) -> None:
    from rtserve.cli import _build_parser, _default_to_serve

    assert _default_to_serve(_build_parser(), argv) == expected


def test_serve_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from rtserve.cli import _build_parser

    monkeypatch.delenv("RTSERVE_API_KEY", raising=False)
    args = _build_parser().parse_args(["serve"])
    assert (args.models, args.host, args.port, args.device, args.api_key) == ([], "127.0.0.1", 8000, "cpu", None)
    assert args.max_request_bytes == 1 << 20
    assert (args.max_batch_tokens, args.max_queue, args.shutdown_timeout, args.idle_unload) == (8192, 256, 10.0, None)
    args = _build_parser().parse_args(["serve", "--max-batch-tokens", "512", "--max-queue", "4", "--idle-unload", "60"])
    assert (args.max_batch_tokens, args.max_queue, args.idle_unload) == (512, 4, 60.0)
    monkeypatch.setenv("RTSERVE_API_KEY", "from-env")
    assert _build_parser().parse_args(["serve"]).api_key == "from-env"
    assert _build_parser().parse_args(["serve", "--api-key", "flag"]).api_key == "flag"


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "no-such-model-or-folder"],
        ["a=no/such/folder", "--port", "0"],
        ["--port", "0", "--max-request-bytes", "0"],
        ["--port", "0", "--max-batch-tokens", "0"],
        ["--port", "0", "--max-queue", "0"],
        ["--port", "0", "--shutdown-timeout", "-1"],
        ["--port", "0", "--idle-unload", "0"],
    ],
)
def test_serve_bad_arguments_fail_cleanly(argv: list[str]) -> None:
    assert_clean_failure(run_cli(*argv))


def test_serve_duplicate_names_fail_cleanly() -> None:
    bert = str(Path(__file__).resolve().parent / "fixtures" / "tiny_bert")
    result = run_cli("serve", bert, bert, "--port", "0")
    assert_clean_failure(result)
    assert "NAME=PATH" in result.stderr


def test_inspect_minilm_folder(minilm_dir: Path) -> None:
    result = run_cli("inspect", str(minilm_dir))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    header = read_safetensors_header(minilm_dir / "model.safetensors")
    parameters = sum(math.prod(info["shape"]) for info in header.values())
    total_bytes = sum(info["data_offsets"][1] - info["data_offsets"][0] for info in header.values())

    assert re.search(r"^model_type\s+bert$", out, re.M)
    assert re.search(r"^architecture\s+BertModel$", out, re.M)
    assert re.search(r"^weights\s+model\.safetensors$", out, re.M)
    assert re.search(
        r"^embeddings\.word_embeddings\.weight\s+f32\s+30522 x 384\s+44\.7 MiB\s+46,881,792$",
        out,
        re.M,
    )
    for name in header:
        assert re.search(rf"^{re.escape(name)}\s", out, re.M), name
    assert re.search(rf"^tensors\s+{len(header)}$", out, re.M)
    assert re.search(rf"^total bytes\s+.*\({total_bytes:,} bytes\)$", out, re.M)
    assert re.search(rf"^parameters\s+{parameters:,} \(22\.7M\)$", out, re.M)
    assert re.search(r"^by dtype\s+f32\s", out, re.M)
    assert re.search(r"^\s+i64\s+1 tensors\s+512 params", out, re.M)  # embeddings.position_ids
    assert re.search(r"^load time\s+\d+\.\d\d ms$", out, re.M)


def test_inspect_catalog_name_uses_the_cache(minilm_dir: Path, tmp_path: Path) -> None:
    result = run_cli("inspect", "minilm", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["model", str(minilm_dir)]
    assert "downloading" not in result.stderr  # already pulled: no network


def test_inspect_one_safetensors_file(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.safetensors"
    write_safetensors(
        weights, {"w": ("BF16", [3, 5]), "step": ("I64", []), "mask": ("BOOL", [7])}
    )
    result = run_cli("inspect", str(weights))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^w\s+bf16\s+3 x 5\s+30 B\s+30$", out, re.M)
    assert re.search(r"^step\s+i64\s+scalar\s+8 B\s+8$", out, re.M)
    assert re.search(r"^mask\s+bool\s+7\s+7 B\s+7$", out, re.M)
    assert re.search(r"^tensors\s+3$", out, re.M)
    assert re.search(r"^parameters\s+23 \(23\)$", out, re.M)  # 15 + 1 (scalar) + 7
    assert re.search(r"^total bytes\s+45 B \(45 bytes\)$", out, re.M)


def test_inspect_sharded_folder_uses_the_index(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a.weight": ("F32", [4, 2])})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b.weight": ("F16", [6])})
    index = {
        "metadata": {"total_size": 32 + 12},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    model_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "config.json").write_text(json.dumps(model_config))
    result = run_cli("inspect", str(tmp_path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^weights\s+model\.safetensors\.index\.json$", out, re.M)
    assert re.search(r"^model_type\s+llama$", out, re.M)
    assert re.search(r"^a\.weight\s+f32\s+4 x 2\s", out, re.M)
    assert re.search(r"^b\.weight\s+f16\s+6\s", out, re.M)
    assert re.search(r"^tensors\s+2$", out, re.M)
    assert re.search(r"^total bytes\s+44 B \(44 bytes\)$", out, re.M)


def test_inspect_nonexistent_path_fails_cleanly(tmp_path: Path) -> None:
    result = run_cli("inspect", str(tmp_path / "missing.safetensors"))
    assert_clean_failure(result)
    assert "neither an existing path nor a catalog model name" in result.stderr
    assert "minilm" in result.stderr


def test_inspect_folder_without_weights_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert_clean_failure(run_cli("inspect", str(tmp_path)))


def test_inspect_corrupt_file_fails_cleanly(tmp_path: Path) -> None:
    weights = tmp_path / "corrupt.safetensors"
    weights.write_bytes(b"\xff" * 64)
    assert_clean_failure(run_cli("inspect", str(weights)))


def test_pull_unknown_name_lists_the_catalog() -> None:
    result = run_cli("pull", "no-such-model")
    assert_clean_failure(result)
    assert "unknown catalog model 'no-such-model'" in result.stderr
    assert "minilm" in result.stderr


def test_pull_prints_only_the_folder_on_stdout(minilm_dir: Path) -> None:
    result = run_cli("pull", "minilm")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{minilm_dir}\n"


@pytest.mark.parametrize("argv", [["--version"], ["pull", "--help"]])
def test_main_is_importable_and_callable(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from rtserve.cli import main

    if argv == ["--version"]:
        assert main(argv) == 0
        assert capsys.readouterr().out.startswith("rtserve ")
    else:
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        assert "catalog model" in capsys.readouterr().out


# --- inspect MODULE:FUNCTION (a graph) -------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
GRAPH_FACTORIES = '''
import rtserve as rt

def exp_graph():
    g = rt.Graph()
    x = g.input("x", ("n", 4))
    g.output("y", g.exp(g.add(x, 1.0)))
    return g

def compiled():
    return exp_graph().compile()

def not_a_graph():
    return 42
'''


def summary_nodes(out: str) -> list[str]:
    return re.findall(r"^%\d+ = (\w+)", out, re.M)


def test_inspect_graph_file_prints_nodes_flops_and_plan() -> None:
    optimized = run_cli("inspect", "tests/graph_models.py:bert_tiny", cwd=REPO)
    assert optimized.returncode == 0, optimized.stderr
    out = optimized.stdout
    assert re.search(r"^graph\s+tests/graph_models\.py:bert_tiny$", out, re.M)
    assert re.search(r"^passes\s+on$", out, re.M)
    assert "flops=" in out
    assert re.search(r"^memory plan at batch=1, seq=1: planned_bytes=\d+ lower_bound_bytes=\d+", out, re.M)
    plain = run_cli("inspect", "tests/graph_models.py:bert_tiny", "--no-optimize", cwd=REPO)
    assert plain.returncode == 0, plain.stderr
    assert re.search(r"^passes\s+off \(--no-optimize\)$", plain.stdout, re.M)
    # The summary shows the graph after its passes: the written-out attention is still
    # there without them, and the optimized graph has fewer nodes.
    unoptimized_ops = summary_nodes(plain.stdout)
    assert "softmax" in unoptimized_ops and "transpose" in unoptimized_ops
    assert 0 < len(summary_nodes(out)) < len(unoptimized_ops)


def test_inspect_graph_module_from_the_current_folder_with_dims() -> None:
    result = run_cli("inspect", "graph_models:llama_tiny", "--dims", "batch=8", "seq=128", cwd=REPO / "tests")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for op in ("embedding", "rms_norm", "rope", "attention", "linear"):
        assert op in summary_nodes(out), op
    assert re.search(r"^memory plan at batch=8, seq=128:$", out, re.M)
    assert re.search(r"^  planned_bytes\s+.*\([\d,]+ bytes\)$", out, re.M)
    assert re.search(r"^  planned / lower bound\s+\d\.\d{3}$", out, re.M)


def test_inspect_graph_accepts_a_compiled_and_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "factories.py").write_text(GRAPH_FACTORIES)
    factories = str(tmp_path / "factories.py")
    result = run_cli("inspect", f"{factories}:compiled")
    assert result.returncode == 0, result.stderr
    assert "exp" in summary_nodes(result.stdout)
    assert re.search(r"^memory plan at n=1: planned_bytes=", result.stdout, re.M)
    assert "not an rt.Graph" in assert_failure(run_cli("inspect", f"{factories}:not_a_graph"))
    assert "--no-optimize needs an rt.Graph" in assert_failure(
        run_cli("inspect", f"{factories}:compiled", "--no-optimize")
    )
    assert "has no attribute 'missing'" in assert_failure(run_cli("inspect", f"{factories}:missing"))
    assert "no such Python file" in assert_failure(run_cli("inspect", f"{tmp_path}/nope.py:f"))
    assert "cannot import module 'no_such_module'" in assert_failure(
        run_cli("inspect", "no_such_module:f", cwd=tmp_path)
    )
    assert "SYMBOL=N" in assert_failure(run_cli("inspect", f"{factories}:exp_graph", "--dims", "n"))
    assert "'m' is not a symbol" in assert_failure(run_cli("inspect", f"{factories}:exp_graph", "--dims", "m=3"))


def assert_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert_clean_failure(result)
    return result.stderr
