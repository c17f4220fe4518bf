"""Fuzz the torch-free checkpoint reader: mutations of a real checkpoint, each read once.

Run as ``python tests/fuzz_pth.py BASE.pth CASES SEED WORKDIR`` (the test runs it in a subprocess
under a memory limit, so a crash, a hang or a runaway allocation fails the test instead of the
suite). Every case must either be refused with ``CheckpointReadError`` or read; a read must give
arrays whose every byte lies inside a buffer the reader owns (checked with numpy's own
``byte_bounds`` against the owning array, independently of the reader's layout check). Before each
case the worker writes its number to WORKDIR/current, so a crash names the case that caused it.
The summary is printed as one JSON line.
"""

from __future__ import annotations

import json
import os
import pickletools
import struct
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pth_craft  # noqa: E402

from mpmae_core.runtime.releases.pth import CheckpointReadError, read_pth  # noqa: E402

HOSTILE = [-1, -4096, -10 ** 12, 0, 1, 2, 7, 255, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 1, 2 ** 62, 2 ** 63 - 1, 2 ** 63,
           2 ** 64 + 5, -(2 ** 63), 10 ** 30]
OPCODES = [bytes([op.code.encode("latin-1")[0]]) for op in pickletools.opcodes]


def _members(path: Path) -> tuple[str, bytes, dict]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = next(n for n in names if n.endswith("data.pkl"))
        prefix = pkl[:-len("data.pkl")]
        others = {n: zf.read(n) for n in names if n != pkl}
        return prefix, zf.read(pkl), others


def _rezip(out: Path, prefix: str, pkl: bytes, others: dict) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(prefix + "data.pkl", pkl)
        for n, b in others.items():
            zf.writestr(n, b)


def _zip_fields(blob: bytearray, rng) -> None:
    """Edit a local or central header's method or sizes (a lying zip: bombs, unknown codecs)."""
    spots = []
    for sig, fields in ((b"PK\x03\x04", (8, 18, 22)), (b"PK\x01\x02", (10, 20, 24, 42))):
        start = 0
        while True:
            i = blob.find(sig, start)
            if i < 0:
                break
            spots += [(i + f, f) for f in fields]
            start = i + 4
    if not spots:
        return
    at, f = spots[rng.integers(len(spots))]
    if f in (8, 10):  # compression method: stored, deflate, bzip2, lzma, or an unknown one
        blob[at:at + 2] = struct.pack("<H", int(rng.choice([0, 8, 12, 14, 99, 65535])))
    else:
        blob[at:at + 4] = struct.pack("<I", int(rng.choice([0, 1, 7, 2 ** 31, 2 ** 32 - 1, int(rng.integers(2 ** 32))])))


