"""rt.load_safetensors on corrupt files: every one raises rt.WeightsError, nothing crashes or hangs.

The loader runs in a worker process (tests/safetensors_worker.py), so a segfault, an abort
or an endless loop fails one case with the path that caused it instead of killing pytest.
Each named corruption starts from one small valid file and changes one thing; the
hypothesis tests then mutate a valid file's bytes and its JSON header at random.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import queue
import re
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rtserve as rt
from safetensors_builders import SAFETENSORS_TO_RT, HeaderPairs, encode_file, json_object, layout

WORKER_SCRIPT = Path(__file__).with_name("safetensors_worker.py")
WORKER_START_TIMEOUT_S = 60  # importing numpy and rtserve
REPLY_TIMEOUT_S = 20  # loading a file of a few hundred bytes
REFERENCE_HEADER_CAP = 100_000_000


# --- the worker process ---------------------------------------------------------------


class LoaderWorker:
    """One long-lived worker process; restarted after it dies so later cases still run."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    def load(self, path: Path | str) -> dict:
        """The worker's reply for path; AssertionError if it died or hung on it."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        try:
            self._process.stdin.write(f"{path}\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            self._fail_dead(path)
        reply = self._next_reply(path, REPLY_TIMEOUT_S)
        assert reply.get("path") == str(path), f"worker answered for another path: {reply}"
        return reply

    def close(self) -> None:
        if self._process is None:
            return
        process, self._process = self._process, None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._stderr.close()
        self._stderr = None

    def _start(self) -> None:
        package_root = str(Path(rt.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if getattr(self, "_stderr", None) is not None:
            self._stderr.close()  # the previous worker's, already reported
        self._stderr = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            [sys.executable, str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self._process.stdout, self._replies), daemon=True).start()
        ready = self._next_reply("<startup>", WORKER_START_TIMEOUT_S)
        assert ready == {"ready": True}, f"unexpected first line from the worker: {ready}"

    @staticmethod
    def _pump(stream, replies: queue.Queue) -> None:
        for line in stream:
            replies.put(line)
        replies.put(None)  # end of file: the worker exited

    def _next_reply(self, path, timeout_s: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout_s)
        except queue.Empty:
            self._process.kill()
            self._process.wait()
            raise AssertionError(f"loader hung for more than {timeout_s} s on {path}\n{self._stderr_tail()}")
        if line is None:
            self._fail_dead(path)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"worker wrote a line that is not JSON on {path}: {line!r}") from None

    def _fail_dead(self, path) -> None:
        returncode = self._process.wait(timeout=10)
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
        raise AssertionError(f"loader worker {how} on {path}\n{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return "worker stderr (tail):\n" + self._stderr.read()[-4000:].decode("utf-8", "replace")


@pytest.fixture(scope="module")
def worker():
    loader = LoaderWorker()
    yield loader
    loader.close()


def assert_weights_error_naming_file(reply: dict, path: Path | str) -> None:
    assert reply["outcome"] == "WeightsError", f"{path}: expected WeightsError, got {reply}"
    assert os.path.basename(path) in reply["message"], f"message does not name the file: {reply['message']!r}"


# --- the valid base file and the named corruptions -------------------------------------

BASE_METADATA = {"format": "pt"}
BASE_TENSORS = [
    ("encoder.weight", "F32", [2, 3], np.arange(6, dtype="<f4").tobytes()),
    ("position_ids", "I64", [2], np.array([7, -1], dtype="<i8").tobytes()),
    ("token_type", "U8", [3], bytes([1, 2, 3])),
]
# data section: encoder.weight [0, 24), position_ids [24, 40), token_type [40, 43)
WEIGHT, POSITIONS, TOKENS = (name for name, *_ in BASE_TENSORS)


def base_pairs() -> HeaderPairs:
    return copy.deepcopy(layout(BASE_TENSORS, BASE_METADATA)[0])


def base_data() -> bytes:
    return layout(BASE_TENSORS, BASE_METADATA)[1]


def base_file() -> bytes:
    return encode_file(base_pairs(), base_data())


def with_entry(name: str, **fields) -> HeaderPairs:
    """The base header with some fields of one tensor's entry replaced."""
    pairs = base_pairs()
    dict(pairs)[name].update(fields)
    return pairs


def without_field(name: str, field: str) -> HeaderPairs:
    pairs = base_pairs()
    del dict(pairs)[name][field]
    return pairs


def with_offsets(offsets: dict[str, list[int]]) -> HeaderPairs:
    pairs = base_pairs()
    for name, data_offsets in offsets.items():
        dict(pairs)[name]["data_offsets"] = data_offsets
    return pairs


