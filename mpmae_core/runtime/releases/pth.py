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
from typing import Any, Callable, Optional

import numpy as np


class CheckpointReadError(ValueError):
    """A checkpoint that cannot be read safely; the message says why and what to do."""


STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# Bounds: what a checkpoint may make this reader hold, from the file's own size. torch.save stores
# members uncompressed, so the bytes a real checkpoint unpacks to are about its size on disk;
# tensors are read-only views of their storage, so they add nothing.
EXPANSION = 4  # members may unpack to EXPANSION x the file ...
SLACK = 16 << 20  # ... plus this much
MAX_PICKLE = 64 << 20  # data.pkl of a real checkpoint is well under 1 MB
MAX_NDIM = 32  # numpy's own limit
MAX_INDEX = 1 << 62  # sizes, strides and offsets beyond this overflow byte arithmetic
MAX_LINE = 512  # a GLOBAL's module or name


class Namespace(SimpleNamespace):
    """What an ``argparse.Namespace`` in a checkpoint becomes: attributes, nothing callable."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Refused:
    """A tensor the reader would not build, with the reason; named by its place after the pickle is read."""

    def __init__(self, reason: str):
        self.reason = reason


class _Budget:
    """Bytes this read may still unpack."""

    def __init__(self, total: int):
        self.total = self.left = int(total)

    def take(self, nbytes: int) -> bool:
        if nbytes > self.left:
            return False
        self.left -= nbytes
        return True


def check_tensor_layout(storage_size: int, offset, size, stride) -> str:
    """'' when a tensor of ``size``/``stride`` at ``offset`` lies inside a storage of ``storage_size``
    elements without repeating elements; otherwise the reason it does not. Pure, exact integers."""
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
        return "its size or stride is not a tuple"
    if len(size) != len(stride):
        return f"it has {len(size)} sizes but {len(stride)} strides"
    if len(size) > MAX_NDIM:
        return f"it has {len(size)} dimensions (at most {MAX_NDIM})"
    for label, values in (("offset", [offset]), ("size", size), ("stride", stride)):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                return f"its {label} {v!r:.40} is not an integer"
            if v < 0:
                return f"its {label} {v} is negative"
            if v >= MAX_INDEX:
                return f"its {label} {v} is out of range"
    numel = 1
    for n in size:
        numel *= n
        if numel >= MAX_INDEX:
            return f"its size {tuple(size)} is out of range"
    if numel == 0:
        return "" if offset <= storage_size else f"its offset {offset} lies beyond its storage of {storage_size}"
    for n, s in zip(size, stride):
        if n > 1 and s == 0:
            return f"a dimension of size {n} has stride 0 (one element repeated)"
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage_size:
        return (f"it reaches element {last} of a storage of {storage_size} elements (offset {offset}, size "
                f"{tuple(size)}, stride {tuple(stride)})")
    if numel > storage_size - offset:
        return f"its {numel} elements do not fit in the {storage_size - offset} after its offset (elements repeated)"
    return ""


def _rebuild_tensor(storage, offset, size, stride, *rest):
    if isinstance(storage, _Refused):
        return storage
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise CheckpointReadError("malformed checkpoint (a tensor built on something that is not a storage)")
    size = tuple(size) if isinstance(size, (tuple, list)) else size
    stride = tuple(stride) if isinstance(stride, (tuple, list)) else stride
    why = check_tensor_layout(storage.size, offset, size, stride)
    if why:
        return _Refused(why)
    if not size:
        return np.array(storage[offset])
    if 0 in size:  # an empty tensor reads nothing
        return np.zeros(size, storage.dtype)
    # a read-only view, checked to lie inside the storage: tensors that share a storage (tied weights)
    # cost nothing more, so memory stays bounded by the storages, which are bounded by the file
    return np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                           strides=[s * storage.itemsize for s in stride], writeable=False)


def _rebuild_parameter(data, *rest):
    return data


def _ordered_dict(*args):
    if args:
        if len(args) != 1 or not isinstance(args[0], (list, tuple)):
            raise CheckpointReadError("malformed checkpoint (an OrderedDict built from something odd)")
        pairs = list(args[0])
        for pair in pairs:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise CheckpointReadError("malformed checkpoint (an OrderedDict item that is not a pair)")
            _check_key(pair[0])
        return dict(pairs)
    return {}


def _namespace(*args, **kwargs):
    return Namespace(**kwargs)


def _path(*parts):
    return str(PurePosixPath(*[str(p)[:4096] for p in parts]))


def _numpy_dtype(name, *rest):
    if not isinstance(name, str) or len(name) > 16:
        raise CheckpointReadError("malformed checkpoint (a numpy dtype that is not a plain name)")
    dt = np.dtype(name)
    if dt.kind not in "biufc" or dt.subdtype is not None or dt.names is not None or dt.itemsize > 16:
        raise CheckpointReadError(f"the checkpoint names numpy dtype {name!r}, which a checkpoint's numbers never use")
    return dt


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype):
        raise CheckpointReadError("malformed checkpoint (a numpy scalar without a dtype)")
    if data is None:
        return np.zeros((), dtype)[()]
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise CheckpointReadError("malformed checkpoint (a numpy scalar of the wrong length)")
    return np.frombuffer(data, dtype)[0]


def _codecs_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise CheckpointReadError("malformed checkpoint (an unusual text encoding)")
    return text.encode(encoding)


def _set(items=()):
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise CheckpointReadError("malformed checkpoint (a set built from something odd)")
    for k in items:
        _check_key(k)
    return set(items)


def _frozenset(items=()):
    return frozenset(_set(items))


def _bytearray(data=b""):
    if isinstance(data, str):
        data = data.encode("latin-1")
    if not isinstance(data, (bytes, bytearray)):
        raise CheckpointReadError("malformed checkpoint (a bytearray built from something that is not bytes)")
    return bytearray(data)


_SCALARS = (str, int, float, bool, bytes, type(None), np.generic)


def _check_key(key) -> None:
    """Dict keys and set members are scalars or flat tuples of scalars: hashing anything deeper can
    recurse without limit in the interpreter itself."""
    if isinstance(key, _SCALARS):
        return
    if isinstance(key, tuple) and len(key) <= 64 and all(isinstance(k, _SCALARS) for k in key):
        return
    raise CheckpointReadError("malformed checkpoint (a dict key or set member that is not a plain value)")


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
    "builtins.set": _set, "builtins.frozenset": _frozenset, "builtins.bytearray": _bytearray,
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
    """Evaluate a pickle's opcodes with the allowlist; ``load_storage`` resolves persistent ids.
    Tensors the reader refuses come back as ``_Refused`` in their place (``find_refused`` names them)."""
    builders = {id(v) for v in ALLOWED.values() if not isinstance(v, _StorageType)}
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

    def call(fn, args, kwargs=None):
        if id(fn) not in builders or not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise CheckpointReadError("malformed checkpoint (a call of something that is not an allowed builder)")
        return fn(*args, **(kwargs or {}))

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
            for k in items[::2]:
                _check_key(k)
            stack.append(dict(zip(items[::2], items[1::2])))
        elif op == b"a":
            v = stack.pop()
            _container(stack[-1], list).append(v)
        elif op == b"e":
            items = pop_mark()
            _container(stack[-1], list).extend(items)
        elif op == b"s":
            v, k = stack.pop(), stack.pop()
            _check_key(k)
            _container(stack[-1], dict)[k] = v
        elif op == b"u":
            items = pop_mark()
            target = _container(stack[-1], dict)
            for k, v in zip(items[::2], items[1::2]):
                _check_key(k)
                target[k] = v
        elif op == b"\x90":  # ADDITEMS
            items = pop_mark()
            _container(stack[-1], set).update(_set(items))
        elif op == b"\x91":  # FROZENSET
            stack.append(_frozenset(pop_mark()))
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
            if not isinstance(module, str) or not isinstance(name, str):
                raise CheckpointReadError("malformed pickle (a global named by something that is not text)")
            stack.append(_resolve(module[:MAX_LINE], name[:MAX_LINE]))
        elif op == b"R":  # REDUCE
            args, fn = stack.pop(), stack.pop()
            stack.append(call(fn, args))
        elif op == b"\x81":  # NEWOBJ
            args, cls = stack.pop(), stack.pop()
            stack.append(call(cls, args))
        elif op == b"\x92":  # NEWOBJ_EX
            kwargs, args, cls = stack.pop(), stack.pop(), stack.pop()
            stack.append(call(cls, args, kwargs))
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
    while len(out) <= MAX_LINE:
        c = read(1)
        if c == b"\n":
            return out.decode("ascii", "replace")
        out += c
    raise CheckpointReadError("malformed pickle (a global's name is too long)")


def _container(obj, kind):
    if not isinstance(obj, kind):
        raise CheckpointReadError(f"malformed pickle (adds items to a {type(obj).__name__}, not a {kind.__name__})")
    return obj


def find_refused(obj, limit: int = 1_000_000) -> Optional[tuple[str, str]]:
    """(place, reason) of the first tensor refused inside ``obj``, e.g. ('model.norm.bias', 'its stride
    -1 is negative'); iterative, each container visited once, at most ``limit`` of them."""
    todo = [(obj, "")]
    seen: set = set()
    while todo:
        item, place = todo.pop()
        if isinstance(item, _Refused):
            return place or "the checkpoint", item.reason
        if isinstance(item, (dict, list, tuple, set, frozenset, Namespace)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if len(seen) > limit:
                raise CheckpointReadError("malformed checkpoint (more nested containers than a model checkpoint has)")
            if isinstance(item, Namespace):
                item = vars(item)
            if isinstance(item, dict):
                entries = [(v, f"{place}.{k}" if place else str(k)) for k, v in item.items()]
                entries += [(k, f"{place}[key]") for k in item if isinstance(k, tuple)]
            else:
                entries = [(v, f"{place}[{i}]") for i, v in enumerate(item)]
            todo.extend(reversed(entries))
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    """A member's bytes, streamed with a cap: never more than ``limit`` nor more than it declares."""
    if info.file_size > limit:
        raise CheckpointReadError(
            f"'{path}': member {info.filename[:80]} declares {info.file_size} bytes, far more than a checkpoint of "
            f"{path.stat().st_size} bytes can hold (a zip bomb or a corrupt file): refused before unpacking")
    out = bytearray()
    with zf.open(info) as fh:
        while True:
            block = fh.read(min(1 << 20, info.file_size + 1 - len(out)))
            if not block:
                break
            out += block
            if len(out) > info.file_size:
                raise CheckpointReadError(f"'{path}': member {info.filename[:80]} unpacks to more than it declares: "
                                          "the file is corrupt")
    return bytes(out)


def read_pth(path) -> Any:
    """The object saved in a ``torch.save`` zip checkpoint, tensors as numpy arrays.

    Whatever the bytes, this returns or raises ``CheckpointReadError``: every tensor's offset, sizes
    and strides are checked against its storage before a view is made, and the bytes unpacked and
    built are bounded by ``EXPANSION`` x the file's size (plus ``SLACK``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint '{path}' does not exist")
    try:
        return _read_zip(path)
    except CheckpointReadError:
        raise
    except MemoryError:
        raise CheckpointReadError(f"'{path}' is a malformed PyTorch checkpoint: reading it would take more memory "
                                  "than its size allows. Download it again, or re-save it with torch.save") from None
    except RecursionError:
        raise CheckpointReadError(f"'{path}' is a malformed PyTorch checkpoint (nested too deeply)") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
        reason = str(exc)[:200] or type(exc).__name__
        raise CheckpointReadError(f"'{path}' could not be read as a checkpoint (corrupt, truncated or packed with "
                                  f"an unsupported method: {reason}). Download it again, or re-save it with "
                                  "torch.save") from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes: any other failure is a malformed file, said so
        raise CheckpointReadError(f"'{path}' is a malformed PyTorch checkpoint ({type(exc).__name__}): download it "
                                  "again, or re-save it with torch.save") from None


def _read_zip(path: Path) -> Any:
    file_size = path.stat().st_size
    budget = _Budget(EXPANSION * file_size + SLACK)
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
        infos = {i.filename: i for i in zf.infolist()}
        pkl = [n for n in infos if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise CheckpointReadError(f"'{path}' is a zip but not a PyTorch checkpoint (no data.pkl)")
        prefix = pkl[0][:-len("data.pkl")]

        def member(name: str, limit: int) -> bytes:
            data = _read_member(zf, infos[name], min(limit, budget.left), path)
            budget.take(len(data))
            return data

        big = prefix + "byteorder" in infos and member(prefix + "byteorder", 64).strip() == b"big"
        cache: dict = {}

        def load_storage(pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
                raise CheckpointReadError("malformed checkpoint (a persistent id that is not a storage)")
            stype, key, numel = pid[1], pid[2], pid[4]
            if not isinstance(stype, _StorageType):
                raise CheckpointReadError("malformed checkpoint (unknown storage type)")
            if not isinstance(key, (str, int)) or isinstance(numel, bool) or not isinstance(numel, int):
                raise CheckpointReadError("malformed checkpoint (a storage key or size of the wrong type)")
            key = str(key)[:64]
            if key not in cache:
                name = f"{prefix}data/{key}"
                if name not in infos:
                    raise CheckpointReadError(f"'{path}' lacks the storage file data/{key}: truncated")
                raw = member(name, budget.left)
                if stype.dtype == "bfloat16":
                    itemsize, dt = 2, None
                else:
                    dt = np.dtype(stype.dtype)
                    itemsize = dt.itemsize
                if len(raw) % itemsize:
                    raise CheckpointReadError(f"'{path}': storage data/{key} is not a whole number of "
                                              f"{stype.name[:-len('Storage')].lower()} values: corrupt")
                if dt is None:
                    arr = _bfloat16(raw)
                else:
                    arr = np.frombuffer(raw, dt.newbyteorder(">") if big else dt).astype(dt)
                if numel < 0 or arr.size < numel:
                    raise CheckpointReadError(f"'{path}': storage data/{key} is shorter than recorded: truncated")
                cache[key] = arr
            return cache[key]

        data = member(pkl[0], MAX_PICKLE)
        obj = interpret(data, load_storage)
        refused = find_refused(obj)
        if refused:
            place, why = refused
            raise CheckpointReadError(f"'{path}': tensor '{place[:200]}' was refused: {why}. The file is corrupt or "
                                      "was crafted to make the reader touch memory outside the tensor; nothing was "
                                      "read from outside it. Download the checkpoint again from its publisher")
        return obj
