"""Tiled inference throughput and memory, beside torch eager and this machine's matmul rate.

In one run:
1. the plain fp32 matrix-product rate of this machine (numpy/BLAS and torch, best of both);
2. the atto encoder's FLOPs per pixel (torch's FLOP counter on a 512 px tile);
3. megapixels/s of: torch eager on 512 px tiles; ONNX Runtime alone on the windows the pipeline
   runs; the whole tiled pipeline (GDAL reading, normalisation, blending, writing) for embed and
   segment on a 2,000 x 2,000 mosaic of the real scene, and its rate over the bare encoder's
   (issue 26 asks for at least 0.8), with its arithmetic rate as a fraction of the matmul rate;
4. peak memory of embed on 2,000 x 2,000 and 10,000 x 10,000 mosaics, with where it goes
   (``memory_probe.py``; issue 26 asks for at most 1.1x from the small raster to the large).

    python bench/bench_runtime.py [--skip-large] [--skip-before]

"now" is the default tiling and the encoder as exported today; "before" is 512 px tiles with
128 px overlap and GRN's norm as a spatial reduction, as before issue 26 (the same run).
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


def export_pair(tmp: Path) -> tuple[Path, Path, Path]:
    """A random-weight atto encoder (patch 16) exported as now and as before issue 26 (GRN's norm as
    a reduction over the spatial axes, ``export.faster_spatial_norms`` switched off), and a head."""
    import torch

    from mpmae_core import export, registry
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.models.metadata import default_normalisation

    torch.manual_seed(0)
    enc = build_encoder("atto", patch_size=16).eval()
    norm = default_normalisation(registry.S2_MMEARTH_BANDS)
    fast, _ = export.export_encoder(enc, tmp / "enc.onnx", registry.S2_MMEARTH_BANDS, norm)
    real = export.faster_spatial_norms
    export.faster_spatial_norms = lambda proto: 0
    try:
        slow, _ = export.export_encoder(enc, tmp / "enc_before.onnx", registry.S2_MMEARTH_BANDS, norm)
    finally:
        export.faster_spatial_norms = real
    head, _ = export.export_head(torch.randn(8, 320) * 0.1, torch.zeros(8), tmp / "head.onnx",
                                 [f"c{i}" for i in range(8)])
    return Path(fast), Path(slow), Path(head)


def probe_memory(args: list) -> dict:
    """``memory_probe.py`` in a child process: peak RSS, GDAL's cache, seconds."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "memory_probe.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--skip-large", action="store_true", help="skip the 10,000 x 10,000 memory runs")
    p.add_argument("--skip-before", action="store_true", help="skip the runs as before issue 26")
    args = p.parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mpmae_core.data import sample
    from mpmae_core.runtime.models.model import OnnxModel
    from mpmae_core.runtime.inference.predict import embed, segment
    from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, raster_windows

    tmp = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    enc_path, before_path, head_path = export_pair(tmp)
    mm = matmul_gflops()
    from mpmae_core.models import build_encoder

    enc = build_encoder("atto", patch_size=16).eval()
    x = torch.randn(1, 12, 512, 512)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        enc(x)
    flops_per_px = fc.get_total_flops() / (512 * 512)
    print(f"CPU: {os.cpu_count()} cores; torch threads {torch.get_num_threads()}")
    print(f"plain fp32 matmul 2048^3: numpy {mm['numpy']:.1f} GFLOP/s, torch {mm['torch']:.1f} GFLOP/s")
    print(f"atto encoder: {flops_per_px / 1e3:.1f} kFLOP per pixel (counted on a 512 px tile)")

    def rate(fn, pixels, reps=3):
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return pixels * reps / (time.perf_counter() - t0) / 1e6

    scene = sample.build(verbose=False)["stack"]
    small = mosaic_vrt(scene, tmp / "mosaic_2000.vrt", 2000)
    configs = {"now": (enc_path, DEFAULT_TILE, DEFAULT_OVERLAP)}
    if not args.skip_before:
        configs["before"] = (before_path, 512, 128)
    with torch.no_grad():
        torch_mp = rate(lambda: enc(x), 512 * 512)
    print(f"\ntorch eager, encoder only, 512 px tiles: {torch_mp:.2f} MP/s")
    print("\n| on the 2,000 x 2,000 mosaic | windows | computed / raster | bare encoder MP/s on those windows | "
          "embed MP/s of raster | embed / bare | segment MP/s of raster |")
    print("|---|---|---|---|---|---|---|")
    for label, (model, tile, overlap) in configs.items():
        wins = raster_windows(2000, 2000, tile, overlap, 16)
        th, tw = wins[0][0].h, wins[0][0].w
        computed = sum(w.h * w.w for r in wins for w in r) / 4e6
        sess = OnnxModel(model, device="cpu")
        xt = np.random.default_rng(0).normal(size=(1, 12, th, tw)).astype(np.float32)
        bare = rate(lambda: sess.run(xt), th * tw)
        kw = dict(tile=tile, overlap=overlap, device="cpu", style=False)
        t0 = time.perf_counter()
        embed(small, model, tmp / "emb.tif", **kw)
        embed_mp = 4.0 / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        segment(small, model, tmp / "seg.tif", head_path=head_path, **kw)
        seg_mp = 4.0 / (time.perf_counter() - t0)
        name = f"{label}: {tile}/{overlap}" + (", norm as a reduction" if label == "before" else "")
        print(f"| {name} | {th} x {tw} | x{computed:.2f} | {bare:.2f} | {embed_mp:.2f} | {embed_mp / bare:.2f} | "
              f"{seg_mp:.2f} |")
        print(f"  (pipeline arithmetic rate / matmul rate: "
              f"{embed_mp * computed * flops_per_px / 1e3 / mm['best']:.2f})")
    print("\npeak memory of `python -m mpmae_core.runtime embed` (bench/memory_probe.py, one child process each):")
    print("| raster | tiling | peak RSS MiB | at start | GDAL cache peak | the rest (ORT, tiles, accumulators) | MP/s |")
    print("|---|---|---|---|---|---|---|")
    sizes = [2000] + ([] if args.skip_large else [10000])
    for label, (model, tile, overlap) in configs.items():
        for size in sizes:
            vrt = mosaic_vrt(scene, tmp / f"mosaic_{size}.vrt", size)
            r = probe_memory(["embed", str(vrt), str(model), str(tmp / f"e{size}.tif"), "--tile", str(tile),
                              "--overlap", str(overlap), "--device", "cpu"])
            rest = r["peak_mib"] - r["start_mib"] - r["gdal_cache_peak_mib"]
            print(f"| {size} x {size} | {label} {tile}/{overlap} | {r['peak_mib']:.0f} | {r['start_mib']:.0f} | "
                  f"{r['gdal_cache_peak_mib']:.0f} | {rest:.0f} | {size * size / 1e6 / r['seconds']:.2f} |", flush=True)
            (tmp / f"e{size}.tif").unlink(missing_ok=True)
    print(json.dumps({"matmul_gflops": mm, "flops_per_px": flops_per_px}))


if __name__ == "__main__":
    main()
