"""Sentinel-2 products as downloaded: what an area of interest saves, and what reading a STAC
item's band files over HTTP costs, side by side in one run.

On the embedded real scene's own band files (13 JP2, 1536 x 768 px at 10 m), each figure the
median of ``--rounds`` child processes of ``mmearth embed`` (wall time, and the child's peak RSS):

- a SAFE product folder, whole scene, against the same product with ``--aoi`` (an eighth of the
  scene, a polygon);
- a STAC item served by an HTTP server on 127.0.0.1 that answers range requests (``/vsicurl/``)
  against the same item read from the local disk.

    python bench/bench_products.py [--model runs/demo/models/atto_demo.onnx] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_runtime import child_peak_rss  # noqa: E402
from common import encoder_or_random  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from osgeo import gdal

    from helpers import RangeServer
    from mpmae_core.data import sample

    work = Path(tempfile.mkdtemp(prefix="bench-products-"))
    os.environ["MMEARTH_CACHE"] = str(work / "cache")  # the children build their stacks here
    os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] = "EMPTY_DIR"
    model = encoder_or_random(args.model, work)
    sample.build(verbose=False)
    bands = sample.scene_dir() / "IMG_DATA"
    safe = work / "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102204.SAFE"
    img = safe / "GRANULE" / "L1C_T33UUU_A008642_20170216T102204" / "IMG_DATA"
    img.mkdir(parents=True)
    for f in bands.glob("*.jp2"):
        shutil.copy(f, img / f.name)
    (safe / "MTD_MSIL1C.xml").write_text("<x><PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>"
                                         "<PROCESSING_BASELINE>02.04</PROCESSING_BASELINE></x>")
    ref = gdal.Open(str(bands / f"{sample.SCENE_ID}_B02.jp2"))
    gt, w, h = ref.GetGeoTransform(), ref.RasterXSize, ref.RasterYSize
    x0, y0 = gt[0] + w * 0.25 * gt[1], gt[3] + h * 0.25 * gt[5]
    aoi = f"{x0},{y0 + h / 2 * 0.5 * gt[5]},{x0 + w * 0.5 * 0.5 * gt[1]},{y0}"  # a quarter of each side: 1/8 area
    served = work / "srv"
    shutil.copytree(bands, served / "bands")
    item = {"type": "Feature", "id": "bench", "properties": {},
            "assets": {f.stem.rsplit("_", 1)[1]: {"href": f"bands/{f.name}"} for f in bands.glob("*.jp2")}}
    (served / "item.json").write_text(json.dumps(item))
    server = RangeServer(served)
    runs = {
        "SAFE folder, whole scene": [str(safe)],
        "SAFE folder, --aoi (1/8 of the scene)": [str(safe), "--aoi", aoi],
        "STAC item, local files": [str(served / "item.json")],
        "STAC item over HTTP (/vsicurl/, range requests)": [f"{server.url}/item.json"],
    }
    results = {k: [] for k in runs}
    try:
        for r in range(args.rounds):
            for name, src in runs.items():
                out = work / f"e{r}.tif"
                results[name].append(child_peak_rss(["embed", src[0], model, str(out), "--device", "cpu", *src[1:]]))
                out.unlink()
                for f in work.glob("e*.qml"):
                    f.unlink()
    finally:
        server.close()
    base = statistics.median(s for s, _ in results["SAFE folder, whole scene"])
    print(f"{os.cpu_count()} cores; scene {w} x {h} px; median of {args.rounds} child processes of mmearth embed")
    print("| input | seconds | peak RSS MiB | time / whole scene |")
    print("|---|---|---|---|")
    for name, vals in results.items():
        s = statistics.median(v[0] for v in vals)
        m = statistics.median(v[1] for v in vals)
        print(f"| {name} | {s:.2f} | {m:.0f} | x{s / base:.2f} |")
    print(f"HTTP: {server.sent / 1e6:.1f} MB sent in {len(server.requests)} requests over all rounds "
          f"({sum(f.stat().st_size for f in bands.glob('*.jp2')) / 1e6:.1f} MB of band files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
