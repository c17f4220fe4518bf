"""The README's map figure: the same labelled points, mapped by the old 160 m cell head and by
the per-pixel head train_head makes today, beside the scene (whole scene and a zoom).

    .venv/bin/python scripts/compare_maps.py [--model runs/demo/models/atto_demo.onnx] [--out docs]

Writes OUT/landcover_cells_vs_pixels.png and OUT/landcover_cells_vs_pixels_zoom.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / "runs" / "demo" / "models" / "atto_demo.onnx"))
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--window", default="560,250,420,300", help="zoom window x,y,w,h in pixels")
    args = p.parse_args()
    from mpmae_core.data import sample
    from mpmae_core.runtime import fewshot, pixelhead
    from mpmae_core.runtime.gdal_io import open_raster
    from mpmae_core.runtime.labels import read_label_file
    from mpmae_core.runtime.predict import embed, segment
    from mpmae_core.runtime.preview import side_by_side

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = str(sample.build(verbose=False)["stack"])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pts = d / "points.gpkg"
        sample.label_points(pts, per_class=10, seed=0, classes=["water", "forest", "farm", "meadow", "residential"])
        feats, names, _, _ = read_label_file(pts, "landuse", open_raster(scene).GetProjection())
        embed(scene, args.model, d / "emb.tif", style=False, device="cpu")
        fewshot.train_head(scene, args.model, feats, names, d / "cells.onnx", embeddings=d / "emb.tif")
        segment(scene, args.model, d / "cells.tif", head_path=d / "cells.onnx", device="cpu")
        res = pixelhead.train_pixel_head(scene, args.model, feats, names, d / "pixels.onnx", device="cpu")
        segment(scene, args.model, d / "pixels.tif", head_path=d / "pixels.onnx", device="cpu")
        chosen = res["chosen"].replace(": ", ":\n", 1).replace("; ", ",\n") if res["chosen"].startswith("mean of") \
            else "\n".join(textwrap.wrap(res["chosen"], 60))
        titles = ["before: 160 m cells\n(LayerNorm + linear on the last stage)",
                  f"now: per-pixel, chosen head: {chosen}"]
        title = "The same 10 points per class (OSM landuse), demo-pretrained atto encoder"
        side_by_side(scene, [d / "cells.tif", d / "pixels.tif"], out / "landcover_cells_vs_pixels.png", title, titles)
        window = [int(v) for v in args.window.split(",")]
        side_by_side(scene, [d / "cells.tif", d / "pixels.tif"], out / "landcover_cells_vs_pixels_zoom.png",
                     title + f" (zoom: {window[2] * 10 / 1000:.1f} x {window[3] * 10 / 1000:.1f} km)", titles, window)
    print(f"wrote {out / 'landcover_cells_vs_pixels.png'} and {out / 'landcover_cells_vs_pixels_zoom.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
