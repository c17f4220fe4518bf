"""Which accuracy figure tells the truth about a map? On the embedded scene, for several sets of
labelled points: the head's spatial-block CV, its grouped CV, the accuracy a validation sample
estimates (mmearth sample-design + assess, the sample labelled from the scene's OpenStreetMap
landuse), and the map's agreement with that landuse on every labelled pixel not used for
training (the census the others try to estimate).

    .venv/bin/python scripts/honest_accuracy.py [--model runs/demo/models/atto_demo.onnx] [--seeds 3]

Prints a Markdown table (docs/results.md keeps one run). The map and the census are restricted to
the pixels the landuse labels, so all four figures measure the same thing.
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(ROOT / "runs" / "demo" / "models" / "atto_demo.onnx"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--target-se", type=float, default=0.02)
    args = p.parse_args()
    from osgeo import gdal, ogr

    from mpmae_core.data import sample
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.heads.validation import assess_map, class_names, sample_design
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file

    paths = sample.build(verbose=False)
    product = sample.scene_dir() / "IMG_DATA"
    truth = sample.landuse_truth(CLASSES)
    rows, choices = [], []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        for seed in range(args.seeds):
            labels = work / f"labels{seed}.gpkg"
            sample.label_points(labels, per_class=args.per_class, seed=seed, classes=CLASSES)
            wkt = gdal.Open(str(paths["stack"])).GetProjection()
            feats, names, ids, _ = read_label_file(labels, "landuse", wkt)
            def mapped_by(cv: str):
                """(the head's result, its map in CLASSES' order restricted to the pixels the landuse labels,
                the map's dataset)"""
                head = work / f"head{seed}_{cv}.onnx"
                res = train_pixel_head(product, args.model, feats, names, head, feature_ids=ids, device="cpu", seed=0,
                                       choose_on=cv)
                out = segment(product, args.model, work / f"map{seed}_{cv}.tif", head_path=head, device="cpu")
                ds = gdal.Open(out["output"])
                cats = class_names(ds) or list(names)
                mapped = sample.in_classes(ds.ReadAsArray(), cats, CLASSES)
                mapped[truth == 255] = 255
                return res, mapped, ds

            res, mapped, ds = mapped_by("grouped")  # the default: chosen on grouped folds
            detail = res["cv_detail"]
            m = mapped
            # the census: every labelled pixel but those within 3 px of a training point
            gt = ds.GetGeoTransform()
            near = sample.near_points(labels, gt, m.shape)
            valid = (mapped != 255) & ~near
            census = float((mapped[valid] == truth[valid]).mean())
            res_s, mapped_s, _ = mapped_by("spatial")  # the same labels, the choice made on spatial blocks
            valid_s = (mapped_s != 255) & ~near
            census_s = float((mapped_s[valid_s] == truth[valid_s]).mean())
            choices.append((seed, res_s["chosen"], census_s, res["chosen"], census))
            restricted = work / f"restricted{seed}.tif"
            drv = gdal.GetDriverByName("GTiff")
            rd = drv.Create(str(restricted), m.shape[1], m.shape[0], 1, gdal.GDT_Byte)
            rd.SetGeoTransform(gt)
            rd.SetProjection(ds.GetProjection())
            band = rd.GetRasterBand(1)
            band.WriteArray(np.where(near, 255, mapped))
            band.SetNoDataValue(255)
            band.SetCategoryNames(CLASSES)
            rd = None
            points = work / f"val{seed}.gpkg"
            sample_design(restricted, points, target_se=args.target_se, min_per_class=30, seed=100 + seed)
            vds = ogr.Open(str(points), 1)
            layer = vds.GetLayer("validation")
            for f in layer:
                g = f.GetGeometryRef()
                c, r = int((g.GetX() - gt[0]) / gt[1]), int((g.GetY() - gt[3]) / gt[5])
                f.SetField("reference", CLASSES[truth[r, c]])
                layer.SetFeature(f)
            vds = None
            acc = assess_map(restricted, points)
            oa = acc["overall_accuracy"]
            rows.append((seed, res["chosen"], detail.get("spatial", {}).get("accuracy"), detail["block_m"],
                         detail.get("grouped", {}).get("accuracy"), oa["estimate"], oa["ci95"], acc["sample_size"],
                         census))
            print(f"seed {seed}: {rows[-1]}", flush=True)
    print("\n| labels seed | chosen head | spatial-block CV | block (m) | grouped CV | validation sample (95 % CI, n) "
          "| census agreement |\n|---|---|---|---|---|---|---|")
    for seed, chosen, sp, block, gr, oa, ci, n, census in rows:
        spt = f"{sp:.1%}" if sp is not None else "n/a"
        grt = f"{gr:.1%}" if gr is not None else "n/a"
        print(f"| {seed} | {chosen} | {spt} | {block:.0f} | {grt} | {oa:.1%} +- {ci:.1%} ({n}) | {census:.1%} |")
    arr = np.array([[r[2] or np.nan, r[4] or np.nan, r[5], r[8]] for r in rows], float)
    err = np.abs(arr[:, :3] - arr[:, 3:4]).mean(0)
    print(f"\nmean absolute difference from the census: spatial CV {err[0]:.1%}, grouped CV {err[1]:.1%}, "
          f"validation sample {err[2]:.1%}")
    print("\n| labels seed | chosen on spatial blocks | its map (census) | chosen on grouped folds | its map (census) |"
          "\n|---|---|---|---|---|")
    for seed, c_s, m_s, c_g, m_g in choices:
        print(f"| {seed} | {c_s} | {m_s:.1%} | {c_g} | {m_g:.1%} |")
    d = np.array([c[2] - c[4] for c in choices])
    same = sum(c[1] == c[3] for c in choices)
    print(f"\nthe choice is the same in {same} of {len(choices)} label sets; map agreement, spatial minus grouped: "
          f"{100 * d.mean():+.1f} +- {100 * d.std():.1f} points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
