"""Read a PyTorch checkpoint (``torch.save``'s zip format) without torch and without ``pickle``.

A ``.pth`` file is a zip holding ``data.pkl`` (a pickle that names the tensors' storages) and one
file per storage under ``data/``. Unpickling runs code named inside the file, so this module
does not unpickle: it *interprets* the pickle's opcodes itself (the protocol-2 to -5 opcodes
``torch.save`` writes, as documented in CPython's ``pickletools``), and every global the pickle
names must be on a short allowlist of things a checkpoint needs: tensors (rebuilt as numpy
arrays over the storage files), ordered dicts, ``argparse.Namespace`` (kept as a plain object),
paths (kept as text) and numpy scalars. Any other global is refused by name before anything is
built, and nothing named in the file is ever imported or called. No ``pickle`` import exists here,
so the plugin carries no unpickling code at all.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np


class CheckpointReadError(ValueError):
    """A checkpoint that cannot be read safely; the message says why and what to do."""


STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class Namespace(SimpleNamespace):
    """What an ``argparse.Namespace`` in a checkpoint becomes: attributes, nothing callable."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *rest):
    size, stride = tuple(int(v) for v in size), tuple(int(v) for v in stride)
    if not size:
        return np.array(storage[int(offset)])
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    span = int(offset) + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if span > storage.size:
        raise CheckpointReadError("a tensor reaches beyond its storage: the file is corrupt")
    view = np.lib.stride_tricks.as_strided(storage[int(offset):], shape=size,
                                           strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *rest):
    return data


def _ordered_dict(*args):
    return dict(*args)


def _namespace(*args, **kwargs):
    return Namespace(**kwargs)


def _path(*parts):
    return str(PurePosixPath(*[str(p) for p in parts]))


def _numpy_dtype(name, *rest):
    return np.dtype(name)


def _numpy_scalar(dtype, data=None):
    if data is None:
        return np.zeros((), dtype)[()]
    if isinstance(data, str):
        data = data.encode("latin-1")
    return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    return str(text).encode(encoding)


#: module.name -> builder: the only globals a checkpoint may name.
ALLOWED: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "collections.OrderedDict": _ordered_dict,
    "argparse.Namespace": _namespace,
    "pathlib.PosixPath": _path, "pathlib.WindowsPath": _path, "pathlib.PurePosixPath": _path,
    "pathlib.PureWindowsPath": _path, "pathlib.Path": _path,
    "numpy.dtype": _numpy_dtype, "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "_codecs.encode": _codecs_encode,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.bytearray": bytearray,
}
ALLOWED.update({f"torch.{name}": _StorageType(name) for name in STORAGE_DTYPES})


class _Mark:
    pass


MARK = _Mark()


def _bfloat16(raw: bytes) -> np.ndarray:
    u16 = np.frombuffer(raw, np.uint16)
    return (u16.astype(np.uint32) << 16).view(np.float32)


def _resolve(module: str, name: str):
    key = f"{module}.{name}"
    if key not in ALLOWED:
        raise CheckpointReadError(
            f"the checkpoint's pickle names '{key}', which is not on the allowlist of what a model checkpoint needs "
            "(tensors, dicts, argparse.Namespace, paths, numpy scalars): it was refused and nothing in the file was "
            "executed. Re-save the model's state_dict alone (torch.save(model.state_dict(), ...)) if you trust it")
    return ALLOWED[key]


