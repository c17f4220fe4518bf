"""The one place for facts the whole project agrees on.

Input sources as data (``SourceSpec``: Sentinel-2 L1C / L2A, its RGB bands, and whatever a test
or a later version adds): band names and their order, native resolutions, levels, scale and
offset rules, nodata, plausibility limits, the masks a product carries and the default
normalisation statistics. Also the pretext tasks, the class tables and the model catalogue. The model, the data pipeline, the export metadata and the
QGIS plugin all read this module, so it imports nothing heavier than the standard library.

Band order is always carried by *name*. MMEarth stores B8A before B8; most GeoTIFF stacks put
B8 before B8A, so any code that assumes positions silently swaps two channels.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from importlib import resources
from typing import Optional, Sequence


# --------------------------------------------------------------------------------------------
# Input sources: what a raster of a given kind holds, as data. A new source is one SourceSpec
# (plus, for a new file format, one reader); matching, inspection, normalisation and the model
# metadata all read it from here.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Band:
    name: str  # the canonical name ("B8A")
    common_name: str  # the STAC / eo common name ("nir08")
    wavelength_nm: float
    resolution_m: float  # native ground sampling distance
    aliases: tuple[str, ...] = ()  # other spellings seen in the wild (lower case)


S2Band = Band  # the name before sources were data


@dataclass(frozen=True)
class Level:
    """A processing level of a source; each level has its own normalisation statistics."""

    name: str  # "l1c"
    title: str  # "Level-1C (top of atmosphere)"
    product_pattern: str = ""  # regex over the raster's metadata (upper case) that names this level
    only_bands: tuple[str, ...] = ()  # bands only this level carries: their presence names it
    statistics_key: str = ""  # the level's entry in the source's statistics file


@dataclass(frozen=True)
class MaskSpec:
    """A quality layer the products of a source carry (clouds, shadows, snow)."""

    name: str  # "scl"
    title: str
    levels: tuple[str, ...]  # the levels whose products carry it
    resolution_m: float
    kind: str  # "classes" (one value per class), "probability" (0-100 %) or "flags" (one 0/1 band per flag)
    classes: tuple[tuple[int, str], ...] = ()  # value (or band number, for flags) -> meaning
    masked: tuple[int, ...] = ()  # the values (or flag bands) masked by default
    threshold: float = 0.0  # "probability": masked at or above this
    file_pattern: str = ""  # how the layer's file is named inside a product


@dataclass(frozen=True)
class SourceSpec:
    """Everything the runtime needs to know about one kind of input raster."""

    name: str
    title: str  # as in "a Sentinel-2 raster", "Sentinel-2 band names"
    bands: tuple[Band, ...]  # every band the source can carry, in its storage order
    model_bands: tuple[str, ...]  # the bands a model of this source takes by default, in input order
    product_order: tuple[str, ...]  # the order of the products and most stacks
    display_bands: tuple[str, ...]  # red, green, blue for showing a scene
    levels: tuple[Level, ...]
    default_level: str  # assumed (with a warning) when a raster does not say
    units: str  # what the raw values are ("digital numbers, reflectance x 10000")
    dn_scale: float = 1.0  # raw value = physical value x dn_scale
    nodata: float = 0.0
    plausible_p99: tuple[float, float] = (0.0, float("inf"))  # the raw 99th percentile of real scenes
    offset_keys: tuple[str, ...] = ()  # metadata items that state the additive offset (as a negative number)
    baseline_key: str = ""  # metadata item naming the processing baseline ...
    baseline_offsets: tuple[tuple[float, float], ...] = ()  # ... and (from baseline, offset) rules
    gsd_m: float = 10.0
    band_token: str = ""  # regex finding a band name inside free text; its groups, joined after "B", name it
    fillable: tuple[tuple[str, str], ...] = ()  # band -> the neighbour a band map may repeat for it
    masks: tuple[MaskSpec, ...] = ()
    statistics_file: str = ""  # a resource of mpmae_core.resources with per-level mean and std
    statistics_order_key: str = ""  # the file's key listing the band order of its entries
    #: level -> {band: (mean, std)}, for sources whose statistics are not in a file (tests, toys)
    statistics: dict = field(default_factory=dict, hash=False, compare=False)
    summary: str = ""  # one line for listings

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @cached_property  # built once per spec (a frozen dataclass: its bands never change)
    def band_by_name(self) -> dict:
        return {b.name: b for b in self.bands}

    @cached_property
    def _names(self) -> dict:
        """Every spelling (name, common name, alias; lower case, spaces and dashes as _) -> band."""
        table = {}
        for b in self.bands:
            for key in (b.name, b.common_name) + tuple(b.aliases):
                table.setdefault(re.sub(r"[\s\-]+", "_", key.lower()), b.name)
        return table

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(lv.name for lv in self.levels)

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise ValueError(f"unknown {self.title} processing level {name!r}; expected one of "
                         f"{', '.join(self.level_names)}")

    def canonical_band(self, label: Optional[str]) -> Optional[str]:
        """The band a free-text label denotes: its name, common name or an alias (any case), or a
        band token inside a longer label; None when it names no band, or several."""
        if not label:
            return None
        text = label.strip()
        key = re.sub(r"[\s\-]+", "_", text.lower())
        names = self._names
        if key in names:
            return names[key]
        if not self.band_token:
            return None
        found = {"B" + "".join(g) for g in re.findall(self.band_token, text.upper())}
        # "Band 8" style tokens with a bare number are ambiguous with band *indices*: refuse them.
        if re.fullmatch(r"(?i)band[ _-]?\d+", text) or len(found) != 1:
            return None
        name = found.pop()
        return name if name in self.band_by_name else None

    def default_statistics(self, level: str, bands: Sequence[str]) -> tuple[list[float], list[float]]:
        """Default per-band (mean, std) of raw values at ``level``."""
        lv = self.level(level.lower())
        if self.statistics:
            table = self.statistics.get(lv.name, {})
            mean = {b: float(v[0]) for b, v in table.items()}
            std = {b: float(v[1]) for b, v in table.items()}
        elif self.statistics_file:
            raw = _resource_json(self.statistics_file)
            entry, order = raw[lv.statistics_key], raw[self.statistics_order_key]
            mean, std = dict(zip(order, entry["mean"])), dict(zip(order, entry["std"]))
        else:
            mean, std = {}, {}
        missing = [b for b in bands if b not in mean]
        if missing:
            raise ValueError(f"no default {lv.name.upper()} statistics for band(s) {', '.join(missing)}")
        return [mean[b] for b in bands], [std[b] for b in bands]

    def detect_level(self, labels: Sequence[Optional[str]], metadata: dict) -> tuple[Optional[str], str]:
        """(level or None, how it was found) from the bands present or the raster's metadata."""
        names = {self.canonical_band(d) for d in labels}
        for lv in self.levels:
            only = [b for b in lv.only_bands if b in names]
            if only:
                band = self.band_by_name[only[0]]
                return lv.name, (f"band {band.name} ({band.common_name}) is present, which only "
                                 f"{lv.title.split(' (')[0]} products carry")
        text = " ".join(f"{k}={v}" for k, v in (metadata or {}).items()).upper()
        for lv in self.levels:
            if lv.product_pattern and re.search(lv.product_pattern, text):
                return lv.name, f"the raster's metadata names a {lv.title.split(' (')[0]} product"
        return None, ""

    def detect_offset(self, metadata: dict) -> Optional[float]:
        """The offset to subtract from raw values, from the raster's metadata; None when it does not say."""
        meta = {k.upper(): v for k, v in (metadata or {}).items()}
        for key in self.offset_keys:
            for k, v in meta.items():
                if key in k:
                    try:
                        return -float(v)  # the products state the offset as a negative number
                    except ValueError:
                        continue
        if self.baseline_key:
            for k, v in meta.items():
                if self.baseline_key in k:
                    try:
                        baseline = float(v)
                    except ValueError:
                        continue
                    offset = 0.0
                    for since, value in self.baseline_offsets:
                        if baseline >= since:
                            offset = value
                    return offset
        return None


