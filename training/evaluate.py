"""Evaluate frozen encoders: k-shot and linear-probe classification and few-shot segmentation,
against a raw-spectra baseline, over many seeds; writes a Markdown report with PNG plots.

    python -m training.evaluate                                    # the embedded sample, OSM labels
    python -m training.evaluate --encoder multi=runs/pretrain/checkpoint-00000210.pt --random atto
    python -m training.evaluate --image scene.tif --labels landcover.tif
    python -m training.evaluate --image scene.tif --labels polygons.gpkg --class-field landuse

Encoders: ``--encoder NAME=CHECKPOINT`` (ours, or a reference MMEarth checkpoint, imported on the
fly), repeatable; ``--random SIZE`` adds a randomly initialised encoder. The raw-spectra baseline
is always in the run. Without --encoder, the latest checkpoint of runs/demo/pretrain (if any) and
a random atto encoder are used. Labels: a raster on the image's grid (0 or its nodata value =
unlabelled; class names from its category names), or a vector file rasterised onto the image
with --class-field. Output: DIR/report.md, DIR/*.png, DIR/results.json (default runs/evaluate).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mpmae_core import registry
from mpmae_core.evaluation import (SPECTRA, Report, aggregate, block_all, block_mean, classify, paired_difference,
                                   segment_cells, write_report)
from mpmae_core.runtime.labels import window_labels

ROOT = Path(__file__).resolve().parents[1]


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- data

def load_image(path) -> tuple[np.ndarray, np.ndarray, object]:
    """Normalised (12, H, W) float32 in MMEarth band order, valid mask, and the prepared input."""
    from mpmae_core.runtime.metadata import ModelMetadata, default_normalisation
    from mpmae_core.runtime.raster import prepare_input, read_block

    bands = list(registry.S2_MMEARTH_BANDS)
    meta = ModelMetadata(kind="encoder", input_bands=bands, normalisation=default_normalisation(bands))
    prep = prepare_input(str(path), meta)
    x, valid = read_block(prep, 0, 0, prep.height, prep.width)
    return x, valid, prep


def load_labels(path, prep, class_field: str = "") -> tuple[np.ndarray, list]:
    """(H, W) int labels on the image's grid (0 = unlabelled) and names of classes 1..K."""
    from osgeo import gdal, ogr

    path = Path(path)
    if not path.exists():
        raise EvaluationError(f"label file '{path}' does not exist")
    ds = gdal.OpenEx(str(path))
    if ds is None:
        raise EvaluationError(f"'{path}' is neither a raster nor a vector file GDAL can read")
    if ds.RasterCount:
        if (ds.RasterXSize, ds.RasterYSize) != (prep.width, prep.height) or \
                not np.allclose(ds.GetGeoTransform(), prep.geotransform):
            raise EvaluationError(f"the label raster '{path}' is not on the image's grid ({prep.width} x {prep.height} "
                                  "px, same geotransform): resample it onto the image first (gdalwarp -te ... -tr ...)")
        band = ds.GetRasterBand(1)
        nd = band.GetNoDataValue()
        lab = band.ReadAsArray().astype(np.int64)
        if nd is not None and nd != 0:
            lab[lab == nd] = 0
        if lab.min() < 0:
            raise EvaluationError("label values must be 0 (unlabelled) or positive class numbers")
        cats = band.GetCategoryNames() or []
        k = int(lab.max())
        names = [cats[v] if v < len(cats) and cats[v] else f"class {v}" for v in range(1, k + 1)]
        return lab, names
    if not class_field:
        raise EvaluationError(f"'{path}' is a vector file: give --class-field, the field holding the classes")
    layer = ds.GetLayer(0)
    if layer.GetLayerDefn().GetFieldIndex(class_field) < 0:
        fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
        raise EvaluationError(f"'{path}' has no field '{class_field}'; it has {', '.join(fields)}")
    values = sorted({str(f.GetField(class_field)) for f in layer if f.GetField(class_field) is not None})
    names = values
    mem = gdal.GetDriverByName("MEM").Create("", prep.width, prep.height, 1, gdal.GDT_Int32)
    mem.SetGeoTransform(prep.geotransform)
    mem.SetProjection(prep.projection)
    for i, v in enumerate(values, start=1):  # SQL-free: burn each class separately (also reprojects)
        tmp = ogr.GetDriverByName("Memory").CreateDataSource("")
        out = tmp.CreateLayer("c", srs=layer.GetSpatialRef(), geom_type=layer.GetGeomType())
        layer.ResetReading()
        for f in layer:
            if str(f.GetField(class_field)) == v and f.GetGeometryRef() is not None:
                g = ogr.Feature(out.GetLayerDefn())
                g.SetGeometry(f.GetGeometryRef().Clone())
                out.CreateFeature(g)
        gdal.RasterizeLayer(mem, [1], out, burn_values=[i])
    return mem.GetRasterBand(1).ReadAsArray().astype(np.int64), names


