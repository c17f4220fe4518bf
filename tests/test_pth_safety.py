"""The torch-free checkpoint reader cannot be made to read outside its buffers or exhaust memory.

Hostile layouts (negative, zero, overflowing and out-of-range offsets, sizes and strides) are
refused with the tensor's name; a zip bomb is refused before it is unpacked, in bounded memory;
and a fuzz run over thousands of mutated real checkpoints (in a subprocess under a memory limit)
gives only clear refusals or reads whose every array lies inside the reader's own buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

import pth_craft
from mpmae_core.runtime.releases.pth import CheckpointReadError, check_tensor_layout, read_pth

HERE = Path(__file__).resolve().parent


def _real_checkpoint(path: Path) -> dict:
    """A small checkpoint as torch.save writes it: tied weights, a transposed tensor, several dtypes,
    an argparse.Namespace, a path, numbers."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, generator=g)
    sd = OrderedDict([("stem.weight", torch.randn(8, 3, 2, 2, generator=g)), ("norm.bias", torch.randn(8, generator=g)),
                      ("head.weight", w), ("tied.weight", w), ("proj.weight", torch.randn(4, 6, generator=g).t()),
                      ("count", torch.arange(5, dtype=torch.int64)), ("half", torch.randn(3, generator=g).half()),
                      ("bf", torch.randn(4, generator=g).bfloat16()), ("scalar", torch.tensor(2.5))])
    args = argparse.Namespace(patch_size=16, input_size=112, loss_aggr="uncertainty",
                              out_modalities={"sentinel2": 1, "lat": 1}, output_dir=Path("/x/pt"))
    torch.save({"model": sd, "epoch": 199, "args": args, "scaler": {"scale": 65536.0}}, path)
    return sd


def test_reader_equals_torch_on_a_real_checkpoint(tmp_path):
    sd = _real_checkpoint(tmp_path / "c.pth")
    obj = read_pth(tmp_path / "c.pth")
    assert obj["epoch"] == 199 and obj["args"].patch_size == 16 and obj["args"].output_dir == "/x/pt"
    for k, v in sd.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        np.testing.assert_array_equal(np.asarray(obj["model"][k], want.dtype), want, err_msg=k)
    assert not obj["model"]["norm.bias"].flags.writeable  # views of the storage, not copies


def test_craft_writer_is_read_by_torch_and_by_the_reader_alike(tmp_path):
    rng = np.random.default_rng(1)
    entries = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.arange(7, dtype=np.int64),
               "t": pth_craft.Raw(np.arange(12, dtype=np.float32), 1, (3, 2), (1, 4))}
    path = pth_craft.write(tmp_path / "x.pth", entries)
    ours = read_pth(path)["model"]
    theirs = torch.load(path, weights_only=True)["model"]
    for k in entries:
        np.testing.assert_array_equal(ours[k], theirs[k].numpy(), err_msg=k)
    np.testing.assert_array_equal(ours["t"], np.arange(12, dtype=np.float32)[1:].reshape(-1)[[0, 4, 1, 5, 2, 6]]
                                  .reshape(3, 2))


STORAGE = np.arange(64, dtype=np.float32)


@pytest.mark.parametrize("offset,size,stride,fragment", [
    (0, (8,), (-1,), "stride -1 is negative"),
    (40, (8,), (-4096,), "stride -4096 is negative"),
    (0, (8,), (-10 ** 12,), "negative"),
    (0, (100_000_000,), (0,), "stride 0"),
    (0, (4, 100_000), (1, 0), "stride 0"),
    (-3, (8,), (1,), "offset -3 is negative"),
    (60, (8,), (1,), "reaches element 67"),
    (0, (8, 8), (8, 2), "reaches element"),
    (0, (2 ** 40,), (1,), "reaches element"),
    (0, (2 ** 63,), (1,), "out of range"),
    (0, (-5,), (1,), "size -5 is negative"),
    (0, (65, 1), (1, 1), "reaches element 64"),
    (0, (9, 8), (1, 1), "do not fit"),
    (0, (2,) * 40, (1,) * 40, "dimensions"),
])
def test_hostile_layouts_are_refused_with_the_tensor_name(tmp_path, offset, size, stride, fragment):
    path = pth_craft.write(tmp_path / "h.pth", {"encoder.stem.weight": np.ones(4, np.float32),
                                                 "encoder.norm.bias": pth_craft.Raw(STORAGE, offset, size, stride)})
    with pytest.raises(CheckpointReadError) as info:
        read_pth(path)
    assert "model.encoder.norm.bias" in str(info.value) and fragment in str(info.value), str(info.value)