@lru_cache(maxsize=None)
def _resource_json(name: str) -> dict:
    return json.loads(resources.files("mpmae_core.resources").joinpath(name).read_text())


#: Every Sentinel-2 MSI band, in the order the MMEarth HDF5 files store them (B8A before B8).
S2_BANDS: tuple[Band, ...] = (
    Band("B1", "coastal", 443, 60, ("aerosol", "coastal_aerosol", "coastalaerosol")),
    Band("B2", "blue", 490, 10),
    Band("B3", "green", 560, 10),
    Band("B4", "red", 665, 10),
    Band("B5", "rededge1", 705, 20, ("red_edge_1", "rededge_1")),
    Band("B6", "rededge2", 740, 20, ("red_edge_2", "rededge_2")),
    Band("B7", "rededge3", 783, 20, ("red_edge_3", "rededge_3")),
    Band("B8A", "nir08", 865, 20, ("narrow_nir", "nirnarrow", "nir_narrow", "red_edge_4", "rededge4")),
    Band("B8", "nir", 842, 10),
    Band("B9", "nir09", 945, 60, ("water_vapour", "water_vapor", "watervapour", "wv")),
    Band("B10", "cirrus", 1375, 60),
    Band("B11", "swir16", 1610, 20, ("swir1", "swir_1")),
    Band("B12", "swir22", 2190, 20, ("swir2", "swir_2")),
)
S2_BAND_BY_NAME = {b.name: b for b in S2_BANDS}

#: The 13 bands of an MMEarth ``sentinel2`` dataset, in storage order.
S2_STORAGE_ORDER: tuple[str, ...] = tuple(b.name for b in S2_BANDS)
#: The order of the ESA products and most GeoTIFF stacks (B8 before B8A).
S2_PRODUCT_ORDER: tuple[str, ...] = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")
#: The 12 bands the MMEarth models take (B10 dropped), in model input order.
S2_MMEARTH_BANDS: tuple[str, ...] = tuple(n for n in S2_STORAGE_ORDER if n != "B10")
#: RGB input bands of the ``rgb`` reference configuration, in the reference's order (blue, green, red).
S2_RGB_BANDS: tuple[str, ...] = ("B2", "B3", "B4")
#: Red, green, blue: the order for displaying a Sentinel-2 image.
S2_RGB_DISPLAY: tuple[str, ...] = ("B4", "B3", "B2")