@dataclass(frozen=True)
class Corruption:
    build: Callable[[], bytes]
    tensors: tuple[str, ...] = ()  # the error message must name one of these
    reference_accepts: bool = False  # valid for the reference implementation; rtserve rejects it on purpose


CORRUPTIONS: dict[str, Corruption] = {}


def corruption(*, tensors: tuple[str, ...] = (), reference_accepts: bool = False):
    def register(build: Callable[[], bytes]) -> Callable[[], bytes]:
        CORRUPTIONS[build.__name__] = Corruption(build, tensors, reference_accepts)
        return build

    return register


# The 8-byte header length and the file's size.


@corruption()
def empty_file():
    return b""


@corruption()
def seven_bytes():
    return base_file()[:7]


@corruption()
def header_length_zero():
    return encode_file(base_pairs(), base_data(), header_length=0)


@corruption()
def truncated_header():
    content = base_file()
    header_length = struct.unpack("<Q", content[:8])[0]
    return content[: 8 + header_length // 2]


@corruption()
def header_length_past_eof():
    header = json_object(base_pairs())
    return encode_file(header, base_data(), pad_to=1, header_length=len(header) + len(base_data()) + 1)


@corruption()
def header_length_one_short():
    header = json_object(base_pairs())  # the JSON loses its closing brace
    return encode_file(header, base_data(), pad_to=1, header_length=len(header) - 1)


@corruption()
def header_length_2_pow_63():
    return encode_file(base_pairs(), base_data(), header_length=2**63)


@corruption()
def header_length_u64_max():  # 8 + N overflows a u64
    return encode_file(base_pairs(), base_data(), header_length=2**64 - 1)


@corruption()
def header_length_above_cap():
    """A valid file except that its header (JSON plus spaces) is one byte over the reference's cap."""
    header = json_object(base_pairs())
    return encode_file(header, base_data(), pad_to=1, padding=REFERENCE_HEADER_CAP + 1 - len(header))


# The header's bytes and JSON.


@corruption()
def header_bad_json():
    return encode_file(json_object(base_pairs())[:-3], base_data())


@corruption()
def header_trailing_characters():
    return encode_file(json_object(base_pairs()) + "}x", base_data())


@corruption()
def header_not_utf8():
    header = json_object(base_pairs()).encode().replace(TOKENS.encode(), b"tok\xff\xfeen")
    return encode_file(header, base_data())


@corruption()
def header_json_list():
    return encode_file(json.dumps([1, 2, 3]), base_data())


@corruption()
def header_json_string():
    return encode_file(json.dumps("encoder.weight"), base_data())


@corruption(tensors=(WEIGHT,))
def tensor_entry_not_object():
    pairs = base_pairs()
    pairs[1] = (WEIGHT, [0, 24])
    return encode_file(pairs, base_data())


# dtypes.


@corruption(tensors=(WEIGHT,))
def unknown_dtype():
    return encode_file(with_entry(WEIGHT, dtype="F33"), base_data())


@corruption(tensors=(WEIGHT,))
def dtype_lowercase():  # the format spells dtypes in capitals
    return encode_file(with_entry(WEIGHT, dtype="f32"), base_data())


@corruption(tensors=(TOKENS,), reference_accepts=True)
def unsupported_dtype_f8_e4m3():
    return encode_file(with_entry(TOKENS, dtype="F8_E4M3"), base_data())


@corruption(tensors=(POSITIONS,), reference_accepts=True)
def unsupported_dtype_u16():
    return encode_file(with_entry(POSITIONS, dtype="U16", shape=[8]), base_data())


@corruption(tensors=(POSITIONS,), reference_accepts=True)
def unsupported_dtype_u32():
    return encode_file(with_entry(POSITIONS, dtype="U32", shape=[4]), base_data())


@corruption(tensors=(POSITIONS,), reference_accepts=True)
def unsupported_dtype_u64():
    return encode_file(with_entry(POSITIONS, dtype="U64", shape=[2]), base_data())


UNSUPPORTED_DTYPES = {
    "unsupported_dtype_f8_e4m3": "F8_E4M3",
    "unsupported_dtype_u16": "U16",
    "unsupported_dtype_u32": "U32",
    "unsupported_dtype_u64": "U64",
}


# Shapes.


@corruption(tensors=(WEIGHT,))
def shape_size_mismatch():
    return encode_file(with_entry(WEIGHT, shape=[2, 4]), base_data())


@corruption(tensors=(WEIGHT,))
def shape_negative():
    return encode_file(with_entry(WEIGHT, shape=[-2, -3]), base_data())


@corruption(tensors=(WEIGHT,))
def shape_float():
    return encode_file(with_entry(WEIGHT, shape=[2.0, 3]), base_data())


@corruption(tensors=(WEIGHT,))
def shape_string():
    return encode_file(with_entry(WEIGHT, shape=["2", 3]), base_data())


@corruption(tensors=(WEIGHT,))
def shape_not_list():
    return encode_file(with_entry(WEIGHT, shape=6), base_data())


@corruption(tensors=(WEIGHT,))
def shape_above_u64():
    return encode_file(with_entry(WEIGHT, shape=[2**64, 1]), base_data())


@corruption(tensors=("overflow",))
def shape_product_overflow():
    """An extra empty tensor whose element count is 2**64: wrapping u64 arithmetic sees 0 bytes."""
    pairs = base_pairs() + [("overflow", {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [43, 43]})]
    return encode_file(pairs, base_data())


@corruption(tensors=("overflow",))
def shape_bytes_overflow():
    """Element count fits a u64, but element count * 4 bytes wraps to 0."""
    pairs = base_pairs() + [("overflow", {"dtype": "F32", "shape": [2**62], "data_offsets": [43, 43]})]
    return encode_file(pairs, base_data())


# data_offsets.


@corruption(tensors=(WEIGHT,))
def missing_data_offsets():
    return encode_file(without_field(WEIGHT, "data_offsets"), base_data())


@corruption(tensors=(WEIGHT,))
def missing_dtype():
    return encode_file(without_field(WEIGHT, "dtype"), base_data())


@corruption(tensors=(WEIGHT,))
def missing_shape():
    return encode_file(without_field(WEIGHT, "shape"), base_data())


@corruption(tensors=(WEIGHT,))
def data_offsets_one_number():
    return encode_file(with_entry(WEIGHT, data_offsets=[0]), base_data())


@corruption(tensors=(WEIGHT,))
def data_offsets_negative():
    return encode_file(with_entry(WEIGHT, data_offsets=[-24, 0]), base_data())


@corruption()
def offsets_past_eof():  # the data section is 2 bytes shorter than the last tensor's end
    return encode_file(base_pairs(), base_data()[:-2])


@corruption(tensors=(TOKENS,))
def offsets_near_u64_max():  # data start + offset overflows a u64
    return encode_file(with_entry(TOKENS, data_offsets=[2**64 - 4, 2**64 - 1]), base_data())


@corruption(tensors=(TOKENS,))
def begin_greater_than_end():
    return encode_file(with_entry(TOKENS, data_offsets=[43, 40]), base_data())


@corruption(tensors=(WEIGHT, POSITIONS))
def overlapping_tensors():
    """position_ids starts 4 bytes inside encoder.weight; everything else is consistent."""
    pairs = with_offsets({POSITIONS: [20, 36], TOKENS: [36, 39]})
    return encode_file(pairs, base_data()[:39])


@corruption(tensors=(WEIGHT, POSITIONS))
def gap_between_tensors():
    pairs = with_offsets({POSITIONS: [28, 44], TOKENS: [44, 47]})
    data = base_data()
    return encode_file(pairs, data[:24] + bytes(4) + data[24:])


@corruption(tensors=(WEIGHT,))
def first_tensor_not_at_zero():
    pairs = with_offsets({WEIGHT: [4, 28], POSITIONS: [28, 44], TOKENS: [44, 47]})
    return encode_file(pairs, bytes(4) + base_data())


@corruption()
def trailing_bytes():
    return encode_file(base_pairs(), base_data() + bytes(5))


# Duplicate JSON keys below the top level: a last-wins parser would hide the first value.


@corruption(tensors=(WEIGHT,))
def tensor_entry_duplicate_dtype():
    header = json_object(base_pairs()).replace('"dtype":"F32"', '"dtype":"F33","dtype":"F32"')
    return encode_file(header, base_data())


@corruption(tensors=(WEIGHT,))
def tensor_entry_duplicate_shape():
    header = json_object(base_pairs()).replace('"shape":[2,3]', '"shape":[-1],"shape":[2,3]')
    return encode_file(header, base_data())


@corruption()
def metadata_duplicate_key_hiding_non_string():
    header = json_object(base_pairs()).replace('"format":"pt"', '"format":0,"format":"pt"')
    return encode_file(header, base_data())


# Names and metadata.


@corruption(tensors=(TOKENS,), reference_accepts=True)
def duplicate_tensor_names():
    """The same entry twice: only an explicit duplicate check catches it (the reference keeps the last)."""
    pairs = base_pairs()
    pairs.append((TOKENS, copy.deepcopy(dict(pairs)[TOKENS])))
    return encode_file(pairs, base_data())


@corruption(tensors=(WEIGHT,))
def duplicate_tensor_names_distinct_data():
    pairs = base_pairs() + [(WEIGHT, {"dtype": "F32", "shape": [2, 3], "data_offsets": [43, 67]})]
    return encode_file(pairs, base_data() + bytes(24))


@corruption()
def metadata_non_string_value():
    pairs = base_pairs()
    pairs[0] = ("__metadata__", {"format": "pt", "version": 1})
    return encode_file(pairs, base_data())


@corruption()
def metadata_not_object():
    pairs = base_pairs()
    pairs[0] = ("__metadata__", ["format", "pt"])
    return encode_file(pairs, base_data())


# --- tests of the named corruptions ------------------------------------------------------


def write_case(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(CORRUPTIONS[name].build())
    return path


def test_base_file_is_valid(tmp_path, worker):
    """The corruptions start from a file that both the reference and rtserve load."""
    path = tmp_path / "base.safetensors"
    path.write_bytes(base_file())
    reference = safetensors.deserialize(path.read_bytes())
    assert sorted(name for name, _ in reference) == sorted([WEIGHT, POSITIONS, TOKENS])
    reply = worker.load(path)
    assert reply["outcome"] == "ok", reply
    assert [(t["name"], t["dtype"], t["shape"]) for t in reply["tensors"]] == [
        (WEIGHT, "f32", [2, 3]),
        (POSITIONS, "i64", [2]),
        (TOKENS, "u8", [3]),
    ]
    for summary, (_, _, _, raw) in zip(reply["tensors"], BASE_TENSORS):
        assert summary["sha256"] == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_reference_implementation_agrees(tmp_path, name):
    """Each corruption is a real one: the safetensors package rejects it too (unless marked)."""
    content = write_case(tmp_path, name).read_bytes()
    if CORRUPTIONS[name].reference_accepts:
        safetensors.deserialize(content)
    else:
        with pytest.raises(Exception):
            safetensors.deserialize(content)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupt_file_raises_weights_error(tmp_path, worker, name):
    path = write_case(tmp_path, name)
    reply = worker.load(path)
    assert_weights_error_naming_file(reply, path)
    expected_tensors = CORRUPTIONS[name].tensors
    if expected_tensors:
        assert any(t in reply["message"] for t in expected_tensors), (
            f"message names none of {expected_tensors}: {reply['message']!r}"
        )
    if name in UNSUPPORTED_DTYPES:
        assert "support" in reply["message"].lower() and UNSUPPORTED_DTYPES[name] in reply["message"], reply


def test_file_is_not_modified_by_a_failed_load(tmp_path, worker):
    path = write_case(tmp_path, "shape_size_mismatch")
    before = path.read_bytes()
    worker.load(path)
    assert path.read_bytes() == before


# --- fuzzing -------------------------------------------------------------------------------

FUZZ_TENSORS = [
    ("w", "F32", [2, 3], np.linspace(-1, 1, 6, dtype="<f4").tobytes()),
    ("h", "BF16", [3], bytes([0x80, 0x3F, 0x00, 0xC0, 0xC0, 0x7F])),  # 1.0, -2.0, NaN
    ("flag", "BOOL", [2], bytes([1, 0])),
]
FUZZ_PAIRS, FUZZ_DATA = layout(FUZZ_TENSORS, {"format": "pt", "note": "fuzz base"})
FUZZ_HEADER = json_object(FUZZ_PAIRS)
FUZZ_FILE = encode_file(FUZZ_HEADER, FUZZ_DATA)

FUZZ_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

INTERESTING_LENGTHS = [
    0, 1, 7, 8, 9, 2**31, 2**32, 2**32 + 8, 2**63, 2**64 - 1, REFERENCE_HEADER_CAP, REFERENCE_HEADER_CAP + 1,
]  # fmt: skip

# ("flip", position, bit) | ("overwrite", position, bytes) | ("truncate", length)
# | ("insert", position, bytes) | ("header_length", value) | ("header_length_delta", delta)
BYTE_MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 4096), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 4096)),
    st.tuples(st.just("insert"), st.integers(0, 4096), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("header_length"), st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 2**64 - 1)),
    st.tuples(st.just("header_length_delta"), st.integers(-16, 16)),
)


