"""Does a series of cloudy dates map better than any one of them? On the embedded scene, dates are
simulated by moving the scene's own clouds (its brightest blue pixels, grown into blobs) to other
places: each date has real cloud spectra where its clouds are. For several label sets:

- each cloudy date alone, its clouds masked (the analyst's usual map: holes where it is cloudy);
- each cloudy date alone, its clouds not masked (mapped as if they were ground);
- the series of the masked dates through the temporal head (``train-head`` and ``segment`` on
  the series);
- the clear scene itself (the map the others try to recover).

Each map is compared with the scene's OpenStreetMap landuse on every labelled pixel (five
classes), away from the training points: the share of those pixels mapped to their landuse
class (a hole counts as not recovered), and the accuracy on the pixels the map does cover.

    .venv/bin/python scripts/temporal_vs_single.py [--model runs/demo/models/atto_demo.onnx] [--seeds 3]

Caveat: the dates are one acquisition with clouds moved about, so the series holds no seasonal
change; this measures how well a series overcomes clouds, not what several seasons add.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASSES = ["water", "forest", "farm", "meadow", "residential"]
SHIFTS = ((60, 250), (190, 660), (470, 1030))  # rows, columns: each date's clouds moved this far (wrapping round)
BLOBS = ((0, 0), (0, 500), (300, 0))  # a cloudier day: the scene's clouds three times over
DAYS = ("20170216", "20170318", "20170427")


def grow(mask: np.ndarray, n: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(n):
        out[1:] |= out[:-1].copy()
        out[:-1] |= out[1:].copy()
        out[:, 1:] |= out[:, :-1].copy()
        out[:, :-1] |= out[:, 1:].copy()
    return out


def write_dates(work: Path) -> tuple[list, list, np.ndarray]:
    """(masked date paths, unmasked cloudy date paths, clouds (T, h, w))."""
    from osgeo import gdal

    from mpmae_core.data import sample

    stack = str(sample.build(verbose=False)["stack"])
    src = gdal.Open(stack)
    arr = src.ReadAsArray()
    blue = arr[1].astype(float)
    blob = grow(blue > np.percentile(blue, 97), 6)  # the scene's clouds, grown into blobs with their haze
    masked, cloudy, clouds = [], [], []
    for (dy, dx), day in zip(SHIFTS, DAYS):
        c = np.zeros(blob.shape, bool)
        moved = arr.copy()  # the date's clouds: each blob carries the scene's own cloud spectra to its new place
        for cy, cx in BLOBS:
            shift = (dy + cy, dx + cx)
            m = np.roll(blob, shift, axis=(0, 1))
            moved[:, m] = np.roll(arr, shift, axis=(1, 2))[:, m]
            c |= m
        for kind, out in (("masked", masked), ("cloudy", cloudy)):
            data = arr.copy()
            data[:, c] = 0 if kind == "masked" else moved[:, c]
            path = work / kind / f"S2A_MSIL1C_{day}T102101_T33UUU.tif"
            path.parent.mkdir(exist_ok=True)
            ds = gdal.GetDriverByName("GTiff").CreateCopy(str(path), src)
            ds.SetMetadataItem("ACQUISITION_DATE", f"{day[:4]}-{day[4:6]}-{day[6:]}")
            for b in range(data.shape[0]):
                ds.GetRasterBand(b + 1).WriteArray(data[b])
            ds = None
            out.append(str(path))
        clouds.append(c)
    return masked, cloudy, np.array(clouds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "demo" / "models" / "atto_demo.onnx"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--per-class", type=int, default=10)
    args = p.parse_args()
    from osgeo import gdal

    from mpmae_core.data import sample
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.heads.validation import class_names
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file

    paths = sample.build(verbose=False)
    truth = sample.landuse_truth(CLASSES)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        masked, cloudy, clouds = write_dates(work)
        print("cloud cover per date: " + ", ".join(f"{c.mean():.1%}" for c in clouds) +
              f"; seen by no date: {clouds.all(0).mean():.2%}", flush=True)
        for seed in range(args.seeds):
            labels = work / f"labels{seed}.gpkg"
            sample.label_points(labels, per_class=args.per_class, seed=seed, classes=CLASSES)
            feats, names, ids, _ = read_label_file(labels, "landuse", gdal.Open(masked[0]).GetProjection())
            near = sample.near_points(labels, gdal.Open(masked[0]).GetGeoTransform(), truth.shape)
            judged = (truth != 255) & ~near

            def score(source, tag, **kw):
                head = work / f"{tag}{seed}.onnx"
                res = train_pixel_head(source, args.model, feats, names, head, feature_ids=ids, device="cpu", seed=0,
                                       **kw)
                out = segment(source, args.model, work / f"{tag}{seed}.tif", head_path=head, device="cpu", **kw)
                ds = gdal.Open(out["output"])
                cats = class_names(ds) or list(names)
                m = ds.ReadAsArray()
                mapped = sample.in_classes(m, cats, CLASSES)
                covered = judged & (m != 255)
                recovered = float((mapped[judged] == truth[judged]).mean())
                on_covered = float((mapped[covered] == truth[covered]).mean())
                rows.append((seed, tag, res["chosen"], recovered, on_covered, float(covered.sum() / judged.sum())))
                print(f"seed {seed} {tag}: {rows[-1][2]}: recovered {recovered:.1%}, on covered {on_covered:.1%}, "
                      f"coverage {rows[-1][5]:.1%}", flush=True)

            score(masked, "series", series=True)
            score(str(paths["stack"]), "clear")
            for t in range(len(masked)):
                score(masked[t], f"date{t + 1}_masked")
                score(cloudy[t], f"date{t + 1}_unmasked")
    print("\n| labels seed | map | chosen head | landuse recovered (all judged pixels) | accuracy where mapped | "
          "mapped share |\n|---|---|---|---|---|---|")
    for seed, tag, chosen, rec, cov, share in rows:
        print(f"| {seed} | {tag} | {chosen} | {rec:.1%} | {cov:.1%} | {share:.1%} |")
    tags = sorted({r[1] for r in rows}, key=lambda t: [r[1] for r in rows].index(t))
    print("\n| map | recovered, mean over label sets | accuracy where mapped | mapped share |\n|---|---|---|---|")
    for tag in tags:
        sel = np.array([[r[3], r[4], r[5]] for r in rows if r[1] == tag])
        print(f"| {tag} | {sel[:, 0].mean():.1%} | {sel[:, 1].mean():.1%} | {sel[:, 2].mean():.1%} |")
    series = np.array([r[3] for r in rows if r[1] == "series"])
    best_single = np.array([max(r[3] for r in rows if r[0] == s and r[1].startswith("date")) for s in range(args.seeds)])
    print(f"\nseries minus the best single cloudy date of each label set: {100 * (series - best_single).mean():+.1f} "
          f"+- {100 * (series - best_single).std():.1f} points (recovered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
