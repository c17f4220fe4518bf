"""MMEarth data tools.

    python -m mpmae_core.data describe data_100k_v001.h5      # tiles, splits, levels, coverage per task
    python -m mpmae_core.data convert data_100k_v001.h5 OUT/  # to the fast memory-mapped format
    python -m mpmae_core.data synthetic OUT/ [--tiles 16 --size 64]   # SYNTHETIC test file
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np
from mpmae_core.runtime.cli import program as program_name


def describe(path: str, sample: int = 64) -> None:
    from mpmae_core.data.mmearth import MMEarthDataset

    ds = MMEarthDataset(path, split=None, crop=None, tasks="all_mod")
    src = ds.source
    levels = Counter(src.s2_types)
    print(f"{path}: {len(ds)} tiles of {ds.tile_size} px ({src.kind}); S2 levels "
          + ", ".join(f"{k.upper()} {v}" for k, v in sorted(levels.items())))
    from mpmae_core.data.mmearth import _read_json, _side_files

    splits = _read_json(_side_files(src)["splits"], "splits")
    print("splits: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    idx = np.linspace(0, len(ds) - 1, min(sample, len(ds))).astype(int)
    present = np.stack([ds[int(i)]["present"].numpy() for i in idx])
    print(f"tasks with data (in {len(idx)} tiles sampled across the file):")
    for task, frac in zip(ds.tasks, present.mean(0)):
        print(f"  {task:<18s} {frac:6.0%}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=program_name("python -m mpmae_core.data"), description="MMEarth data tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("describe", help="what an MMEarth file (or converted folder) holds")
    d.add_argument("path")
    c = sub.add_parser("convert", help="HDF5 -> fast memory-mapped folder")
    c.add_argument("h5")
    c.add_argument("out")
    s = sub.add_parser("synthetic", help="write a SYNTHETIC file in the MMEarth layout")
    s.add_argument("out")
    s.add_argument("--tiles", type=int, default=16)
    s.add_argument("--size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from mpmae_core.data.mmearth import DataError

    try:
        if args.cmd == "describe":
            describe(args.path)
        elif args.cmd == "convert":
            from mpmae_core.data.convert import convert

            print(f"wrote {convert(args.h5, args.out)}")
        else:
            from mpmae_core.data.synthetic import write_synthetic

            print(f"wrote {write_synthetic(args.out, n_tiles=args.tiles, size=args.size, seed=args.seed)}")
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
