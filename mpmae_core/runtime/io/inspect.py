"""Inspect a raster and tell whether, and how, it can be fed to an MMEarth model of an input source
(Sentinel-2 unless told otherwise; the rules are the source's, in the registry).

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
from mpmae_core.runtime.io.gdal_io import RasterError, data_type_name, gdal_errors, open_raster

#: Pixels per side read for the sampled band statistics: bounded whatever the raster's size.
SAMPLE_SIDE = 512
#: Tolerance around the source's ground sampling distance (registry.SourceSpec.gsd_m).
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
    sample_p50: Optional[float] = None
    sample_p99: Optional[float] = None
    read_error: str = ""  # GDAL's reason when a sampled block could not be read


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
    metadata: dict = field(default_factory=dict)  # the dataset's own metadata (default domain)


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
    level_source: str = ""  # how the level was found: "band B10", "metadata", or "" (assumed)
    source: str = registry.DEFAULT_SOURCE  # the input source (registry.SOURCES) assessed against

    @property
    def spec(self) -> registry.SourceSpec:
        return registry.source(self.source)

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
    """Min, max, mean, valid fraction, median and 99th percentile over a decimated read of at most
    side x side pixels, and GDAL's reason when the read failed ('' when it worked)."""
    w, h = band.XSize, band.YSize
    scale = max(w / side, h / side, 1.0)
    bw, bh = max(1, int(w / scale)), max(1, int(h / scale))
    with gdal_errors() as errors:
        arr = band.ReadAsArray(0, 0, w, h, buf_xsize=bw, buf_ysize=bh)
    if arr is None or errors:
        return None, None, None, None, None, None, errors.text()
    arr = arr.astype(np.float64, copy=False)
    valid = np.isfinite(arr)
    if nodata is not None and not math.isnan(nodata):
        valid &= arr != nodata
    if not valid.any():
        return None, None, None, 0.0, None, None, ""
    vals = arr[valid]
    p50, p99 = np.percentile(vals, [50, 99])
    return (float(vals.min()), float(vals.max()), float(vals.mean()), float(valid.mean()), float(p50), float(p99),
            "")


#: Blocks read per band to find damaged tiles that a decimated read (or overviews) would not touch.
PROBE_BLOCKS = 64


def spread_blocks(band, max_blocks: int = PROBE_BLOCKS) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of up to ``max_blocks`` full-resolution blocks spread over the band (every block
    of a small raster): bounded reading whatever the raster's size, and no overviews in the way."""
    bx, by = band.GetBlockSize()
    bx, by = max(1, min(bx, band.XSize)), max(1, min(by, band.YSize))
    nx, ny = math.ceil(band.XSize / bx), math.ceil(band.YSize / by)
    total = nx * ny
    picks = range(total) if total <= max_blocks else np.linspace(0, total - 1, max_blocks).astype(int)
    out = []
    for k in picks:
        j, i = divmod(int(k), nx)
        x, y = i * bx, j * by
        out.append((x, y, min(bx, band.XSize - x), min(by, band.YSize - y)))
    return out


def probe_blocks(band, max_blocks: int = PROBE_BLOCKS) -> str:
    """GDAL's reason for the first of :func:`spread_blocks` that cannot be read, '' when all read."""
    for x, y, w, h in spread_blocks(band, max_blocks):
        with gdal_errors() as errors:
            arr = band.ReadAsArray(x, y, w, h)
        if arr is None or errors:
            return f"block at x {x}, y {y} ({w} x {h} px): {errors.text()}"
    return ""


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
            (facts.sample_min, facts.sample_max, facts.sample_mean, facts.sample_valid_fraction,
             facts.sample_p50, facts.sample_p99, facts.read_error) = _sample_band(b, nodata)
            if not facts.read_error:
                facts.read_error = probe_blocks(b)
        bands.append(facts)
    pixel = (abs(gt[1]), abs(gt[5])) if gt else (float("nan"), float("nan"))
    return RasterFacts(
        source=os.fspath(source), driver=ds.GetDriver().ShortName, width=ds.RasterXSize,
        height=ds.RasterYSize, crs_wkt=wkt, crs_name=name, crs_authid=authid,
        crs_is_geographic=geographic, crs_linear_unit=unit, crs_unit_to_metre=to_m,
        pixel_size=pixel, geotransform=gt, bands=bands, metadata=dict(ds.GetMetadata() or {}),
    )