# ----------------------------------------------------------------------------- encoders

def load_encoder(spec: str):
    """(name, encoder) from NAME=CHECKPOINT or CHECKPOINT (ours or a reference .pth)."""
    from mpmae_core.checkpoints import CheckpointError, build_from_checkpoint, import_reference_checkpoint

    name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).stem, "", spec)
    try:
        model = build_from_checkpoint(path)
        encoder = getattr(model, "encoder", model)
    except CheckpointError as exc:
        if "is not an" not in str(exc):
            raise
        encoder = import_reference_checkpoint(path).build_encoder()
    return name, encoder.eval()


def random_encoder(size: str, seed: int = 0):
    import torch

    from mpmae_core.models import build_encoder

    torch.manual_seed(seed)
    return f"random {size}", build_encoder(size).eval()


def cell_features(encoder, x: np.ndarray, valid: np.ndarray, tile: int = 512) -> np.ndarray:
    """(h, w, D) encoder features per patch cell, computed in tiles of ``tile`` px; NaN where a
    cell has an invalid pixel."""
    import torch

    p = encoder.patch_size
    c, height, width = x.shape
    h, w = height // p, width // p
    tile = max(p, tile - tile % p)
    out = np.full((h, w, encoder.embed_dim), np.nan, np.float32)
    with torch.no_grad():
        for y0 in range(0, h * p, tile):
            for x0 in range(0, w * p, tile):
                y1, x1 = min(y0 + tile, h * p), min(x0 + tile, w * p)
                feats = encoder(torch.from_numpy(np.ascontiguousarray(x[None, :, y0:y1, x0:x1])))[0]
                out[y0 // p:y1 // p, x0 // p:x1 // p] = feats.permute(1, 2, 0).numpy()
    out[~block_all(valid, p)[:h, :w]] = np.nan
    return out


# ----------------------------------------------------------------------------- the run

def run(image, labels, class_field, encoders, out_dir, shots=(1, 5, 10, 20), seeds=20, window=32,
        log=print) -> Path:
    t0 = time.time()
    x, valid, prep = load_image(image)
    lab, names = load_labels(labels, prep, class_field)
    if not encoders:
        raise EvaluationError("no encoder to evaluate: give --encoder NAME=CHECKPOINT or --random SIZE")
    patch = encoders[0][1].patch_size
    if window % patch:
        raise EvaluationError(f"--window ({window}) must be a multiple of the encoders' patch size ({patch})")
    if any(e.patch_size != patch for _, e in encoders):
        raise EvaluationError("all encoders must have the same patch size (their cells must line up)")
    K = len(names)
    log(f"[evaluate] image {Path(image).name}: {prep.width} x {prep.height} px; labels {Path(labels).name}: "
        f"{K} classes ({', '.join(names)}), {(lab > 0).mean():.1%} of pixels labelled")

    # classification samples: windows mostly one class, without nodata
    wl = window_labels(lab, window)
    take = (wl > 0) & block_all(valid, window)
    y = wl[take] - 1
    log(f"[evaluate] {take.sum()} windows of {window} px mostly one class: " +
        ", ".join(f"{n} {int((y == i).sum())}" for i, n in enumerate(names)))
    cls_features = {SPECTRA: block_mean(x, window)[:, :wl.shape[0], :wl.shape[1]].transpose(1, 2, 0)[take]}
    seg_features = {}
    for name, enc in encoders:
        t = time.time()
        cells = cell_features(enc, x, valid)
        f = block_mean(cells.transpose(2, 0, 1), window // patch).transpose(1, 2, 0)[:wl.shape[0], :wl.shape[1]]
        cls_features[name] = f[take]
        seg_features[name] = cells
        log(f"[evaluate] features of '{name}' ({enc.embed_dim}-dim) in {time.time() - t:.1f} s")
    results = classify(cls_features, y, names, shots, seeds, log=log)
    # segmentation: cells mostly (80 %) one class are the labelled "points"
    cl = window_labels(lab, patch, min_share=0.8)
    cl[~block_all(valid, patch)] = 0
    seg_features = {n: np.nan_to_num(f[:cl.shape[0], :cl.shape[1]]) for n, f in seg_features.items()}
    pix = np.where(valid, lab, 0) - 1  # -1: unlabelled; classes 0..K-1
    results += segment_cells(seg_features, cl - 1, pix, patch, x, names, shots, seeds, nodata=-1)
    summary = aggregate(results)
    reps = [SPECTRA] + [n for n, _ in encoders]
    comparisons = []
    for task, metric in (("classification", "accuracy"), ("segmentation", "miou")):
        if "5" not in summary.get(task, {}):
            continue
        pairs = [(name, SPECTRA) for name, _ in encoders]
        names_ = [n for n, _ in encoders]
        if "multi-pretext" in names_ and "S2-only" in names_:
            pairs.append(("multi-pretext", "S2-only"))
        for a, b in pairs:
            d, s, wins = paired_difference(results, task, "5", a, b, metric)
            n = summary[task]["5"][a]["seeds"]
            se = s / np.sqrt(max(n - 1, 1))  # standard error of the mean paired difference
            verdict = ("better" if d > 2 * se else "worse" if d < -2 * se
                       else "no clear difference (within 2 standard errors)")
            comparisons.append(f"{task}, 5-shot {metric}: '{a}' minus '{b}' = {100 * d:+.1f} ± {100 * s:.1f} points "
                               f"(paired over {n} seeds; '{a}' ahead in {wins} of {n}): {verdict}")
    notes = [f"windows of {window} px ({window * 10} m) for classification; cells of {patch} px for segmentation",
             f"seeds: {seeds}; classes with no more than k samples are left out of k-shot runs",
             f"evaluated in {time.time() - t0:.0f} s"]
    report = Report("Linear probing and few-shot evaluation", f"{Path(image).name} with labels {Path(labels).name}",
                    reps, list(shots), seeds, summary, comparisons, notes)
    path = write_report(report, Path(out_dir), results)
    for c in comparisons:
        log(f"[evaluate] {c}")
    return path


def default_encoders() -> list:
    found = sorted((ROOT / "runs" / "demo" / "pretrain").glob("checkpoint-*.pt"))
    specs = [f"demo-pretrained={found[-1]}"] if found else []
    return specs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", help="Sentinel-2 GeoTIFF (default: the embedded sample scene)")
    p.add_argument("--labels", help="label raster on the image's grid, or a vector file with --class-field "
                                    "(default: the sample's OpenStreetMap landuse raster)")
    p.add_argument("--class-field", default="")
    p.add_argument("--encoder", action="append", default=[], help="NAME=CHECKPOINT (repeatable)")
    p.add_argument("--random", action="append", default=[], help="add a randomly initialised encoder of this size")
    p.add_argument("--shots", default="1,5,10,20")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--window", type=int, default=32, help="classification window in pixels (multiple of the patch)")
    p.add_argument("--out", default=str(ROOT / "runs" / "evaluate"))
    args = p.parse_args(argv)
    from mpmae_core.checkpoints import CheckpointError
    from mpmae_core.runtime.gdal_io import RasterError

    try:
        if args.image is None or args.labels is None:
            from mpmae_core.data import sample

            paths = sample.build(verbose=False)
            args.image = args.image or str(paths["stack"])
            args.labels = args.labels or str(paths["labels"])
        specs = args.encoder or ([] if args.random else default_encoders())
        randoms = args.random or ([] if args.encoder else ["atto"])
        encoders = [load_encoder(s) for s in specs] + [random_encoder(s) for s in randoms]
        shots = [int(v) for v in args.shots.split(",") if v.strip()]
        path = run(args.image, args.labels, args.class_field, encoders, args.out, shots, args.seeds, args.window)
    except (EvaluationError, CheckpointError, RasterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[evaluate] report {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
