"""A map figure: the same labelled points, mapped by the spectra-only forest (the per-pixel
spectral classifier we judge against) and by the self-choosing head, beside the scene (whole
scene and a zoom).

    .venv/bin/python scripts/compare_maps.py [--model runs/demo/models/atto_demo.onnx] [--out docs]

Writes OUT/landcover_spectra_vs_chosen.png and OUT/landcover_spectra_vs_chosen_zoom.png.
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
    from mpmae_core.runtime.heads import pixelhead
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.labels import read_label_file
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.preview import side_by_side

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = str(sample.build(verbose=False)["stack"])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        pts = d / "points.gpkg"
        sample.label_points(pts, per_class=10, seed=0, classes=["water", "forest", "farm", "meadow", "residential"])
        feats, names, _, _ = read_label_file(pts, "landuse", open_raster(scene).GetProjection())
        pixelhead.train_pixel_head(scene, args.model, feats, names, d / "spectra.onnx", feature_sets=["spectra"],
                                   classifiers=["forest"], device="cpu")
        segment(scene, args.model, d / "spectra.tif", head_path=d / "spectra.onnx", device="cpu")
        res = pixelhead.train_pixel_head(scene, args.model, feats, names, d / "pixels.onnx", device="cpu")
        segment(scene, args.model, d / "pixels.tif", head_path=d / "pixels.onnx", device="cpu")
        chosen = res["chosen"].replace(": ", ":\n", 1).replace("; ", ",\n") if res["chosen"].startswith("mean of") \
            else "\n".join(textwrap.wrap(res["chosen"], 60))
        titles = ["spectra-only random forest", f"self-choosing head: {chosen}"]
        title = "The same 10 points per class (OSM landuse), demo-pretrained atto encoder"
        side_by_side(scene, [d / "spectra.tif", d / "pixels.tif"], out / "landcover_spectra_vs_chosen.png", title, titles)
        window = [int(v) for v in args.window.split(",")]
        side_by_side(scene, [d / "spectra.tif", d / "pixels.tif"], out / "landcover_spectra_vs_chosen_zoom.png",
                     title + f" (zoom: {window[2] * 10 / 1000:.1f} x {window[3] * 10 / 1000:.1f} km)", titles, window)
    print(f"wrote {out / 'landcover_spectra_vs_chosen.png'} and {out / 'landcover_spectra_vs_chosen_zoom.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
