"""Inspect a raster and tell whether, and how, it can be fed to an MMEarth Sentinel-2 model.

:func:`read_raster_facts` reads metadata and a bounded sample of pixels with GDAL;
:func:`assess` is a pure function of those facts, so every rule is testable without files.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.gdal_io import RasterError, data_type_name, open_raster

#: Pixels per side read for the sampled band statistics: bounded whatever the raster's size.
SAMPLE_SIDE = 512
#: Ground sampling distance the MMEarth models were trained at, and the tolerance around it.
MODEL_GSD_M = 10.0
GSD_TOLERANCE = 0.05


@dataclass
class BandFacts:
    index: int  # 1-based, as GDAL and QGIS number bands
    description: str
    data_type: str
    nodata: Optional[float]
    sample_min: Optional[float] = None
    sample_max: Optional[float] = None
    sample_mean: Optional[float] = None
    sample_valid_fraction: Optional[float] = None


@dataclass
class RasterFacts:
    source: str
    driver: str
    width: int
    height: int
    crs_wkt: str
    crs_name: str
    crs_authid: str
    crs_is_geographic: bool
    crs_linear_unit: Optional[str]
    crs_unit_to_metre: Optional[float]
    pixel_size: tuple[float, float]
    geotransform: tuple[float, ...]
    bands: list[BandFacts]


@dataclass
class Finding:
    severity: str  # "error" blocks the model, "warning" is likely wrong, "info" is worth knowing
    message: str


@dataclass
class Assessment:
    facts: RasterFacts
    match: registry.BandMatch
    level_guess: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def mapping_lines(self) -> list[str]:
        """One line per model input band: which raster band feeds it."""
        lines = []
        for pos, (want, src) in enumerate(zip(self.match.wanted, self.match.source_index), start=1):
            if src is None:
                lines.append(f"model input {pos:2d} {want:<4s} <- MISSING")
            else:
                desc = self.facts.bands[src].description
                lines.append(f"model input {pos:2d} {want:<4s} <- raster band {src + 1} ({desc})")
        return lines


def _crs_facts(ds) -> tuple[str, str, str, bool, Optional[str], Optional[float]]:
    srs = ds.GetSpatialRef()
    if srs is None or not srs.ExportToWkt():
        return "", "", "", False, None, None
    auth = srs.GetAuthorityName(None)
    code = srs.GetAuthorityCode(None)
    authid = f"{auth}:{code}" if auth and code else ""
    name = srs.GetName() or authid
    geographic = bool(srs.IsGeographic())
    unit = None if geographic else srs.GetLinearUnitsName()
    to_m = None if geographic else float(srs.GetLinearUnits())
    return srs.ExportToWkt(), name, authid, geographic, unit, to_m


def _sample_band(band, nodata: Optional[float], side: int = SAMPLE_SIDE) -> tuple:
    """Min, max, mean and valid fraction over a decimated read of at most side x side pixels."""
    w, h = band.XSize, band.YSize
    scale = max(w / side, h / side, 1.0)
    bw, bh = max(1, int(w / scale)), max(1, int(h / scale))
    arr = band.ReadAsArray(0, 0, w, h, buf_xsize=bw, buf_ysize=bh)
    if arr is None:
        return None, None, None, None
    arr = arr.astype(np.float64, copy=False)
    valid = np.isfinite(arr)
    if nodata is not None and not math.isnan(nodata):
        valid &= arr != nodata
    if not valid.any():
        return None, None, None, 0.0
    vals = arr[valid]
    return float(vals.min()), float(vals.max()), float(vals.mean()), float(valid.mean())


def read_raster_facts(source: str | os.PathLike, sample: bool = True) -> RasterFacts:
    """Read what :func:`assess` needs from a raster; raises RasterError for unusable input."""
    ds = open_raster(source)
    wkt, name, authid, geographic, unit, to_m = _crs_facts(ds)
    gt = tuple(ds.GetGeoTransform(can_return_null=True) or ())
    bands = []
    for i in range(1, ds.RasterCount + 1):
        b = ds.GetRasterBand(i)
        nodata = b.GetNoDataValue()
        facts = BandFacts(i, b.GetDescription() or "", data_type_name(b.DataType), nodata)
        if sample:
            (facts.sample_min, facts.sample_max, facts.sample_mean,
             facts.sample_valid_fraction) = _sample_band(b, nodata)
        bands.append(facts)
    pixel = (abs(gt[1]), abs(gt[5])) if gt else (float("nan"), float("nan"))
    return RasterFacts(
        source=os.fspath(source), driver=ds.GetDriver().ShortName, width=ds.RasterXSize,
        height=ds.RasterYSize, crs_wkt=wkt, crs_name=name, crs_authid=authid,
        crs_is_geographic=geographic, crs_linear_unit=unit, crs_unit_to_metre=to_m,
        pixel_size=pixel, geotransform=gt, bands=bands,
    )


def require_georeferenced(facts: RasterFacts) -> None:
    """Raise RasterError when the raster has no CRS or no geotransform: nothing can be mapped."""
    if not facts.crs_wkt:
        raise RasterError(
            f"The raster '{facts.source}' has no coordinate reference system (CRS). MMEarth models need "
            "georeferenced Sentinel-2 data: assign the correct CRS (QGIS: Raster > Projections > Assign "
            "Projection, or gdal_edit.py -a_srs EPSG:32633 FILE) and run again."
        )
    if not facts.geotransform or facts.geotransform == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        raise RasterError(
            f"The raster '{facts.source}' has a CRS but no geotransform (pixel size and origin). "
            "Georeference it (QGIS: Raster > Georeferencer, or gdal_edit.py -a_ullr) and run again."
        )


def assess(facts: RasterFacts, wanted: Sequence[str] = registry.S2_MMEARTH_BANDS) -> Assessment:
    """Judge whether the raster can feed a Sentinel-2 model that takes the ``wanted`` bands."""
    match = registry.match_bands([b.description for b in facts.bands], wanted)
    names = {registry.canonical_s2_band(b.description) for b in facts.bands}
    level = "l1c" if "B10" in names else "unknown"
    out = Assessment(facts, match, level)
    add = out.findings.append

    if not match.complete:
        add(Finding("error", match.describe_problem()))
    elif not match.is_identity:
        add(Finding("info", "bands are matched by name and reordered to the model's band order"))
    for idx in match.unused:
        b = facts.bands[idx]
        add(Finding("info", f"raster band {idx + 1} ({b.description or 'no description'}) is not used by the model"))

    if facts.crs_is_geographic:
        add(Finding("warning",
                    f"the raster is in a geographic CRS ({facts.crs_authid or facts.crs_name}, degrees); the "
                    "models expect about 10 m square pixels: reproject to the local UTM zone at 10 m "
                    "(QGIS: Raster > Projections > Warp) first"))
    elif facts.crs_unit_to_metre:
        px = [s * facts.crs_unit_to_metre for s in facts.pixel_size]
        if any(abs(p - MODEL_GSD_M) > GSD_TOLERANCE * MODEL_GSD_M for p in px):
            add(Finding("warning",
                        f"pixel size is {px[0]:g} x {px[1]:g} m but the models were trained at "
                        f"{MODEL_GSD_M:g} m: resample to {MODEL_GSD_M:g} m first"))

    used = [facts.bands[s] for s in match.source_index if s is not None]
    types = sorted({b.data_type for b in used})
    if types and types != ["UInt16"]:
        maxima = [b.sample_max for b in used if b.sample_max is not None]
        if any(t.startswith("Float") for t in types) and maxima and max(maxima) <= 2.0:
            add(Finding("warning",
                        "values look like reflectance scaled to 0-1; the models expect Sentinel-2 digital "
                        "numbers (reflectance x 10000): multiply by 10000 first"))
        elif "Byte" in types:
            add(Finding("warning",
                        "8-bit data is not Sentinel-2 reflectance (uint16 digital numbers); an 8-bit "
                        "visualisation cannot be fed to the model"))
        else:
            add(Finding("info", f"data type {', '.join(types)}; Sentinel-2 products are UInt16"))
    if used and all(b.nodata is None for b in used):
        add(Finding("info",
                    "no nodata value is set; Sentinel-2 marks empty pixels with 0: set nodata to 0 so "
                    "empty areas are skipped"))
    if level == "l1c":
        add(Finding("info", "band B10 (cirrus) is present, so this is probably Level-1C (top of atmosphere)"))
    return out


def inspect_raster(source: str | os.PathLike, wanted: Sequence[str] = registry.S2_MMEARTH_BANDS) -> Assessment:
    """Read and assess a raster in one call; raises RasterError for unreadable or ungeoreferenced input."""
    facts = read_raster_facts(source)
    require_georeferenced(facts)
    return assess(facts, wanted)


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.6g}"


BAND_TABLE_COLUMNS = ("band", "description", "s2_band", "data_type", "nodata", "min", "max", "mean", "valid")


def band_table_rows(a: Assessment) -> list[tuple]:
    """One row per raster band, in BAND_TABLE_COLUMNS order (numbers as numbers)."""
    rows = []
    for b in a.facts.bands:
        rows.append((
            b.index, b.description, registry.canonical_s2_band(b.description) or "", b.data_type,
            b.nodata, b.sample_min, b.sample_max, b.sample_mean, b.sample_valid_fraction,
        ))
    return rows


def summary_lines(a: Assessment) -> list[str]:
    f = a.facts
    lines = [
        f"Raster: {f.source}",
        f"Driver: {f.driver}; size {f.width} x {f.height} px; {len(f.bands)} band(s)",
        f"CRS: {f.crs_authid or '-'} {f.crs_name}",
        f"Pixel size: {f.pixel_size[0]:g} x {f.pixel_size[1]:g} {f.crs_linear_unit or 'degree'}",
        "",
        f"{'band':>4s}  {'description':<28s} {'S2':<4s} {'type':<8s} {'nodata':>7s} {'min':>9s} {'max':>9s} {'mean':>9s}",
    ]
    for row in band_table_rows(a):
        idx, desc, s2, dt, nd, mn, mx, mean, _ = row
        lines.append(f"{idx:>4d}  {desc[:28]:<28s} {s2 or '-':<4s} {dt:<8s} {_fmt(nd):>7s} "
                     f"{_fmt(mn):>9s} {_fmt(mx):>9s} {_fmt(mean):>9s}")
    lines.append("")
    verdict = "YES" if a.compatible else "NO"
    lines.append(f"Can feed a {len(a.match.wanted)}-band MMEarth Sentinel-2 model: {verdict}")
    lines.extend("  " + m for m in a.mapping_lines())
    for finding in a.findings:
        lines.append(f"{finding.severity.upper()}: {finding.message}")
    return lines


def html_report(a: Assessment) -> str:
    """A self-contained HTML page of the assessment (shown in QGIS's Results Viewer)."""
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in BAND_TABLE_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(_fmt(v) if isinstance(v, float) or v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in band_table_rows(a)
    )
    findings = "".join(f"<li><b>{esc(x.severity)}</b>: {esc(x.message)}</li>" for x in a.findings)
    mapping = "".join(f"<li><code>{esc(m)}</code></li>" for m in a.mapping_lines())
    f = a.facts
    verdict = "can" if a.compatible else "cannot"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MMEarth raster inspection</title></head><body>"
        f"<h2>{esc(os.path.basename(f.source))}</h2>"
        f"<p>{esc(f.driver)}, {f.width} x {f.height} px, {len(f.bands)} bands, CRS {esc(f.crs_authid or f.crs_name)}, "
        f"pixel {f.pixel_size[0]:g} x {f.pixel_size[1]:g} {esc(f.crs_linear_unit or 'degree')}</p>"
        f"<p><b>This raster {verdict} be fed to a {len(a.match.wanted)}-band MMEarth Sentinel-2 model.</b></p>"
        f"<table border='1' cellspacing='0' cellpadding='3'><tr>{head}</tr>{body}</table>"
        f"<h3>Band mapping</h3><ul>{mapping}</ul><h3>Findings</h3><ul>{findings}</ul></body></html>"
    )
