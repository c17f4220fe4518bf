"""A time series of one place as an input: its members, their dates, one grid, each with its masks.

A series is given as a list of sources (products or rasters), a glob, a folder of them, or a text
file of paths. Every member is read as the runtime reads one raster (``raster.prepare_input``: a
product's stack, its level and offset, its quality mask), onto the grid of the first member (or
of the one chosen): a member on another grid is warped onto it by nearest neighbour through a
VRT, and the run says so. Dates come from the members' metadata or names (``temporal.date_of``),
or are given; two members of one date are refused.

``series_features`` writes the temporal spectral features (``temporal.reduce_series`` of each
member's normalised spectra over its valid dates) in row blocks: memory follows the block and the
number of dates, never the raster.
"""

from __future__ import annotations

import datetime as _dt
import glob as _glob
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mpmae_core.runtime.inference import temporal
from mpmae_core.runtime.io.gdal_io import RasterError

ROWS = 128  # rows per block


class SeriesError(RasterError):
    """A series that cannot be read; the message says why and what to do."""


@dataclass
class Member:
    source: str
    date: _dt.date


def expand_series(spec) -> list[str]:
    """The member sources of a series: a list, or one text naming a glob, a folder (its products
    and rasters, one level deep), a .txt list of paths, or paths separated by commas."""
    if isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    else:
        text = str(spec)
        path = Path(text)
        if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            items = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                     if ln.strip() and not ln.strip().startswith("#")]
            items = [str(path.parent / i) if not Path(i).is_absolute() and "://" not in i else i for i in items]
        elif path.is_dir() and not list(path.glob("MTD_MSIL*.xml")):
            items = sorted(str(p) for p in path.iterdir()
                           if p.suffix.lower() in (".tif", ".tiff", ".vrt", ".zip") or p.is_dir()
                           or p.name.upper().startswith("MTD_MSIL"))
        elif "," in text and not path.exists():  # a,b,c
            items = [t.strip() for t in text.split(",") if t.strip()]
        else:
            items = sorted(_glob.glob(text)) if any(ch in text for ch in "*?[") else [text]
    if not items:
        raise SeriesError(f"the series {spec!r} names no raster or product: give a list, a glob (quoted), a folder "
                          "or a text file of paths")
    return items


def dated_members(sources: Sequence[str], dates: Optional[Sequence] = None) -> list[Member]:
    """The members with their dates (given, or from metadata and names), sorted by date."""
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.products import stack_path

    if dates is not None and len(dates) != len(sources):
        raise SeriesError(f"{len(dates)} dates given for {len(sources)} members: give one date per member")
    out = []
    for i, src in enumerate(sources):
        if dates is not None:
            d = dates[i] if isinstance(dates[i], _dt.date) else temporal.date_from_text(str(dates[i]))
            if d is None:
                raise SeriesError(f"{dates[i]!r} is not a date: give YYYY-MM-DD")
        else:
            meta = open_raster(stack_path(src)).GetMetadata() or {}
            d = temporal.date_of(src, meta)
            if d is None:
                raise SeriesError(f"the date of '{src}' is neither in its metadata nor in its name: give the dates "
                                  "(--dates YYYY-MM-DD,... in the members' order)")
        out.append(Member(str(src), d))
    out.sort(key=lambda m: m.date)
    for a, b in zip(out, out[1:]):
        if a.date == b.date:
            raise SeriesError(f"'{a.source}' and '{b.source}' are both of {a.date}: keep one per date (or mosaic "
                              "them first)")
    return out


def on_grid(source: str, ref_ds, log=lambda m: None) -> str:
    """``source`` itself when it lies on the reference grid; else a VRT of it warped onto that grid
    (nearest neighbour), with a note."""
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors, open_raster
    from mpmae_core.runtime.io.products import stack_path

    path = stack_path(source)
    ds = open_raster(path)
    same = (ds.RasterXSize, ds.RasterYSize) == (ref_ds.RasterXSize, ref_ds.RasterYSize) and \
        np.allclose(ds.GetGeoTransform(), ref_ds.GetGeoTransform()) and _same_crs(ds, ref_ds)
    if same:
        return path
    gt = ref_ds.GetGeoTransform()
    w, h = ref_ds.RasterXSize, ref_ds.RasterYSize
    bounds = (gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3])
    out = f"/vsimem/mmearth-series-{abs(hash((path, bounds))):x}.vrt"
    with gdal_errors() as errors:
        warped = gdal().Warp(out, ds, format="VRT", outputBounds=bounds, width=w, height=h,
                             dstSRS=ref_ds.GetProjection(), resampleAlg="near")
    if warped is None:
        raise SeriesError(f"could not bring '{source}' onto the series' grid: {errors.text()}")
    # every band keeps its name, and the member its metadata (level, offsets, quality layer)
    for i in range(1, ds.RasterCount + 1):
        warped.GetRasterBand(i).SetDescription(ds.GetRasterBand(i).GetDescription())
    warped.SetMetadata(ds.GetMetadata() or {})
    warped = None
    log(f"'{Path(source).name}' lies on another grid ({_crs_name(ds)}); warped onto the series' grid "
        f"({_crs_name(ref_ds)}) by nearest neighbour")
    return out