#: Sentinel-2 nodata value in the raw uint16 digital numbers.
S2_NODATA = 0
#: Raw digital numbers are reflectance x 10000; products from processing baseline 04.00 on
#: (25 January 2022) add this offset, which must be subtracted before using MMEarth statistics.
S2_QUANTIFICATION = 10000.0
S2_BASELINE_04_OFFSET = 1000.0

#: The L2A scene classification (SCL, 20 m). Masked by default: no data, saturated or defective,
#: cloud shadows, clouds of medium and high probability, thin cirrus. Snow (11) is a state of the
#: ground, not a fault of the data, so it is kept unless asked for.
S2_SCL = MaskSpec(
    "scl", "Scene classification (SCL)", ("l2a",), 20, "classes",
    ((0, "no data"), (1, "saturated or defective"), (2, "dark area pixels / topographic shadow"),
     (3, "cloud shadow"), (4, "vegetation"), (5, "not vegetated"), (6, "water"), (7, "unclassified"),
     (8, "cloud, medium probability"), (9, "cloud, high probability"), (10, "thin cirrus"), (11, "snow or ice")),
    masked=(0, 1, 3, 8, 9, 10), file_pattern=r"SCL_20m")
#: The L2A cloud probability (0-100 %, 20 m).
S2_CLDPRB = MaskSpec("cldprb", "Cloud probability (MSK_CLDPRB)", ("l2a",), 20, "probability", threshold=50.0,
                     file_pattern=r"MSK_CLDPRB_20m")
#: The L1C classification mask of processing baseline 04.00 and later (one band per flag, 60 m).
S2_CLASSI = MaskSpec("classi", "Classification mask (MSK_CLASSI_B00)", ("l1c",), 60, "flags",
                     ((1, "opaque clouds"), (2, "cirrus"), (3, "snow or ice")), masked=(1, 2),
                     file_pattern=r"MSK_CLASSI_B00")

SENTINEL2 = SourceSpec(
    name="sentinel2",
    title="Sentinel-2",
    bands=S2_BANDS,
    model_bands=S2_MMEARTH_BANDS,
    product_order=S2_PRODUCT_ORDER,
    display_bands=S2_RGB_DISPLAY,
    levels=(Level("l1c", "Level-1C (top of atmosphere)", r"L1C|LEVEL-?1C|MSI1C", ("B10",), "sentinel2_l1c_without_B10"),
            Level("l2a", "Level-2A (bottom of atmosphere)", r"L2A|LEVEL-?2A|MSI2A", (), "sentinel2_l2a")),
    default_level="l2a",
    units="Sentinel-2 digital numbers (reflectance x 10000)",
    dn_scale=S2_QUANTIFICATION,
    nodata=S2_NODATA,
    # The 99th percentile of DNs over a scene's bands is above 500 for real scenes, even all-water
    # ones at L2A (reflectance x 1000, "DN/10", stays below), and below reflectance 2.5 (saturated
    # clouds reach about 1.6).
    plausible_p99=(500.0, 25000.0),
    offset_keys=("BOA_ADD_OFFSET", "RADIO_ADD_OFFSET"),
    baseline_key="PROCESSING_BASELINE",
    baseline_offsets=((4.0, S2_BASELINE_04_OFFSET),),
    # "B8A", "B08", "b4", "S2_B11", "T33UUU_20170216T102101_B04", "Band 8A"... The token must not
    # be glued to other letters or digits on either side (so "SB12X" or "B123" are not bands).
    band_token=r"(?<![A-Z0-9])B(?:AND)?[ _-]?0?(1[0-2]|[1-9])(A?)(?![A-Z0-9])",
    fillable=(("B1", "the band number of B2"), ("B9", "the band number of B8A")),
    masks=(S2_SCL, S2_CLDPRB, S2_CLASSI),
    statistics_file="mmearth_s2_band_stats.json",
    statistics_order_key="band_order_l2a",  # both entries are stored in the 12-band MMEarth order
    summary="Sentinel-2 MSI, Level-1C or Level-2A: the 12 bands of the MMEarth models (B10 left out)",
)
#: The released RGB MMEarth models: Sentinel-2's blue, green and red, in that order.
SENTINEL2_RGB = replace(SENTINEL2, name="sentinel2_rgb", model_bands=S2_RGB_BANDS,
                        summary="Sentinel-2 true colour: blue, green, red (B2, B3, B4)")

#: Every input source the runtime knows, by name. A test or a plugin may add one.
SOURCES: dict[str, SourceSpec] = {s.name: s for s in (SENTINEL2, SENTINEL2_RGB)}
DEFAULT_SOURCE = SENTINEL2.name


