"""A map's accuracy from a validation sample the map did not choose: the sample design
(``mmearth sample-design``) and the accuracy and area report (``mmearth assess``), on class maps
as ``segment`` writes them (one byte band, class names as categories, 255 for no data).

The sample design draws a stratified random sample of pixels, the strata being the map's classes:
its size from a target standard error of the overall accuracy (Olofsson et al. 2014, eq. 13),
every class at least a minimum, the rest in proportion to area, optionally away from the
training labels. It writes a point layer with an empty ``reference`` field for the analyst to
fill in (in QGIS, or from better imagery), and the strata it used. The report then estimates,
from the labelled points, the error matrix in area proportions, overall, user's and producer's
accuracy with 95 % intervals, and each class's area adjusted for the map's errors with its
interval next to the mapped (pixel-counted) area (``heads.accuracy``).

Both read the map in row blocks: memory follows the block, not the map.
"""

from __future__ import annotations

import csv
import html
import io
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mpmae_core.runtime.heads import accuracy as A
from mpmae_core.runtime.io.gdal_io import RasterError, gdal, gdal_errors, open_raster

NODATA = 255
ROWS = 256  # rows per block
REFERENCE_FIELD = "reference"


def class_names(ds) -> list:
    """A class map's class names (its categories), or 'class 0' .. for one without."""
    band = ds.GetRasterBand(1)
    band.GetNoDataValue()  # GDAL 3.6 reads the .aux.xml lazily: touch the band first
    names = list(band.GetCategoryNames() or [])
    if not names:
        try:
            info = gdal().Info(ds, format="json")
            names = list(info["bands"][0].get("categories") or [])
        except (KeyError, IndexError, TypeError, RuntimeError):
            names = []
    return names


def _open_class_map(path):
    ds = open_raster(path)
    if ds.RasterCount < 1:
        raise RasterError(f"'{path}' has no band: give a class map (from segment, or any one-band class raster)")
    dt = ds.GetRasterBand(1).DataType
    g = gdal()
    if dt not in (g.GDT_Byte, g.GDT_UInt16, g.GDT_Int16, g.GDT_Int32, g.GDT_UInt32):
        raise RasterError(f"'{path}' holds {g.GetDataTypeName(dt)} values, not classes: give a class map "
                          "(whole numbers, one per class)")
    return ds


def _blocks(ds, band: int = 1):
    """(row offset, array) blocks of a band; a read error names the file and the rows."""
    b = ds.GetRasterBand(band)
    for y in range(0, ds.RasterYSize, ROWS):
        h = min(ROWS, ds.RasterYSize - y)
        with gdal_errors() as errors:
            arr = b.ReadAsArray(0, y, ds.RasterXSize, h)
        if arr is None or errors:
            raise RasterError(f"could not read '{ds.GetDescription()}', rows {y}..{y + h - 1} ({errors.text()}): the "
                              "file is damaged; write it again")
        yield y, arr


def _nodata(ds) -> Optional[float]:
    nd = ds.GetRasterBand(1).GetNoDataValue()
    return NODATA if nd is None else nd