def apply_byte_mutation(content: bytes, mutation: tuple) -> bytes:
    kind, *args = mutation
    if kind == "truncate":
        return content[: args[0] % (len(content) + 1)]
    if kind in ("header_length", "header_length_delta"):
        current = struct.unpack("<Q", content[:8].ljust(8, b"\0"))[0]
        value = args[0] if kind == "header_length" else (current + args[0]) % 2**64
        return struct.pack("<Q", value) + content[8:]
    if not content:
        return content
    position = args[0] % len(content)
    if kind == "flip":
        return content[:position] + bytes([content[position] ^ (1 << args[1])]) + content[position + 1 :]
    if kind == "overwrite":
        return (content[:position] + args[1] + content[position + len(args[1]) :])[: len(content)]
    if kind == "insert":
        return content[:position] + args[1] + content[position:]
    raise ValueError(kind)


# Tokens of the JSON header a mutation may replace: strings (keys, dtypes, names) and integers.
HEADER_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+')
FUZZ_HEADER_TOKENS = [match.span() for match in HEADER_TOKEN.finditer(FUZZ_HEADER)]
REPLACEMENT_NUMBERS = [0, 1, 2, 3, 4, 6, 8, 24, 29, 30, 32, -1, 2**32, 2**62, 2**63, 2**64 - 1, 2**64]
REPLACEMENT_STRINGS = [
    "dtype", "shape", "data_offsets", "__metadata__", "w", "h", "flag", "",
    "F32", "BF16", "BOOL", "F16", "I64", "U8", "F8_E4M3", "U16", "U64", "f32", "X",
]  # fmt: skip
REPLACEMENTS = st.one_of(
    st.sampled_from(REPLACEMENT_NUMBERS).map(str),
    st.integers(-3, 40).map(str),
    st.sampled_from(REPLACEMENT_STRINGS).map(json.dumps),
    st.sampled_from(["null", "true", "[]", "{}", "[0]", "[0,0]", "2.5", "1e3", '"3"']),
)


