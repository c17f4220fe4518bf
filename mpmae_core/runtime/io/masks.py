"""What else is no data: the user's choice of masks on top of what the pixels themselves say.

- the product's own quality layer (on by default; the registry's MaskSpec says which values mask),
  with snow optionally masked too;
- the L2A cloud probability above a threshold, besides the scene classification;
- a mask the user gives: a raster on the input's grid (non-zero masks) or a polygon layer (inside
  masks), in any CRS;
- a dilation by N pixels of all of these, because cloud edges leak into their neighbours.

Each part answers ``masked(x, y, w, h)`` on the input's grid; ``MaskOptions.build`` puts them
together for ``prepare_input``. The area of interest (io.aoi) is not dilated: it cuts, it does
not leak.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.gdal_io import RasterError

#: The most pixels a mask may be dilated by (a cloud's edge, not a cloud's size).
MAX_DILATION = 100
MASK_OPTION = "the mask (--mask on the command line, 'Mask' in QGIS)"


class MaskError(RasterError):
    """A mask option that cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class MaskOptions:
    """Which masks make pixels no data (beyond the raster's own no-data value)."""

    product: bool = True  # the product's quality layer (SCL, or MSK_CLASSI for L1C)
    snow: bool = False  # snow and ice masked too (SCL 11, MSK_CLASSI's snow flag)
    cloud_probability: Optional[float] = None  # also MSK_CLDPRB >= this (percent), for L2A
    user: object = None  # a raster or polygon-layer path, or an io.aoi.Area of polygons in a CRS
    dilate: int = 0  # pixels

    def __post_init__(self):
        if not isinstance(self.dilate, int) or isinstance(self.dilate, bool) or not 0 <= self.dilate <= MAX_DILATION:
            raise MaskError(f"the mask dilation must be a whole number of pixels from 0 to {MAX_DILATION}, got "
                            f"{self.dilate!r}")
        p = self.cloud_probability
        if p is not None and not (isinstance(p, (int, float)) and 0 < float(p) <= 100):
            raise MaskError(f"the cloud probability threshold must be a percentage above 0 and at most 100, got {p!r}")

    def describe(self) -> str:
        parts = []
        if not self.product:
            parts.append("the product's quality layer is not applied")
        if self.snow:
            parts.append("snow masked")
        if self.cloud_probability is not None:
            parts.append(f"cloud probability >= {self.cloud_probability:g} % masked")
        if self.user:
            parts.append("a user mask")
        if self.dilate:
            parts.append(f"masks dilated by {self.dilate} px")
        return "; ".join(parts)


def dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """``mask`` grown by ``n`` pixels in every direction (a square of side 2n+1): a pixel is masked
    when any pixel within n rows and n columns of it is. Pure; separable (rows, then columns)."""
    if n <= 0 or not mask.any():
        return mask.copy()
    h, w = mask.shape
    rows = mask.copy()
    for k in range(1, n + 1):
        if k < h:
            rows[k:] |= mask[:-k]
            rows[:-k] |= mask[k:]
    out = rows.copy()
    for k in range(1, n + 1):
        if k < w:
            out[:, k:] |= rows[:, :-k]
            out[:, :-k] |= rows[:, k:]
    return out


