"""Labelled points and polygons -> the cells of an embedding grid they cover (GDAL/OGR, no QGIS).

Geometries come as WKB already in the grid's CRS (the QGIS plugin reprojects them; the command
line reads them with OGR). A point labels the cell it falls in; a polygon labels the cells whose
centres it contains, or, when it is smaller than a cell, the cells it touches. Features outside
the grid, or over cells without data, are reported so the caller can warn and skip them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelCells:
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray  # class index per cell
    groups: np.ndarray  # feature number per cell (for grouped cross-validation)
    outside: list = field(default_factory=list)  # feature numbers with no cell inside the grid
    empty: list = field(default_factory=list)  # feature numbers without a geometry


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


def label_cells(features, geotransform, width: int, height: int) -> LabelCells:
    """``features``: iterable of (wkb bytes or None, class index). Returns every labelled cell."""
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
            cells = [_grid_cell(gt, p.GetX(), p.GetY()) for p in parts]
            cells = [(r, c) for c, r in cells if 0 <= c < width and 0 <= r < height]
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
    return LabelCells(cat(rows, np.int64), cat(cols, np.int64), cat(classes, np.int64), cat(groups, np.int64),
                      outside, empty)


def read_cells(path, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Values (n, bands) of a raster at cells, reading only the window that holds them; NaN nodata."""
    from mpmae_core.runtime.gdal_io import open_raster

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


def label_window(features, geotransform, width: int, height: int, margin: int, multiple: int):
    """The pixel window (x0, y0, w, h) holding every labelled geometry plus ``margin`` pixels of
    context, with its origin and size on the ``multiple`` grid (the model's patches stay aligned
    with the full raster's), clipped to the raster; None when no geometry touches the raster.
    ``features``: iterable of (WKB in the raster's CRS, anything)."""
    from osgeo import ogr

    gt = geotransform
    xs, ys = [], []
    for wkb, _ in features:
        geom = ogr.CreateGeometryFromWkb(bytes(wkb)) if wkb else None
        if geom is None or geom.IsEmpty():
            continue
        minx, maxx, miny, maxy = geom.GetEnvelope()
        for x, y in ((minx, miny), (maxx, maxy)):
            c, r = _grid_cell(gt, x, y)
            xs.append(c)
            ys.append(r)
    if not xs:
        return None
    x0, x1 = max(min(xs) - margin, 0), min(max(xs) + 1 + margin, width)
    y0, y1 = max(min(ys) - margin, 0), min(max(ys) + 1 + margin, height)
    if x1 <= x0 or y1 <= y0:
        return None
    x0, y0 = x0 - x0 % multiple, y0 - y0 % multiple
    x1 = min(x1 + (-x1) % multiple, width)
    y1 = min(y1 + (-y1) % multiple, height)
    return x0, y0, x1 - x0, y1 - y0


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
