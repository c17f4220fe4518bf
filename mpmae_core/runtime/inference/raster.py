"""Raster input and output through GDAL, in windows, for the inference runtime.

Input: bands matched by name to the model (or mapped by hand), the processing level and the
baseline-04.00 DN offset detected from the raster, nodata detected on raw values, normalised with
the model's own statistics. Output: tiled, compressed GeoTIFF (COG on request) written in row
blocks under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.files import PendingOutput, describe_os_error
from mpmae_core.runtime.io.gdal_io import RasterError, gdal, gdal_errors, open_raster
from mpmae_core.runtime.io import inspect as rinspect
from mpmae_core.runtime.io.inspect import read_raster_facts, require_georeferenced
from mpmae_core.runtime.models.metadata import ModelMetadata


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
    scale: float = 1.0  # raw values are multiplied by this before the DN offset is subtracted
    #: what else is no data: the product's quality layer (io.products.QualityMask), the area of
    #: interest's outside (io.aoi.PolygonMask), or both (io.aoi.Masks); anything with masked(x, y, w, h)
    mask: object = None


LEVEL_OPTION = "the processing level (--level on the command line, 'Sentinel-2 processing level' in QGIS)"
BAND_MAP_OPTION = "a band map (--band-map 1,2,3,... on the command line, 'Band map' in QGIS)"


def prepare_input(source: str | os.PathLike, meta: ModelMetadata, level: str = "auto", dn_offset="auto",
                  band_map: Optional[Sequence[int]] = None, log: Callable[[str], None] = lambda m: None,
                  scale: float = 1.0, aoi=None, masks=None) -> PreparedInput:
    """The raster (or a product's stack) ready to read in normalised blocks. ``aoi``: an area of
    interest (io.aoi: a polygon layer, or an extent): everything is cut to its window, and pixels
    of the window outside it are no data. ``masks``: an io.masks.MaskOptions (default: the
    product's own quality layer, not dilated)."""
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise RasterError(f"the scale factor must be a positive number, got {scale!r}")
    from mpmae_core.runtime.io.products import stack_path

    spec = meta.source_spec  # the input source's rules (registry): bands, levels, offsets, plausibility
    path = stack_path(source)  # a product, STAC item or band folder: its 10 m VRT stack
    area = None
    if aoi:
        path, area = _aoi_window(path, aoi, log, meta.patch_size)
    facts = read_raster_facts(path, sample=False)
    require_georeferenced(facts)
    if facts.crs_is_geographic:
        raise RasterError(
            f"'{source}' is in a geographic CRS ({facts.crs_authid or facts.crs_name}, degrees); the model needs "
            f"square {meta.gsd_m:g} m pixels: reproject it to its UTM zone at {meta.gsd_m:g} m first "
            "(QGIS: Raster > Projections > Warp, or gdalwarp -t_srs EPSG:326NN -tr 10 10)")
    if facts.crs_unit_to_metre:
        px = [v * facts.crs_unit_to_metre for v in facts.pixel_size]
        if any(abs(v - meta.gsd_m) > 0.05 * meta.gsd_m for v in px):
            log(f"warning: pixel size is {px[0]:g} x {px[1]:g} m but the model was trained at {meta.gsd_m:g} m: "
                f"results will be poor unless the raster is resampled to {meta.gsd_m:g} m")
    ds = open_raster(path)
    if area is not None:
        gdal().Unlink(path)  # the window's VRT lives on in the open dataset only
    descriptions = [b.description for b in facts.bands]
    notes = []
    if not band_map:
        from mpmae_core.runtime.io.embeddings import recognise

        other = recognise(ds, path)
        if other is not None:
            raise RasterError(f"'{source}' holds another model's embedding ({other.title}), not Sentinel-2 bands: "
                              "the encoder cannot read it. "
                              "Read it alone (the model 'none' on the command line; no model in QGIS), or beside "
                              "a Sentinel-2 raster of the place (--embedding; in QGIS 'Another model's embedding')")
    if band_map:
        if len(band_map) != len(meta.input_bands):
            raise RasterError(f"the band map gives {len(band_map)} bands but the model takes {len(meta.input_bands)} "
                              f"({', '.join(meta.input_bands)}); a band may be repeated to stand in for a missing one")
        bad = [b for b in band_map if not 1 <= int(b) <= ds.RasterCount]
        if bad:
            raise RasterError(f"band map refers to band(s) {bad}; the raster has bands 1..{ds.RasterCount}")
        numbers = [int(b) for b in band_map]
    else:
        match = registry.match_bands(descriptions, meta.input_bands, spec)
        if not match.complete:
            raise RasterError(f"'{source}' cannot feed this model: {match.describe_problem()}; the model takes "
                              f"{', '.join(meta.input_bands)} (or give {BAND_MAP_OPTION})")
        numbers = [i + 1 for i in match.source_index]
        if not match.is_identity:
            notes.append("bands matched by name: " + ", ".join(f"{b}<-{n}" for b, n in zip(meta.input_bands, numbers)))
    choices = registry.level_choices(spec)
    if level not in choices:
        raise RasterError(f"unknown processing level {level!r}: choose one of {', '.join(choices)}")
    if level == "auto":
        found, how = rinspect.detect_level(descriptions, facts.metadata, spec)
        if found is None:
            found = spec.default_level if spec.default_level in meta.normalisation else next(iter(meta.normalisation))
            if len(spec.levels) > 1:
                log(f"warning: the raster does not state its processing level (no band that only one level carries, "
                    f"no product type in its metadata): assuming {found.upper()}; if that is wrong, set "
                    f"{LEVEL_OPTION}")
        level = found
    mean, std = meta.statistics(level)
    if dn_offset == "auto":
        found = rinspect.detect_dn_offset(facts.metadata, spec)
        if found is None:
            found = 0.0
            if spec.baseline_offsets:
                since, value = spec.baseline_offsets[-1]
                log(f"no processing-baseline metadata: assuming values without the +{value:g} offset of baseline "
                    f"{since:05.2f} (for products of that baseline or later, set {rinspect.OFFSET_OPTION} to "
                    f"{value:g})")
        dn_offset = found
    try:
        dn_offset = float(dn_offset)
    except (TypeError, ValueError):
        raise RasterError(f"the DN offset must be 'auto' or a number such as 0 or 1000, got {dn_offset!r}") from None
    if not math.isfinite(dn_offset):
        raise RasterError(f"the DN offset must be a finite number, got {dn_offset!r}")
    if facts.width < meta.patch_size or facts.height < meta.patch_size:
        raise RasterError(f"'{source}' is {facts.width} x {facts.height} px, smaller than one patch of the model "
                          f"({meta.patch_size} x {meta.patch_size} px at {meta.gsd_m:g} m)")
    nd = ds.GetRasterBand(numbers[0]).GetNoDataValue()
    nodata = float(meta.nodata if nd is None else nd)
    p50, p99 = rinspect.robust_statistics(ds, numbers, nodata)
    types = sorted({facts.bands[n - 1].data_type for n in numbers})
    for finding in rinspect.radiometry_findings(p50, p99, types, float(scale), dn_offset, spec):
        log(f"warning: {finding.message}")
    from mpmae_core.runtime.io.masks import build_masks

    mask, mask_notes = build_masks(ds, masks)
    notes.extend(mask_notes)
    if area is not None:
        from mpmae_core.runtime.io.aoi import Masks

        mask = area if mask is None else Masks([mask, area])
    return PreparedInput(ds, str(source), numbers, level, dn_offset, nodata,
                         np.asarray(mean, np.float32), np.asarray(std, np.float32), facts.width, facts.height,
                         facts.geotransform, ds.GetProjection(), notes, float(scale), mask)


def _aoi_window(path: str, aoi, log, align: int) -> tuple:
    """(a VRT of the window of ``path`` that holds the area, the area's PolygonMask on it)."""
    import hashlib

    from mpmae_core.runtime.io.aoi import aoi_window, polygon_mask, read_aoi

    facts = read_raster_facts(path, sample=False)
    require_georeferenced(facts)
    geom = read_aoi(aoi, facts.crs_wkt)
    x, y, w, h = aoi_window(geom, facts.geotransform, facts.width, facts.height, align)
    key = hashlib.sha256(f"{path}|{x},{y},{w},{h}".encode()).hexdigest()[:16]
    window = f"/vsimem/mmearth-aoi-{key}.vrt"
    with gdal_errors() as errors:
        out = gdal().Translate(window, path, format="VRT", srcWin=[x, y, w, h])
    if out is None:
        raise RasterError(f"could not cut '{path}' to the area of interest: {errors.text()}")
    gt = out.GetGeoTransform()
    out = None
    log(f"area of interest: a window of {w} x {h} px of {facts.width} x {facts.height} "
        f"({w * h / (facts.width * facts.height):.1%} of the raster); pixels outside the area are no data")
    return window, polygon_mask(geom, gt, w, h)


def mirror_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices beyond 0..n-1 mirrored back into it (symmetric: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...),
    repeatedly for windows many times larger than the raster."""
    m = np.mod(np.asarray(idx), 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def read_block(prep: PreparedInput, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (C, h, w) float32 and a valid (h, w) mask of the raster's pixels in the window.

    Parts of the window beyond the raster are filled by mirroring the raster (so the model sees
    real content all around, also around a raster smaller than the window) and are marked
    invalid: no output is written there. A pixel is invalid when any used band holds the nodata
    value (or is not finite), or the product's quality mask marks it (clouds, shadows: see
    io.products) or lies outside the area of interest; it is fed to the model as 0 (the band
    mean) and its outputs are masked. Raw values are multiplied by ``prep.scale``, then the DN
    offset is subtracted. A read error raises RasterError naming the file, the window and GDAL's
    reason.

    A series of dates (``series.SeriesInput``) reads itself: every date's block, stacked.
    """
    if not isinstance(prep, PreparedInput):
        return prep.read_block(y, x, h, w)
    c = len(prep.band_numbers)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, prep.height), min(x + w, prep.width)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((c, h, w), np.float32), np.zeros((h, w), bool)
    inside = y0 == y and x0 == x and y1 == y + h and x1 == x + w
    if inside:
        raw = read_window(prep.ds, prep.band_numbers, x0, y0, x1 - x0, y1 - y0, prep.source).astype(np.float32)
        masked = prep.mask.masked(x0, y0, x1 - x0, y1 - y0) if prep.mask is not None else None
    else:
        rows = mirror_index(np.arange(y, y + h), prep.height)
        cols = mirror_index(np.arange(x, x + w), prep.width)
        r0, c0 = int(rows.min()), int(cols.min())
        bw, bh = int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1
        block = read_window(prep.ds, prep.band_numbers, c0, r0, bw, bh, prep.source).astype(np.float32)
        raw = block[:, rows - r0][:, :, cols - c0]
        masked = prep.mask.masked(c0, r0, bw, bh)[rows - r0][:, cols - c0] if prep.mask is not None else None
    bad = (raw == prep.nodata).any(0) | ~np.isfinite(raw).all(0)
    if masked is not None:
        bad |= masked
    if prep.scale != 1.0:
        raw *= np.float32(prep.scale)
    norm = (raw - prep.dn_offset - prep.mean[:, None, None]) / prep.std[:, None, None]
    norm[:, bad] = 0.0
    valid = ~bad
    if not inside:
        valid[:y0 - y] = False
        valid[y1 - y:] = False
        valid[:, :x0 - x] = False
        valid[:, x1 - x:] = False
    return np.ascontiguousarray(norm, np.float32), valid


def read_window(ds, band_numbers: Sequence[int], x: int, y: int, w: int, h: int, source: str = "") -> np.ndarray:
    """(len(band_numbers), h, w) raw values; a failed read raises RasterError with GDAL's reason."""
    arrays = []
    for b in band_numbers:
        with gdal_errors() as errors:
            arr = ds.GetRasterBand(b).ReadAsArray(x, y, w, h)
        if arr is None or errors or arr.shape != (h, w):
            raise RasterError(
                f"could not read '{source or ds.GetDescription()}': band {b}, window x {x}..{x + w - 1}, "
                f"y {y}..{y + h - 1} (GDAL says: {errors.text()}). The file is damaged or incomplete: "
                "download or export it again (check it with gdalinfo -checksum).")
        arrays.append(arr)
    return np.stack(arrays)


def has_data(prep: PreparedInput, y: int, x: int, h: int, w: int) -> bool:
    """False only when the raster itself says the window holds no data (GDAL data coverage: a VRT
    area no source covers, a sparse GeoTIFF's missing blocks); True when unsure."""
    if not isinstance(prep, PreparedInput):  # a series: any of its dates
        return prep.has_data(y, x, h, w)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, prep.height), min(x + w, prep.width)
    if y1 <= y0 or x1 <= x0:
        return False
    g = gdal()
    empty = getattr(g, "GDAL_DATA_COVERAGE_STATUS_EMPTY", 2)
    data = getattr(g, "GDAL_DATA_COVERAGE_STATUS_DATA", 4)
    for b in prep.band_numbers:
        try:
            flags, _ = prep.ds.GetRasterBand(b).GetDataCoverageStatus(x0, y0, x1 - x0, y1 - y0)
        except (AttributeError, RuntimeError, TypeError):
            return True
        if flags & data or not flags & empty:
            return True
    return False


