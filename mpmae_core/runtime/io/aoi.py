"""An area of interest: read, reprojected onto a raster, turned into a pixel window and a mask.

Given as a vector file (every polygon of its first layer, or of ``path|layername``), or as an
extent ``xmin,ymin,xmax,ymax`` in the raster's CRS, or ``xmin,ymin,xmax,ymax,EPSG:NNNN`` in
another. Reading, compute and outputs are then cut to the smallest pixel window holding the area,
and pixels of that window outside a polygon are no data: time and memory follow the area.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpmae_core.runtime.io.gdal_io import RasterError

_EXTENT = re.compile(r"^\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*"
                     r"(?:,\s*(EPSG:\d+))?\s*$", re.I)
AOI_OPTION = "the area of interest (--aoi on the command line, 'Area of interest' in QGIS)"


class AoiError(RasterError):
    """An area of interest that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Area:
    """Polygons already read (by QGIS, from any layer or a selection): WKB geometries in a CRS."""

    wkbs: tuple  # bytes per feature
    crs_wkt: str
    title: str = "the layer's polygons"

    def __str__(self) -> str:
        return self.title


def read_aoi(aoi, raster_wkt: str):
    """The area of interest as one OGR geometry in the raster's CRS."""
    from osgeo import ogr, osr

    target = osr.SpatialReference()
    target.ImportFromWkt(raster_wkt)
    target.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    if isinstance(aoi, Area):
        return area_geometry(aoi, target)
    text = str(aoi)
    m = _EXTENT.match(text)
    if m:
        try:
            x0, y0, x1, y1 = (float(v) for v in m.groups()[:4])
        except ValueError:
            raise AoiError(f"the area of interest {text!r} is not four numbers xmin,ymin,xmax,ymax") from None
        if not (x0 < x1 and y0 < y1) or not all(np.isfinite([x0, y0, x1, y1])):
            raise AoiError(f"the area of interest {text!r} is empty: give xmin,ymin,xmax,ymax with xmin < xmax and "
                           "ymin < ymax")
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)):
            ring.AddPoint_2D(x, y)
        geom = ogr.Geometry(ogr.wkbPolygon)
        geom.AddGeometry(ring)
        if m.group(5):
            src = osr.SpatialReference()
            if src.ImportFromEPSG(int(m.group(5).split(":")[1])) != 0:
                raise AoiError(f"unknown CRS {m.group(5)} in the area of interest")
            src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
            geom.Segmentize(max(x1 - x0, y1 - y0) / 64)  # a reprojected extent bends
            _transform(geom, src, target, text)
        return geom
    path, _, layer_name = text.partition("|")
    layer_name = layer_name.split("|")[0]
    if layer_name.startswith("layername="):  # a QGIS layer source: path|layername=name
        layer_name = layer_name[len("layername="):]
    if not Path(path).exists():
        raise AoiError(f"the area of interest '{path}' does not exist: give a polygon layer (GeoPackage, Shapefile, "
                       "GeoJSON ...) or an extent xmin,ymin,xmax,ymax")
    ds = ogr.Open(path)
    if ds is None:
        raise AoiError(f"the area of interest '{path}' is not a vector file OGR can read")
    layer = ds.GetLayerByName(layer_name) if layer_name else ds.GetLayer(0)
    if layer is None:
        raise AoiError(f"'{path}' has no layer {layer_name!r}")
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    src = layer.GetSpatialRef()
    if src is not None:
        src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    for feat in layer:
        g = feat.GetGeometryRef()
        if g is None or g.IsEmpty() or g.GetDimension() < 2:
            continue  # points and lines enclose no area
        g = ogr.ForceToMultiPolygon(g.Clone())  # curves and surfaces too
        if src is not None:
            _transform(g, src, target, path)
        for i in range(g.GetGeometryCount()):
            parts.AddGeometry(g.GetGeometryRef(i))
    union = parts.UnionCascaded() if not parts.IsEmpty() else parts  # once, not feature by feature
    if union is None or union.IsEmpty():
        raise AoiError(f"'{path}' holds no polygon: an area of interest needs polygons (or give an extent "
                       "xmin,ymin,xmax,ymax)")
    return union