def interpret(data: bytes, load_storage: Callable[[tuple], np.ndarray]) -> Any:
    """Evaluate a pickle's opcodes with the allowlist; ``load_storage`` resolves persistent ids."""
    stack: list = []
    marks: list = []
    memo: dict = {}
    pos = 0
    n = len(data)

    def read(k: int) -> bytes:
        nonlocal pos
        if pos + k > n:
            raise CheckpointReadError("the checkpoint's pickle ends early: the file is truncated or corrupt")
        out = data[pos:pos + k]
        pos += k
        return out

    def pop_mark() -> list:
        if not marks:
            raise CheckpointReadError("malformed pickle (no mark)")
        i = marks.pop()
        items = stack[i:]
        del stack[i:]
        return items

    def call(fn, args):
        if isinstance(fn, _StorageType):
            raise CheckpointReadError("malformed checkpoint (a storage type called)")
        return fn(*args)

    while True:
        op = read(1)
        if op == b"\x80":  # PROTO
            read(1)
        elif op == b"\x95":  # FRAME
            read(8)
        elif op == b".":  # STOP
            if len(stack) != 1:
                raise CheckpointReadError("malformed pickle (stack at STOP)")
            return stack.pop()
        elif op == b"}":
            stack.append({})
        elif op == b"]":
            stack.append([])
        elif op == b")":
            stack.append(())
        elif op == b"\x8f":  # EMPTY_SET
            stack.append(set())
        elif op == b"(":
            marks.append(len(stack))
        elif op == b"N":
            stack.append(None)
        elif op == b"\x88":
            stack.append(True)
        elif op == b"\x89":
            stack.append(False)
        elif op == b"J":
            stack.append(struct.unpack("<i", read(4))[0])
        elif op == b"K":
            stack.append(read(1)[0])
        elif op == b"M":
            stack.append(struct.unpack("<H", read(2))[0])
        elif op == b"\x8a":  # LONG1
            k = read(1)[0]
            stack.append(int.from_bytes(read(k), "little", signed=True))
        elif op == b"\x8b":  # LONG4
            k = struct.unpack("<i", read(4))[0]
            stack.append(int.from_bytes(read(k), "little", signed=True))
        elif op == b"G":
            stack.append(struct.unpack(">d", read(8))[0])
        elif op == b"X":
            k = struct.unpack("<I", read(4))[0]
            stack.append(read(k).decode("utf-8", "surrogatepass"))
        elif op == b"\x8c":
            k = read(1)[0]
            stack.append(read(k).decode("utf-8", "surrogatepass"))
        elif op == b"\x8d":
            k = struct.unpack("<Q", read(8))[0]
            stack.append(read(k).decode("utf-8", "surrogatepass"))
        elif op == b"B":
            k = struct.unpack("<I", read(4))[0]
            stack.append(bytes(read(k)))
        elif op == b"C":
            k = read(1)[0]
            stack.append(bytes(read(k)))
        elif op == b"\x8e":
            k = struct.unpack("<Q", read(8))[0]
            stack.append(bytes(read(k)))
        elif op == b"\x96":  # BYTEARRAY8
            k = struct.unpack("<Q", read(8))[0]
            stack.append(bytearray(read(k)))
        elif op == b"q":
            memo[read(1)[0]] = stack[-1]
        elif op == b"r":
            memo[struct.unpack("<I", read(4))[0]] = stack[-1]
        elif op == b"\x94":  # MEMOIZE
            memo[len(memo)] = stack[-1]
        elif op == b"h":
            stack.append(memo[read(1)[0]])
        elif op == b"j":
            stack.append(memo[struct.unpack("<I", read(4))[0]])
        elif op == b"t":
            stack.append(tuple(pop_mark()))
        elif op == b"\x85":
            stack.append((stack.pop(),))
        elif op == b"\x86":
            b, a = stack.pop(), stack.pop()
            stack.append((a, b))
        elif op == b"\x87":
            c, b, a = stack.pop(), stack.pop(), stack.pop()
            stack.append((a, b, c))
        elif op == b"l":
            stack.append(list(pop_mark()))
        elif op == b"d":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif op == b"a":
            v = stack.pop()
            stack[-1].append(v)
        elif op == b"e":
            items = pop_mark()
            stack[-1].extend(items)
        elif op == b"s":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif op == b"u":
            items = pop_mark()
            target = stack[-1]
            for k, v in zip(items[::2], items[1::2]):
                target[k] = v
        elif op == b"\x90":  # ADDITEMS
            items = pop_mark()
            stack[-1].update(items)
        elif op == b"\x91":  # FROZENSET
            stack.append(frozenset(pop_mark()))
        elif op == b"0":
            stack.pop()
        elif op == b"1":
            pop_mark()
        elif op == b"2":
            stack.append(stack[-1])
        elif op == b"c":  # GLOBAL module\nname\n
            module = _readline(read, data)
            name = _readline(read, data)
            stack.append(_resolve(module, name))
        elif op == b"\x93":  # STACK_GLOBAL
            name, module = stack.pop(), stack.pop()
            stack.append(_resolve(str(module), str(name)))
        elif op == b"R":  # REDUCE
            args, fn = stack.pop(), stack.pop()
            stack.append(call(fn, args))
        elif op == b"\x81":  # NEWOBJ
            args, cls = stack.pop(), stack.pop()
            stack.append(call(cls, args))
        elif op == b"\x92":  # NEWOBJ_EX
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(cls(*args, **kwargs) if not isinstance(cls, _StorageType) else call(cls, args))
        elif op == b"b":  # BUILD: set state on the object built just before
            state, obj = stack.pop(), stack[-1]
            if isinstance(obj, Namespace) and isinstance(state, dict):
                obj.__dict__.update(state)
            elif isinstance(obj, dict) and isinstance(state, dict):
                obj.update(state)
            # anything else (dtype flags, tensor hooks) carries nothing a model needs: ignored
        elif op == b"Q":  # BINPERSID
            stack.append(load_storage(stack.pop()))
        elif op == b"P":  # PERSID (text)
            raise CheckpointReadError("this checkpoint uses an old text persistent id: re-save it with a recent torch")
        else:
            raise CheckpointReadError(
                f"the checkpoint's pickle uses opcode {op!r}, which model checkpoints do not use; it was refused "
                "(nothing executed). Re-save the state_dict alone with a recent torch")


