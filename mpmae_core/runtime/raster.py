"""Raster input and output through GDAL, in windows, for the inference runtime.

Input: bands matched by name to the model (or mapped by hand), the processing level and the
baseline-04.00 DN offset detected from the raster, nodata detected on raw values, normalised with
the model's own statistics. Output: tiled, compressed GeoTIFF (COG on request) written in row
blocks under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.files import atomic_output
from mpmae_core.runtime.gdal_io import RasterError, gdal, open_raster
from mpmae_core.runtime.inspect import read_raster_facts, require_georeferenced
from mpmae_core.runtime.metadata import ModelMetadata


@dataclass
class PreparedInput:
    ds: object
    source: str
    band_numbers: list  # 1-based raster band feeding each model band
    level: str
    dn_offset: float
    nodata: float
    mean: np.ndarray
    std: np.ndarray
    width: int
    height: int
    geotransform: tuple
    projection: str
    notes: list


def detect_level(ds, descriptions: Sequence[str]) -> Optional[str]:
    """'l1c' / 'l2a' from band names or metadata, or None when the raster does not say."""
    names = {registry.canonical_s2_band(d) for d in descriptions}
    if "B10" in names:
        return "l1c"
    text = " ".join(f"{k}={v}" for k, v in (ds.GetMetadata() or {}).items()).upper()
    if re.search(r"L2A|LEVEL-?2A|MSIL2A", text):
        return "l2a"
    if re.search(r"L1C|LEVEL-?1C|MSIL1C", text):
        return "l1c"
    return None


def detect_dn_offset(ds) -> Optional[float]:
    """The DN offset to subtract, from Sentinel-2 metadata (BOA/RADIO_ADD_OFFSET, PROCESSING_BASELINE)."""
    meta = {k.upper(): v for k, v in (ds.GetMetadata() or {}).items()}
    for key in ("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"):
        for k, v in meta.items():
            if key in k:
                with contextlib.suppress(ValueError):
                    return -float(v)  # the products state the offset as -1000
    for k, v in meta.items():
        if "PROCESSING_BASELINE" in k:
            with contextlib.suppress(ValueError):
                return registry.S2_BASELINE_04_OFFSET if float(v) >= 4.0 else 0.0
    return None


def prepare_input(source: str | os.PathLike, meta: ModelMetadata, level: str = "auto", dn_offset="auto",
                  band_map: Optional[Sequence[int]] = None, log: Callable[[str], None] = lambda m: None) -> PreparedInput:
    facts = read_raster_facts(source, sample=False)
    require_georeferenced(facts)
    if facts.crs_is_geographic:
        raise RasterError(
            f"'{source}' is in a geographic CRS ({facts.crs_authid or facts.crs_name}, degrees); the model needs "
            f"square {meta.gsd_m:g} m pixels: reproject it to its UTM zone at {meta.gsd_m:g} m first "
            "(QGIS: Raster > Projections > Warp, or gdalwarp -t_srs EPSG:326NN -tr 10 10)")
    if facts.crs_unit_to_metre:
        px = [v * facts.crs_unit_to_metre for v in facts.pixel_size]
        if any(abs(v - meta.gsd_m) > 0.05 * meta.gsd_m for v in px):
            log(f"pixel size is {px[0]:g} x {px[1]:g} m but the model was trained at {meta.gsd_m:g} m: results "
                f"will be poor unless the raster is resampled to {meta.gsd_m:g} m")
    ds = open_raster(source)
    descriptions = [b.description for b in facts.bands]
    notes = []
    if band_map:
        if len(band_map) != len(meta.input_bands):
            raise RasterError(f"the band map gives {len(band_map)} bands but the model takes {len(meta.input_bands)} "
                              f"({', '.join(meta.input_bands)})")
        bad = [b for b in band_map if not 1 <= int(b) <= ds.RasterCount]
        if bad:
            raise RasterError(f"band map refers to band(s) {bad}; the raster has bands 1..{ds.RasterCount}")
        numbers = [int(b) for b in band_map]
    else:
        match = registry.match_bands(descriptions, meta.input_bands)
        if not match.complete:
            raise RasterError(f"'{source}' cannot feed this model: {match.describe_problem()}; the model takes "
                              f"{', '.join(meta.input_bands)} (or give a band map, e.g. --band-map 1,2,3,...)")
        numbers = [i + 1 for i in match.source_index]
        if not match.is_identity:
            notes.append("bands matched by name: " + ", ".join(f"{b}<-{n}" for b, n in zip(meta.input_bands, numbers)))
    if level == "auto":
        found = detect_level(ds, descriptions)
        if found is None:
            found = "l2a" if "l2a" in meta.normalisation else next(iter(meta.normalisation))
            log(f"processing level not stated by the raster: assuming {found.upper()} (set it with --level)")
        level = found
    mean, std = meta.statistics(level)
    if dn_offset == "auto":
        found = detect_dn_offset(ds)
        if found is None:
            found = 0.0
            log("no processing-baseline metadata: assuming DNs without the +1000 offset of baseline 04.00 "
                "(set --dn-offset 1000 for products from 2022-01-25 on)")
        dn_offset = found
    if facts.width < meta.patch_size or facts.height < meta.patch_size:
        raise RasterError(f"'{source}' is {facts.width} x {facts.height} px, smaller than one patch of the model "
                          f"({meta.patch_size} x {meta.patch_size} px at {meta.gsd_m:g} m)")
    nd = ds.GetRasterBand(numbers[0]).GetNoDataValue()
    return PreparedInput(ds, str(source), numbers, level, float(dn_offset), float(meta.nodata if nd is None else nd),
                         np.asarray(mean, np.float32), np.asarray(std, np.float32), facts.width, facts.height,
                         facts.geotransform, ds.GetProjection(), notes)


def read_block(prep: PreparedInput, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (C, h, w) float32 and a valid (h, w) mask; outside the raster counts as nodata.

    A pixel is invalid when any used band holds the nodata value (or is not finite); it is fed to
    the model as 0 (the band mean) and its outputs are masked.
    """
    c = len(prep.band_numbers)
    out = np.zeros((c, h, w), np.float32)
    valid = np.zeros((h, w), bool)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, prep.height), min(x + w, prep.width)
    if y1 <= y0 or x1 <= x0:
        return out, valid
    raw = np.stack([prep.ds.GetRasterBand(b).ReadAsArray(x0, y0, x1 - x0, y1 - y0) for b in prep.band_numbers])
    raw = raw.astype(np.float32)
    bad = (raw == prep.nodata).any(0) | ~np.isfinite(raw).all(0)
    norm = (raw - prep.dn_offset - prep.mean[:, None, None]) / prep.std[:, None, None]
    norm[:, bad] = 0.0
    out[:, y0 - y:y1 - y, x0 - x:x1 - x] = norm
    valid[y0 - y:y1 - y, x0 - x:x1 - x] = ~bad
    return out, valid


