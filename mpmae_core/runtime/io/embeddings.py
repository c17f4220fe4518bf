"""Other models' embeddings as feature sources: AlphaEarth, TESSERA, and any raster declared one.

The registry's ``EmbeddingSpec`` says what each is (``registry.EMBEDDING_SOURCES``); this module
recognises a file as one and holds the rules that turn stored values into embeddings (NaN for no
data); ``inference.embedding_sources`` reads them:

- **AlphaEarth Foundations** (64 bands ``A00``..``A63``): the public COGs store int8, -128 is no
  data, and a stored ``v`` is the value ``sign(v) * (|v| / 127.5) ** 2`` (``dequantise_alphaearth``).
  A float export (Earth Engine) is read as it is.
- **TESSERA** (128 bands): a GeoTessera tile is ``NAME.npy`` (int8, rows x columns x 128) with
  ``NAME_scales.npy`` (float32 per pixel, or per pixel and band); the value is the stored int8
  times its scale (``dequantise_scaled``). Its grid comes from the tile's landmask GeoTIFF
  (``NAME.tif``/``.tiff`` beside it, or in a ``landmasks`` folder next to it;
  ``tessera_parts``). ``inference.embedding_sources`` writes the tile once as a float32 GeoTIFF,
  so everything after reads one raster. A float32 GeoTIFF that GeoTessera exports is read as it
  is.
- **Any embedding**: a float raster the user declares (``--embedding``); its nodata value or NaN
  is no data.

Files come from strangers: an ``.npy`` header is parsed with a bounded size and no pickles, its
shape and type are checked before any data is read, and a fuzz test proves that no byte
sequence does more than raise ``EmbeddingError``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.gdal_io import RasterError

MAX_SIDE = 20_000  # pixels per side of one tile
MAX_HEADER = 4096  # bytes of an .npy header


class EmbeddingError(RasterError):
    """An embedding file that cannot be read; the message says why and what to do."""


# ----------------------------------------------------------------------------- the rules (pure)

def dequantise_alphaearth(stored: np.ndarray) -> np.ndarray:
    """AlphaEarth's int8 values as embeddings: sign(v) * (|v| / 127.5)^2; -128 (no data) -> NaN."""
    v = np.asarray(stored).astype(np.float32)
    out = np.sign(v) * (np.abs(v) / np.float32(127.5)) ** 2
    out[np.asarray(stored) == -128] = np.nan
    return out.astype(np.float32)


