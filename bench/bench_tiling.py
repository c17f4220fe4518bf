"""Tiling against an untiled run: how far each tile size and overlap moves the embedding, and what
it computes, on the real scene and mosaics of it.

For each raster the untiled reference is one window over the whole raster; then, per tiling, the
windows it runs, the pixels computed over the raster's, the seconds, and the mean and 99th
percentile of |tiled - untiled| over the untiled embedding's mean magnitude, and the correlation.

    python bench/bench_tiling.py [--model runs/demo/models/atto_demo.onnx]
                                 [--tilings 512/128,768/96,768/128,1024/96] [--sizes 2048]

The real scene is always measured; ``--sizes`` adds square mosaics of it (an untiled run of N px
needs about 1.2 * (N / 1000)^2 GB). Without --model a random-weight atto encoder is exported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_runtime import mosaic_vrt  # noqa: E402
from common import encoder_or_random  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--tilings", default="512/128,768/96,768/128,1024/96,1024/128")
    p.add_argument("--sizes", default="2048")
    args = p.parse_args()
    from osgeo import gdal

    from mpmae_core.data import sample
    from mpmae_core.runtime.inference.predict import embed
    from mpmae_core.runtime.inference.tiling import raster_windows
    from mpmae_core.runtime.models.model import read_metadata

    work = Path(tempfile.mkdtemp(prefix="bench-tiling-"))
    model = encoder_or_random(args.model, work)
    patch = read_metadata(model).patch_size
    scene = Path(sample.build(verbose=False)["stack"])
    rasters = [scene] + [mosaic_vrt(scene, work / f"mosaic_{n}.vrt", int(n)) for n in args.sizes.split(",") if n]
    tilings = [tuple(int(v) for v in t.split("/")) for t in args.tilings.split(",")]
    print("| raster | tile / overlap | windows | computed / raster | s | mean difference | 99th percentile | "
          "correlation |")
    print("|---|---|---|---|---|---|---|---|")
    for src in rasters:
        ds = gdal.Open(str(src))
        h, w = ds.RasterYSize, ds.RasterXSize
        ds = None
        side = -(-max(h, w) // patch) * patch
        embed(src, model, work / "untiled.tif", tile=side, overlap=0, device="cpu", style=False)
        a = gdal.Open(str(work / "untiled.tif")).ReadAsArray().astype(np.float64)
        scale = np.abs(a).mean()
        for tile, overlap in tilings:
            wins = raster_windows(h, w, tile, overlap, patch)
            computed = sum(x.h * x.w for row in wins for x in row) / (h * w)
            t0 = time.perf_counter()
            embed(src, model, work / "tiled.tif", tile=tile, overlap=overlap, device="cpu", style=False)
            seconds = time.perf_counter() - t0
            b = gdal.Open(str(work / "tiled.tif")).ReadAsArray().astype(np.float64)
            d = np.abs(a - b) / scale
            print(f"| {w} x {h} | {tile}/{overlap} | {wins[0][0].h} x {wins[0][0].w} | x{computed:.2f} | "
                  f"{seconds:.1f} | {100 * d.mean():.2f} % | {100 * np.percentile(d, 99):.1f} % | "
                  f"{np.corrcoef(a.ravel(), b.ravel())[0, 1]:.7f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
