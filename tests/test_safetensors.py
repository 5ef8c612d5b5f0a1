"""rt.load_safetensors / rt.save_safetensors against the safetensors package, the reference.

Values are compared as bytes, so NaN payloads, signed zeros and bf16 bits must survive.
Corrupt files are in test_safetensors_corruption.py.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy as reference

import rtserve as rt
from safetensors_builders import DTYPES, encode_file, layout, random_array, split_file

ODD_SHAPES = [(), (0,), (1,), (7,), (33,), (257,), (0, 3), (3, 0, 2), (7, 33), (1, 1, 1), (2, 3, 5)]
RT_DTYPE_OF = {np_dtype: rt_name for rt_name, (_, np_dtype) in DTYPES.items()}


def arrays_of(rt_dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """One tensor per odd shape, arbitrary bits."""
    rng = np.random.default_rng(seed)
    return {f"{rt_dtype}.shape{index}": random_array(rng, rt_dtype, shape) for index, shape in enumerate(ODD_SHAPES)}


def arrays_of_every_dtype(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(7,), (3, 11), (), (257,), (0, 5), (2, 1, 3)]
    return {
        f"layer{index}.{rt_dtype}": random_array(rng, rt_dtype, shapes[index % len(shapes)])
        for index, rt_dtype in enumerate(DTYPES)
    }


def assert_same_tensor(name: str, loaded: rt.Tensor, expected: np.ndarray) -> None:
    array = np.asarray(loaded)
    assert isinstance(loaded.shape, tuple), name
    assert loaded.shape == expected.shape, name
    assert loaded.dtype == RT_DTYPE_OF[expected.dtype], name
    assert loaded.nbytes == expected.nbytes, name
    assert array.shape == expected.shape, name
    assert array.dtype == expected.dtype, name
    assert array.tobytes() == expected.tobytes(), name


def assert_same_tensors(loaded: dict, expected: dict) -> None:
    assert sorted(loaded) == sorted(expected)
    for name, array in expected.items():
        assert_same_tensor(name, loaded[name], array)


def names_in_offset_order(path: Path) -> list[str]:
    """Names of the non-empty tensors by data offset (empty ones share offsets, so their place is open)."""
    header = json.loads(split_file(path.read_bytes())[1])
    by_offset = sorted((entry["data_offsets"], name) for name, entry in header.items() if name != "__metadata__")
    return [name for (begin, end), name in by_offset if begin != end]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_error_is_a_value_error():
    assert issubclass(rt.WeightsError, rt.RtserveError)
    assert issubclass(rt.WeightsError, ValueError)


# --- reading files written by the reference ------------------------------------------------


@pytest.mark.parametrize("rt_dtype", list(DTYPES))
def test_load_reference_file_of_each_dtype(tmp_path, rt_dtype):
    arrays = arrays_of(rt_dtype)
    path = tmp_path / f"{rt_dtype}.safetensors"
    reference.save_file(arrays, path)
    assert_same_tensors(rt.load_safetensors(path), arrays)


def test_load_reference_file_of_mixed_dtypes(tmp_path):
    arrays = arrays_of_every_dtype()
    path = tmp_path / "mixed.safetensors"
    reference.save_file(arrays, path, metadata={"format": "pt"})
    assert_same_tensors(rt.load_safetensors(path), arrays)


@pytest.mark.parametrize("as_type", [str, Path], ids=["str", "Path"])
def test_load_accepts_str_and_path(tmp_path, as_type):
    arrays = arrays_of("f32")
    path = tmp_path / "model.safetensors"
    reference.save_file(arrays, path)
    assert_same_tensors(rt.load_safetensors(as_type(path)), arrays)


def test_tensors_come_in_file_order(tmp_path):
    arrays = arrays_of_every_dtype()
    path = tmp_path / "ordered.safetensors"
    reference.save_file(arrays, path)
    loaded = [name for name in rt.load_safetensors(path) if arrays[name].nbytes]
    assert loaded == names_in_offset_order(path)


def test_load_folder_with_model_safetensors(tmp_path):
    arrays = arrays_of("bf16")
    reference.save_file(arrays, tmp_path / "model.safetensors")
    assert_same_tensors(rt.load_safetensors(tmp_path), arrays)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}], ids=["no_metadata", "metadata_only"])
def test_file_without_tensors_loads_empty(tmp_path, metadata):
    pairs, data = layout([], metadata)
    path = tmp_path / "empty.safetensors"
    path.write_bytes(encode_file(pairs, data))
    safetensors.deserialize(path.read_bytes())  # the reference agrees it is valid
    assert dict(rt.load_safetensors(path)) == {}


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "U16", "U32", "U64"])
def test_unsupported_dtype_raises_weights_error(tmp_path, dtype):
    """Valid files with a dtype rtserve does not support: a clear WeightsError, not a crash."""
    itemsize = {"F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}[dtype]
    pairs, data = layout([("ok", "F32", [2], bytes(8)), ("odd.weight", dtype, [4], bytes(4 * itemsize))])
    path = tmp_path / "unsupported.safetensors"
    path.write_bytes(encode_file(pairs, data))
    safetensors.deserialize(path.read_bytes())  # valid for the reference
    with pytest.raises(rt.WeightsError) as error:
        rt.load_safetensors(path)
    message = str(error.value)
    assert path.name in message and dtype in message and "support" in message.lower(), message


@pytest.mark.parametrize("what", ["missing_file", "folder_without_weights"])
def test_nothing_to_load(tmp_path, what):
    path = tmp_path / "absent.safetensors" if what == "missing_file" else tmp_path
    with pytest.raises((rt.WeightsError, FileNotFoundError)):
        rt.load_safetensors(path)


# --- writing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("rt_dtype", list(DTYPES))
def test_saved_file_reads_back_with_reference(tmp_path, rt_dtype):
    arrays = arrays_of(rt_dtype, seed=2)
    metadata = {"format": "pt", "source": "rtserve tests", "empty": ""}
    path = tmp_path / "saved.safetensors"
    rt.save_safetensors(arrays, path, metadata=metadata)
    read_back = reference.load_file(path)
    assert sorted(read_back) == sorted(arrays)
    for name, array in arrays.items():
        assert read_back[name].dtype == array.dtype, name
        assert read_back[name].shape == array.shape, name
        assert read_back[name].tobytes() == array.tobytes(), name
    with safetensors.safe_open(path, framework="np") as file:
        assert file.metadata() == metadata


def test_saved_file_reads_back_with_rtserve(tmp_path):
    arrays = arrays_of_every_dtype(seed=3)
    path = tmp_path / "saved.safetensors"
    rt.save_safetensors(arrays, str(path))
    assert_same_tensors(rt.load_safetensors(path), arrays)


def test_save_without_metadata(tmp_path):
    path = tmp_path / "saved.safetensors"
    rt.save_safetensors({"x": np.arange(3, dtype=np.int32)}, path)
    with safetensors.safe_open(path, framework="np") as file:
        assert file.metadata() in (None, {})


def test_save_loaded_tensors(tmp_path):
    """rt.Tensor values (here mmap-backed ones) save like arrays, metadata included."""
    arrays = arrays_of_every_dtype(seed=4)
    source = tmp_path / "source.safetensors"
    reference.save_file(arrays, source)
    copy_path = tmp_path / "copy.safetensors"
    rt.save_safetensors(rt.load_safetensors(source), copy_path, metadata={"copied": "yes"})
    read_back = reference.load_file(copy_path)
    for name, array in arrays.items():
        assert read_back[name].tobytes() == array.tobytes(), name
    with safetensors.safe_open(copy_path, framework="np") as file:
        assert file.metadata() == {"copied": "yes"}


NON_CONTIGUOUS = {
    "transposed": np.arange(12, dtype=np.float32).reshape(3, 4).T,
    "strided": np.arange(20, dtype=np.int64)[::3],
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    "big_endian": np.arange(5, dtype=">i4"),
    "negative_stride": np.arange(7, dtype=np.float64)[::-1],
}


@pytest.mark.parametrize("name", list(NON_CONTIGUOUS))
def test_save_writes_logical_values_of_any_layout(tmp_path, name):
    array = NON_CONTIGUOUS[name]
    path = tmp_path / f"{name}.safetensors"
    rt.save_safetensors({name: array}, path)
    read_back = reference.load_file(path)[name]
    assert read_back.shape == array.shape
    np.testing.assert_array_equal(read_back, array)


@pytest.mark.parametrize("dtype", [np.complex64, np.uint16, np.uint32, object])
def test_save_rejects_unsupported_numpy_dtype(tmp_path, dtype):
    array = np.zeros(3, dtype=dtype)
    with pytest.raises((rt.RtserveError, TypeError, ValueError)):
        rt.save_safetensors({"x": array}, tmp_path / "bad.safetensors")


def test_save_rejects_non_string_metadata(tmp_path):
    with pytest.raises((TypeError, ValueError)):
        rt.save_safetensors({"x": np.zeros(2, np.float32)}, tmp_path / "bad.safetensors", metadata={"n": 1})


# --- loaded tensors are read-only views of the file --------------------------------------------


def test_loaded_tensors_are_read_only(tmp_path):
    arrays = {"weight": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.arange(5, dtype=np.int64)}
    path = tmp_path / "model.safetensors"
    reference.save_file(arrays, path)
    digest = file_digest(path)
    tensors = rt.load_safetensors(path)
    for name in arrays:
        for view in (tensors[name].numpy(), np.asarray(tensors[name])):
            assert not view.flags.writeable, name
            with pytest.raises(ValueError):
                view[...] = 0
            with pytest.raises(ValueError):
                view.setflags(write=True)
    assert_same_tensors(tensors, arrays)
    del tensors
    gc.collect()
    assert file_digest(path) == digest


# --- tensors whose offsets are not aligned to their element size ---------------------------

MISALIGNED_TENSORS = [
    ("flag", "u8", (1,)),
    ("weight", "f32", (5,)),
    ("ids", "i64", (3,)),
    ("half", "f16", (3,)),
    ("brain", "bf16", (2,)),
    ("double", "f64", (2,)),
    ("index", "i32", (3,)),
    ("short", "i16", (1,)),
]


@pytest.mark.parametrize("padding", range(8))
def test_misaligned_tensors_load_correctly(tmp_path, padding):
    """After a 1-byte tensor every offset is odd; `padding` also shifts the data section itself."""
    rng = np.random.default_rng(padding)
    arrays = {name: random_array(rng, rt_dtype, shape) for name, rt_dtype, shape in MISALIGNED_TENSORS}
    pairs, data = layout(
        [(name, DTYPES[rt_dtype][0], shape, arrays[name].tobytes()) for name, rt_dtype, shape in MISALIGNED_TENSORS]
    )
    path = tmp_path / "misaligned.safetensors"
    path.write_bytes(encode_file(pairs, data, padding=padding))
    safetensors.deserialize(path.read_bytes())  # valid for the reference
    tensors = rt.load_safetensors(path)
    assert list(tensors) == [name for name, _, _ in MISALIGNED_TENSORS]
    assert_same_tensors(tensors, arrays)
    for name, tensor in tensors.items():
        view = np.asarray(tensor)
        assert view.flags.aligned, name
        assert not view.flags.writeable, name


# --- storage lifetime --------------------------------------------------------------------------


@pytest.fixture
def two_tensor_file(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    arrays = {"a": np.arange(1000, dtype=np.float32), "b": np.arange(64, dtype=np.int64).reshape(8, 8)}
    path = tmp_path / "pair.safetensors"
    reference.save_file(arrays, path)
    return path, arrays


def test_tensors_outlive_their_dict(two_tensor_file):
    path, arrays = two_tensor_file
    tensors = rt.load_safetensors(path)
    a, b = tensors["a"], tensors["b"]
    del tensors
    gc.collect()
    assert_same_tensor("a", a, arrays["a"])
    assert_same_tensor("b", b, arrays["b"])


def test_numpy_view_outlives_its_tensor(two_tensor_file):
    path, arrays = two_tensor_file
    view = rt.load_safetensors(path)["b"].numpy()
    gc.collect()
    assert view.tobytes() == arrays["b"].tobytes()


@pytest.mark.skipif(os.name != "posix", reason="an open file cannot be deleted on Windows")
def test_tensors_survive_deleting_the_file(two_tensor_file):
    path, arrays = two_tensor_file
    tensors = rt.load_safetensors(path)
    path.unlink()
    gc.collect()
    assert_same_tensors(tensors, arrays)


# --- sharded checkpoints (model.safetensors.index.json) ----------------------------------------

SHARD_NAMES = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]


def write_index(folder: Path, weight_map: dict[str, str], *, text: str | None = None) -> Path:
    path = folder / "model.safetensors.index.json"
    if text is None:
        text = json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    path.write_text(text)
    return path


@pytest.fixture
def sharded(tmp_path) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    """A folder of three shards and their index; returns (folder, all arrays, weight_map)."""
    arrays = arrays_of_every_dtype(seed=5)
    names = list(arrays)
    weight_map = {}
    for shard_index, shard_name in enumerate(SHARD_NAMES):
        shard = {name: arrays[name] for name in names[shard_index :: len(SHARD_NAMES)]}
        reference.save_file(shard, tmp_path / shard_name)
        weight_map.update(dict.fromkeys(shard, shard_name))
    write_index(tmp_path, weight_map)
    return tmp_path, arrays, weight_map


def test_load_sharded_via_index(sharded):
    folder, arrays, _ = sharded
    assert_same_tensors(rt.load_safetensors(folder / "model.safetensors.index.json"), arrays)


def test_load_sharded_via_folder(sharded):
    folder, arrays, _ = sharded
    assert_same_tensors(rt.load_safetensors(folder), arrays)


def test_index_pointing_to_missing_shard(sharded):
    folder, _, weight_map = sharded
    weight_map[next(iter(weight_map))] = "model-00009-of-00009.safetensors"
    index = write_index(folder, weight_map)
    with pytest.raises(rt.WeightsError, match="model-00009-of-00009"):
        rt.load_safetensors(index)


def test_index_naming_tensor_absent_from_shard(sharded):
    folder, _, weight_map = sharded
    weight_map["not.in.any.shard"] = SHARD_NAMES[0]
    index = write_index(folder, weight_map)
    with pytest.raises(rt.WeightsError, match=re.escape("not.in.any.shard")):
        rt.load_safetensors(index)


def test_index_with_corrupt_shard(sharded):
    folder, _, _ = sharded
    shard = folder / SHARD_NAMES[1]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(rt.WeightsError, match=SHARD_NAMES[1]):
        rt.load_safetensors(folder)


@pytest.mark.parametrize("escape", ["parent", "nested_parent", "absolute"])
def test_index_shard_path_traversal(sharded, escape):
    """A shard name may not leave the folder, even when the file it names exists and is valid."""
    folder, arrays, weight_map = sharded
    inside = folder / "inside"
    (inside / "sub").mkdir(parents=True)
    for shard_name in SHARD_NAMES:
        (folder / shard_name).rename(inside / shard_name)
    outside = folder / "outside.safetensors"
    moved = next(iter(weight_map))
    reference.save_file({moved: arrays[moved]}, outside)
    shard_name = {
        "parent": "../outside.safetensors",
        "nested_parent": "sub/../../outside.safetensors",
        "absolute": str(outside),
    }[escape]
    weight_map = dict(weight_map, **{moved: shard_name})
    index = write_index(inside, weight_map)
    with pytest.raises(rt.WeightsError):
        rt.load_safetensors(index)


@pytest.mark.parametrize(
    "text",
    [
        '{"weight_map": {"a": "model-00001-of-00003.safetensors"',
        '{"metadata": {}}',
        '{"weight_map": ["model-00001-of-00003.safetensors"]}',
        '{"weight_map": {"a": 1}}',
        "[]",
    ],
    ids=["bad_json", "no_weight_map", "weight_map_list", "shard_not_string", "not_object"],
)
def test_invalid_index_raises_weights_error(sharded, text):
    folder, _, _ = sharded
    index = write_index(folder, {}, text=text)
    with pytest.raises(rt.WeightsError, match=re.escape(index.name)):
        rt.load_safetensors(index)


# --- a real checkpoint -------------------------------------------------------------------------


def test_minilm_weights_bit_identical(minilm_dir):
    path = minilm_dir / "model.safetensors"
    expected = reference.load_file(path)
    loaded = rt.load_safetensors(path)
    assert_same_tensors(loaded, expected)
    assert [name for name in loaded if expected[name].nbytes] == names_in_offset_order(path)
