"""The safetensors reader: dtypes, shapes, and files that lie about their contents."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from modelhost.engine.embedding.tensors import TensorFileError, read_safetensors


def write(
    path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]], header_extra: dict[str, object] | None = None
) -> Path:
    header: dict[str, object] = dict(header_extra or {})
    data = b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)
    return path


def test_reads_f32_f16_bf16_and_ints(tmp_path: Path) -> None:
    f32 = np.arange(6, dtype="<f4").reshape(2, 3)
    f16 = np.array([0.5, -2.0], dtype="<f2")
    bf16 = (np.array([1.5, -3.0], dtype="<f4").view("<u4") >> 16).astype("<u2")  # exact in bfloat16
    ids = np.array([1, 2, 3], dtype="<i8")
    path = write(
        tmp_path / "t.safetensors",
        {
            "a": ("F32", (2, 3), f32.tobytes()),
            "b": ("F16", (2,), f16.tobytes()),
            "c": ("BF16", (2,), bf16.tobytes()),
            "d": ("I64", (3,), ids.tobytes()),
        },
        {"__metadata__": {"format": "pt"}},
    )
    tensors = read_safetensors(path)
    assert set(tensors) == {"a", "b", "c", "d"}
    assert np.array_equal(tensors["a"], f32)
    assert np.array_equal(tensors["b"], f16)
    assert tensors["c"].dtype == np.float32 and tensors["c"].tolist() == [1.5, -3.0]
    assert tensors["d"].tolist() == [1, 2, 3]


def test_a_tensor_beyond_the_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(TensorFileError, match="outside the file"):
        read_safetensors(path)


def test_a_size_that_does_not_match_the_shape_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.safetensors", {"a": ("F32", (3,), b"\0" * 8)})
    with pytest.raises(TensorFileError, match="8 bytes for shape"):
        read_safetensors(path)


def test_a_header_length_past_the_end_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(TensorFileError, match="beyond the file"):
        read_safetensors(path)


def test_an_unknown_dtype_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "t.safetensors", {"a": ("F8_E4M3", (2,), b"\0\0")})
    with pytest.raises(TensorFileError, match="unsupported dtype"):
        read_safetensors(path)