def test_layout_check_agrees_with_an_independent_enumeration():
    """check_tensor_layout accepts exactly the layouts whose every element index (enumerated here
    one by one) lies inside the storage, without repeats across a dimension of size > 1."""
    rng = np.random.default_rng(5)
    for _ in range(3000):
        n_storage = int(rng.integers(0, 40))
        ndim = int(rng.integers(0, 4))
        size = tuple(int(v) for v in rng.integers(0, 5, ndim))
        stride = tuple(int(v) for v in rng.integers(0, 12, ndim))
        offset = int(rng.integers(0, 45))
        idx = [offset]
        for n, s in zip(size, stride):
            idx = [i + k * s for i in idx for k in range(n)]
        numel = int(np.prod(size)) if size else 1
        inside = all(0 <= i < n_storage for i in idx) if numel else offset <= n_storage
        no_zero_stride = all(s != 0 for n, s in zip(size, stride) if n > 1)
        fits = numel <= n_storage - offset if numel else True
        expected = inside and no_zero_stride and fits if numel else offset <= n_storage  # empty: reads nothing
        got = check_tensor_layout(n_storage, offset, size, stride) == ""
        assert got == expected, (n_storage, offset, size, stride)


def test_zip_bomb_is_refused_before_it_is_unpacked(tmp_path):
    """A 3 MB deflate member that unpacks to 3 GB: refused from the declared size, in a subprocess
    limited to 1.5 GiB of address space (a reader that unpacked it would die there)."""
    path = tmp_path / "bomb.pth"
    data, _ = pth_craft.pickle_bytes({"w": pth_craft.Raw(np.zeros(1, np.float32), 0, (750_000_000,), (1,),
                                                         750_000_000)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("archive/data.pkl", data)
        with zf.open("archive/data/0", "w", force_zip64=True) as fh:
            block = bytes(64 << 20)
            for _ in range(3_000_000_000 // len(block) + 1):
                fh.write(block)
    assert path.stat().st_size < 8 << 20
    code = ("import resource,sys; lim=1536<<20; resource.setrlimit(resource.RLIMIT_AS,(lim,lim));"
            "from mpmae_core.runtime.releases.pth import read_pth, CheckpointReadError\n"
            "try:\n read_pth(sys.argv[1]); print('READ')\n"
            "except CheckpointReadError as e: print('REFUSED', e)")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("REFUSED") and "zip bomb" in proc.stdout, proc.stdout


def test_a_lying_storage_size_cannot_make_tensors_bigger_than_the_file(tmp_path):
    """493 bytes recording a storage of 1e9 elements: refused as truncated, nothing allocated."""
    path = pth_craft.write(tmp_path / "s.pth", {"w": pth_craft.Raw(np.ones(4, np.float32), 0, (10 ** 9,), (1,),
                                                                     10 ** 9)})
    with pytest.raises(CheckpointReadError, match="shorter than recorded"):
        read_pth(path)


def test_fuzz_mutated_checkpoints(tmp_path):
    """Thousands of mutations of a real checkpoint (bytes flipped, truncation, zip headers lying about
    sizes and codecs, pickle bytes and opcodes changed, integers made hostile, hostile layouts), read
    in a subprocess limited to 2 GiB of address space: only refusals or memory-safe reads."""
    base = tmp_path / "base.pth"
    _real_checkpoint(base)
    cases = int(os.environ.get("MMEARTH_FUZZ_CASES", "4000"))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    proc = subprocess.run([sys.executable, str(HERE / "fuzz_pth.py"), str(base), str(cases), "20", str(tmp_path),
                           "2048"], capture_output=True, text=True, env=env, timeout=600)
    current = (tmp_path / "current").read_text() if (tmp_path / "current").exists() else "?"
    assert proc.returncode == 0, f"the reader crashed at case {current}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    assert report["n_failures"] == 0, "\n".join(report["failures"])
    assert report["slowest_s"] < 2.0, report
    kinds = {k.split(":")[0] for k in report["counts"]}
    assert len(kinds) == 8, report["counts"]
    # the fuzz exercises both outcomes: most mutations are refused, some still read
    assert sum(v for k, v in report["counts"].items() if k.endswith(":refused")) > cases // 4
    assert sum(v for k, v in report["counts"].items() if k.endswith(":read")) > 0


@pytest.mark.parametrize("size,patch", [("atto", 8), ("atto", 16), ("tiny", 16)])
def test_expected_encoder_shapes_equal_the_torch_model(size, patch):
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.releases.reference_layout import encoder_keys, expected_encoder_shapes

    enc = build_encoder(size, patch_size=patch)
    sd = enc.state_dict()
    want = expected_encoder_shapes(enc.depths, enc.dims, patch, enc.in_chans)
    assert set(want) == set(encoder_keys(enc.depths))
    assert {k: tuple(v.shape) for k, v in sd.items() if k in want} == want


def test_right_keys_with_wrong_shapes_name_the_weight(tmp_path):
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.releases.pth_to_onnx import ConvertError, convert

    sd = {k: v.numpy() for k, v in build_encoder("atto", patch_size=16).state_dict().items()}
    sd["stages.1.0.dwconv.weight"] = np.zeros((80, 1, 5, 5), np.float32)
    path = pth_craft.write(tmp_path / "wrong.pth", sd, wrap=None)
    with pytest.raises(ConvertError, match=r"stages\.1\.0\.dwconv\.weight has shape \(80, 1, 5, 5\) where "
                                           r"\(80, 1, 7, 7\) is needed"):
        convert(path, tmp_path / "models", "m")
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").iterdir())