@st.composite
def header_edits(draw) -> str:
    """The fuzz header with 1-3 of its tokens replaced."""
    indices = draw(st.lists(st.integers(0, len(FUZZ_HEADER_TOKENS) - 1), min_size=1, max_size=3, unique=True))
    text = FUZZ_HEADER
    for index in sorted(indices, reverse=True):  # right to left keeps earlier spans valid
        begin, end = FUZZ_HEADER_TOKENS[index]
        text = text[:begin] + draw(REPLACEMENTS) + text[end:]
    return text


def load_bytes(worker: LoaderWorker, content: bytes) -> dict:
    """Write content to a temporary file, send it to the worker, delete the file."""
    descriptor, name = tempfile.mkstemp(prefix="fuzz-", suffix=".safetensors")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        reply = worker.load(name)
        if reply["outcome"] == "WeightsError":
            assert_weights_error_naming_file(reply, name)
        return reply
    finally:
        os.unlink(name)


def assert_agrees_with_reference(content: bytes, reply: dict) -> None:
    """Only "ok" or "WeightsError"; when rtserve accepts a file, the reference reads the same tensors."""
    assert reply["outcome"] in ("ok", "WeightsError"), reply
    if reply["outcome"] != "ok":
        return
    try:
        reference = safetensors.deserialize(content)
    except Exception as error:
        raise AssertionError(f"rtserve loaded a file the reference rejects ({error}): {content!r}") from None
    expected = {
        name: (
            SAFETENSORS_TO_RT.get(view["dtype"]),
            list(view["shape"]),
            hashlib.sha256(bytes(view["data"])).hexdigest(),
        )
        for name, view in reference
    }
    loaded = {t["name"]: (t["dtype"], t["shape"], t["sha256"]) for t in reply["tensors"]}
    assert loaded == expected, content


@FUZZ_SETTINGS
@given(mutations=st.lists(BYTE_MUTATIONS, min_size=1, max_size=4))
def test_fuzz_byte_mutations(worker, mutations):
    content = FUZZ_FILE
    for mutation in mutations:
        content = apply_byte_mutation(content, mutation)
    assert_agrees_with_reference(content, load_bytes(worker, content))


@FUZZ_SETTINGS
@given(header=header_edits(), data_delta=st.sampled_from([0, 0, 0, -1, 1, -8]))
def test_fuzz_header_edits(worker, header, data_delta):
    """Edits inside the JSON with a correct header length, to reach the checks past parsing."""
    data = FUZZ_DATA[:data_delta] if data_delta < 0 else FUZZ_DATA + bytes(data_delta)
    content = encode_file(header, data)
    assert_agrees_with_reference(content, load_bytes(worker, content))


def test_valid_file_still_loads_after_fuzzing(worker, tmp_path):
    """No state left behind by thousands of failed loads breaks the next good one."""
    path = tmp_path / "after.safetensors"
    path.write_bytes(FUZZ_FILE)
    assert worker.load(path)["outcome"] == "ok"