def class_counts(ds, exclude=None) -> dict:
    """Pixels per class value (no data left out); ``exclude(y, h)`` -> (h, w) bool of pixels to leave out."""
    nd = _nodata(ds)
    counts: dict = {}
    for y, arr in _blocks(ds):
        keep = arr != nd
        if exclude is not None:
            keep &= ~exclude(y, arr.shape[0])
        values, n = np.unique(arr[keep], return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            counts[v] = counts.get(v, 0) + c
    return counts


def pixel_area_ha(ds) -> tuple[float, str]:
    """(area of one pixel, unit): hectares for a projected CRS in metres, else squared CRS units."""
    from osgeo import osr

    gt = ds.GetGeoTransform()
    px = abs(gt[1] * gt[5])
    srs = osr.SpatialReference(wkt=ds.GetProjection() or "")
    if ds.GetProjection() and srs.IsProjected():
        return px * srs.GetLinearUnits() ** 2 / 10_000.0, "ha"
    return px, "CRS units squared"


# ------------------------------------------------------------------------------------- the design


def _label_exclusion(labels, ds, buffer_m: float):
    """exclude(y, h): pixels within ``buffer_m`` of the training labels (a vector path, or an
    io.aoi.Area), rasterised block by block (all touched)."""
    from osgeo import ogr, osr

    from mpmae_core.runtime.io.aoi import Area

    target = osr.SpatialReference(wkt=ds.GetProjection())
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    geoms = []
    if isinstance(labels, Area):  # points or polygons (WKB) in a CRS, as QGIS reads them
        src = osr.SpatialReference(wkt=labels.crs_wkt)
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        tr = None if src.IsSame(target) else osr.CoordinateTransformation(src, target)
        for wkb in labels.wkbs:
            g = ogr.CreateGeometryFromWkb(bytes(wkb))
            if g is None or g.IsEmpty():
                continue
            if tr is not None and g.Transform(tr) != 0:
                raise RasterError("the training labels cannot be reprojected onto the map's CRS")
            geoms.append(g)
    else:
        src_ds = ogr.Open(str(labels))
        if src_ds is None:
            raise RasterError(f"'{labels}' is not a vector file OGR can read: give the training labels (points or "
                              "polygons)")
        layer = src_ds.GetLayer(0)
        src = layer.GetSpatialRef()
        tr = None
        if src is not None:
            src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            if not src.IsSame(target):
                tr = osr.CoordinateTransformation(src, target)
        for feat in layer:
            g = feat.GetGeometryRef()
            if g is None or g.IsEmpty():
                continue
            g = g.Clone()
            if tr is not None and g.Transform(tr) != 0:
                raise RasterError(f"the labels in '{labels}' cannot be reprojected onto the map's CRS")
            geoms.append(g)
    mem_v = ogr.GetDriverByName("Memory").CreateDataSource("labels")
    layer = mem_v.CreateLayer("labels", srs=target)
    for g in geoms:
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetGeometry(g.Buffer(buffer_m) if buffer_m > 0 else g)
        layer.CreateFeature(feat)
    gt = ds.GetGeoTransform()
    W = ds.RasterXSize

    def exclude(y: int, h: int) -> np.ndarray:
        g = gdal()
        mem = g.GetDriverByName("MEM").Create("", W, h, 1, g.GDT_Byte)
        mem.SetGeoTransform([gt[0], gt[1], 0.0, gt[3] + y * gt[5], 0.0, gt[5]])
        mem.SetProjection(ds.GetProjection())
        g.RasterizeLayer(mem, [1], layer, burn_values=[1], options=["ALL_TOUCHED=TRUE"])
        return mem.ReadAsArray().astype(bool)

    exclude.layer = mem_v  # kept alive with the function
    return exclude, len(geoms)


def sample_design(class_map, output, *, target_se: float = 0.01, users_accuracy=0.8, min_per_class: int = 50,
                  size: Optional[int] = None, exclude_labels=None, buffer_m: float = 0.0, seed: int = 0,
                  log: Callable[[str], None] = lambda m: None) -> dict:
    """Draw the validation sample of ``class_map`` into the GeoPackage ``output`` (see the module).
    ``users_accuracy``: the anticipated user's accuracy of every class (a number), or per class
    (a dict name -> value); ``size``: the total instead of eq. 13's."""
    from mpmae_core.runtime.io.files import atomic_output, check_output

    check_output(output, [str(class_map)] + ([str(exclude_labels)] if isinstance(exclude_labels, (str, Path))
                                             else []), "validation points", (".gpkg",), "a GeoPackage")
    ds = _open_class_map(class_map)
    names = class_names(ds)
    exclude, n_labels = (None, 0)
    if exclude_labels is not None:
        exclude, n_labels = _label_exclusion(exclude_labels, ds, float(buffer_m))
    counts = class_counts(ds, exclude)
    if not counts:
        raise A.AccuracyError(f"'{class_map}' holds no mapped pixel (all no data{', or near the labels' if exclude else ''})")
    values = sorted(counts)
    strata = [_name(names, v) for v in values]
    sizes = [counts[v] for v in values]
    total_pixels = sum(sizes)
    if isinstance(users_accuracy, dict):
        missing = [s for s in strata if s not in users_accuracy]
        if missing:
            raise A.AccuracyError(f"no anticipated user's accuracy for {', '.join(missing)}: give one per class")
        ua = [float(users_accuracy[s]) for s in strata]
    else:
        ua = [float(users_accuracy)] * len(strata)
    n_eq13 = A.sample_size(sizes, ua, target_se)
    n = int(size) if size else n_eq13
    alloc = A.allocate(n, sizes, min_per_class)
    rng = np.random.default_rng(seed)
    ranks = {v: np.sort(rng.choice(counts[v], k, replace=False)) for v, k in zip(values, alloc)}
    # second pass: the ranked pixels of each class, in reading order
    seen = {v: 0 for v in values}
    picks = []  # (row, col, value)
    nd = _nodata(ds)
    for y, arr in _blocks(ds):
        keep = arr != nd
        if exclude is not None:
            keep &= ~exclude(y, arr.shape[0])
        for v in values:
            sel = keep & (arr == v)
            m = int(sel.sum())
            if not m:
                continue
            r = ranks[v]
            lo, hi = np.searchsorted(r, seen[v]), np.searchsorted(r, seen[v] + m)
            if hi > lo:
                rows, cols = np.nonzero(sel)
                for k in r[lo:hi] - seen[v]:
                    picks.append((y + int(rows[k]), int(cols[k]), v))
            seen[v] += m
    order = rng.permutation(len(picks))  # ids in random order: no class pattern to read from them
    gt = ds.GetGeoTransform()
    design = {"target_se": target_se, "seed": seed, "min_per_class": min_per_class, "size_eq13": n_eq13,
              "size": int(sum(alloc)), "excluded_near_labels": bool(exclude), "label_features": n_labels,
              "buffer_m": float(buffer_m), "map": str(class_map), "pixels": int(total_pixels),
              "strata": [{"stratum": s, "value": int(v), "pixels": int(c), "weight": c / total_pixels,
                          "anticipated_users_accuracy": u, "sample": int(k)}
                         for s, v, c, u, k in zip(strata, values, sizes, ua, alloc)]}
    with atomic_output(output) as tmp:
        _write_points(tmp, ds, [(picks[i], int(j) + 1) for j, i in enumerate(order)], names, gt, design)
    log(f"wrote {output}: {len(picks)} validation points in {len(strata)} strata "
        f"({', '.join(f'{s} {k}' for s, k in zip(strata, alloc))}); fill in its '{REFERENCE_FIELD}' field")
    return dict(design, output=str(output))


def _name(names, v) -> str:
    return names[v] if 0 <= v < len(names) and names[v] else f"class {v}"


def _write_points(path, ds, picks, names, gt, design) -> None:
    from osgeo import ogr, osr

    drv = ogr.GetDriverByName("GPKG")
    Path(path).unlink(missing_ok=True)  # the temporary name is reserved empty; the driver makes its own file
    out = drv.CreateDataSource(str(path))
    if out is None:
        raise RasterError(f"could not create '{path}'")
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    layer = out.CreateLayer("validation", srs=srs, geom_type=ogr.wkbPoint)
    for name, kind in (("id", ogr.OFTInteger), ("stratum", ogr.OFTString), ("map_class", ogr.OFTString),
                       (REFERENCE_FIELD, ogr.OFTString)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    layer.StartTransaction()
    for (row, col, v), pid in sorted(picks, key=lambda p: p[1]):
        feat = ogr.Feature(layer.GetLayerDefn())
        feat.SetField("id", pid)
        feat.SetField("stratum", _name(names, v))
        feat.SetField("map_class", _name(names, v))
        feat.SetFieldNull(REFERENCE_FIELD)
        pt = ogr.Geometry(ogr.wkbPoint)
        pt.AddPoint_2D(gt[0] + (col + 0.5) * gt[1], gt[3] + (row + 0.5) * gt[5])
        feat.SetGeometry(pt)
        if layer.CreateFeature(feat) != 0:
            raise RasterError(f"could not write a point to '{path}'")
    layer.CommitTransaction()
    table = out.CreateLayer("design", geom_type=ogr.wkbNone)
    for name, kind in (("stratum", ogr.OFTString), ("value", ogr.OFTInteger), ("pixels", ogr.OFTInteger64),
                       ("weight", ogr.OFTReal), ("anticipated_users_accuracy", ogr.OFTReal), ("sample", ogr.OFTInteger)):
        table.CreateField(ogr.FieldDefn(name, kind))
    for s in design["strata"]:
        feat = ogr.Feature(table.GetLayerDefn())
        for k in ("stratum", "value", "pixels", "weight", "anticipated_users_accuracy", "sample"):
            feat.SetField(k, s[k])
        table.CreateFeature(feat)
    out.SetMetadataItem("MMEARTH_SAMPLE_DESIGN", json.dumps(design))
    out = None


# ------------------------------------------------------------------------------------- the report


def _read_points(path, field: str, wkt: str, layer_name: str = ""):
    """[(x, y, reference text)] of the points with a reference, in the map's CRS; and how many had none."""
    pts, empty = read_points(path, field, wkt, layer_name)
    return [p[:3] for p in pts], empty


def read_points(path, field: str, wkt: str, layer_name: str = "", also: str = ""):
    """[(x, y, reference text, the ``also`` field's text or '')] of the points with a reference, in
    the CRS ``wkt``; and how many had none."""
    from osgeo import ogr, osr

    from mpmae_core.runtime.io.labels import open_layer

    ds, layer = open_layer(path, layer_name, field, "the points",
                           "choose the field holding each point's reference class")
    src = layer.GetSpatialRef()
    dst = osr.SpatialReference(wkt=wkt)
    tr = None
    if src is not None:
        for s in (src, dst):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not src.IsSame(dst):
            tr = osr.CoordinateTransformation(src, dst)
    out, empty = [], 0
    for feat in layer:
        g = feat.GetGeometryRef()
        value = feat.GetField(field) if feat.IsFieldSetAndNotNull(field) else None
        if value is None or str(value).strip() == "":
            empty += 1
            continue
        if g is None or g.IsEmpty():
            continue
        g = g.Clone()
        if tr is not None:
            g.Transform(tr)
        c = g.Centroid() if g.GetGeometryType() != ogr.wkbPoint else g
        extra = ""
        if also and feat.GetFieldIndex(also) >= 0 and feat.IsFieldSetAndNotNull(also):
            extra = str(feat.GetField(also)).strip()
        out.append((c.GetX(), c.GetY(), str(value).strip(), extra))
    return out, empty


def _sample_raster(ds, points):
    """The raster's value at each (x, y), and whether it lies on the raster."""
    gt = ds.GetGeoTransform()
    band = ds.GetRasterBand(1)
    vals, inside = [], []
    for x, y, _ in points:
        c, r = int(np.floor((x - gt[0]) / gt[1])), int(np.floor((y - gt[3]) / gt[5]))
        ok = 0 <= c < ds.RasterXSize and 0 <= r < ds.RasterYSize
        inside.append(ok)
        vals.append(int(band.ReadAsArray(c, r, 1, 1)[0, 0]) if ok else -1)
    return np.array(vals), np.array(inside, bool)


def assess_map(class_map, points, reference_field: str = REFERENCE_FIELD, *, strata=None, design: str = "stratified",
               report=None, table=None, figures=None, log: Callable[[str], None] = lambda m: None) -> dict:
    """The accuracy and area report of ``class_map`` from labelled validation ``points`` (see the
    module). ``strata``: a raster of the strata the sample was drawn in (default: the map's classes);
    ``design``: "stratified" or "simple" (a simple random sample). Writes the HTML ``report``, the
    CSV ``table`` and the JSON ``figures`` (each optional), each whole or not at all."""
    from mpmae_core.runtime.io.files import atomic_write_text, check_output

    if design not in ("stratified", "simple"):
        raise A.AccuracyError(f"unknown sample design {design!r}: stratified or simple")
    inputs = [str(class_map), str(points)] + ([str(strata)] if strata else [])
    for path, what, ext, kind in ((report, "report", (".html", ".htm"), "an HTML page"),
                                  (table, "table", (".csv",), "a CSV table"), (figures, "figures", (".json",), "JSON")):
        if path:
            check_output(path, inputs, what, ext, kind)
    ds = _open_class_map(class_map)
    names = class_names(ds)
    pts, empty = _read_points(points, reference_field, ds.GetProjection())
    if empty:
        log(f"{empty} point(s) without a reference class are left out (label them, or they are not part of the "
            "sample)")
    if not pts:
        raise A.AccuracyError(f"no point of '{points}' has a reference class in '{reference_field}': label the "
                              "validation points first")
    map_vals, inside = _sample_raster(ds, pts)
    nd = _nodata(ds)
    keep = inside & (map_vals != nd)
    if (~keep).any():
        log(f"{int((~keep).sum())} point(s) off the map or on its no data are left out")
    mapped_counts = class_counts(ds)
    values = sorted(mapped_counts)
    classes = [_name(names, v) for v in values]
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    for v in values:  # the class value itself is also accepted as a reference
        lookup.setdefault(str(v), values.index(v))
    ref_idx = []
    unknown = set()
    for (_, _, text), ok in zip(pts, keep):
        if not ok:
            ref_idx.append(-1)
            continue
        k = lookup.get(text.lower())
        if k is None:
            unknown.add(text)
        ref_idx.append(-1 if k is None else k)
    if unknown:
        raise A.AccuracyError(f"reference class(es) {', '.join(sorted(unknown))} are not classes of the map "
                              f"({', '.join(classes)}): correct the spelling, or add the class to the map's legend")
    ref_idx = np.array(ref_idx)
    sel = keep
    mapped = np.array([values.index(v) if v in values else -1 for v in map_vals])[sel]
    reference = ref_idx[sel]
    if design == "simple":
        st = np.zeros(len(mapped), int)
        sizes = {0: float(sum(mapped_counts.values()))}
    elif strata:
        sds = _open_class_map(strata)
        if sds.RasterXSize != ds.RasterXSize or sds.RasterYSize != ds.RasterYSize \
                or sds.GetGeoTransform() != ds.GetGeoTransform():
            raise A.AccuracyError(f"the strata raster '{strata}' is not on the map's grid: give the strata the sample "
                                  "was drawn in, on the map's grid")
        st_vals, _ = _sample_raster(sds, pts)
        st = st_vals[sel]
        sizes = {int(k): float(v) for k, v in class_counts(sds).items()}
    else:
        st = np.array([values[m] for m in mapped])
        sizes = {int(v): float(c) for v, c in mapped_counts.items()}
    area, unit = pixel_area_ha(ds)
    stratum_names = {int(v): _name(names, v) for v in values} if design == "stratified" and not strata else None
    result = A.assess(mapped, reference, st, sizes, classes, mapped_counts=[mapped_counts[v] for v in values],
                      pixel_area=area, area_unit=unit, stratum_names=stratum_names)
    out = result.as_dict()
    out.update({"map": str(class_map), "points": str(points), "reference_field": reference_field,
                "points_without_reference": empty, "points_off_the_map": int((~keep).sum()),
                "design": design, "strata_source": str(strata) if strata else ("none (one stratum)" if design == "simple"
                                                                                else "the map's classes")})
    if figures:
        atomic_write_text(figures, json.dumps(out, indent=1))
    if table:
        atomic_write_text(table, csv_table(result))
    if report:
        atomic_write_text(report, html_report(result, out))
    log(f"overall accuracy {result.overall.value:.1%} +- {result.overall.ci95:.1%} (95 %), {int(result.counts.sum())} "
        f"points, {result.estimator} estimator")
    return out


def csv_table(a: A.Assessment) -> str:
    """Per class: user's, producer's accuracy, F1, mapped and estimated area with intervals; then the
    error matrices (counts, area proportions)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "users_accuracy", "users_ci95", "producers_accuracy", "producers_ci95", "f1",
                "mapped_area", "estimated_area", "estimated_area_ci95", "area_unit", "sample_mapped", "sample_reference"])
    f1 = a.f1()
    for k, c in enumerate(a.classes):
        e = a.area(k)
        w.writerow([c, _f(a.users[k].value), _f(a.users[k].ci95), _f(a.producers[k].value), _f(a.producers[k].ci95),
                    _f(f1[k]), _f(a.mapped_area(k)), _f(e.value), _f(e.ci95), a.area_unit, int(a.counts[k].sum()),
                    int(a.counts[:, k].sum())])
    w.writerow(["overall", _f(a.overall.value), _f(a.overall.ci95)])
    w.writerow([])
    w.writerow(["counts: map \\ reference"] + list(a.classes))
    for k, c in enumerate(a.classes):
        w.writerow([c] + [int(v) for v in a.counts[k]])
    w.writerow([])
    w.writerow(["area proportions: map \\ reference"] + list(a.classes))
    for k, c in enumerate(a.classes):
        w.writerow([c] + [_f(v) for v in a.proportions[k]])
    return buf.getvalue()


def _f(v) -> str:
    return "" if v is None or not np.isfinite(v) else f"{v:.6g}"


def _pct(e: A.Estimate) -> str:
    return "n/a" if not np.isfinite(e.value) else f"{e.value:.1%} &plusmn; {e.ci95:.1%}"


def html_report(a: A.Assessment, meta: dict) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in a.classes)
    rows = "".join(f"<tr><th>{esc(c)}</th>" + "".join(f"<td>{int(v)}</td>" for v in a.counts[k]) + "</tr>"
                   for k, c in enumerate(a.classes))
    prow = "".join(f"<tr><th>{esc(c)}</th>" + "".join(f"<td>{v:.4f}</td>" for v in a.proportions[k]) + "</tr>"
                   for k, c in enumerate(a.classes))
    f1 = a.f1()
    cls = "".join(
        f"<tr><td>{esc(c)}</td><td>{_pct(a.users[k])}</td><td>{_pct(a.producers[k])}</td><td>{_f(f1[k])}</td>"
        f"<td>{a.mapped_area(k):,.1f}</td><td>{a.area(k).value:,.1f} &plusmn; {a.area(k).ci95:,.1f}</td>"
        f"<td>{int(a.counts[k].sum())}</td><td>{int(a.counts[:, k].sum())}</td></tr>" for k, c in enumerate(a.classes))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Accuracy and area</title><style>body{font-family:"
        "sans-serif;max-width:60em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}table{border-collapse:"
        "collapse;margin:1em 0}</style></head><body>"
        f"<h1>Accuracy and area of {esc(Path(str(meta['map'])).name)}</h1>"
        f"<p>From {int(a.counts.sum())} labelled validation points ({esc(str(meta['points']))}), "
        f"<b>{esc(a.estimator)} estimator</b>, strata: {esc(meta['strata_source'])}. Intervals are 95 % confidence "
        "intervals (estimate &plusmn; 1.96 standard errors); estimators of Olofsson et al. (2014), Remote Sensing of "
        "Environment 148: 42-57, and Stehman (2014) for strata that are not the map's classes. These figures come "
        "from a sample the map did not choose; a figure computed from the training labels is not a map accuracy.</p>"
        f"<p><b>Overall accuracy: {_pct(a.overall)}</b></p>"
        f"<table><tr><th>class</th><th>user's accuracy</th><th>producer's accuracy</th><th>F1</th>"
        f"<th>mapped area ({esc(a.area_unit)})</th><th>estimated area ({esc(a.area_unit)})</th>"
        f"<th>points mapped as</th><th>points in reference</th></tr>{cls}</table>"
        f"<h2>Error matrix: sample counts (rows: map, columns: reference)</h2><table><tr><th></th>{head}</tr>{rows}"
        f"</table><h2>Error matrix: estimated area proportions</h2><table><tr><th></th>{head}</tr>{prow}</table>"
        f"<p>{meta.get('points_without_reference', 0)} point(s) without a reference and "
        f"{meta.get('points_off_the_map', 0)} off the map or on no data were left out.</p></body></html>")