@dataclass
class Dilated:
    """Another mask grown by ``n`` pixels: it reads the window ``n`` pixels wider (within the raster)."""

    inner: object
    n: int
    width: int
    height: int

    @property
    def spec(self):
        return getattr(self.inner, "spec", None)

    def masked(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        x0, y0 = max(x - self.n, 0), max(y - self.n, 0)
        x1, y1 = min(x + w + self.n, self.width), min(y + h + self.n, self.height)
        big = dilate(self.inner.masked(x0, y0, x1 - x0, y1 - y0), self.n)
        return big[y - y0:y - y0 + h, x - x0:x - x0 + w]


@dataclass
class RasterMask:
    """A user's mask raster on the input's grid: non-zero (and not its no-data value) masks."""

    ds: object
    path: str
    spec: object = None
    title: str = "mask raster"

    def masked(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        from mpmae_core.runtime.io.gdal_io import gdal_errors

        band = self.ds.GetRasterBand(1)
        with gdal_errors() as errors:
            arr = band.ReadAsArray(x, y, w, h)
        if arr is None or errors:
            raise MaskError(f"could not read the mask '{self.path}' (window x {x}, y {y}; GDAL says: "
                            f"{errors.text()}): it is damaged; export it again")
        nd = band.GetNoDataValue()
        out = arr != 0
        if nd is not None:
            out &= arr != nd
        return out


def _same_grid_window(mask_ds, ds, path: str):
    """The user's mask raster read on the input's grid, or MaskError naming the fix. It must share
    the input's CRS and pixel size, and its pixel edges must fall on the input's (a sub- or
    super-window of the same grid): a mask resampled onto another grid would shift its edges by up
    to a pixel without saying so."""
    from osgeo import osr

    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors

    gt, mgt = ds.GetGeoTransform(), mask_ds.GetGeoTransform()
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(ds.GetProjection() or "")
    b.ImportFromWkt(mask_ds.GetProjection() or "")
    w, h = ds.RasterXSize, ds.RasterYSize
    x0, y1, x1, y0 = gt[0], gt[3], gt[0] + w * gt[1], gt[3] + h * gt[5]
    fix = (f"align it first: gdalwarp -t_srs '{(a.GetAuthorityName(None) or 'EPSG')}:{a.GetAuthorityCode(None) or '?'}' "
           f"-tr {gt[1]:g} {abs(gt[5]):g} -te {x0:.6g} {y0:.6g} {x1:.6g} {y1:.6g} -r near {Path(path).name} aligned.tif "
           "(QGIS: Raster > Align Rasters), or give the mask as a polygon layer")
    if not mask_ds.GetProjection() or not a.IsSame(b):
        raise MaskError(f"the mask '{path}' is in another CRS than the input ({b.GetName() or 'none'} against "
                        f"{a.GetName()}): {fix}")
    tol = 1e-6 * max(abs(gt[1]), 1.0)
    if abs(mgt[1] - gt[1]) > tol or abs(mgt[5] - gt[5]) > tol or mgt[2] or mgt[4]:
        raise MaskError(f"the mask '{path}' has {abs(mgt[1]):g} x {abs(mgt[5]):g} pixels, the input "
                        f"{abs(gt[1]):g} x {abs(gt[5]):g}: {fix}")
    dx, dy = (mgt[0] - gt[0]) / gt[1], (mgt[3] - gt[3]) / gt[5]
    if abs(dx - round(dx)) > 1e-3 or abs(dy - round(dy)) > 1e-3:
        raise MaskError(f"the mask '{path}' lies on a grid shifted by a fraction of a pixel from the input's: {fix}")
    mx0, my1 = mgt[0], mgt[3]
    mx1, my0 = mx0 + mask_ds.RasterXSize * mgt[1], my1 + mask_ds.RasterYSize * mgt[5]
    if mx1 <= x0 or mx0 >= x1 or my1 <= y0 or my0 >= y1:
        raise MaskError(f"the mask '{path}' does not overlap the input (mask {mx0:.1f}, {my0:.1f} .. {mx1:.1f}, "
                        f"{my1:.1f}; input {x0:.1f}, {y0:.1f} .. {x1:.1f}, {y1:.1f}): check that it is the right file")
    with gdal_errors() as errors:  # the same grid: a window, with 0 (not masked) where the mask does not reach
        out = gdal().Translate("", mask_ds, format="VRT", projWin=[x0, y1, x1, y0], width=w, height=h,
                               noData=None)
    if out is None:
        raise MaskError(f"could not read the mask '{path}' on the input's grid: {errors.text()}")
    return out


def user_mask(user, ds):
    """The user's mask (a raster path, a polygon-layer path, or an io.aoi.Area) on ``ds``'s grid."""
    from mpmae_core.runtime.io.aoi import Area, AoiError, PolygonMask, polygon_mask, read_aoi
    from mpmae_core.runtime.io.gdal_io import gdal

    w, h = ds.RasterXSize, ds.RasterYSize
    if not isinstance(user, Area):
        text = str(user)
        path = text.partition("|")[0]
        if not Path(path).exists():
            raise MaskError(f"the mask '{path}' does not exist: give a mask raster (non-zero masks) on the input's "
                            "grid, or a polygon layer (inside masks)")
        g = gdal()
        g.PushErrorHandler("CPLQuietErrorHandler")
        try:
            mask_ds = g.OpenEx(path, g.OF_RASTER) if "|" not in text else None
        finally:
            g.PopErrorHandler()
        if mask_ds is not None and mask_ds.RasterCount >= 1:
            return RasterMask(_same_grid_window(mask_ds, ds, path), path)
    try:
        geom = read_aoi(user, ds.GetProjection())
    except AoiError as exc:
        raise MaskError(str(exc).replace("the area of interest", "the mask")) from None
    return PolygonMask(polygon_mask(geom, ds.GetGeoTransform(), w, h).inside, "mask polygons", masks_inside=True)


def with_snow(spec: registry.MaskSpec) -> registry.MaskSpec:
    """The same mask with its snow value (or flag) masked too."""
    snow = [v for v, meaning in spec.classes if "snow" in meaning]
    return dataclasses.replace(spec, masked=tuple(sorted(set(spec.masked) | set(snow))))


def build_masks(ds, options: Optional[MaskOptions]) -> tuple[object, list]:
    """(the mask of ``ds`` to apply, or None; notes) from the product stack's metadata and ``options``."""
    from mpmae_core.runtime.io.aoi import Masks
    from mpmae_core.runtime.io.products import MASK_FILE_KEY, product_mask, quality_mask

    options = options or MaskOptions()
    parts, notes = [], []
    if options.product:
        q = quality_mask(ds)
        if q is not None:
            if options.snow:
                q.spec = with_snow(q.spec)
            parts.append(q)
            notes.append(f"the product's {q.spec.title} masks clouds and shadows{' and snow' if options.snow else ''} "
                         "as no data")
    elif (ds.GetMetadata() or {}).get(MASK_FILE_KEY):  # named, not applied: no need to open and warp it
        notes.append("the product's quality layer is not applied (clouds are read as land)")
    if options.cloud_probability is not None:
        q = product_mask(ds, "cldprb")
        if q is None:
            raise MaskError("a cloud probability threshold was given, but the input has no cloud probability layer "
                            "(MSK_CLDPRB, in Level-2A products): leave the threshold empty for this input")
        q.spec = dataclasses.replace(q.spec, threshold=float(options.cloud_probability))
        parts.append(q)
        notes.append(f"pixels of cloud probability >= {options.cloud_probability:g} % are no data")
    if options.user:
        parts.append(user_mask(options.user, ds))
        notes.append(f"the {parts[-1].title} '{getattr(options.user, 'title', options.user)}' masks pixels as no data")
    if not parts:
        return None, notes
    mask = parts[0] if len(parts) == 1 else Masks(parts)
    if options.dilate:
        mask = Dilated(mask, options.dilate, ds.RasterXSize, ds.RasterYSize)
        notes.append(f"masks dilated by {options.dilate} px")
    return mask, notes
