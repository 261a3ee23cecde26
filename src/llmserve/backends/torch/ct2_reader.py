"""Reader for CTranslate2's ``model.bin``: named arrays, plus the aliases between them.

The layout (CTranslate2's ``models/model.cc`` and ``specs/model_spec.py``), little-endian:
``u32 binary_version``; from version 2 ``str spec_name, u32 spec_revision``; ``u32 count`` and per
variable ``str name, u8 rank, u32 dims[rank]``, then from version 4 ``u8 dtype_id, u32 num_bytes``
(before: ``u8 item_size, u32 num_items``) and the raw bytes; from version 3 ``u32 count`` aliases,
each ``str alias, str target``. A ``str`` is a u16 length counting a trailing NUL, then the bytes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# CTranslate2's DataType enum order (types.h); only the dtypes we load are named.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),  # bfloat16, widened to float32 by ``float32``
}
_BY_ITEM_SIZE = {4: 0, 2: 4, 1: 1}  # versions < 4 stored only the item size
_BFLOAT16 = 5
_MAX_VERSION = 6


class CT2FormatError(ValueError):
    """model.bin is truncated, of an unknown version, or holds an unsupported dtype."""


@dataclass
class CT2Model:
    """The variables of one model.bin, as numpy arrays viewing the file (no copy)."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    bfloat16: set[str] = field(default_factory=set)

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def raw(self, name: str) -> np.ndarray:
        """The variable as stored (int8 weights stay int8)."""
        try:
            return self.variables[name]
        except KeyError:
            raise CT2FormatError(f"model.bin has no variable {name!r}") from None

    def float32(self, name: str) -> np.ndarray:
        """The variable as float32; int8/int16 weights are divided by their ``NAME_scale``."""
        array = self.raw(name)
        if name in self.bfloat16:
            return (array.astype(np.uint32) << 16).view(np.float32)
        if array.dtype.kind in "iu":
            scale = self.variables.get(f"{name}_scale")
            if scale is None:
                return array.astype(np.float32)
            scale = self.float32(f"{name}_scale").astype(np.float32)
            shape = (-1,) + (1,) * (array.ndim - 1) if scale.ndim else ()
            return array.astype(np.float32) / scale.reshape(shape)
        return array.astype(np.float32)


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise CT2FormatError(f"model.bin is truncated (wanted {n} bytes at offset {self.pos})")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))

    def string(self) -> str:
        (length,) = self.unpack("<H")
        return bytes(self.take(length)).rstrip(b"\0").decode("utf-8")


def read_ct2(path: str | Path) -> CT2Model:
    """Parse ``path`` (a model.bin file or the directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with open(path, "rb") as f:
        buf = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    cur = _Cursor(buf)
    (version,) = cur.unpack("<I")
    if not 1 <= version <= _MAX_VERSION:
        raise CT2FormatError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec, revision = "", 1
    if version >= 2:
        spec = cur.string()
        (revision,) = cur.unpack("<I")
    (count,) = cur.unpack("<I")
    variables: dict[str, np.ndarray] = {}
    bfloat16: set[str] = set()
    for _ in range(count):
        name = cur.string()
        (rank,) = cur.unpack("<B")
        dims = cur.unpack(f"<{rank}I") if rank else ()
        if version >= 4:
            type_id, num_bytes = cur.unpack("<BI")
        else:
            item_size, num_items = cur.unpack("<BI")
            type_id, num_bytes = _BY_ITEM_SIZE.get(item_size, -1), num_items * item_size
        dtype = _DTYPES.get(type_id)
        if dtype is None:
            raise CT2FormatError(f"{path}: variable {name!r} has unsupported dtype id {type_id}")
        data = cur.take(num_bytes)
        array = np.frombuffer(data, dtype=dtype)
        if array.size != int(np.prod(dims, dtype=np.int64)):
            raise CT2FormatError(f"{path}: variable {name!r} holds {array.size} values for shape {dims}")
        variables[name] = array.reshape(dims)
        if type_id == _BFLOAT16:
            bfloat16.add(name)
    if version >= 3:
        (aliases,) = cur.unpack("<I")
        for _ in range(aliases):
            alias, target = cur.string(), cur.string()
            for suffix in ("", "_scale"):
                if target + suffix in variables:
                    variables[alias + suffix] = variables[target + suffix]
                    if target + suffix in bfloat16:
                        bfloat16.add(alias + suffix)
    return CT2Model(spec, revision, variables, bfloat16)
