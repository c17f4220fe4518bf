"""Labelled points and polygons -> the cells of an embedding grid they cover (GDAL/OGR, no QGIS).

Geometries come as WKB already in the grid's CRS (the QGIS plugin reprojects them; the command
line reads them with OGR). The grid is a raster's own pixel grid (per-pixel heads) or an
embedding grid. A point labels the cell it falls in, and with a buffer every cell whose centre
lies within that distance; a polygon labels the cells whose centres it contains, or, when it is
smaller than a cell, the cells it touches. Features outside the grid, or over cells without data,
are reported so the caller can warn and skip them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


MAX_LABEL_CLASS = 254  # class maps are one byte with 255 as no data (metadata.MAX_CLASSES)


class LabelError(ValueError):
    """Labels that cannot be used; the message names the problem and the fix."""


@dataclass
class LabelCells:
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray  # class index per cell
    groups: np.ndarray  # feature number per cell (for grouped cross-validation)
    outside: list = field(default_factory=list)  # feature numbers with no cell inside the grid
    empty: list = field(default_factory=list)  # feature numbers without a geometry
    #: (class a, class b, cells): places labelled with two classes (dropped from the cells above)
    conflicts: list = field(default_factory=list)

    def conflict_warning(self, class_names) -> str:
        """A warning naming the classes labelled at the same places ('' when there are none)."""
        if not self.conflicts:
            return ""
        name = (lambda i: class_names[i] if 0 <= i < len(class_names) else f"class {i}")
        pairs = "; ".join(f"{name(a)} and {name(b)} at {n} pixel(s)" for a, b, n in self.conflicts[:5])
        more = f" (and {len(self.conflicts) - 5} more pairs)" if len(self.conflicts) > 5 else ""
        total = sum(n for _, _, n in self.conflicts)
        return (f"warning: {total} labelled pixel(s) carry two different classes ({pairs}{more}): overlapping "
                "features of different classes, or one feature duplicated with another class. Those pixels were left "
                "out; fix the labels so each place has one class")


def conflicting_cells(rows: np.ndarray, cols: np.ndarray, classes: np.ndarray, width: int):
    """(mask of cells whose place is labelled with more than one class, [(class a, class b, places)]).
    Sort-based: O(n log n) in the number of labelled cells, whatever the overlap."""
    n = len(rows)
    if n == 0:
        return np.zeros(0, bool), []
    key = rows.astype(np.int64) * (int(width) + 1) + cols.astype(np.int64)
    order = np.lexsort((classes, key))
    k, c = key[order], classes[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    lo = np.minimum.reduceat(c, starts)
    hi = np.maximum.reduceat(c, starts)
    bad_place = lo != hi
    sizes = np.diff(np.r_[starts, n])
    mask_sorted = np.repeat(bad_place, sizes)
    mask = np.empty(n, bool)
    mask[order] = mask_sorted
    pairs: dict = {}
    for a, b in zip(lo[bad_place].tolist(), hi[bad_place].tolist()):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    return mask, sorted(((a, b, m) for (a, b), m in pairs.items()), key=lambda t: -t[2])


def _grid_cell(gt, x, y):
    return int(np.floor((x - gt[0]) / gt[1])), int(np.floor((y - gt[3]) / gt[5]))


def _polygon_cells(geom, gt, width, height, all_touched: bool):
    """Cells (rows, cols) of ``geom`` in the grid, rasterized in a window around its envelope."""
    from osgeo import gdal, ogr, osr

    minx, maxx, miny, maxy = geom.GetEnvelope()
    c0, r0 = _grid_cell(gt, minx, maxy if gt[5] < 0 else miny)
    c1, r1 = _grid_cell(gt, maxx, miny if gt[5] < 0 else maxy)
    c0, r0 = max(c0 - 1, 0), max(r0 - 1, 0)
    c1, r1 = min(c1 + 1, width - 1), min(r1 + 1, height - 1)
    if c1 < c0 or r1 < r0:
        return np.empty(0, int), np.empty(0, int)
    mem = gdal.GetDriverByName("MEM").Create("", c1 - c0 + 1, r1 - r0 + 1, 1, gdal.GDT_Byte)
    mem.SetGeoTransform((gt[0] + c0 * gt[1], gt[1], 0.0, gt[3] + r0 * gt[5], 0.0, gt[5]))
    local = osr.SpatialReference()  # geometry and grid share one (already common) CRS: no transform
    local.SetLocalCS("grid")
    mem.SetSpatialRef(local)
    src = ogr.GetDriverByName("Memory").CreateDataSource("")
    layer = src.CreateLayer("f", srs=local, geom_type=geom.GetGeometryType())
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(geom)
    layer.CreateFeature(feat)
    options = ["ALL_TOUCHED=TRUE"] if all_touched else []
    gdal.RasterizeLayer(mem, [1], layer, burn_values=[1], options=options)
    rr, cc = np.nonzero(mem.GetRasterBand(1).ReadAsArray())
    return rr + r0, cc + c0


def _buffer_cells(gt, x: float, y: float, radius: float, width: int, height: int):
    """Cells whose centres lie within ``radius`` (CRS units) of (x, y), always the cell holding it."""
    c, r = _grid_cell(gt, x, y)
    rc = int(np.ceil(radius / abs(gt[1]))) + 1
    rr_ = int(np.ceil(radius / abs(gt[5]))) + 1
    rows, cols = np.mgrid[r - rr_:r + rr_ + 1, c - rc:c + rc + 1]
    cx = gt[0] + (cols + 0.5) * gt[1]
    cy = gt[3] + (rows + 0.5) * gt[5]
    near = ((cx - x) ** 2 + (cy - y) ** 2 <= radius ** 2) | ((rows == r) & (cols == c))
    near &= (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    return rows[near], cols[near]


def label_cells(features, geotransform, width: int, height: int, point_buffer: float = 0.0) -> LabelCells:
    """``features``: iterable of (wkb bytes or None, class index). Returns every labelled cell;
    with ``point_buffer`` (CRS units, metres for projected rasters) a point labels the cells
    within that distance too."""
    from osgeo import ogr

    gt = geotransform
    rows, cols, classes, groups, outside, empty = [], [], [], [], [], []
    for number, (wkb, cls) in enumerate(features):
        geom = ogr.CreateGeometryFromWkb(bytes(wkb)) if wkb else None
        if geom is None or geom.IsEmpty():
            empty.append(number)
            continue
        flat = ogr.GT_Flatten(geom.GetGeometryType())
        if flat in (ogr.wkbPoint, ogr.wkbMultiPoint):
            parts = [geom] if flat == ogr.wkbPoint else [geom.GetGeometryRef(i) for i in range(geom.GetGeometryCount())]
            if point_buffer > 0:
                found = [_buffer_cells(gt, p.GetX(), p.GetY(), point_buffer, width, height) for p in parts]
                pairs = sorted({(int(r), int(c)) for rows_, cols_ in found for r, c in zip(rows_, cols_)})
                rr = np.array([r for r, _ in pairs], int)
                cc = np.array([c for _, c in pairs], int)
            else:
                cells = [_grid_cell(gt, p.GetX(), p.GetY()) for p in parts]
                cells = sorted({(r, c) for c, r in cells if 0 <= c < width and 0 <= r < height})
                rr = np.array([r for r, _ in cells], int)
                cc = np.array([c for _, c in cells], int)
        else:
            rr, cc = _polygon_cells(geom, gt, width, height, all_touched=False)
            if rr.size == 0:
                rr, cc = _polygon_cells(geom, gt, width, height, all_touched=True)
        if rr.size == 0:
            outside.append(number)
            continue
        rows.append(rr)
        cols.append(cc)
        classes.append(np.full(rr.size, cls, np.int64))
        groups.append(np.full(rr.size, number, np.int64))
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt))
    rows, cols, classes, groups = cat(rows, np.int64), cat(cols, np.int64), cat(classes, np.int64), cat(groups, np.int64)
    bad, conflicts = conflicting_cells(rows, cols, classes, width)
    keep = ~bad
    return LabelCells(rows[keep], cols[keep], classes[keep], groups[keep], outside, empty, conflicts)


def read_cells(path, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values (n, bands) of a raster at cells, reading only the window that holds them; NaN nodata."""
    from mpmae_core.runtime.io.gdal_io import open_raster

    ds = open_raster(path)
    n = ds.RasterCount
    if rows.size == 0:
        return np.empty((0, n), np.float32)
    r0, r1, c0, c1 = int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    block = ds.ReadAsArray(c0, r0, c1 - c0 + 1, r1 - r0 + 1).astype(np.float32).reshape(n, r1 - r0 + 1, c1 - c0 + 1)
    for b in range(n):
        nd = ds.GetRasterBand(b + 1).GetNoDataValue()
        if nd is not None and not np.isnan(nd):
            block[b][block[b] == nd] = np.nan
    return block[:, rows - r0, cols - c0].T.copy()