def dequantise_scaled(stored: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """TESSERA's int8 values times their scales: ``stored`` (..., C) and ``scales`` (...) or
    (..., C); a scale that is not finite, or not above 0, means no data (NaN)."""
    q = np.asarray(stored).astype(np.float32)
    s = np.asarray(scales, np.float32)
    if s.shape == q.shape[:-1]:
        s = s[..., None]
    elif s.shape != q.shape and s.shape != q.shape[:-1] + (1,):
        raise EmbeddingError(f"the scales are {s.shape} for values {q.shape}: they must be one per pixel (or one "
                             "per pixel and band)")
    with np.errstate(invalid="ignore", over="ignore"):  # a hostile scale (inf, NaN) is no data, below
        out = q * s
    bad = ~np.isfinite(s) | (s <= 0)
    return np.where(np.broadcast_to(bad, out.shape), np.nan, out).astype(np.float32)


def signed_bytes(band) -> bool:
    """Whether a GDAL band stores int8 (GDAL 3.6 shows it as Byte with PIXELTYPE=SIGNEDBYTE)."""
    name = band.DataType
    from mpmae_core.runtime.io.gdal_io import gdal

    g = gdal()
    if getattr(g, "GDT_Int8", None) is not None and name == g.GDT_Int8:
        return True
    return (band.GetMetadataItem("PIXELTYPE", "IMAGE_STRUCTURE") or "").upper() == "SIGNEDBYTE"


def eight_bit(band) -> bool:
    """Whether a band stores 8 bits a value: int8, or Byte (a tool that rewrote an int8 file, a
    warp for one, often drops GDAL's SIGNEDBYTE flag; AlphaEarth's bytes are int8 all the same)."""
    from mpmae_core.runtime.io.gdal_io import gdal

    return signed_bytes(band) or band.DataType == gdal().GDT_Byte


# ----------------------------------------------------------------------------- recognising a file

def recognise(ds, path: str = "") -> Optional[registry.EmbeddingSpec]:
    """The embedding source a GDAL dataset is, or None: AlphaEarth by its 64 bands named A00..A63
    (or 64 int8 bands), TESSERA by 128 bands and its name in the file's name or metadata, or an
    embedding this toolkit wrote (its metadata says which)."""
    meta = {k.upper(): str(v) for k, v in (ds.GetMetadata() or {}).items()}
    declared = meta.get("MMEARTH_EMBEDDING_SOURCE", "").lower()
    if declared in registry.EMBEDDING_SOURCES:
        return registry.EMBEDDING_SOURCES[declared]
    n = ds.RasterCount
    names = [ds.GetRasterBand(i + 1).GetDescription() for i in range(n)]
    if n == registry.ALPHAEARTH.dims and (names == list(registry.ALPHAEARTH.band_names) or
                                          all(signed_bytes(ds.GetRasterBand(i + 1)) for i in range(n))):
        return registry.ALPHAEARTH
    text = (path + " " + " ".join(f"{k}={v}" for k, v in meta.items())).lower()
    if n == registry.TESSERA.dims and "tessera" in text:
        return registry.TESSERA
    return None


#: GDAL metadata item of a per-pixel feature raster this toolkit wrote (JSON: its blocks and encoder)
FEATURES_KEY = "MMEARTH_FEATURES"


def features_not_bands(ds, path: str = "") -> Optional[str]:
    """What a raster is when it holds features rather than a sensor's bands, in words: another
    model's embedding (recognised), or an embedding or per-pixel feature raster this toolkit wrote;
    None for anything else. Such a raster is no date of a Sentinel-2 series."""
    spec = recognise(ds, path)
    if spec is not None:
        return spec.title
    if ds.GetMetadataItem(FEATURES_KEY):
        return "a per-pixel feature raster"
    if ds.RasterCount and ds.GetRasterBand(1).GetDescription().startswith("embedding_"):
        return "an embedding raster"
    return None


def describe(spec: registry.EmbeddingSpec, ds) -> str:
    """One line for ``inspect``: what the file is and how it is read."""
    band = ds.GetRasterBand(1)
    if spec is registry.ALPHAEARTH and eight_bit(band):
        how = "int8, de-quantised as sign(v) (|v|/127.5)^2, -128 no data"
    elif spec is registry.ALPHAEARTH:
        how = "float values, read as they are"
    else:
        how = "values read as they are, NaN or the nodata value is no data"
    return (f"{spec.title} ({ds.RasterCount} dimensions, {abs(ds.GetGeoTransform()[1]):g} m): {how}. It is a feature "
            "source of its own, not a model's input: read it alone (train-head and segment with the model 'none'; "
            "in QGIS no model) or beside a Sentinel-2 raster (--embedding)")


# ----------------------------------------------------------------------------- TESSERA tiles

def _load_npy(path: Path, what: str) -> np.ndarray:
    """A memory-mapped .npy array: no pickles, a bounded header; EmbeddingError otherwise."""
    try:
        arr = np.load(str(path), mmap_mode="r", allow_pickle=False, max_header_size=MAX_HEADER)
    except Exception as exc:  # noqa: BLE001 - a hostile header raises anything numpy's parser does (TokenError...)
        raise EmbeddingError(f"'{path}' is not a readable {what} (.npy): {type(exc).__name__}: {str(exc)[:200]}. "
                             "Download it again") from None
    if not isinstance(arr, np.ndarray):
        raise EmbeddingError(f"'{path}' holds no array")
    return arr


def tessera_tile_of(path) -> Path:
    """The values file ``NAME.npy`` of the GeoTessera tile a file of it names (``NAME_scales.npy`` or
    ``NAME.npy`` itself)."""
    p = Path(path)
    return p.with_name(re.sub(r"_scales$", "", p.stem) + ".npy")


def tessera_parts(path) -> tuple[Path, Path, Path]:
    """(values .npy, scales .npy, landmask GeoTIFF) of a GeoTessera tile named by any of them."""
    values = tessera_tile_of(path)
    stem, folder = values.stem, values.parent
    scales = folder / f"{stem}_scales.npy"
    for f, what in ((values, "values"), (scales, "scales")):
        if not f.is_file():
            raise EmbeddingError(f"the TESSERA tile '{stem}' needs its {what} file '{f.name}' beside it: download the "
                                 "tile again (geotessera download writes both)")
    for cand in (folder / f"{stem}.tiff", folder / f"{stem}.tif", folder.parent / "landmasks" / f"{stem}.tiff",
                 folder.parent / "landmasks" / f"{stem}.tif", folder / "landmasks" / f"{stem}.tiff"):
        if cand.is_file():
            return values, scales, cand
    raise EmbeddingError(f"the TESSERA tile '{stem}' has no landmask GeoTIFF ('{stem}.tiff' beside it or in a "
                         "'landmasks' folder): it gives the tile's grid and CRS; download it with the tile")


def tessera_tile_array(values_path: Path, scales_path: Path) -> np.ndarray:
    """The tile's embeddings (128, rows, cols) float32, NaN for no data, after checking its files."""
    q = _load_npy(values_path, "TESSERA tile")
    s = _load_npy(scales_path, "TESSERA scales file")
    if q.dtype != np.int8 or q.ndim != 3 or q.shape[2] != registry.TESSERA.dims:
        raise EmbeddingError(f"'{values_path}' holds {q.dtype} {q.shape}; a TESSERA tile is int8 (rows, columns, "
                             f"{registry.TESSERA.dims})")
    if max(q.shape[:2]) > MAX_SIDE or min(q.shape[:2]) < 1:
        raise EmbeddingError(f"'{values_path}' is {q.shape[1]} x {q.shape[0]} px: a tile has 1 to {MAX_SIDE} per side")
    if s.dtype.kind != "f" or s.shape not in (q.shape[:2], q.shape[:2] + (1,), q.shape):
        raise EmbeddingError(f"'{scales_path}' holds {s.dtype} {s.shape}; the scales of a {q.shape[0]} x "
                             f"{q.shape[1]} tile are float, one per pixel (or per pixel and band)")
    rows = []
    for r0 in range(0, q.shape[0], 256):  # a block of rows at a time: memory follows the block
        rows.append(dequantise_scaled(np.asarray(q[r0:r0 + 256]), np.asarray(s[r0:r0 + 256])))
    return np.concatenate(rows, axis=0).transpose(2, 0, 1)


def is_tessera_tile(path) -> bool:
    p = Path(str(path))
    return p.suffix.lower() == ".npy"


def inspect_embedding(path) -> Optional[list]:
    """What ``inspect`` says of an embedding file (lines), or None when the file is no known
    embedding (it is then inspected as a raster a model reads)."""
    from mpmae_core.runtime.io.gdal_io import open_raster

    p = Path(str(path))
    if is_tessera_tile(p):
        values, scales, mask = tessera_parts(p)
        q = _load_npy(values, "TESSERA tile")
        s = _load_npy(scales, "TESSERA scales file")
        grid = open_raster(mask)
        ok = q.dtype == np.int8 and q.ndim == 3 and q.shape[2] == registry.TESSERA.dims
        return [f"Embedding: {registry.TESSERA.title}, a GeoTessera tile",
                f"Values: {values.name}, {q.dtype} {tuple(q.shape)}; scales: {scales.name}, {s.dtype} {tuple(s.shape)}",
                f"Grid: {mask.name}, {grid.RasterXSize} x {grid.RasterYSize} px, {abs(grid.GetGeoTransform()[1]):g} m",
                "Read as: the stored int8 times its scale; a scale that is not above 0 is no data" if ok else
                "ERROR: the values are not int8 (rows, columns, 128): download the tile again",
                "It is a feature source of its own, not a model's input: read it alone (train-head and segment with "
                "the model 'none') or beside a Sentinel-2 raster (--embedding)"]
    try:
        ds = open_raster(str(p))
    except RasterError:
        return None
    spec = recognise(ds, str(p))
    if spec is None:
        return None
    return [f"Embedding: {spec.title}", f"Size: {ds.RasterXSize} x {ds.RasterYSize} px, {ds.RasterCount} bands",
            describe(spec, ds)]
