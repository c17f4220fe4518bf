"""Tiled inference throughput and memory, beside torch eager and this machine's matmul rate.

In one run:
1. the plain fp32 matrix-product rate of this machine (numpy/BLAS and torch, best of both);
2. the atto encoder's FLOPs per pixel (torch's FLOP counter on a 512 px tile);
3. megapixels/s of: torch eager on 512 px tiles, ONNX Runtime on the same tiles, and the whole
   tiled pipeline (GDAL reading, normalisation, blending, writing) for embed and segment, on a
   2,000 x 2,000 mosaic of the real scene; with the pipeline's arithmetic rate as a fraction of
   the matmul rate (the goal is at least one half);
4. peak memory (RSS of a child process) of embed on 2,000 x 2,000 and 10,000 x 10,000 mosaics.

    python bench/bench_runtime.py [--skip-large]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def matmul_gflops(n: int = 2048, reps: int = 5) -> dict:
    import torch

    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    np_rate = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ta @ tb
    t0 = time.perf_counter()
    for _ in range(reps):
        ta @ tb
    torch_rate = 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9
    return {"numpy": np_rate, "torch": torch_rate, "best": max(np_rate, torch_rate)}


def mosaic_vrt(src: Path, out: Path, size: int) -> Path:
    """A size x size VRT tiling the real scene again and again (no pixels copied)."""
    from osgeo import gdal

    ds = gdal.Open(str(src))
    w, h, n = ds.RasterXSize, ds.RasterYSize, ds.RasterCount
    gt = ds.GetGeoTransform()
    types = gdal.GetDataTypeName(ds.GetRasterBand(1).DataType)
    from xml.sax.saxutils import escape

    srs = escape(ds.GetProjection(), {'"': "&quot;"})
    parts = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">', f"<SRS>{srs}</SRS>",
             f"<GeoTransform>{', '.join(str(v) for v in gt)}</GeoTransform>"]
    for b in range(1, n + 1):
        desc = ds.GetRasterBand(b).GetDescription()
        parts.append(f'<VRTRasterBand dataType="{types}" band="{b}"><Description>{desc}</Description><NoDataValue>0</NoDataValue>')
        for y in range(0, size, h):
            for x in range(0, size, w):
                cw, ch = min(w, size - x), min(h, size - y)
                parts.append(f'<SimpleSource><SourceFilename relativeToVRT="0">{src}</SourceFilename>'
                             f'<SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{cw}" ySize="{ch}"/>'
                             f'<DstRect xOff="{x}" yOff="{y}" xSize="{cw}" ySize="{ch}"/></SimpleSource>')
        parts.append("</VRTRasterBand>")
    parts.append("</VRTDataset>")
    out.write_text("".join(parts))
    return out


def child_peak_rss(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of a child process running the runtime command line."""
    code = ("import resource, subprocess, sys, time\n"
            "t=time.time(); r=subprocess.run(sys.argv[1:]); dt=time.time()-t\n"
            "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(r.returncode)\n")
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "mpmae_core.runtime", *args],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    seconds, rss = proc.stdout.split()[-2:]
    return float(seconds), float(rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-large", action="store_true", help="skip the 10,000 x 10,000 run")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=128)
    args = p.parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mpmae_core import registry
    from mpmae_core.data import sample
    from mpmae_core.export import export_encoder, export_head
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.models.metadata import default_normalisation
    from mpmae_core.runtime.models.model import OnnxModel
    from mpmae_core.runtime.inference.predict import embed, segment

    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    torch.manual_seed(0)
    enc = build_encoder("atto", patch_size=16).eval()
    enc_path, _ = export_encoder(enc, tmp / "enc.onnx", registry.S2_MMEARTH_BANDS,
                                 default_normalisation(registry.S2_MMEARTH_BANDS))
    head_path, _ = export_head(torch.randn(8, 320) * 0.1, torch.zeros(8), tmp / "head.onnx", [f"c{i}" for i in range(8)])
    mm = matmul_gflops()
    t = args.tile
    x = torch.randn(1, 12, t, t)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        enc(x[:1])
    flops_per_px = fc.get_total_flops() / (t * t)
    print(f"CPU: {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    print(f"plain fp32 matmul 2048^3: numpy {mm['numpy']:.1f} GFLOP/s, torch {mm['torch']:.1f} GFLOP/s")
    print(f"atto encoder: {flops_per_px / 1e3:.1f} kFLOP per pixel (counted on a {t} px tile)")

    def rate(fn, pixels, reps=3):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return pixels * reps / (time.perf_counter() - t0) / 1e6

    with torch.no_grad():
        torch_mp = rate(lambda: enc(x), t * t)
    sess = OnnxModel(enc_path, device="cpu")
    ort_mp = rate(lambda: sess.run(x.numpy()), t * t)
    scene = sample.build(verbose=False)["stack"]
    small = mosaic_vrt(scene, tmp / "mosaic_2000.vrt", 2000)
    kw = dict(tile=t, overlap=args.overlap, device="cpu")
    t0 = time.perf_counter()
    embed(small, enc_path, tmp / "emb.tif", **kw)
    embed_mp = 4.0 / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    segment(small, enc_path, tmp / "seg.tif", head_path=head_path, **kw)
    seg_mp = 4.0 / (time.perf_counter() - t0)
    overlap_factor = ((2000 / (t - args.overlap)) * t / 2000) ** 2  # pixels computed per output pixel (approx.)
    print(f"\nmegapixels/s on {t} px tiles (fp32, CPU):")
    print(f"  torch eager, encoder only          {torch_mp:6.2f} MP/s  = {torch_mp * flops_per_px / 1e3:6.1f} GFLOP/s")
    print(f"  ONNX Runtime, encoder only         {ort_mp:6.2f} MP/s  = {ort_mp * flops_per_px / 1e3:6.1f} GFLOP/s"
          f"  (x{ort_mp / torch_mp:.2f} torch)")
    print(f"  tiled embed pipeline, 2000x2000    {embed_mp:6.2f} MP/s of raster (overlap {args.overlap} px: about "
          f"x{overlap_factor:.2f} pixels computed) = {embed_mp * overlap_factor * flops_per_px / 1e3:6.1f} GFLOP/s")
    print(f"  tiled segment pipeline (+head)     {seg_mp:6.2f} MP/s of raster")
    eff = embed_mp * overlap_factor * flops_per_px / 1e3
    print(f"  pipeline arithmetic rate / matmul rate: {eff / mm['best']:.2f} (goal >= 0.5)")
    print("\npeak memory of `python -m mpmae_core.runtime embed` (child process RSS):")
    sizes = [2000] + ([] if args.skip_large else [10000])
    for size in sizes:
        vrt = mosaic_vrt(scene, tmp / f"mosaic_{size}.vrt", size)
        seconds, rss = child_peak_rss(["embed", str(vrt), str(enc_path), str(tmp / f"e{size}.tif"),
                                       "--tile", str(t), "--overlap", str(args.overlap), "--device", "cpu"])
        print(f"  {size:>6d} x {size:<6d} ({size * size / 1e6:6.1f} MP): {rss:7.0f} MiB peak, {seconds:7.1f} s, "
              f"{size * size / 1e6 / seconds:5.2f} MP/s")
    print(json.dumps({"matmul_gflops": mm, "flops_per_px": flops_per_px}))


if __name__ == "__main__":
    main()