def read_pixels(path, rows: np.ndarray, cols: np.ndarray, window: int = 256) -> np.ndarray:
    """Values (n, bands) of a raster at scattered pixels, reading only the ``window``-sized squares
    that hold them (a feature raster may have hundreds of bands); NaN nodata."""
    from mpmae_core.runtime.io.gdal_io import open_raster

    ds = open_raster(path)
    n = ds.RasterCount
    out = np.full((rows.size, n), np.nan, np.float32)
    keys = (rows // window) * (ds.RasterXSize // window + 1) + cols // window
    nodata = [ds.GetRasterBand(b + 1).GetNoDataValue() for b in range(n)]
    for key in np.unique(keys):
        sel = np.flatnonzero(keys == key)
        r0, c0 = int(rows[sel].min()), int(cols[sel].min())
        r1, c1 = int(rows[sel].max()) + 1, int(cols[sel].max()) + 1
        block = ds.ReadAsArray(c0, r0, c1 - c0, r1 - r0)
        if block is None:
            from mpmae_core.runtime.io.gdal_io import RasterError

            raise RasterError(f"could not read '{path}' at x {c0}..{c1 - 1}, y {r0}..{r1 - 1}: the file is damaged")
        block = block.astype(np.float32).reshape(n, r1 - r0, c1 - c0)
        vals = block[:, rows[sel] - r0, cols[sel] - c0].T
        for b, nd in enumerate(nodata):
            if nd is not None and not np.isnan(nd):
                vals[vals[:, b] == nd, b] = np.nan
        out[sel] = vals
    return out


def window_labels(labels: np.ndarray, window: int, nodata: int = 0, min_share: float = 0.5) -> np.ndarray:
    """(rows, cols) class of each ``window`` x ``window`` block: the class covering at least
    ``min_share`` of the block's pixels, else ``nodata``."""
    h, w = labels.shape[0] // window, labels.shape[1] // window
    blocks = labels[:h * window, :w * window].reshape(h, window, w, window).transpose(0, 2, 1, 3).reshape(h, w, -1)
    out = np.full((h, w), nodata, labels.dtype)
    for c in np.unique(labels):
        if c == nodata:
            continue
        share = (blocks == c).mean(-1)
        out[share >= min_share] = c
    return out


def cap_per_class_grouped(y: np.ndarray, groups: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Indices keeping at most ``cap`` samples per class (random, seeded), in original order; every
    labelled feature keeps at least one sample (while the cap allows), so none vanishes from
    cross-validation because a big polygon of its class fills the cap."""
    y, groups = np.asarray(y), np.asarray(groups)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) <= cap:
            keep.append(idx)
            continue
        order = rng.permutation(idx)
        _, first = np.unique(groups[order], return_index=True)
        firsts = order[np.sort(first)][:cap]
        rest = np.setdiff1d(order, firsts, assume_unique=True)
        rest = rng.permutation(rest)[:cap - len(firsts)]
        keep.append(np.concatenate([firsts, rest]))
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, np.int64)


def open_layer(path, layer_name: str, field: str, what: str, fix: str):
    """(OGR dataset, layer) of a vector file whose layer has ``field``; RasterError naming what is
    wrong otherwise. Keep the dataset while the layer is used (OGR frees the layer with it)."""
    from osgeo import ogr

    from mpmae_core.runtime.io.gdal_io import RasterError

    ds = ogr.Open(str(path))
    if ds is None:
        raise RasterError(f"'{path}' is not a vector file OGR can read (GeoPackage, Shapefile, GeoJSON, ...)")
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise RasterError(f"'{path}' has no layer {layer_name!r}")
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    if field and field not in fields:
        raise RasterError(f"{what} in '{path}' have no field '{field}'; they have {', '.join(fields)} ({fix})")
    return ds, layer


def read_label_file(path, class_field: str, target_wkt: str, layer_name: str = ""):
    """Labelled features of a vector file, reprojected to ``target_wkt``: ([(wkb, class index)],
    class names in a natural order, feature ids); without a ``class_field`` every feature is of one
    class ("query": query points). Features without a geometry or class value are
    skipped (and counted in the returned notes); an undefined CRS is an error naming the fix."""
    from osgeo import osr

    from mpmae_core.runtime.io.gdal_io import RasterError

    ds, layer = open_layer(path, layer_name, class_field, "the labels", "choose the class field with --class-field")
    check_has_geometry(layer, path, RasterError)
    src = layer.GetSpatialRef()
    name = (src.GetName() or "").lower() if src is not None else ""
    if src is None or (not src.GetAuthorityCode(None) and ("unknown" in name or "undefined" in name)):
        raise RasterError(f"the labels in '{path}' have no defined CRS: assign one (QGIS: Layer Properties > Source, "
                          "or ogr2ogr -a_srs EPSG:NNNN) so the features can be placed on the raster")
    dst = osr.SpatialReference(wkt=target_wkt)
    for srs in (src, dst):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = None if src.IsSame(dst) else osr.CoordinateTransformation(src, dst)
    raw, notes = [], {"no_geometry": 0, "no_class": 0}
    for feat in layer:
        geom = feat.GetGeometryRef()
        value = feat.GetField(class_field) if class_field else "query"
        if geom is None or geom.IsEmpty():
            notes["no_geometry"] += 1
            continue
        if value is None or str(value).strip() == "":
            notes["no_class"] += 1
            continue
        geom = geom.Clone()
        if transform is not None and (geom.Transform(transform) != 0 or not _finite_envelope(geom)):
            raise RasterError(f"the labels in '{path}' cannot be placed on the raster: their CRS ({src.GetName()}) does "
                              "not transform to the raster's. Check the layer's CRS (ogrinfo -so) and assign the right "
                              "one (ogr2ogr -a_srs EPSG:NNNN)")
        raw.append((bytes(geom.ExportToWkb()), str(value).strip(), feat.GetFID()))
    distinct = sorted({v for _, v, _ in raw}, key=_natural_key)
    index = {n: i for i, n in enumerate(distinct)}
    return [(w, index[v]) for w, v, _ in raw], distinct, [fid for _, _, fid in raw], notes


#: field names that usually hold classes, best first (matched case-insensitively, whole or as a part)
CLASS_FIELD_NAMES = ("class", "classname", "class_name", "landuse", "land_use", "landcover", "land_cover", "label",
                     "lc", "lulc", "category", "type", "name")
#: field names that never hold classes: feature ids
ID_FIELD_NAMES = ("fid", "id", "ogc_fid", "objectid", "gid", "pk", "rowid")


def suggest_class_field(fields) -> str:
    """The field that most likely holds the classes, from ``fields`` [(name, is_text)]: a field named
    like a class (``CLASS_FIELD_NAMES``; text before numbers), else the first text field, else the
    first field that is not an id; never an id field such as fid. '' when none fits."""
    usable = [(str(n), bool(t)) for n, t in fields if str(n).lower() not in ID_FIELD_NAMES]

    def rank(item):
        name, is_text = item
        low = name.lower()
        exact = next((i for i, c in enumerate(CLASS_FIELD_NAMES) if low == c), None)
        part = next((i for i, c in enumerate(CLASS_FIELD_NAMES) if len(c) > 2 and c in low), None)
        named = exact if exact is not None else (len(CLASS_FIELD_NAMES) + part if part is not None else None)
        return (named is None, named if named is not None else 0, not is_text)

    if not usable:
        return ""
    best = min(usable, key=rank)
    return best[0]


def check_has_geometry(layer, path, error=LabelError) -> None:
    """A table without geometry (a CSV of names or of coordinates) cannot place labels: say how to
    make it a layer of points, instead of asking for a CRS it cannot use."""
    from osgeo import ogr

    if layer.GetGeomType() != ogr.wkbNone:
        return
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    raise error(f"'{path}' is a table without geometry (fields {', '.join(fields[:8])}): labels need points or "
                "polygons. For a CSV with coordinate columns, make it a point layer with its CRS (QGIS: Layer > Add "
                "Layer > Add Delimited Text Layer, then Export > Save Features As GeoPackage; or ogr2ogr -f GPKG "
                "labels.gpkg FILE.csv -oo X_POSSIBLE_NAMES=x -oo Y_POSSIBLE_NAMES=y -a_srs EPSG:NNNN)")


def _finite_envelope(geom) -> bool:
    return all(np.isfinite(v) for v in geom.GetEnvelope())


def _natural_key(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text.casefold())


def labels_on_grid(path, prep, class_field: str = "") -> tuple[np.ndarray, list]:
    """(H, W) int labels on the image's grid (0 = unlabelled) and names of classes 1..K."""
    from pathlib import Path

    from osgeo import gdal, ogr

    from mpmae_core.runtime.io.gdal_io import grids_match

    path = Path(path)
    if not path.exists():
        raise LabelError(f"label file '{path}' does not exist")
    ds = gdal.OpenEx(str(path))
    if ds is None:
        raise LabelError(f"'{path}' is neither a raster nor a vector file GDAL can read")
    if ds.RasterCount:
        if (ds.RasterXSize, ds.RasterYSize) != (prep.width, prep.height) or \
                not grids_match(ds.GetGeoTransform(), prep.geotransform, prep.width, prep.height):
            raise LabelError(f"the label raster '{path}' is not on the image's grid ({prep.width} x {prep.height} "
                                  "px, same geotransform): resample it onto the image first (gdalwarp -te ... -tr ...)")
        band = ds.GetRasterBand(1)
        nd = band.GetNoDataValue()
        lab = band.ReadAsArray().astype(np.int64)
        if nd is not None and nd != 0:
            lab[lab == nd] = 0
        if lab.min() < 0:
            raise LabelError("label values must be 0 (unlabelled) or positive class numbers")
        k = int(lab.max())
        if k > MAX_LABEL_CLASS:
            distinct = int(np.unique(lab[lab > 0]).size)
            raise LabelError(f"the label raster '{path}' holds values up to {k} ({distinct} distinct values): a label "
                             f"raster holds class numbers 1..{MAX_LABEL_CLASS} with 0 for unlabelled. This looks like "
                             "an image, not labels: give the raster of class numbers (or a vector file with a class "
                             "field)")
        cats = band.GetCategoryNames() or []
        names = [cats[v] if v < len(cats) and cats[v] else f"class {v}" for v in range(1, k + 1)]
        return lab, names
    if not class_field:
        raise LabelError(f"'{path}' is a vector file: give --class-field, the field holding the classes")
    layer = ds.GetLayer(0)
    check_has_geometry(layer, path)
    if layer.GetLayerDefn().GetFieldIndex(class_field) < 0:
        fields = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
        raise LabelError(f"'{path}' has no field '{class_field}'; it has {', '.join(fields)}")
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