def mutate(base: Path, out: Path, case: int, seed: int) -> str:
    rng = np.random.default_rng([seed, case])
    kind = ["flip", "truncate", "zipfields", "pkl-flip", "pkl-opcode", "pkl-splice", "pkl-int", "layout"][case % 8]
    blob = bytearray(base.read_bytes())
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            blob[int(rng.integers(len(blob)))] ^= 1 << int(rng.integers(8))
        out.write_bytes(blob)
    elif kind == "truncate":
        out.write_bytes(blob[:int(rng.integers(len(blob)))])
    elif kind == "zipfields":
        for _ in range(int(rng.integers(1, 3))):
            _zip_fields(blob, rng)
        out.write_bytes(blob)
    elif kind == "layout":
        storage = np.arange(64, dtype=np.float32) + 1000.5
        entries = {"encoder.norm.weight": np.ones(8, np.float32)}
        ndim = int(rng.integers(0, 4))
        size = tuple(int(rng.choice(HOSTILE[:8] + [3, 4])) if rng.random() < 0.5 else int(rng.choice(HOSTILE))
                     for _ in range(ndim))
        stride = tuple(int(rng.choice(HOSTILE)) for _ in range(ndim))
        offset = int(rng.choice(HOSTILE)) if rng.random() < 0.5 else int(rng.integers(0, 70))
        numel = int(rng.choice(HOSTILE)) if rng.random() < 0.2 else None
        entries["encoder.norm.bias"] = pth_craft.Raw(storage, offset, size, stride, numel)
        pth_craft.write(out, entries)
    else:
        prefix, pkl, others = _members(base)
        pkl = bytearray(pkl)
        if kind == "pkl-flip":
            for _ in range(int(rng.integers(1, 5))):
                pkl[int(rng.integers(len(pkl)))] = int(rng.integers(256))
        elif kind == "pkl-opcode":
            ops = [pos for _, _, pos in pickletools.genops(bytes(pkl))]
            for _ in range(int(rng.integers(1, 3))):
                pkl[ops[int(rng.integers(len(ops)))]] = OPCODES[int(rng.integers(len(OPCODES)))][0]
        elif kind == "pkl-splice":
            a, b = sorted(int(v) for v in rng.integers(0, len(pkl), 2))
            pkl = pkl[:a] + (pkl[a:b] * int(rng.integers(0, 4))) + pkl[b:]
        elif kind == "pkl-int":  # an integer argument (offsets, sizes, strides, numel, keys) set hostile
            ints = [(pos, op.name) for op, arg, pos in pickletools.genops(bytes(pkl))
                    if op.name in ("BININT1", "BININT2", "BININT")]
            if ints:
                pos, name = ints[int(rng.integers(len(ints)))]
                width = {"BININT1": 2, "BININT2": 3, "BININT": 5}[name]
                v = int(rng.choice(HOSTILE))
                n = (v.bit_length() + 8) // 8
                pkl = pkl[:pos] + b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True) + pkl[pos + width:]
        _rezip(out, prefix, bytes(pkl), others)
    return kind


def _owner(arr: np.ndarray) -> np.ndarray:
    obj = arr
    for _ in range(64):
        base = getattr(obj, "base", None)
        if base is None:
            return obj
        obj = base
    raise AssertionError("base chain too long")


def check_arrays(obj) -> list[str]:
    """Every array's bytes lie inside the array that owns its memory."""
    bad, todo, seen = [], [obj], set()
    while todo:
        x = todo.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, np.ndarray):
            owner = _owner(x)
            if isinstance(owner, np.ndarray) and x.size:
                lo, hi = np.byte_bounds(x)
                olo, ohi = np.byte_bounds(owner)
                if lo < olo or hi > ohi:
                    bad.append(f"array {x.shape}/{x.strides} reads [{lo - olo}, {hi - olo}) of a {ohi - olo}-byte buffer")
            elif x.size and not isinstance(owner, (bytes, bytearray, np.ndarray)):
                bad.append(f"array {x.shape} over a {type(owner).__name__}")
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            todo.extend(x)
        elif hasattr(x, "__dict__") and not isinstance(x, type):
            todo.extend(vars(x).values())
    return bad


def run(base: Path, cases: int, seed: int, work: Path) -> dict:
    out = work / "case.pth"
    counts: dict = {}
    failures, slowest = [], (0.0, -1, "")
    for case in range(cases):
        (work / "current").write_text(str(case))
        kind = mutate(base, out, case, seed)
        t0 = time.perf_counter()
        try:
            obj = read_pth(out)
            outcome = "read"
            bad = check_arrays(obj)
            if bad:
                failures.append(f"case {case} ({kind}): {bad[0]}")
        except CheckpointReadError as exc:
            outcome = "refused"
            if not str(exc).strip():
                failures.append(f"case {case} ({kind}): an empty refusal")
        except BaseException as exc:  # noqa: BLE001 - anything else is what the fuzz looks for
            outcome = "error"
            failures.append(f"case {case} ({kind}): {type(exc).__name__}: {str(exc)[:200]}")
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest = (dt, case, kind)
        counts[f"{kind}:{outcome}"] = counts.get(f"{kind}:{outcome}", 0) + 1
    import resource

    return {"cases": cases, "counts": counts, "failures": failures[:20], "n_failures": len(failures),
            "slowest_s": round(slowest[0], 4), "slowest_case": slowest[1], "slowest_kind": slowest[2],
            "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    base, cases, seed, work = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    if len(sys.argv) > 5:  # address-space limit in MiB
        import resource

        lim = int(sys.argv[5]) << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run(base, cases, seed, work)))