@dataclass(frozen=True)
class EmbeddingSpec:
    """A kind of embedding raster that is a feature source of its own (not a model's input): its
    dimensions, how its stored values become the embedding (``dequantise``), its no data and its
    resolution, and how to recognise it."""

    name: str
    title: str
    dims: int  # 0: any number of bands
    dequantise: str  # "alphaearth": sign(v) (|v| / 127.5)^2 of int8; "scales": int8 x a per-pixel scale; "none"
    nodata: Optional[float]  # the stored value meaning no data (before dequantising); None: NaN only
    resolution_m: float
    band_names: tuple[str, ...] = ()  # the names its bands carry where it names them
    summary: str = ""
    reference: str = ""  # where the format is documented

    def band_name(self, i: int) -> str:
        return self.band_names[i] if i < len(self.band_names) else f"{self.name}_{i}"


#: AlphaEarth Foundations' annual Satellite Embedding (Google DeepMind): 64 bands A00..A63 at 10 m;
#: the public COGs store int8, -128 is no data, and v -> sign(v) (|v| / 127.5)^2 gives the unit vector.
ALPHAEARTH = EmbeddingSpec(
    "alphaearth", "AlphaEarth Foundations annual embedding", 64, "alphaearth", -128.0, 10.0,
    tuple(f"A{i:02d}" for i in range(64)),
    summary="64 dimensions, annual, 10 m; int8 COGs (de-quantised, -128 no data) or float exports",
    reference="developers.google.com/earth-engine/guides/aef_on_gcs_readme")
#: TESSERA (Cambridge): 128 dimensions at 10 m on UTM grids; GeoTessera tiles store int8 values with a
#: float32 scale per pixel (value x scale), and its tools export float32 GeoTIFFs.
TESSERA = EmbeddingSpec(
    "tessera", "TESSERA annual embedding", 128, "scales", None, 10.0,
    summary="128 dimensions, annual, 10 m, from Sentinel-1 and -2 series; int8 tiles with per-pixel scales "
            "(.npy and _scales.npy) or float32 GeoTIFFs",
    reference="geotessera.readthedocs.io")
#: Any float raster whose bands are an embedding, declared as such by the user.
ANY_EMBEDDING = EmbeddingSpec(
    "embedding", "embedding raster", 0, "none", None, 0.0,
    summary="any multi-band float raster declared as an embedding (its bands as they are; NaN or its nodata "
            "value is no data)")
EMBEDDING_SOURCES: dict[str, EmbeddingSpec] = {e.name: e for e in (ALPHAEARTH, TESSERA, ANY_EMBEDDING)}


def source(name: str = DEFAULT_SOURCE) -> SourceSpec:
    """The spec of source ``name``; the message names those known."""
    if isinstance(name, SourceSpec):
        return name
    if name not in SOURCES:
        raise ValueError(f"unknown input source {name!r}; this version knows {', '.join(SOURCES)} "
                         "(a model for another source needs a newer mpmae_core)")
    return SOURCES[name]


def source_for_bands(bands: Sequence[str]) -> SourceSpec:
    """The source a model taking ``bands`` reads: one whose model bands are exactly these, else the
    first whose bands include them all."""
    bands = tuple(bands)
    for spec in SOURCES.values():
        if spec.model_bands == bands:
            return spec
    for spec in SOURCES.values():
        if bands and all(b in spec.band_by_name for b in bands):
            return spec
    raise ValueError(f"no known input source has the bands {', '.join(bands) or '(none)'}; known sources: "
                     + "; ".join(f"{s.name} ({', '.join(s.band_names)})" for s in SOURCES.values()))


def level_choices(spec: "SourceSpec | str | None" = None) -> tuple[str, ...]:
    """What a user may ask for: "auto" or a level of the source (of any source when None)."""
    if spec is None:
        levels = []
        for s in SOURCES.values():
            levels.extend(lv for lv in s.level_names if lv not in levels)
        return ("auto",) + tuple(levels)
    return ("auto",) + source(spec).level_names


#: Processing levels an MMEarth tile can have; statistics are chosen per tile by this.
S2_LEVELS: tuple[str, ...] = SENTINEL2.level_names
#: What a user may ask for: a level, or "auto" (from the raster's bands and metadata).
S2_LEVEL_CHOICES: tuple[str, ...] = level_choices(SENTINEL2)

#: Encoder sizes: name -> (depths, dims). Parameter counts (12 bands, final norm, no head) match MMEarth.
ENCODER_SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
#: Patch sizes of the MMEarth stem, and the encoder's border conventions.
PATCH_SIZES: tuple[int, ...] = (8, 16)
CONVENTIONS: tuple[str, ...] = ("sparse", "reference_dense")


def canonical_band(label: Optional[str], spec: "SourceSpec | str" = DEFAULT_SOURCE) -> Optional[str]:
    """The band of source ``spec`` that a free-text label denotes (see SourceSpec.canonical_band)."""
    return source(spec).canonical_band(label)


def canonical_s2_band(label: Optional[str]) -> Optional[str]:
    """The canonical Sentinel-2 band name ("B8A", "B4", ...) a free-text band label denotes.

    Accepts band names with or without zero padding ("B04", "B4", "B8A"), names embedded in
    file-style labels ("T33UUU_20170216T102101_B04", "sentinel2_B11") and STAC / eo common names
    ("red", "nir08", "swir16"). Returns None when the label names no band, or names several.
    Plain numbers ("1", "Band 1") are *not* accepted: band numbers say nothing about which
    wavelength a stack holds.
    """
    return SENTINEL2.canonical_band(label)