def georeference_problems(facts: RasterFacts) -> list[str]:
    """What is missing for the raster to be placed on the ground, each with its fix ([] when fine)."""
    problems = []
    if not facts.crs_wkt:
        problems.append("no coordinate reference system (CRS): assign the correct one (QGIS: Raster > Projections > "
                        "Assign Projection; or gdal_edit.py -a_srs EPSG:32633 FILE, with your UTM zone)")
    if not facts.geotransform or facts.geotransform == (0.0, 1.0, 0.0, 0.0, 0.0, 1.0):
        problems.append("no geotransform (pixel size and origin): georeference it (QGIS: Raster > Georeferencer; or "
                        "gdal_edit.py -a_ullr ULX ULY LRX LRY FILE with the corner coordinates in metres)")
    return problems


def require_georeferenced(facts: RasterFacts) -> None:
    """Raise RasterError naming every fix at once when the raster has no CRS or no geotransform."""
    problems = georeference_problems(facts)
    if problems:
        raise RasterError(f"The raster '{facts.source}' cannot be placed on the ground. MMEarth models need "
                          "georeferenced Sentinel-2 data: it has " + "; and ".join(problems) + ". Then run again.")


# ------------------------------------------------------------------------------------------
# Processing level, DN offset and radiometry: pure rules shared by inspect and the runtime
# ------------------------------------------------------------------------------------------

def detect_level(descriptions: Sequence[str], metadata: dict,
                 source: "registry.SourceSpec | str" = registry.DEFAULT_SOURCE) -> tuple[Optional[str], str]:
    """(level | None, how it was found) from the bands present (B10 exists only in Sentinel-2 L1C)
    or the raster's metadata (product type or level); the rules are the source's (registry)."""
    return registry.source(source).detect_level(descriptions, metadata)


def detect_dn_offset(metadata: dict, source: "registry.SourceSpec | str" = registry.DEFAULT_SOURCE) -> Optional[float]:
    """The offset to subtract, from the raster's metadata (for Sentinel-2: BOA/RADIO_ADD_OFFSET,
    else PROCESSING_BASELINE); None when the metadata does not say."""
    return registry.source(source).detect_offset(metadata)


SCALE_OPTION = "the scale factor (--scale on the command line, 'Scale factor' in QGIS)"
OFFSET_OPTION = "the DN offset (--dn-offset on the command line, 'DN offset' in QGIS)"


def radiometry_findings(p50: Sequence[float], p99: Sequence[float], data_types: Sequence[str],
                        scale: float = 1.0, dn_offset: float = 0.0,
                        source: "registry.SourceSpec | str" = registry.DEFAULT_SOURCE) -> list[Finding]:
    """Warnings when the values read do not look like the source's raw values after ``scale``
    and ``dn_offset``, each naming the likely scale and the option that fixes it. ``p50``/``p99``
    are per-band robust statistics of the raw values (None where a band had no data)."""
    spec = registry.source(source)
    low, high = spec.plausible_p99
    p50 = [v for v in p50 if v is not None]
    p99 = [v for v in p99 if v is not None]
    if not p99:
        return []
    top = max(p99) * scale
    mid = float(np.median(p50)) * scale if p50 else top
    out = []
    if "Byte" in data_types and scale == 1.0 and spec.dn_scale > 255:
        return [Finding("warning", f"8-bit data (values 0-255) is not {spec.units}: it looks like a visualisation. "
                                   "Use the original product's bands")]
    if top <= 2.0 and spec.dn_scale > 2.0:
        out.append(Finding("warning", f"values look like reflectance scaled to 0-1 (99th percentile {top:.3g}); the "
                                      f"models expect {spec.units}: set {SCALE_OPTION} to {spec.dn_scale:g}"))
    elif top < low:
        hint = (f": they look like reflectance x {spec.dn_scale / 10:g} (some processors write DN/10); if so, set "
                f"{SCALE_OPTION} to 10") if spec.dn_scale >= 100 else f": check the data's scale and set {SCALE_OPTION}"
        out.append(Finding("warning", f"values are small for {spec.units} (99th percentile {top:.4g}, real scenes "
                                      f"exceed {low:g}){hint}"))
    elif top > high:
        out.append(Finding("warning", f"values are too large for {spec.units} (99th percentile "
                                      f"{top:.5g}); check the data's scale and set {SCALE_OPTION} (e.g. 0.1)"))
    if dn_offset and mid - dn_offset < 0:
        out.append(Finding("warning", f"half the values are below the DN offset of {dn_offset:g} being subtracted "
                                      f"(median {mid:.4g}): the raster probably has no offset; set {OFFSET_OPTION} "
                                      "to 0"))
    return out


