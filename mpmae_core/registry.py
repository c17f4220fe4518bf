"""The one place for facts the whole project agrees on.

Sentinel-2 band names and their MMEarth order, the L1C / L2A variants and the default
normalisation statistics live here. The model, the data pipeline, the export metadata and the
QGIS plugin all read this module, so it imports nothing heavier than the standard library.

Band order is always carried by *name*. MMEarth stores B8A before B8; most GeoTIFF stacks put
B8 before B8A, so any code that assumes positions silently swaps two channels.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Optional, Sequence


@dataclass(frozen=True)
class S2Band:
    name: str
    common_name: str
    wavelength_nm: float
    resolution_m: int


#: Every Sentinel-2 MSI band, in the order the MMEarth HDF5 files store them (B8A before B8).
S2_BANDS: tuple[S2Band, ...] = (
    S2Band("B1", "coastal", 443, 60),
    S2Band("B2", "blue", 490, 10),
    S2Band("B3", "green", 560, 10),
    S2Band("B4", "red", 665, 10),
    S2Band("B5", "rededge1", 705, 20),
    S2Band("B6", "rededge2", 740, 20),
    S2Band("B7", "rededge3", 783, 20),
    S2Band("B8A", "nir08", 865, 20),
    S2Band("B8", "nir", 842, 10),
    S2Band("B9", "nir09", 945, 60),
    S2Band("B10", "cirrus", 1375, 60),
    S2Band("B11", "swir16", 1610, 20),
    S2Band("B12", "swir22", 2190, 20),
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

#: Processing levels an MMEarth tile can have; statistics are chosen per tile by this.
S2_LEVELS: tuple[str, ...] = ("l1c", "l2a")
#: What a user may ask for: a level, or "auto" (from the raster's bands and metadata).
S2_LEVEL_CHOICES: tuple[str, ...] = ("auto",) + S2_LEVELS

#: Sentinel-2 nodata value in the raw uint16 digital numbers.
S2_NODATA = 0
#: Raw digital numbers are reflectance x 10000; products from processing baseline 04.00 on
#: (25 January 2022) add this offset, which must be subtracted before using MMEarth statistics.
S2_QUANTIFICATION = 10000.0
S2_BASELINE_04_OFFSET = 1000.0

_COMMON_NAMES = {b.common_name: b.name for b in S2_BANDS}
# Spellings seen in the wild for the same bands (STAC, GEE, SNAP, band descriptions).
_COMMON_NAMES.update({
    "aerosol": "B1", "coastal_aerosol": "B1", "coastalaerosol": "B1",
    "red_edge_1": "B5", "rededge_1": "B5", "red_edge_2": "B6", "rededge_2": "B6",
    "red_edge_3": "B7", "rededge_3": "B7", "nir08": "B8A", "narrow_nir": "B8A",
    "nirnarrow": "B8A", "nir_narrow": "B8A", "red_edge_4": "B8A", "rededge4": "B8A",
    "water_vapour": "B9", "water_vapor": "B9", "watervapour": "B9", "wv": "B9",
    "swir1": "B11", "swir_1": "B11", "swir2": "B12", "swir_2": "B12",
})

# "B8A", "B08", "b4", "S2_B11", "T33UUU_20170216T102101_B04", "Band 8A"... The band token must not
# be glued to other letters or digits on either side (so "SB12X" or "B123" are not bands).
_BAND_TOKEN = re.compile(r"(?<![A-Z0-9])B(?:AND)?[ _-]?0?(1[0-2]|[1-9])(A?)(?![A-Z0-9])")


def canonical_s2_band(label: Optional[str]) -> Optional[str]:
    """The canonical Sentinel-2 band name ("B8A", "B4", ...) a free-text band label denotes.

    Accepts band names with or without zero padding ("B04", "B4", "B8A"), names embedded in
    file-style labels ("T33UUU_20170216T102101_B04", "sentinel2_B11") and STAC / eo common names
    ("red", "nir08", "swir16"). Returns None when the label names no band, or names several.
    Plain numbers ("1", "Band 1") are *not* accepted: band numbers say nothing about which
    wavelength a stack holds.
    """
    if not label:
        return None
    text = label.strip()
    key = re.sub(r"[\s\-]+", "_", text.lower())
    if key in _COMMON_NAMES:
        return _COMMON_NAMES[key]
    found = {f"B{num}{a}" for num, a in _BAND_TOKEN.findall(text.upper())}
    # "Band 8" style tokens with a bare number are ambiguous with band *indices*: refuse them.
    bare = re.fullmatch(r"(?i)band[ _-]?\d+", text)
    if bare or len(found) != 1:
        return None
    name = found.pop()
    if name == "B8A" or name in S2_BAND_BY_NAME:
        return name
    return None


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
        problems = []
        if self.duplicates:
            dup = "; ".join(
                f"{name} is named by raster bands {', '.join(str(i + 1) for i in idx)}"
                for name, idx in self.duplicates.items()
            )
            problems.append(f"ambiguous band names ({dup}): give each band a unique description")
        if self.missing:
            named = sum(1 for lab in self.labels if canonical_s2_band(lab))
            if named == 0:
                hint = ("the raster's bands have no Sentinel-2 band names in their descriptions; map the bands by "
                        "hand (--band-map, or 'Band map' in QGIS), or name them once, listing the names in the raster's "
                        "own band order, with: " + set_descriptions_command("FILE.tif", S2_PRODUCT_ORDER))
            else:
                fill = [m for m in self.missing if m in FILLABLE_BANDS]
                hint = "add these bands to the stack, or map the bands by hand"
                if fill:
                    hint += (f"; {', '.join(fill)} (atmospheric bands the landcover barely depends on) can be "
                             "stood in for by a neighbouring band: a band map may repeat a band number, e.g. "
                             f"{FILLABLE_BANDS[fill[0]]} for {fill[0]}")
            problems.append(f"missing band(s) {', '.join(self.missing)}: {hint}")
        return "; ".join(problems)


#: Bands a user may stand in for by a neighbour (repeating a band in the band map), and which.
FILLABLE_BANDS = {"B1": "the band number of B2", "B9": "the band number of B8A"}


def set_descriptions_command(path: str, names: Sequence[str]) -> str:
    """A shell command that writes Sentinel-2 band names into a raster's band descriptions
    (gdal_edit.py cannot set descriptions)."""
    return ("python3 -c \"from osgeo import gdal; ds = gdal.Open('" + path + "', gdal.GA_Update); "
            "[ds.GetRasterBand(i + 1).SetDescription(n) for i, n in enumerate('"
            + " ".join(names) + "'.split())]\"")


def match_bands(labels: Sequence[Optional[str]], wanted: Sequence[str] = S2_MMEARTH_BANDS) -> BandMatch:
    """Match raster band labels (descriptions) to the wanted Sentinel-2 bands, by name only."""
    wanted = tuple(wanted)
    for w in wanted:
        if w not in S2_BAND_BY_NAME:
            raise ValueError(f"unknown Sentinel-2 band {w!r}; known bands: {', '.join(S2_STORAGE_ORDER)}")
    by_name: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        name = canonical_s2_band(lab)
        if name is not None:
            by_name.setdefault(name, []).append(i)
    duplicates = {n: idx for n, idx in by_name.items() if len(idx) > 1 and n in wanted}
    source = tuple(by_name[w][0] if w in by_name and w not in duplicates else None for w in wanted)
    used = {s for s in source if s is not None}
    unused = tuple(i for i in range(len(labels)) if i not in used)
    return BandMatch(wanted, tuple(labels), source, unused, duplicates)


@lru_cache(maxsize=None)
def _default_stats_file() -> dict:
    text = resources.files("mpmae_core.resources").joinpath("mmearth_s2_band_stats.json").read_text()
    return json.loads(text)


def s2_default_statistics(level: str, bands: Sequence[str] = S2_MMEARTH_BANDS) -> tuple[list[float], list[float]]:
    """Default per-band (mean, std) of raw Sentinel-2 DNs for ``level`` ('l1c' or 'l2a').

    These are the published MMEarth statistics (third-party copies; see the JSON's provenance).
    A real MMEarth download ships its own ``_band_stats.json``, which must take precedence.
    """
    level = level.lower()
    if level not in S2_LEVELS:
        raise ValueError(f"unknown Sentinel-2 processing level {level!r}; expected one of {S2_LEVELS}")
    raw = _default_stats_file()
    entry = raw["sentinel2_l2a"] if level == "l2a" else raw["sentinel2_l1c_without_B10"]
    order = raw["band_order_l2a"]  # both entries are stored in the 12-band MMEarth order
    mean = dict(zip(order, entry["mean"]))
    std = dict(zip(order, entry["std"]))
    missing = [b for b in bands if b not in mean]
    if missing:
        raise ValueError(f"no default {level.upper()} statistics for band(s) {', '.join(missing)}")
    return [mean[b] for b in bands], [std[b] for b in bands]


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

    def url(self, base_url: Optional[str] = None) -> str:
        return f"{(base_url or model_base_url()).rstrip('/')}/{self.folder}/{self.file}"

    def describe(self) -> str:
        bands = f", bands {', '.join(self.input_bands)}" if self.input_bands else ""
        return (f"{self.size}, patch {self.patch_size} ({self.crop_px} px crops of {self.tile_px} px tiles), "
                f"{self.data}, {self.loss} loss, tasks {self.tasks}{bands}")

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
    for m in _catalogue_file()["models"]:
        kw = {k: v for k, v in m.items() if k in fields}
        if kw.get("input_bands") is not None:
            kw["input_bands"] = tuple(kw["input_bands"])
        out[m["name"]] = ReleasedModel(**kw)
    return out


def model_base_url(setting: Optional[str] = None) -> str:
    """Where the released checkpoints are downloaded from: $MMEARTH_MODEL_BASE_URL, else the given
    setting (the QGIS plugin's), else the catalogue's own."""
    return os.environ.get(MODEL_BASE_URL_ENV) or setting or _catalogue_file()["base_url"]


def model_share_page() -> str:
    """The page where a person downloads the released checkpoints by hand."""
    return _catalogue_file()["share_page"]
