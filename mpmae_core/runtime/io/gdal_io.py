"""GDAL access for the runtime: opening rasters with messages a GIS analyst understands.

GDAL's exception mode is process-global and QGIS code relies on the default, so this module never
switches it: it checks return values, collects GDAL's own error text, and copes with either mode.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


class RasterError(ValueError):
    """A raster cannot be used as given. The message names the problem and the fix."""


def gdal():
    """The ``osgeo.gdal`` module, or a clear error saying how to install it."""
    try:
        from osgeo import gdal as _gdal
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RasterError(
            "GDAL's Python bindings (osgeo.gdal) are not installed. On Debian/Ubuntu: "
            "apt-get install python3-gdal (QGIS always ships them)."
        ) from exc
    return _gdal


def _is_gdal_path(source: str) -> bool:
    """True when ``source`` is a GDAL connection string rather than a plain file path."""
    return source.startswith("/vsi") or (":" in source.split("/")[0] and not Path(source).exists())


def open_raster(source: str | os.PathLike):
    """Open ``source`` read-only with GDAL, or raise :class:`RasterError` naming the problem."""
    g = gdal()
    source = os.fspath(source)
    if not _is_gdal_path(source):
        path = Path(source)
        if not path.exists():
            raise RasterError(f"The file '{source}' does not exist. Check the path (and that the drive is mounted).")
    g.PushErrorHandler("CPLQuietErrorHandler")
    g.ErrorReset()
    try:
        try:
            ds = g.Open(source, g.GA_ReadOnly)
        except RuntimeError as exc:  # GDAL in exception mode
            ds, detail = None, str(exc)
        else:
            detail = g.GetLastErrorMsg()
    finally:
        g.PopErrorHandler()
    if ds is None:
        why = f" (GDAL says: {detail.strip()})" if detail and detail.strip() else ""
        raise RasterError(
            f"'{source}' is not a raster GDAL can read{why}. Give a raster file such as a GeoTIFF (.tif), "
            "a VRT or a JPEG2000; vector files and archives must be converted first."
        )
    if ds.RasterCount == 0:
        subs = ds.GetSubDatasets()
        hint = (
            f" It holds {len(subs)} subdatasets; open one of them, e.g. '{subs[0][0]}'." if subs else ""
        )
        raise RasterError(f"'{source}' opens with GDAL but has no raster bands.{hint}")
    return ds


class GdalErrors(list):
    """GDAL error messages (failures and worse) collected while a block ran."""

    def text(self) -> str:
        return "; ".join(dict.fromkeys(m.strip() for m in self if m and m.strip())) or "no reason given"

    @property
    def disk_full(self) -> bool:
        t = self.text().lower()
        return "no space left" in t or "disk space" in t or "free disk" in t


@contextlib.contextmanager
def gdal_errors() -> Iterator[GdalErrors]:
    """Collect, quietly, the errors GDAL reports inside the block (this thread only).

    Works whether or not GDAL's exception mode is on: an exception GDAL raises is recorded and
    swallowed, so callers check ``errors`` (and return values) after the block.
    """
    g = gdal()
    errors = GdalErrors()

    def handler(err_class, err_no, message):
        # GDAL 3.6 reports the padding of partial float16 blocks (outside the raster, never read) as
        # out of range; values inside are clipped to float16's range before they are written.
        if "beyond range of float16" in str(message):
            return
        if err_class >= g.CE_Failure:
            errors.append(str(message))

    g.PushErrorHandler(handler)
    try:
        try:
            yield errors
        except RuntimeError as exc:  # exception mode
            errors.append(str(exc))
    finally:
        g.PopErrorHandler()


def data_type_name(gdal_type: int) -> str:
    return gdal().GetDataTypeName(gdal_type)


def grids_match(gt_a, gt_b, width: int, height: int, tol: float = 1e-3) -> bool:
    """Whether two geotransforms put every pixel edge of a ``width`` x ``height`` raster in the same
    place, within ``tol`` of a pixel: the origins, and the far corner (where a pixel size off by a
    little has added up over the whole raster). A comparison relative to the coordinates themselves
    would not do: at a UTM northing of 5.8e6 m, ``np.allclose``'s 1e-5 lets two 10 m grids differ by
    58 m, almost six pixels."""
    px, py = abs(gt_a[1]) or 1.0, abs(gt_a[5]) or 1.0
    corners = [(0, 0), (width, 0), (0, height), (width, height)]
    for col, row in corners:
        xa, ya = gt_a[0] + col * gt_a[1] + row * gt_a[2], gt_a[3] + col * gt_a[4] + row * gt_a[5]
        xb, yb = gt_b[0] + col * gt_b[1] + row * gt_b[2], gt_b[3] + col * gt_b[4] + row * gt_b[5]
        if not (abs(xa - xb) <= tol * px and abs(ya - yb) <= tol * py):
            return False
    return True


def same_grid(a, b) -> bool:
    """Whether two GDAL datasets lie on one grid: the same size and CRS, and every pixel edge in the
    same place within a thousandth of a pixel (``grids_match``)."""
    from osgeo import osr

    if (a.RasterXSize, a.RasterYSize) != (b.RasterXSize, b.RasterYSize):
        return False
    if not grids_match(a.GetGeoTransform(), b.GetGeoTransform(), a.RasterXSize, a.RasterYSize):
        return False
    return bool(osr.SpatialReference(wkt=a.GetProjection() or "").IsSame(osr.SpatialReference(wkt=b.GetProjection()
                                                                                               or "")))