class RasterWriter:
    """A GeoTIFF written in row blocks under a temporary name; ``close`` verifies it and renames it.

    Every GDAL call is checked: a write error (a full disk included) raises RasterError at once, and
    ``close`` re-opens the finished file and reads its last rows before the rename, so a target is
    only ever replaced by a complete, readable file. Blocks without any valid value are not
    written at all (sparse GeoTIFF: they read as nodata), so empty regions cost nothing.
    ``sidecars`` (final path -> text) are written with the raster and appear together with it.
    """

    BLOCK = 256

    def __init__(self, path: str | os.PathLike, width: int, height: int, bands: int, dtype: str,
                 geotransform: Sequence[float], projection: str, nodata=None, descriptions: Sequence[str] = (),
                 half_float: bool = False, cog: bool = False, class_names: Sequence[str] = (),
                 class_colours: Sequence[Sequence[int]] = (), block_rows: int = 0, metadata: Optional[dict] = None,
                 compress: str = "DEFLATE", stream_rows: int = 0):
        g = gdal()
        self.path, self.cog = Path(path), cog
        # ``stream_rows``: blocks of that many rows, written whole and flushed out of GDAL's cache as
        # soon as they are complete (rows must come in order), so memory does not grow with the raster
        self.stream = int(stream_rows)
        block_rows = self.stream or block_rows
        self._stage, self._stage_valid, self._stage_y, self._filled = None, None, 0, 0
        self.width, self.height, self.bands = width, height, bands
        self.class_names = list(class_names) if bands == 1 else []
        self.pending = PendingOutput(self.path)
        self.tmp = self.pending.tmp
        self.ds = None
        gdt = {"uint8": g.GDT_Byte, "float32": g.GDT_Float32, "uint16": g.GDT_UInt16}[dtype]
        options = ["TILED=YES", f"BLOCKXSIZE={self.BLOCK}", f"BLOCKYSIZE={block_rows or self.BLOCK}", f"COMPRESS={compress}",
                   "BIGTIFF=IF_SAFER", "SPARSE_OK=TRUE",
                   "PREDICTOR=3" if dtype == "float32" else "PREDICTOR=2",
                   "INTERLEAVE=BAND" if bands > 1 else "INTERLEAVE=PIXEL"]
        if half_float:
            options.append("NBITS=16")
        if compress == "ZSTD":
            options.append("ZSTD_LEVEL=1")  # hundreds of float bands: fast, nearly as small
        self._gtiff_path = str(self.tmp) + ".gtiff.tif" if cog else str(self.tmp)
        try:
            with gdal_errors() as errors:
                self.ds = g.GetDriverByName("GTiff").Create(self._gtiff_path, width, height, bands, gdt,
                                                              options=options)
                if self.ds is not None:
                    self.ds.SetGeoTransform(list(geotransform))
                    self.ds.SetProjection(projection)
                    if metadata:
                        self.ds.SetMetadata({str(k): str(v) for k, v in metadata.items()})
                    for i in range(bands):
                        band = self.ds.GetRasterBand(i + 1)
                        if nodata is not None:
                            band.SetNoDataValue(nodata)
                        if i < len(descriptions):
                            band.SetDescription(descriptions[i])
                    if self.class_names:
                        band = self.ds.GetRasterBand(1)
                        band.SetCategoryNames(self.class_names)
                        if class_colours:
                            table = g.ColorTable()
                            for k, rgb in enumerate(class_colours):
                                table.SetColorEntry(k, tuple(int(v) for v in rgb) + (255,))
                            band.SetRasterColorTable(table)
            if self.ds is None or errors:
                self._fail("create", errors)
        except BaseException:
            self.abort()
            raise

    def _fail(self, action: str, errors) -> None:
        if getattr(errors, "disk_full", False):
            msg = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), self.path)
        else:
            text = errors.text() if hasattr(errors, "text") else str(errors)
            msg = (f"could not {action} '{self.path}' (GDAL says: {text}). Check the disk has space and the folder "
                   "is writable; nothing was written.")
        raise RasterError(msg)

    def write_rows(self, y: int, block: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        """block (bands, rows, width) at output row y; rows beyond the raster are dropped. With
        ``valid`` (rows, width), column blocks without any valid value are skipped. A streaming
        writer stages rows until a block row is complete, writes it and flushes it (rows that come
        out of order are written at once, after what is staged)."""
        rows = min(block.shape[1], self.height - y)
        if not self.stream or rows <= 0:
            return self._write(y, block, valid)
        if y != self._stage_y + self._filled:
            self._drain()
            self._stage_y = y
            if y % self.stream:  # not at a block row's start: no staging until the next one
                return self._write(y, block, valid)
        if self._stage is None:
            self._stage = np.empty((block.shape[0], self.stream, self.width), block.dtype)
            self._stage_valid = np.zeros((self.stream, self.width), bool)
        i = 0
        while i < rows:
            n = min(rows - i, self.stream - self._filled)
            self._stage[:, self._filled:self._filled + n] = block[:, i:i + n]
            self._stage_valid[self._filled:self._filled + n] = True if valid is None else valid[i:i + n]
            self._filled += n
            i += n
            if self._filled == self.stream or self._stage_y + self._filled >= self.height:
                self._drain()

    def _drain(self) -> None:
        """Write the staged rows and flush them out of GDAL's block cache."""
        if not self._filled:
            return
        n, y = self._filled, self._stage_y
        self._filled, self._stage_y = 0, y + n
        self._write(y, self._stage[:, :n], self._stage_valid[:n], flush=True)

    def _write(self, y: int, block: np.ndarray, valid: Optional[np.ndarray] = None, flush: bool = False) -> None:
        """``flush``: each band's blocks leave GDAL's cache as soon as they are written."""
        rows = min(block.shape[1], self.height - y)
        if rows <= 0:
            return
        spans = [(0, self.width)]
        if valid is not None:
            v = valid[:rows]
            spans = [(x0, min(x0 + self.BLOCK, self.width)) for x0 in range(0, self.width, self.BLOCK)
                     if v[:, x0:x0 + self.BLOCK].any()]
        with gdal_errors() as errors:
            for i in range(block.shape[0]):
                band = self.ds.GetRasterBand(i + 1)
                for x0, x1 in spans:
                    if band.WriteArray(np.ascontiguousarray(block[i, :rows, x0:x1]), x0, y) != 0:
                        errors.append(f"writing band {i + 1} rows {y}..{y + rows - 1} failed")
                        break
                if flush and not errors and band.FlushCache() not in (None, 0):
                    errors.append(f"writing band {i + 1} rows {y}..{y + rows - 1} failed")
                if errors:
                    break
        if errors:
            self._fail("write", errors)

    def close(self, sidecars: Optional[dict] = None) -> Path:
        """Flush, close, convert to COG when asked, verify, write ``sidecars`` and rename."""
        g = gdal()
        try:
            self._drain()
            with gdal_errors() as errors:
                err = self.ds.FlushCache()
                self.ds = None  # closing writes the last blocks and the .aux.xml (category names)
            if errors or (isinstance(err, int) and err != 0):
                self._fail("finish writing", errors)
            if self.cog:
                with gdal_errors() as errors:
                    out = g.Translate(str(self.tmp), self._gtiff_path, format="COG",
                                      creationOptions=["COMPRESS=DEFLATE"])
                    ok = out is not None
                    out = None
                if not ok or errors:
                    self._fail("write a Cloud Optimized GeoTIFF to", errors)
                for leftover in (self._gtiff_path, self._gtiff_path + ".aux.xml"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(leftover)
            for final, text in (sidecars or {}).items():
                tmp = self.pending.companion(final)
                try:
                    with open(tmp, "w", encoding="utf-8") as f:
                        f.write(text)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as exc:
                    raise RasterError(describe_os_error(exc, final)) from None
            try:
                self.pending.commit(self._verify)
            except OSError as exc:
                raise RasterError(describe_os_error(exc, self.path)) from None
        except BaseException:
            self.abort()
            raise
        return self.path

    def _verify(self, tmp: Path) -> None:
        """The finished file opens, has the right shape, its last rows read back, and its class
        names (stored in the .aux.xml) survived."""
        g = gdal()
        with gdal_errors() as errors:
            ds = g.OpenEx(str(tmp), g.OF_RASTER | g.OF_READONLY)
            ok = ds is not None and (ds.RasterXSize, ds.RasterYSize, ds.RasterCount) == \
                (self.width, self.height, self.bands)
            if ok:
                for i in range(1, self.bands + 1):
                    if ds.GetRasterBand(i).ReadAsArray(0, self.height - 1, self.width, 1) is None:
                        ok = False
                        break
                if ok and self.class_names:
                    ds.GetMetadata()  # GDAL 3.6 loads the .aux.xml (category names) only after this
                    ok = list(ds.GetRasterBand(1).GetCategoryNames() or []) == self.class_names
            ds = None
        if not ok or errors:
            if not errors:
                errors.append("the finished file does not read back complete")
            self._fail("verify", errors)

    def abort(self, exc: Optional[BaseException] = None) -> None:
        """Drop everything written so far (cancel or failure): no half file remains."""
        with contextlib.suppress(Exception), gdal_errors():
            self.ds = None
        self.ds = None
        for leftover in (self._gtiff_path, self._gtiff_path + ".aux.xml"):
            with contextlib.suppress(FileNotFoundError, OSError):
                os.unlink(leftover)
        self.pending.abort()


def output_geotransform(gt: Sequence[float], stride: int) -> list[float]:
    return [gt[0], gt[1] * stride, gt[2] * stride, gt[3], gt[4] * stride, gt[5] * stride]