def area_geometry(area: Area, target):
    from osgeo import ogr, osr

    src = osr.SpatialReference()
    if not area.crs_wkt or src.ImportFromWkt(area.crs_wkt) != 0:
        raise AoiError(f"{area.title} have no CRS: set the layer's CRS")
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    parts = ogr.Geometry(ogr.wkbMultiPolygon)
    for wkb in area.wkbs:
        g = ogr.CreateGeometryFromWkb(bytes(wkb))
        if g is None or g.IsEmpty() or g.GetDimension() < 2:
            continue
        g = ogr.ForceToMultiPolygon(g)
        _transform(g, src, target, area.title)
        for i in range(g.GetGeometryCount()):
            parts.AddGeometry(g.GetGeometryRef(i))
    union = parts.UnionCascaded() if not parts.IsEmpty() else parts
    if union is None or union.IsEmpty():
        raise AoiError(f"{area.title} hold no polygon: an area of interest needs polygons (or give an extent)")
    return union


def _transform(geom, src, target, what) -> None:
    from osgeo import osr

    if src.IsSame(target):
        return
    tr = osr.CoordinateTransformation(src, target)
    if geom.Transform(tr) != 0:
        raise AoiError(f"the area of interest {what!r} cannot be reprojected onto the raster's CRS")
    env = geom.GetEnvelope()
    if not all(np.isfinite(env)):
        raise AoiError(f"the area of interest {what!r} lies where the raster's CRS is not defined")


def aoi_window(geom, gt, width: int, height: int, align: int = 1) -> tuple[int, int, int, int]:
    """(x, y, w, h): the smallest pixel window of the raster (north-up) that holds the area, its
    corners on the raster's grid of ``align`` pixels (a model's patches then fall where they fall
    on the whole raster, so the area's map matches the whole map's cells)."""
    x0, x1, y0, y1 = geom.GetEnvelope()
    c0 = int(np.floor((x0 - gt[0]) / gt[1]))
    c1 = int(np.ceil((x1 - gt[0]) / gt[1]))
    r0 = int(np.floor((y1 - gt[3]) / gt[5]))
    r1 = int(np.ceil((y0 - gt[3]) / gt[5]))
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, width), min(r1, height)
    if c1 > c0 and r1 > r0 and align > 1:
        c0, r0 = c0 // align * align, r0 // align * align
        c1, r1 = min(-(-c1 // align) * align, width), min(-(-r1 // align) * align, height)
    if c1 <= c0 or r1 <= r0:
        raise AoiError(f"the area of interest lies outside the raster (its extent {x0:.1f}, {y0:.1f} .. {x1:.1f}, "
                       f"{y1:.1f} in the raster's CRS): check that both show the same place, and the AOI's CRS")
    return c0, r0, c1 - c0, r1 - r0


@dataclass
class PolygonMask:
    """Polygons rasterised on a window: the pixels outside them are masked (no data), as for an
    area of interest; or, with ``masks_inside``, the pixels inside them (a user's mask polygons)."""

    inside: np.ndarray  # (h, w) bool on the window's grid
    title: str = "area of interest"
    masks_inside: bool = False

    def masked(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        part = self.inside[y:y + h, x:x + w]
        return part if self.masks_inside else ~part


def polygon_mask(geom, gt, width: int, height: int) -> PolygonMask:
    """Rasterise the area onto a window's grid (pixel centres inside)."""
    from osgeo import gdal, ogr, osr

    mem = gdal.GetDriverByName("MEM").Create("", width, height, 1, gdal.GDT_Byte)
    mem.SetGeoTransform(list(gt))
    drv = ogr.GetDriverByName("Memory")
    vds = drv.CreateDataSource("aoi")
    layer = vds.CreateLayer("aoi", srs=osr.SpatialReference(), geom_type=ogr.wkbMultiPolygon)
    feat = ogr.Feature(layer.GetLayerDefn())
    feat.SetGeometry(geom)
    layer.CreateFeature(feat)
    gdal.RasterizeLayer(mem, [1], layer, burn_values=[1])
    return PolygonMask(mem.ReadAsArray().astype(bool))


@dataclass
class Masks:
    """Several masks as one: a pixel is masked when any of them masks it."""

    parts: list

    @property
    def spec(self):  # the first with a spec (the product's), for messages
        return next((p.spec for p in self.parts if getattr(p, "spec", None) is not None), None)

    def masked(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.zeros((h, w), bool)
        for p in self.parts:
            out |= p.masked(x, y, w, h)
        return out