def _readline(read, data) -> str:
    out = bytearray()
    while True:
        c = read(1)
        if c == b"\n":
            return out.decode("ascii", "replace")
        out += c


def read_pth(path) -> Any:
    """The object saved in a ``torch.save`` zip checkpoint, tensors as numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint '{path}' does not exist")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":
            raise CheckpointReadError(f"'{path}' is a checkpoint in PyTorch's legacy (pre-1.6) format, which is read "
                                      "only with torch: re-save it with torch >= 1.6 (torch.save(torch.load(...), "
                                      "...))") from None
        raise CheckpointReadError(f"'{path}' is not a PyTorch checkpoint (not a zip archive): corrupt, truncated "
                                  "or another file type") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CheckpointReadError(f"'{path}' is a zip but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0][:-len("data.pkl")]
        big = prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() == b"big"
        cache: dict = {}

        def load_storage(pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointReadError("malformed checkpoint (a persistent id that is not a storage)")
            stype, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
            if not isinstance(stype, _StorageType):
                raise CheckpointReadError("malformed checkpoint (unknown storage type)")
            if key not in cache:
                try:
                    raw = zf.read(f"{prefix}data/{key}")
                except KeyError:
                    raise CheckpointReadError(f"'{path}' lacks the storage file data/{key}: truncated") from None
                if stype.dtype == "bfloat16":
                    arr = _bfloat16(raw)
                else:
                    dt = np.dtype(stype.dtype)
                    arr = np.frombuffer(raw, dt.newbyteorder(">") if big else dt).astype(dt)
                if arr.size < numel:
                    raise CheckpointReadError(f"'{path}': storage data/{key} is shorter than recorded: truncated")
                cache[key] = arr
            return cache[key]

        try:
            return interpret(zf.read(pkl[0]), load_storage)
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise CheckpointReadError(f"'{path}' could not be read (corrupt or truncated): {exc}") from None
        except (IndexError, KeyError, TypeError, ValueError, struct.error) as exc:
            if isinstance(exc, CheckpointReadError):
                raise
            raise CheckpointReadError(f"'{path}' is a malformed PyTorch checkpoint: {type(exc).__name__}") from None