class RasterWriter:
    """A GeoTIFF written in row blocks, under a temporary name, renamed when ``close``d."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, bands: int, dtype: str,
                 geotransform: Sequence[float], projection: str, nodata=None, descriptions: Sequence[str] = (),
                 half_float: bool = False, cog: bool = False, class_names: Sequence[str] = (),
                 class_colours: Sequence[Sequence[int]] = ()):
        g = gdal()
        self.path, self.cog = Path(path), cog
        self._ctx = atomic_output(self.path)
        self.tmp = self._ctx.__enter__()
        gdt = {"uint8": g.GDT_Byte, "float32": g.GDT_Float32, "uint16": g.GDT_UInt16}[dtype]
        options = ["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER",
                   "PREDICTOR=3" if dtype == "float32" else "PREDICTOR=2", "INTERLEAVE=BAND" if bands > 1 else "INTERLEAVE=PIXEL"]
        if half_float:
            options.append("NBITS=16")
        target = str(self.tmp) + ".gtiff.tif" if cog else str(self.tmp)
        self._gtiff_path = target
        self.ds = g.GetDriverByName("GTiff").Create(target, width, height, bands, gdt, options=options)
        if self.ds is None:
            self._ctx.__exit__(RuntimeError, RuntimeError("create"), None)
            raise RasterError(f"GDAL cannot create '{path}': {g.GetLastErrorMsg()}")
        self.ds.SetGeoTransform(list(geotransform))
        self.ds.SetProjection(projection)
        for i in range(bands):
            band = self.ds.GetRasterBand(i + 1)
            if nodata is not None:
                band.SetNoDataValue(nodata)
            if i < len(descriptions):
                band.SetDescription(descriptions[i])
        if class_names and bands == 1:
            band = self.ds.GetRasterBand(1)
            band.SetCategoryNames(list(class_names))
            if class_colours:
                table = g.ColorTable()
                for k, rgb in enumerate(class_colours):
                    table.SetColorEntry(k, tuple(int(v) for v in rgb) + (255,))
                band.SetRasterColorTable(table)
        self.height = height

    def write_rows(self, y: int, block: np.ndarray) -> None:
        """block (bands, rows, width) at output row y; rows beyond the raster are dropped."""
        rows = min(block.shape[1], self.height - y)
        if rows <= 0:
            return
        for i in range(block.shape[0]):
            self.ds.GetRasterBand(i + 1).WriteArray(block[i, :rows], 0, y)

    def close(self) -> Path:
        self.ds.FlushCache()
        self.ds = None
        if self.cog:
            g = gdal()
            out = g.Translate(str(self.tmp), self._gtiff_path, format="COG", creationOptions=["COMPRESS=DEFLATE"])
            if out is None:
                raise RasterError(f"GDAL could not write a COG: {g.GetLastErrorMsg()}")
            out = None
            for leftover in (self._gtiff_path, self._gtiff_path + ".aux.xml"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException) -> None:
        """Drop everything written so far (cancel or failure): no half file remains."""
        self.ds = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._gtiff_path)
        with contextlib.suppress(type(exc)):
            self._ctx.__exit__(type(exc), exc, None)


def output_geotransform(gt: Sequence[float], stride: int) -> list[float]:
    return [gt[0], gt[1] * stride, gt[2] * stride, gt[3], gt[4] * stride, gt[5] * stride]

