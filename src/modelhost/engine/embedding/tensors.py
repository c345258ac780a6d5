"""Read a ``.safetensors`` file into NumPy arrays, without torch or the `safetensors` package.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian data. The file is memory-mapped, so tensors are
read from the page cache on first use rather than copied at load.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the reference implementation's own limit

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class TensorFileError(Exception):
    """The file is not a readable safetensors file; the message says what is wrong with it."""


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """``read_safetensors(Path("model.safetensors"))["embeddings.word_embeddings.weight"].shape -> (30522, 384)``.

    Arrays are read-only views of the mapped file (BF16 tensors are widened to float32 copies).
    """
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file cannot be mapped
            raise TensorFileError(f"{path} is empty") from exc
    if len(data) < 8:
        raise TensorFileError(f"{path} is too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise TensorFileError(f"{path} has a header length of {header_len} bytes, beyond the file")
    try:
        header = json.loads(bytes(data[8 : 8 + header_len]))
    except ValueError as exc:
        raise TensorFileError(f"{path} has a header that is not JSON") from exc
    base = 8 + header_len
    body = len(data) - base
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor(data, base, body, name, info, path)
    return tensors


def _tensor(data: mmap.mmap, base: int, body: int, name: str, info: dict[str, Any], path: Path) -> np.ndarray:
    dtype_name = info.get("dtype")
    shape = tuple(int(d) for d in info.get("shape", ()))
    start, end = (int(x) for x in info.get("data_offsets", (0, -1)))
    if not 0 <= start <= end <= body:
        raise TensorFileError(f"{path}: tensor {name} lies outside the file")
    count = int(np.prod(shape, dtype=np.int64))
    if dtype_name == "BF16":
        if end - start != count * 2:
            raise TensorFileError(f"{path}: tensor {name} has {end - start} bytes for shape {shape}")
        raw = np.frombuffer(data, dtype="<u2", count=count, offset=base + start).astype(np.uint32)
        return (raw << 16).view(np.float32).reshape(shape)
    dtype = _DTYPES.get(str(dtype_name))
    if dtype is None:
        raise TensorFileError(f"{path}: tensor {name} has unsupported dtype {dtype_name}")
    if end - start != count * dtype.itemsize:
        raise TensorFileError(f"{path}: tensor {name} has {end - start} bytes for shape {shape}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=base + start).reshape(shape)
