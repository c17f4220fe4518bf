"""Convert an MMEarth HDF5 file into the fast training format: uncompressed memory-mapped arrays.

    python -m mpmae_core.data.convert data_100k_v001.h5 data_100k_v001_npy/

Why this format (bench/bench_data.py, figures in bench/RESULTS.md): MMEarth's HDF5 is gzip-compressed
with one tile per chunk, so every sample decompresses a whole tile, even for a 112 px crop of a
128 px tile, and the decompression dominates a data worker's time. A memory-mapped ``.npy``
reads only the crop's bytes, lets the page cache serve repeats, needs no library beyond numpy,
and is shared by every worker process without copies. Cost: the file is ~2-3x larger on disk.

The folder holds ``<dataset>.npy`` for every dataset of the h5 file, ``meta.json`` (tile ids,
S2 types, provenance) and copies of the three side files. It is written under a temporary name
and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from mpmae_core.data.layout import read_metadata, side_file_paths
from mpmae_core.runtime.cli import program as program_name


def convert(h5_path: str | Path, out_dir: str | Path, block: int = 256, progress=None) -> Path:
    import h5py

    h5_path, out_dir = Path(h5_path), Path(out_dir)
    side = side_file_paths(h5_path)
    for kind, path in side.items():
        if not path.is_file():
            raise FileNotFoundError(f"side file '{path.name}' ({kind}) is missing next to {h5_path.name}")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with h5py.File(h5_path, "r") as f:
            meta = f["metadata"][()]
            names = [k for k in f.keys() if k != "metadata"]
            total = sum(f[k].shape[0] for k in names)
            done = 0
            for name in names:
                ds = f[name]
                out = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=ds.dtype, shape=ds.shape)
                for start in range(0, ds.shape[0], block):
                    stop = min(start + block, ds.shape[0])
                    out[start:stop] = ds[start:stop]
                    done += stop - start
                    if progress:
                        progress(done / total)
                out.flush()
                del out
            attrs = {k: str(v) for k, v in f.attrs.items()}
        ids, types = read_metadata(meta)
        (tmp / "meta.json").write_text(json.dumps({
            "format": "mmearth-npy", "format_version": 1, "source": h5_path.name, "attrs": attrs,
            "tile_ids": ids, "s2_types": types,
        }))
        for kind, path in side.items():
            shutil.copyfile(path, tmp / f"{kind}.json")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=program_name("python -m mpmae_core.data.convert"), description=__doc__.split("\n\n")[0])
    p.add_argument("h5", help="data_<name>.h5 with its side files beside it")
    p.add_argument("out", help="folder to create")
    args = p.parse_args(argv)
    try:
        out = convert(args.h5, args.out, progress=lambda f: print(f"\r{f:6.1%}", end="", flush=True))
    except (FileNotFoundError, OSError, KeyError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