@dataclass
class BandMatch:
    """How the bands of a raster map onto the bands a model wants.

    ``source_index[i]`` is the 0-based raster band that feeds wanted band ``wanted[i]``, or None.
    """

    wanted: tuple[str, ...]
    labels: tuple[Optional[str], ...]
    source_index: tuple[Optional[int], ...]
    unused: tuple[int, ...]
    duplicates: dict[str, list[int]] = field(default_factory=dict)
    source: str = DEFAULT_SOURCE

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(w for w, s in zip(self.wanted, self.source_index) if s is None)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.duplicates

    @property
    def is_identity(self) -> bool:
        return self.complete and list(self.source_index) == list(range(len(self.wanted)))

    def describe_problem(self) -> str:
        """A message that names what is wrong and how to fix it; empty when the match is complete."""
        spec = source(self.source)
        problems = []
        if self.duplicates:
            dup = "; ".join(
                f"{name} is named by raster bands {', '.join(str(i + 1) for i in idx)}"
                for name, idx in self.duplicates.items()
            )
            problems.append(f"ambiguous band names ({dup}): give each band a unique description")
        if self.missing:
            named = sum(1 for lab in self.labels if spec.canonical_band(lab))
            if named == 0:
                hint = (f"the raster's bands have no {spec.title} band names in their descriptions; map the bands by "
                        "hand (--band-map, or 'Band map' in QGIS), or name them once, listing the names in the raster's "
                        "own band order, with: " + set_descriptions_command("FILE.tif", spec.product_order))
            else:
                fillable = dict(spec.fillable)
                fill = [m for m in self.missing if m in fillable]
                hint = "add these bands to the stack, or map the bands by hand"
                if fill:
                    hint += (f"; {', '.join(fill)} (atmospheric bands the landcover barely depends on) can be "
                             "stood in for by a neighbouring band: a band map may repeat a band number, e.g. "
                             f"{fillable[fill[0]]} for {fill[0]}")
            problems.append(f"missing band(s) {', '.join(self.missing)}: {hint}")
        return "; ".join(problems)


#: Bands a user may stand in for by a neighbour (repeating a band in the band map), and which.
FILLABLE_BANDS = dict(SENTINEL2.fillable)


def set_descriptions_command(path: str, names: Sequence[str]) -> str:
    """A shell command that writes band names into a raster's band descriptions
    (gdal_edit.py cannot set descriptions)."""
    return ("python3 -c \"from osgeo import gdal; ds = gdal.Open('" + path + "', gdal.GA_Update); "
            "[ds.GetRasterBand(i + 1).SetDescription(n) for i, n in enumerate('"
            + " ".join(names) + "'.split())]\"")


def match_bands(labels: Sequence[Optional[str]], wanted: Sequence[str] = S2_MMEARTH_BANDS,
                spec: "SourceSpec | str | None" = None) -> BandMatch:
    """Match raster band labels (descriptions) to the wanted bands of a source, by name only
    (the source is the one of the wanted bands when not given)."""
    wanted = tuple(wanted)
    if spec is None:
        try:
            spec = source_for_bands(wanted)
        except ValueError:
            spec = SOURCES[DEFAULT_SOURCE]  # its check below names the band it does not know
    spec = source(spec)
    for w in wanted:
        if w not in spec.band_by_name:
            raise ValueError(f"unknown {spec.title} band {w!r}; known bands: {', '.join(spec.band_names)}")
    by_name: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        name = spec.canonical_band(lab)
        if name is not None:
            by_name.setdefault(name, []).append(i)
    duplicates = {n: idx for n, idx in by_name.items() if len(idx) > 1 and n in wanted}
    src = tuple(by_name[w][0] if w in by_name and w not in duplicates else None for w in wanted)
    used = {s for s in src if s is not None}
    unused = tuple(i for i in range(len(labels)) if i not in used)
    return BandMatch(wanted, tuple(labels), src, unused, duplicates, spec.name)


def default_statistics(level: str, bands: Sequence[str], spec: "SourceSpec | str | None" = None):
    """Default per-band (mean, std) of raw values for ``level`` of the source of ``bands``."""
    spec = source(spec) if spec is not None else source_for_bands(bands)
    return spec.default_statistics(level, bands)


def s2_default_statistics(level: str, bands: Sequence[str] = S2_MMEARTH_BANDS) -> tuple[list[float], list[float]]:
    """Default per-band (mean, std) of raw Sentinel-2 DNs for ``level`` ('l1c' or 'l2a').

    These are the published MMEarth statistics (third-party copies; see the JSON's provenance).
    A real MMEarth download ships its own ``_band_stats.json``, which must take precedence.
    """
    if level.lower() not in S2_LEVELS:
        raise ValueError(f"unknown Sentinel-2 processing level {level!r}; expected one of {S2_LEVELS}")
    return SENTINEL2.default_statistics(level, bands)