def robust_statistics(ds, band_numbers: Sequence[int], nodata: Optional[float], max_blocks: int = 16) -> tuple:
    """Per-band (p50, p99) of valid raw values in :func:`spread_blocks` (None where a band has none).
    The I/O is bounded: at most ``max_blocks`` blocks per band, whatever the raster's size."""
    p50, p99 = [], []
    for b in band_numbers:
        band = ds.GetRasterBand(b)
        values = []
        for x, y, w, h in spread_blocks(band, max_blocks):
            with gdal_errors():
                arr = band.ReadAsArray(x, y, w, h)
            if arr is None:
                continue  # a damaged block: the tile read reports it with the window
            arr = arr.astype(np.float64, copy=False).ravel()
            ok = np.isfinite(arr)
            if nodata is not None and not math.isnan(nodata):
                ok &= arr != nodata
            values.append(arr[ok])
        vals = np.concatenate(values) if values else np.zeros(0)
        if vals.size:
            m, t = np.percentile(vals, [50, 99])
            p50.append(float(m))
            p99.append(float(t))
        else:
            p50.append(None)
            p99.append(None)
    return p50, p99


def assess(facts: RasterFacts, wanted: Optional[Sequence[str]] = None,
           source: "registry.SourceSpec | str | None" = None) -> Assessment:
    """Judge whether the raster can feed a model that takes the ``wanted`` bands of ``source``
    (by default the source's model bands; the source of ``wanted`` when only they are given)."""
    spec = registry.source(source) if source is not None else \
        registry.source_for_bands(wanted) if wanted else registry.source()
    wanted = tuple(wanted or spec.model_bands)
    match = registry.match_bands([b.description for b in facts.bands], wanted, spec)
    level, how = detect_level([b.description for b in facts.bands], facts.metadata, spec)
    out = Assessment(facts, match, level or "unknown", level_source=how, source=spec.name)
    add = out.findings.append

    broken = [b for b in facts.bands if b.read_error]
    for b in broken:
        add(Finding("error", f"raster band {b.index} cannot be read: {b.read_error}. The file is damaged or "
                             "incomplete: download or export it again (check it with gdalinfo -checksum)"))

    found = len(wanted) - len(match.missing)
    add(Finding("info", f"{found} of the {len(wanted)} bands the model takes were found by name"))
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
                    f"models expect about {spec.gsd_m:g} m square pixels: reproject to the local UTM zone at "
                    f"{spec.gsd_m:g} m (QGIS: Raster > Projections > Warp) first"))
    elif facts.crs_unit_to_metre:
        px = [s * facts.crs_unit_to_metre for s in facts.pixel_size]
        if any(abs(p - spec.gsd_m) > GSD_TOLERANCE * spec.gsd_m for p in px):
            add(Finding("warning",
                        f"pixel size is {px[0]:g} x {px[1]:g} m but the models were trained at "
                        f"{spec.gsd_m:g} m: resample to {spec.gsd_m:g} m first"))

    used = [facts.bands[s] for s in match.source_index if s is not None] or list(facts.bands)
    types = sorted({b.data_type for b in used})
    offset = detect_dn_offset(facts.metadata, spec) or 0.0
    out.findings.extend(radiometry_findings([b.sample_p50 for b in used], [b.sample_p99 for b in used], types,
                                            1.0, offset, spec))
    if spec is registry.SENTINEL2 or spec.dn_scale == registry.S2_QUANTIFICATION:
        if types and types != ["UInt16"] and "Byte" not in types:
            add(Finding("info", f"data type {', '.join(types)}; {spec.title} products are UInt16"))
    if used and all(b.nodata is None for b in used):
        add(Finding("info",
                    f"no nodata value is set; {spec.title} marks empty pixels with {spec.nodata:g}: set nodata to "
                    f"{spec.nodata:g} so empty areas are skipped"))
    if level:
        add(Finding("info", f"processing level {level.upper()}: {how}"))
    elif len(spec.levels) > 1:
        assumed = spec.level(spec.default_level)
        others = [lv for lv in spec.levels if lv.name != assumed.name]
        add(Finding("warning", f"the raster does not say its processing level (no band that only one level carries, "
                               f"no product type in its metadata): the runtime will assume {assumed.name.upper()} "
                               f"({assumed.title}). If it is {others[0].title.split(' (')[0]}, set the processing "
                               f"level (--level {others[0].name} on the command line, '{spec.title} processing "
                               "level' in QGIS)"))
    if offset:
        add(Finding("info", f"processing baseline 04.00 or later: the offset of {offset:g} is subtracted from every DN"))
    return out


