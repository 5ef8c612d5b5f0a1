"""Build safetensors files byte by byte, for valid fixtures and precise corruptions.

The format: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON (an object of
{name: {"dtype", "shape", "data_offsets"}} plus an optional "__metadata__"), then the
data section, which the offsets index from its first byte.

Headers are passed around as lists of (key, value) pairs rather than dicts so a test
can write a duplicate key, which a Python dict cannot hold.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

# rtserve dtype name -> (safetensors dtype name, numpy dtype)
DTYPES: dict[str, tuple[str, np.dtype]] = {
    "f32": ("F32", np.dtype(np.float32)),
    "f64": ("F64", np.dtype(np.float64)),
    "f16": ("F16", np.dtype(np.float16)),
    "bf16": ("BF16", np.dtype(ml_dtypes.bfloat16)),
    "i64": ("I64", np.dtype(np.int64)),
    "i32": ("I32", np.dtype(np.int32)),
    "i16": ("I16", np.dtype(np.int16)),
    "i8": ("I8", np.dtype(np.int8)),
    "u8": ("U8", np.dtype(np.uint8)),
    "bool": ("BOOL", np.dtype(np.bool_)),
}
SAFETENSORS_TO_RT = {st_name: rt_name for rt_name, (st_name, _) in DTYPES.items()}
ITEMSIZE = {st_name: np_dtype.itemsize for st_name, np_dtype in DTYPES.values()}

HeaderPairs = list[tuple[str, object]]


def json_object(pairs: Iterable[tuple[str, object]]) -> str:
    """Compact JSON text of an object written pair by pair (duplicate keys are kept)."""
    members = (f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}" for key, value in pairs)
    return "{" + ",".join(members) + "}"


def layout(
    tensors: Sequence[tuple[str, str, Sequence[int], bytes]],
    metadata: Mapping[str, str] | None = None,
) -> tuple[HeaderPairs, bytes]:
    """Lay (name, safetensors dtype, shape, raw bytes) tensors out back to back.

    Returns the header pairs and the data section, in the order given.
    """
    pairs: HeaderPairs = []
    if metadata is not None:
        pairs.append(("__metadata__", dict(metadata)))
    data = bytearray()
    for name, dtype, shape, raw in tensors:
        begin = len(data)
        data += raw
        pairs.append((name, {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, len(data)]}))
    return pairs, bytes(data)


def encode_file(
    header: HeaderPairs | str | bytes,
    data: bytes = b"",
    *,
    header_length: int | None = None,
    pad_to: int = 8,
    padding: int = 0,
) -> bytes:
    """The bytes of a safetensors file.

    header: pairs (serialized with json_object), JSON text, or raw header bytes.
    pad_to: pad the header with spaces so the data section starts at a multiple of it
        (what the reference writer does with 8); 1 means no padding.
    padding: extra spaces after that, to move the data section by a few bytes.
    header_length: write this value as N instead of the real header length.
    """
    if isinstance(header, list):
        header = json_object(header)
    header_bytes = header.encode("utf-8") if isinstance(header, str) else bytes(header)
    header_bytes += b" " * (-(8 + len(header_bytes)) % pad_to + padding)
    length = len(header_bytes) if header_length is None else header_length
    return struct.pack("<Q", length) + header_bytes + data


def split_file(content: bytes) -> tuple[int, bytes, bytes]:
    """(N, header bytes, data section) of well-formed file bytes."""
    (length,) = struct.unpack("<Q", content[:8])
    return length, content[8 : 8 + length], content[8 + length :]


def write_file(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def random_array(rng: np.random.Generator, rt_dtype: str, shape: Sequence[int]) -> np.ndarray:
    """An array of arbitrary bits (NaN payloads, infinities, subnormals included); bool is 0/1."""
    np_dtype = DTYPES[rt_dtype][1]
    count = int(np.prod(shape, dtype=np.int64))
    if rt_dtype == "bool":
        return (rng.integers(0, 2, size=count, dtype=np.uint8) == 1).reshape(shape)
    raw = rng.integers(0, 256, size=count * np_dtype.itemsize, dtype=np.uint8).tobytes()
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()