# --------------------------------------------------------------------------------------------
# Pretext tasks (MMEarth modalities predicted by MP-MAE)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """One pretext task: what is predicted, at which level, with which loss.

    ``channels`` is the number of regression channels or of classes. ``level`` is "pixel"
    (patch prediction from each cell of the decoder map) or "image" (pooled prediction).
    ``loss`` is "mse" or "ce". ``nodata`` states the rule the data pipeline applies: raw
    values equal to it (or non-finite values) are invalid and excluded from the loss; class
    maps are remapped to 0-based labels with invalid pixels -1.
    """

    name: str
    channels: int
    level: str
    loss: str
    band_names: tuple[str, ...]
    nodata: str
    description: str

    @property
    def is_pixel(self) -> bool:
        return self.level == "pixel"

    @property
    def is_classification(self) -> bool:
        return self.loss == "ce"


_ERA5 = tuple(f"{period}_{var}" for period in ("prev_month", "curr_month", "year")
              for var in ("avg_temp", "min_temp", "max_temp", "total_precip"))

#: Every pretext task: pixel-level first, then image-level. (This is our order; the reference's own
#: is REFERENCE_TASK_ORDER.)
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("sentinel2", 12, "pixel", "mse", S2_MMEARTH_BANDS, "0 in raw uint16",
             "masked reconstruction of the input bands (norm_pix_loss)"),
    TaskSpec("sentinel1", 8, "pixel", "mse",
             ("asc_VV", "asc_VH", "asc_HH", "asc_HV", "desc_VV", "desc_VH", "desc_HH", "desc_HV"),
             "-inf / NaN", "Sentinel-1 backscatter (HH/HV mostly missing)"),
    TaskSpec("aster", 2, "pixel", "mse", ("elevation", "slope"), "-inf / NaN / tile NO_DATA",
             "ASTER GDEM elevation and slope"),
    TaskSpec("canopy_height_eth", 2, "pixel", "mse", ("height", "std"), "255 / tile NO_DATA",
             "ETH global canopy height and its standard deviation"),
    TaskSpec("dynamic_world", 9, "pixel", "ce", ("landcover",), "0 (classes 1..9 -> 0..8)",
             "Dynamic World landcover classes"),
    TaskSpec("esa_worldcover", 11, "pixel", "ce", ("map",), "255 or 0 (classes 10..100 -> 0..10)",
             "ESA WorldCover landcover classes"),
    TaskSpec("era5", 12, "image", "mse", _ERA5, "NaN / inf",
             "ERA5 temperature and precipitation: previous month, current month, year"),
    TaskSpec("lat", 2, "image", "mse", ("sin", "cos"), "-inf / NaN", "latitude (sin, cos)"),
    TaskSpec("lon", 2, "image", "mse", ("sin", "cos"), "-inf / NaN", "longitude (sin, cos)"),
    TaskSpec("month", 2, "image", "mse", ("sin_month", "cos_month"), "-inf / NaN", "month (sin, cos)"),
    TaskSpec("biome", 14, "image", "ce", ("biome",), "255 / all-zero one-hot", "RESOLVE biome (one-hot stored)"),
    TaskSpec("eco_region", 846, "image", "ce", ("eco_region",), "65535 / all-zero one-hot",
             "RESOLVE ecoregion (one-hot stored)"),
)}

#: The order of the reference's OUT_MODALITIES, hence of ``loss_fn.log_vars`` in its checkpoints
#: when their ``args.out_modalities`` cannot be read.
REFERENCE_TASK_ORDER: tuple[str, ...] = (
    "sentinel2", "sentinel1", "aster", "era5", "dynamic_world", "canopy_height_eth",
    "lat", "lon", "biome", "eco_region", "month", "esa_worldcover",
)

PIXEL_TASKS = tuple(n for n, t in TASKS.items() if t.is_pixel)
IMAGE_TASKS = tuple(n for n, t in TASKS.items() if not t.is_pixel)


@dataclass(frozen=True)
class TargetSet:
    """A pretraining configuration of the reference checkpoints: input bands and pretext tasks."""

    name: str
    input_bands: tuple[str, ...]
    tasks: tuple[str, ...]
    description: str


#: The target sets of the released MMEarth checkpoints (their names are the checkpoints' names).
TARGET_SETS: dict[str, TargetSet] = {t.name: t for t in (
    TargetSet("S2", S2_MMEARTH_BANDS, ("sentinel2",), "Sentinel-2 reconstruction only (plain FCMAE)"),
    TargetSet("all_mod", S2_MMEARTH_BANDS, tuple(TASKS), "all twelve pretext tasks"),
    TargetSet("pix_mod", S2_MMEARTH_BANDS, PIXEL_TASKS, "Sentinel-2 plus the pixel-level tasks"),
    TargetSet("img_mod", S2_MMEARTH_BANDS, ("sentinel2",) + IMAGE_TASKS, "Sentinel-2 plus the image-level tasks"),
    TargetSet("rgb", S2_RGB_BANDS, ("sentinel2",), "RGB input (B2, B3, B4), reconstruction of the same bands"),
)}


def default_input_bands(n_bands: int) -> Optional[tuple[str, ...]]:
    """The input bands of a model that takes ``n_bands`` bands and says no more (reference checkpoints):
    the 12 MMEarth bands or the RGB configuration; None for any other count."""
    return {len(S2_MMEARTH_BANDS): S2_MMEARTH_BANDS, len(S2_RGB_BANDS): S2_RGB_BANDS}.get(n_bands)


def task_spec(name: str, input_bands: Sequence[str] = S2_MMEARTH_BANDS) -> TaskSpec:
    """The spec of task ``name``; the ``sentinel2`` task reconstructs exactly the input bands."""
    if name not in TASKS:
        raise ValueError(f"unknown pretext task {name!r}; known tasks: {', '.join(TASKS)}")
    spec = TASKS[name]
    if name == "sentinel2" and tuple(input_bands) != spec.band_names:
        spec = TaskSpec(spec.name, len(input_bands), spec.level, spec.loss, tuple(input_bands),
                        spec.nodata, spec.description)
    return spec


def resolve_tasks(tasks: "str | Sequence[str]") -> tuple[str, ...]:
    """A target set name ("all_mod", "S2", ...) or a list of task names -> task names in MMEarth order."""
    if isinstance(tasks, str):
        if tasks in TARGET_SETS:
            return TARGET_SETS[tasks].tasks
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(
            f"unknown pretext task(s) {', '.join(unknown)}; known tasks: {', '.join(TASKS)}; "
            f"target sets: {', '.join(TARGET_SETS)}"
        )
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"duplicate pretext tasks in {list(tasks)}")
    return tuple(t for t in TASKS if t in tasks)


# --------------------------------------------------------------------------------------------
# How MMEarth stores each modality in its HDF5 files (data_<name>.h5)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StorageSpec:
    """One HDF5 dataset of an MMEarth file.

    ``kind``: "pixel" (N, C, H, W), "image" (N, C) values, "onehot" (N, K) one-hot classes.
    ``nodata``: raw values that mean "no data" besides non-finite floats (compared after reading
    with the stored dtype; a tile's own ``NO_DATA`` entry adds to these). ``classes``: raw class
    values of a class map, in label order (anything else is invalid).
    """

    name: str
    dtype: str
    channels: int
    kind: str
    nodata: tuple = ()
    classes: tuple = ()


#: ESA WorldCover v100/v200 class values, in label order (tree cover 10 -> label 0).
ESA_WORLDCOVER_CLASSES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
ESA_WORLDCOVER_NAMES = ("tree cover", "shrubland", "grassland", "cropland", "built-up", "bare / sparse vegetation",
                        "snow and ice", "permanent water bodies", "herbaceous wetland", "mangroves", "moss and lichen")
#: Dynamic World classes 1..9 (0 = no data), in label order.
DYNAMIC_WORLD_CLASSES = tuple(range(1, 10))
DYNAMIC_WORLD_NAMES = ("water", "trees", "grass", "flooded vegetation", "crops", "shrub and scrub", "built",
                       "bare", "snow and ice")
#: The products' own legend colours (RGB), in label order.
ESA_WORLDCOVER_COLOURS = ((0, 100, 0), (255, 187, 34), (255, 255, 76), (240, 150, 255), (250, 0, 0), (180, 180, 180),
                          (240, 240, 240), (0, 100, 200), (0, 150, 160), (0, 207, 117), (250, 230, 160))
DYNAMIC_WORLD_COLOURS = ((65, 155, 223), (57, 125, 73), (136, 176, 83), (122, 135, 198), (228, 150, 53),
                         (223, 195, 90), (196, 40, 27), (165, 155, 143), (179, 159, 225))

#: Distinct colours for classes no rule below recognises.
CLASS_PALETTE = ((31, 120, 180), (51, 160, 44), (227, 26, 28), (255, 127, 0), (106, 61, 154), (177, 89, 40),
                 (166, 206, 227), (178, 223, 138), (251, 154, 153), (253, 191, 111), (202, 178, 214), (255, 255, 153),
                 (128, 128, 128), (0, 0, 0), (247, 129, 191), (102, 194, 165))

#: Words in a user's class name -> the Dynamic World class whose colour it gets.
_CLASS_WORDS = (
    (("water", "lake", "river", "sea", "reservoir", "pond"), "water"),
    (("wetland", "marsh", "swamp", "bog", "flooded", "mangrove"), "flooded vegetation"),
    (("tree", "forest", "wood"), "trees"),
    (("shrub", "scrub", "heath", "bush"), "shrub and scrub"),
    (("grass", "meadow", "pasture", "lawn", "park"), "grass"),
    (("crop", "farm", "agri", "arable", "field", "orchard", "vineyard"), "crops"),
    (("built", "urban", "residential", "industrial", "commercial", "settlement", "town", "city", "road",
      "building"), "built"),
    (("bare", "sand", "rock", "quarry", "soil"), "bare"),
    (("snow", "ice", "glacier"), "snow and ice"),
)


def suggest_class_colours(names) -> list:
    """A colour per class name: the Dynamic World colour of a recognised landcover word (water is
    blue, forest green, ...), else distinct palette colours; no two classes share a colour."""
    out, used = [], set()
    for name in names:
        key = str(name).lower()
        colour = None
        for words, dw in _CLASS_WORDS:
            if any(w in key for w in words):
                colour = DYNAMIC_WORLD_COLOURS[DYNAMIC_WORLD_NAMES.index(dw)]
                break
        if colour is None or colour in used:
            colour = next((c for c in CLASS_PALETTE if c not in used), CLASS_PALETTE[len(out) % len(CLASS_PALETTE)])
        used.add(colour)
        out.append(list(colour))
    return out

STORAGE: dict[str, StorageSpec] = {s.name: s for s in (
    StorageSpec("sentinel2", "uint16", 13, "pixel", nodata=(0,)),
    StorageSpec("sentinel1", "float32", 8, "pixel"),
    StorageSpec("aster", "int16", 2, "pixel", nodata=(-32768,)),
    # The reference writes 255 into an int8 dataset, which reads back as -1.
    StorageSpec("canopy_height_eth", "int8", 2, "pixel", nodata=(-1, 255)),
    StorageSpec("dynamic_world", "uint8", 1, "pixel", classes=DYNAMIC_WORLD_CLASSES),
    StorageSpec("esa_worldcover", "uint8", 1, "pixel", classes=ESA_WORLDCOVER_CLASSES),
    StorageSpec("era5", "float32", 12, "image"),
    StorageSpec("lat", "float32", 2, "image"),
    StorageSpec("lon", "float32", 2, "image"),
    StorageSpec("month", "float32", 2, "image"),
    StorageSpec("biome", "uint8", 14, "onehot", nodata=(255,)),
    StorageSpec("eco_region", "uint16", 846, "onehot", nodata=(65535,)),
)}

#: Band-stats keys of the S2 statistics, chosen per tile by its processing level.
S2_STATS_KEYS = {"l1c": "sentinel2_l1c", "l2a": "sentinel2_l2a"}


#: The pretext landcover tasks with a class map: task -> (class names, colours). Export and the
#: runtime's legends read them here.
PRETEXT_CLASSES: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]] = {
    "esa_worldcover": (ESA_WORLDCOVER_NAMES, ESA_WORLDCOVER_COLOURS),
    "dynamic_world": (DYNAMIC_WORLD_NAMES, DYNAMIC_WORLD_COLOURS),
}


# ------------------------------------------------------------------------------------------
# Released MMEarth checkpoints (the catalogue fetch-model and the QGIS plugin offer)
# ------------------------------------------------------------------------------------------

#: Environment variable overriding the catalogue's download base URL (mirrors move).
MODEL_BASE_URL_ENV = "MMEARTH_MODEL_BASE_URL"


@dataclass(frozen=True)
class ReleasedModel:
    name: str  # how a person names it, e.g. mmearth-atto-1M-p8
    folder: str  # the folder of the release
    file: str
    size: str
    patch_size: int
    tile_px: int
    crop_px: int
    data: str
    loss: str
    tasks: str
    sha256: Optional[str]
    bytes: Optional[int]
    source: str  # "hub" (MMEarth-train's hub loader downloads it: folder and file confirmed) or "readme" (the
    #: README table lists the folder; the file name is the hub entries' and not stated by the authors)
    input_bands: Optional[tuple] = None  # the bands the encoder takes, in order (RGB models: B2, B3, B4)
    licence: str = ""  # of the weights, in short (the catalogue's licence_short unless the entry says otherwise)

    def url(self, base_url: Optional[str] = None) -> str:
        return f"{(base_url or model_base_url()).rstrip('/')}/{self.folder}/{self.file}"

    def describe(self) -> str:
        bands = f", bands {', '.join(self.input_bands)}" if self.input_bands else ""
        licence = f"; licence: {self.licence}" if self.licence else ""
        return (f"{self.size}, patch {self.patch_size} ({self.crop_px} px crops of {self.tile_px} px tiles), "
                f"{self.data}, {self.loss} loss, tasks {self.tasks}{bands}{licence}")

    @property
    def confirmed(self) -> bool:
        """Folder and file name as the authors' own loader downloads them."""
        return self.source == "hub"


def _catalogue_file() -> dict:
    return json.loads(resources.files("mpmae_core.resources").joinpath("mmearth_models.json").read_text())


def released_models() -> dict[str, ReleasedModel]:
    """name -> ReleasedModel, in the catalogue's order."""
    fields = set(ReleasedModel.__dataclass_fields__)
    out = {}
    catalogue = _catalogue_file()
    for m in catalogue["models"]:
        kw = {"licence": catalogue.get("licence_short", "")}
        kw.update({k: v for k, v in m.items() if k in fields})
        if kw.get("input_bands") is not None:
            kw["input_bands"] = tuple(kw["input_bands"])
        out[m["name"]] = ReleasedModel(**kw)
    return out


def model_base_url(setting: Optional[str] = None) -> str:
    """Where the released checkpoints are downloaded from: $MMEARTH_MODEL_BASE_URL, else the given
    setting (the QGIS plugin's), else the catalogue's own."""
    return os.environ.get(MODEL_BASE_URL_ENV) or setting or _catalogue_file()["base_url"]


def released_weights_licence() -> str:
    """What the catalogue says of the released weights' licence, in full."""
    return _catalogue_file().get("licence", "")


def model_share_page() -> str:
    """The page where a person downloads the released checkpoints by hand."""
    return _catalogue_file()["share_page"]