def inspect_raster(path: str | os.PathLike, wanted: Optional[Sequence[str]] = None,
                   source: "registry.SourceSpec | str | None" = None) -> Assessment:
    """Read and assess a raster (or a Sentinel-2 product, STAC item or band folder, through its
    stack) in one call; raises RasterError for unreadable or ungeoreferenced input."""
    from mpmae_core.runtime.io.products import stack_path

    stack = stack_path(path)
    facts = read_raster_facts(stack)
    facts.source = str(path)
    require_georeferenced(facts)
    out = assess(facts, wanted, source)
    from mpmae_core.runtime.io.products import MASK_FILE_KEY

    masked = masked_fraction(stack) if MASK_FILE_KEY in facts.metadata else None
    if masked is not None:
        title, share = masked
        out.findings.append(Finding("warning" if share > 0.5 else "info",
                                    f"{share:.1%} of the scene is masked as no data by the product's {title} (clouds, "
                                    "shadows, no data)" + ("; little of it can be mapped" if share > 0.5 else "")))
    return out


def masked_fraction(stack, side: int = SAMPLE_SIDE):
    """(mask title, share of pixels masked) of a product stack's quality layer, over a decimated
    read of at most side x side pixels; None when the raster names no quality layer."""
    from mpmae_core.runtime.io.products import quality_mask

    ds = open_raster(stack)
    mask = quality_mask(ds)
    if mask is None:
        return None
    w, h = ds.RasterXSize, ds.RasterYSize
    step = max(1, int(math.ceil(max(w, h) / side)))
    rows = []
    for y in range(0, h, step):
        rows.append(mask.masked(0, y, w, 1)[0, ::step])
    return mask.spec.title, float(np.mean(np.concatenate(rows))) if rows else 0.0


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
            b.index, b.description, a.spec.canonical_band(b.description) or "", b.data_type,
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
    lines.append(f"Can feed a {len(a.match.wanted)}-band MMEarth {a.spec.title} model: {verdict}")
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
        f"<p><b>This raster {verdict} be fed to a {len(a.match.wanted)}-band MMEarth {esc(a.spec.title)} model.</b></p>"
        f"<table border='1' cellspacing='0' cellpadding='3'><tr>{head}</tr>{body}</table>"
        f"<h3>Band mapping</h3><ul>{mapping}</ul><h3>Findings</h3><ul>{findings}</ul></body></html>"
    )
