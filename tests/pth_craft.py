"""A minimal writer of ``torch.save``'s zip format, written from the format (pickle protocol 2
opcodes, one storage file per tensor), independent of the reader under test: it lets a test put any
offset, size and stride into a checkpoint, including the hostile ones torch itself never writes.

``write(path, entries)`` saves ``{"model": {name: tensor}}`` (or the dict itself with
``wrap=None``); a tensor is a numpy array (saved contiguous) or a ``Raw`` with a storage and the
layout to record for it.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
           np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
           np.dtype(np.float16): "HalfStorage"}


@dataclass
class Raw:
    storage: np.ndarray  # 1-D, written as the storage file
    offset: int
    size: tuple
    stride: tuple
    numel: Optional[int] = None  # recorded storage size (default: the storage's)


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    if -(2 ** 31) <= v < 2 ** 31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _str(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor(key: str, raw: Raw) -> bytes:
    pid = _tuple([_str("storage"), _global("torch", STORAGE[raw.storage.dtype]), _str(key), _str("cpu"),
                  _int(raw.numel if raw.numel is not None else raw.storage.size)]) + b"Q"
    args = _tuple([pid, _int(raw.offset), _tuple([_int(v) for v in raw.size]),
                   _tuple([_int(v) for v in raw.stride]), b"\x89",
                   _global("collections", "OrderedDict") + b")R"])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def pickle_bytes(entries: dict, wrap: Optional[str] = "model") -> tuple[bytes, dict]:
    """(data.pkl, {storage key: bytes})."""
    storages, body = {}, []
    for i, (name, value) in enumerate(entries.items()):
        raw = value if isinstance(value, Raw) else Raw(np.ascontiguousarray(value).ravel(), 0, value.shape,
                                                       tuple(s // value.itemsize for s in
                                                             np.ascontiguousarray(value).strides))
        storages[str(i)] = raw.storage.tobytes()
        body.append(_str(name) + _tensor(str(i), raw))
    inner = b"}(" + b"".join(body) + b"u"
    if wrap:
        inner = b"}" + _str(wrap) + inner + b"s"
    return b"\x80\x02" + inner + b".", storages


def write(path, entries: dict, wrap: Optional[str] = "model") -> Path:
    data, storages = pickle_bytes(entries, wrap)
    return write_members(path, data, storages)


def write_members(path, data: bytes, storages: dict, prefix: str = "archive") -> Path:
    path = Path(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", data)
        zf.writestr(f"{prefix}/byteorder", "little")
        for key, blob in storages.items():
            zf.writestr(f"{prefix}/data/{key}", blob)
        zf.writestr(f"{prefix}/version", "3\n")
    return path
