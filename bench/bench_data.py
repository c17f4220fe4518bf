"""Data loading samples/s: MMEarth gzip HDF5 vs the memory-mapped fast format, beside the training step.

For tiles of 64 px (crop 56) and 128 px (crop 112), all twelve pretext tasks read per sample,
batches of 32, through the real DataLoader: in the main process (the rate of one worker) and with
several worker processes. The atto MP-MAE all-task training step (forward + backward + AdamW step)
is measured in the same run: the loader must deliver more samples per second than training eats.

    python bench/bench_data.py [--tiles 384] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from mpmae_core.data.convert import convert
from mpmae_core.data.loader import make_loader
from mpmae_core.data.mmearth import MMEarthDataset
from mpmae_core.data.synthetic import write_synthetic
from mpmae_core.models import build_mpmae


def loader_rate(path: Path, crop: int, workers: int, batches: int, batch: int = 32) -> float:
    ds = MMEarthDataset(path, split=None, crop=crop, tasks="all_mod")
    loader = make_loader(ds, batch_size=batch, workers=workers, seed=0, pin_memory=False)
    loader.sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # start-up (worker spawn, first reads) is not the steady rate
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            break
        n += b["sentinel2"].shape[0]
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def train_rate(path: Path, crop: int, patch: int, steps: int = 4, batch: int = 16) -> float:
    ds = MMEarthDataset(path, split=None, crop=crop, tasks="all_mod")
    b = next(iter(make_loader(ds, batch_size=batch, workers=0)))
    model = build_mpmae("atto", "all_mod", patch_size=patch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(b).loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=int, default=384)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batches", type=int, default=10)
    args = p.parse_args()
    print(f"CPU cores: {os.cpu_count()}; torch threads {torch.get_num_threads()}; {args.tiles} synthetic tiles per file; "
          "batch 32; all 12 tasks; page cache warm after the first pass")
    with tempfile.TemporaryDirectory() as tmp:
        for size, crop, patch in ((64, 56, 8), (128, 112, 16)):
            h5 = write_synthetic(Path(tmp) / f"s{size}", n_tiles=args.tiles, size=size, seed=1)
            fast = convert(h5, Path(tmp) / f"s{size}_npy")
            h5_mb = h5.stat().st_size / 2**20
            npy_mb = sum(f.stat().st_size for f in fast.glob("*.npy")) / 2**20
            for src in (h5, fast):  # warm the page cache
                loader_rate(src, crop, 0, 2)
            print(f"\n{size} px tiles, crop {crop} (h5 {h5_mb:.0f} MiB gzip, npy {npy_mb:.0f} MiB)")
            for workers in (0, args.workers):
                r_h5 = loader_rate(h5, crop, workers, args.batches)
                r_npy = loader_rate(fast, crop, workers, args.batches)
                label = "main process" if workers == 0 else f"{workers} workers"
                print(f"  {label:<13s} h5 {r_h5:8.0f} samples/s   npy {r_npy:8.0f} samples/s   npy/h5 x{r_npy / r_h5:.1f}")
            print(f"  atto MP-MAE all_mod training step, {crop}/{patch}: {train_rate(fast, crop, patch):.1f} samples/s")


if __name__ == "__main__":
    main()