def _same_crs(a, b) -> bool:
    from osgeo import osr

    x, y = osr.SpatialReference(wkt=a.GetProjection() or ""), osr.SpatialReference(wkt=b.GetProjection() or "")
    return bool(x.IsSame(y))


def _crs_name(ds) -> str:
    from osgeo import osr

    s = osr.SpatialReference(wkt=ds.GetProjection() or "")
    return f"{s.GetAuthorityName(None) or ''}:{s.GetAuthorityCode(None) or ''}".strip(":") or s.GetName() or "no CRS"


def series_features(series, model_path, output, *, dates=None, stats: Sequence[str] = temporal.STATS,
                    min_valid: int = 1, grid: int = 0, masks=None, progress=lambda f: None,
                    log: Callable[[str], None] = lambda m: None) -> dict:
    """Temporal spectral features of a series (see the module) as a float32 GeoTIFF: per statistic
    the model's bands (normalised as the model reads them), then the count of valid dates. Pixels
    with fewer than ``min_valid`` valid dates are NaN (reported). ``grid``: the member (in date
    order) whose grid the others are brought onto."""
    from mpmae_core.runtime.inference.predict import check_outputs, input_files
    from mpmae_core.runtime.inference.raster import RasterWriter, prepare_input, read_block
    from mpmae_core.runtime.io.gdal_io import gdal, open_raster
    from mpmae_core.runtime.io.products import stack_path
    from mpmae_core.runtime.models.model import read_metadata

    members = dated_members(expand_series(series), dates)
    check_outputs({"output": output}, [f for m in members for f in input_files(m.source)] + [str(model_path)])
    if not 0 <= grid < len(members):
        raise SeriesError(f"the grid member {grid} does not exist: the series has {len(members)} members")
    meta = read_metadata(model_path)
    ref = open_raster(stack_path(members[grid].source))
    preps = []
    for m in members:
        path = on_grid(m.source, ref, log)
        preps.append(prepare_input(path, meta, log=log, masks=masks))
        if path.startswith("/vsimem/"):
            gdal().Unlink(path)  # the warped VRT lives on in the open dataset only (as an area's window does)
    levels = sorted({p.level for p in preps})
    if len(levels) > 1:
        log(f"the series mixes processing levels ({', '.join(lv.upper() for lv in levels)}): each date is normalised "
            "with its own level's statistics and offset")
    log(f"series of {len(members)} dates: " + ", ".join(str(m.date) for m in members))
    w, h = ref.RasterXSize, ref.RasterYSize
    c = len(meta.input_bands)
    names = None
    too_few = 0
    writer = None
    try:
        for y in range(0, h, ROWS):
            rows = min(ROWS, h - y)
            values = np.empty((len(preps), c, rows, w), np.float32)
            valid = np.empty((len(preps), rows, w), bool)
            for t, p in enumerate(preps):
                values[t], valid[t] = read_block(p, y, 0, rows, w)
            out, names = temporal.reduce_series(values, valid, stats, min_valid)
            if writer is None:
                descriptions = [n.split(":")[0] + (f":{meta.input_bands[int(n.split(':')[1])]}" if ":" in n else "")
                                for n in names]
                writer = RasterWriter(output, w, h, len(names), "float32", ref.GetGeoTransform(), ref.GetProjection(),
                                      nodata=float("nan"), descriptions=descriptions,
                                      metadata={"MMEARTH_SERIES_DATES": ",".join(str(m.date) for m in members),
                                                "MMEARTH_SERIES_MIN_VALID": str(min_valid)})
            too_few += int((out[-1] < max(min_valid, 1)).sum())
            writer.write_rows(y, out)
            progress(min(1.0, (y + rows) / h))
        path = writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.abort(exc)
        raise
    if too_few:
        log(f"{too_few} pixel(s) ({too_few / (w * h):.1%}) have fewer than {max(min_valid, 1)} valid date(s): no data")
    return {"output": str(path), "dates": [str(m.date) for m in members], "bands": names, "too_few": too_few,
            "width": w, "height": h}
