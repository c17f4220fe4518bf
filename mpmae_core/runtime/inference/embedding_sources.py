"""Other models' embeddings read as feature sources (``io.embeddings`` has the rules): a TESSERA
tile written once as a GeoTIFF, and ``EmbeddingRaster``, which reads any known or declared
embedding raster as float32 windows with NaN for no data.

Two ways in: beside a Sentinel-2 raster (``ExternalInput``: its blocks join the raster's spectra
and MMEarth's maps), or alone (``EmbeddingInput``: no Sentinel-2 raster and no encoder model; the
head reads the embedding's dimensions only, and records which source it was trained on)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io import embeddings as E


def tessera_tile_raster(path, cache_dir=None) -> str:
    """A GeoTessera tile as a float32 GeoTIFF (written once into the cache, keyed by the files'
    identity): 128 bands ``tessera_0``.., NaN no data, on its landmask's grid."""
    from mpmae_core.runtime.io.files import user_cache_dir

    values, scales, mask = E.tessera_parts(path)
    ident = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in (values, scales, mask))
    folder = Path(cache_dir) if cache_dir else user_cache_dir() / "embeddings"
    out = folder / f"{values.stem[:60]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.tif"
    if out.is_file():
        return str(out)
    folder.mkdir(parents=True, exist_ok=True)
    return write_tessera_tile(path, out)


def write_tessera_tile(path, out, cog: bool = False) -> str:
    """A GeoTessera tile (``path``: its .npy, its _scales.npy or its landmask beside) written to
    ``out`` as a float32 GeoTIFF of 128 bands on the landmask's grid, NaN no data: whole or not at
    all, and never over one of the tile's own files."""
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.files import check_output
    from mpmae_core.runtime.io.gdal_io import open_raster

    values, scales, mask = E.tessera_parts(path)
    check_output(out, [str(values), str(scales), str(mask)], "raster", (".tif", ".tiff"), "a GeoTIFF")
    grid = open_raster(mask)
    arr = E.tessera_tile_array(values, scales)
    if (grid.RasterYSize, grid.RasterXSize) != arr.shape[1:]:
        raise E.EmbeddingError(f"the TESSERA tile '{values.name}' is {arr.shape[2]} x {arr.shape[1]} px but its landmask "
                             f"'{mask.name}' is {grid.RasterXSize} x {grid.RasterYSize}: they are not of one tile")
    writer = RasterWriter(out, arr.shape[2], arr.shape[1], arr.shape[0], "float32", grid.GetGeoTransform(),
                          grid.GetProjection(), nodata=float("nan"),
                          descriptions=[registry.TESSERA.band_name(i) for i in range(arr.shape[0])],
                          metadata={"MMEARTH_EMBEDDING_SOURCE": "tessera", "MMEARTH_EMBEDDING_FROM": values.name},
                          cog=cog)
    try:
        writer.write_rows(0, arr)
        writer.close()
    except BaseException as exc:
        writer.abort(exc)
        raise
    return str(out)


class EmbeddingRaster:
    """An embedding raster read as float32 (C, h, w) windows with NaN for no data."""

    def __init__(self, path, spec: Optional[registry.EmbeddingSpec] = None):
        from mpmae_core.runtime.io.gdal_io import open_raster

        path = tessera_tile_raster(path) if E.is_tessera_tile(path) else str(path)
        self.path = path
        self.ds = open_raster(path)
        found = E.recognise(self.ds, path)
        self.spec = spec or found
        if self.spec is None:
            raise E.EmbeddingError(f"'{path}' is not a known embedding (AlphaEarth: 64 bands A00..A63; TESSERA: 128 "
                                 "bands, its name in the file's name): declare it as an embedding (--embedding on "
                                 "the command line, 'Embedding raster' in QGIS)")
        n = self.ds.RasterCount
        if self.spec.dims and n != self.spec.dims:
            raise E.EmbeddingError(f"'{path}' has {n} bands but a {self.spec.title} has {self.spec.dims}")
        band = self.ds.GetRasterBand(1)
        self.quantised = self.spec is registry.ALPHAEARTH and E.eight_bit(band)
        if self.spec.dequantise == "none" or not self.quantised:
            dt = band.DataType
            from mpmae_core.runtime.io.gdal_io import gdal

            if self.spec is registry.ANY_EMBEDDING and dt not in (gdal().GDT_Float32, gdal().GDT_Float64):
                raise E.EmbeddingError(f"'{path}' stores {gdal().GetDataTypeName(dt)} values; a declared embedding is a "
                                     "float raster (quantised ones need their own rule: AlphaEarth and TESSERA are "
                                     "known)")
        self.nodata = band.GetNoDataValue()
        self.width, self.height = self.ds.RasterXSize, self.ds.RasterYSize
        self.geotransform, self.projection = self.ds.GetGeoTransform(), self.ds.GetProjection()
        self.dims = n

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(C, h, w) float32 embeddings of a window inside the raster, NaN where no data."""
        from mpmae_core.runtime.inference.raster import read_window

        raw = read_window(self.ds, list(range(1, self.dims + 1)), x, y, w, h, self.path)
        if self.quantised:
            return E.dequantise_alphaearth(raw.view(np.int8) if raw.dtype == np.uint8 else raw.astype(np.int8))
        out = raw.astype(np.float32)
        if self.nodata is not None and np.isfinite(self.nodata):
            out[raw == self.nodata] = np.nan
        return out


    def window(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(C, h, w) float32 of any window (parts beyond the raster are no data) with no data as 0,
        and where every dimension has a value: what an input's ``read_block`` gives."""
        emb = np.full((self.dims, h, w), np.nan, np.float32)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, self.height), min(x + w, self.width)
        if y1 > y0 and x1 > x0:
            emb[:, y0 - y:y1 - y, x0 - x:x1 - x] = self.read(x0, y0, x1 - x0, y1 - y0)
        seen = np.isfinite(emb).all(0)
        return np.where(seen[None], emb, 0.0).astype(np.float32), seen


def external_embedding(path) -> Optional[EmbeddingRaster]:
    """``path`` as another model's embedding when it is one (recognised, or a TESSERA tile), else
    None (an embedding raster of this toolkit's, or any other raster)."""
    from mpmae_core.runtime.io.gdal_io import RasterError, open_raster

    if E.is_tessera_tile(path):
        return EmbeddingRaster(path)
    try:
        ds = open_raster(str(path))
    except RasterError:
        return None
    return EmbeddingRaster(path) if E.recognise(ds, str(path)) is not None else None


def on_grid_of(raster: EmbeddingRaster, prep, log=lambda m: None) -> EmbeddingRaster:
    """``raster`` when it lies on ``prep``'s grid; else its embeddings, de-quantised, warped onto
    that grid (nearest neighbour, a float32 copy in the cache written once) and said."""
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.files import user_cache_dir
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors, same_grid

    grid = getattr(prep, "ds", None) or prep.preps[prep.reference].ds  # one raster's, or a series' reference date's
    if same_grid(raster.ds, grid):
        return raster
    key = hashlib.sha256(f"{Path(raster.path).resolve()}|{Path(raster.path).stat().st_mtime_ns}|{prep.width}|"
                         f"{prep.height}|{tuple(prep.geotransform)}|{prep.projection}".encode()).hexdigest()[:12]
    folder = user_cache_dir() / "embeddings"
    out = folder / f"{Path(raster.path).stem[:50]}-on-grid-{key}.tif"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        flat = folder / f"{Path(raster.path).stem[:50]}-float-{key}.tif"  # its embeddings, on its own grid
        w = RasterWriter(flat, raster.width, raster.height, raster.dims, "float32", raster.geotransform,
                         raster.projection, nodata=float("nan"))
        try:
            for y in range(0, raster.height, 256):
                n = min(256, raster.height - y)
                w.write_rows(y, raster.read(0, y, raster.width, n))
            w.close()
        except BaseException as exc:
            w.abort(exc)
            raise
        gt = prep.geotransform
        bounds = (gt[0], gt[3] + prep.height * gt[5], gt[0] + prep.width * gt[1], gt[3])
        tmp = out.with_suffix(".part.tif")
        with gdal_errors() as errors:
            done = gdal().Warp(str(tmp), str(flat), format="GTiff", outputBounds=bounds, width=prep.width,
                               height=prep.height, dstSRS=prep.projection, resampleAlg="near", dstNodata=float("nan"),
                               creationOptions=["TILED=YES", "COMPRESS=ZSTD"])
        if done is None:
            raise E.EmbeddingError(f"could not bring '{raster.path}' onto the raster's grid: {errors.text()}")
        done.SetMetadataItem("MMEARTH_EMBEDDING_SOURCE", raster.spec.name)
        done = None
        tmp.replace(out)
        flat.unlink(missing_ok=True)
    log(f"the {raster.spec.title} lies on another grid: its embeddings were brought onto the raster's grid by "
        "nearest neighbour")
    return EmbeddingRaster(out, raster.spec)


class ExternalInput:
    """A raster (or product, or a series of dates: ``series.SeriesInput``) prepared for the model,
    with another model's embedding on its grid: a tile is the input's channels, then the
    embedding's dimensions; a pixel is valid where both are. Its blocks: the input's (spectra,
    MMEarth's maps, a series' temporal blocks) and ``ext-<source>``."""

    def __init__(self, prep, raster: EmbeddingRaster, meta, log=lambda m: None):
        from mpmae_core.runtime.inference.pixel_features import EXTERNAL_PREFIX, Block

        self.prep, self.meta = prep, meta
        self.embedding = on_grid_of(raster, prep, log)
        self.name = f"{EXTERNAL_PREFIX}{raster.spec.name}"
        self.block = Block(self.name, self.embedding.dims, 1)
        self.width, self.height = prep.width, prep.height
        self.geotransform, self.projection = prep.geotransform, prep.projection
        self.level, self.dn_offset, self.scale = prep.level, prep.dn_offset, prep.scale
        self.source, self.notes = prep.source, list(prep.notes)
        self.channels = len(prep.band_numbers)
        self.band_numbers = list(range(1, self.channels + self.embedding.dims + 1))
        self.files = [str(f) for f in getattr(prep, "files", [prep.source])] + [str(raster.path)]

    @property
    def blocks(self) -> list:
        """The input's blocks (a series' grow with the seasons a head names), then the embedding's."""
        from mpmae_core.runtime.inference.series import source_blocks

        return source_blocks(self.prep, self.meta) + [self.block]

    def read_block(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        from mpmae_core.runtime.inference.raster import read_block

        values, valid = read_block(self.prep, y, x, h, w)
        emb, seen = self.embedding.window(y, x, h, w)
        return np.concatenate([values, emb]), valid & seen

    def has_data(self, y: int, x: int, h: int, w: int) -> bool:
        from mpmae_core.runtime.inference.raster import has_data

        return has_data(self.prep, y, x, h, w)

    def maps_runner(self, model, blocks):
        return ExternalMaps(model, blocks, self.channels, self.name, self.prep)


class ExternalMaps:
    """A batch of tiles (B, C + D, th, tw) -> per tile: the input's blocks (its own runner's, or
    the encoder's) and the embedding's."""

    def __init__(self, model, blocks, channels: int, name: str, prep=None):
        from mpmae_core.runtime.inference.pixel_features import SPECTRA, EncoderMaps

        self.c, self.name = int(channels), name
        own = getattr(prep, "maps_runner", None)  # a series reads its dates itself (spectra included)
        self.spectra_here = own is None
        self.inner = own(model, [b for b in blocks if b.name != name]) if own is not None else \
            EncoderMaps(model, [b for b in blocks if b.name not in (name, SPECTRA)])

    def __call__(self, x: np.ndarray) -> list:
        from mpmae_core.runtime.inference.pixel_features import SPECTRA

        out = []
        maps = self.inner(np.ascontiguousarray(x[:, :self.c]))
        for tile, m in zip(x, maps):
            if self.spectra_here:
                m[SPECTRA] = tile[:self.c]
            m[self.name] = tile[self.c:]
            out.append(m)
        return out


def with_embedding(prep, embedding, meta, kind: Optional[str] = None, log=lambda m: None):
    """``prep`` with another model's embedding beside it (``ExternalInput``), or ``prep`` itself
    without one. ``kind``: a source of ``registry.EMBEDDING_SOURCES`` to declare the file as."""
    if not embedding:
        return prep
    spec = registry.EMBEDDING_SOURCES[kind] if kind else None
    raster = EmbeddingRaster(embedding, spec)
    log(f"beside the raster: {raster.spec.title}, {raster.dims} dimensions")
    return ExternalInput(prep, raster, meta, log)


#: What stands for "no encoder model" where a model is asked for: the input is an embedding read alone.
NO_MODEL = ("", "none", "-")


def without_model(model_path) -> bool:
    """Whether ``model_path`` says "no encoder model" (None, '', 'none' or '-')."""
    return model_path is None or str(model_path).strip().lower() in NO_MODEL


class EmbeddingInput:
    """Another model's embedding read alone as a head's input: a tile is the embedding's
    dimensions (no data as 0), a pixel is valid where every dimension has a value, and its one
    block is ``ext-<source>`` at stride 1. No context is needed (the features are the pixel's own),
    so it is read without overlap."""

    level = "embedding"
    dn_offset, scale, mask = 0.0, 1.0, None

    def __init__(self, raster: EmbeddingRaster, source=None):
        from mpmae_core.runtime.inference.pixel_features import EXTERNAL_PREFIX, Block

        self.embedding, self.ds = raster, raster.ds
        self.source = str(source or raster.path)
        self.name = f"{EXTERNAL_PREFIX}{raster.spec.name}"
        self.width, self.height = raster.width, raster.height
        self.geotransform, self.projection = raster.geotransform, raster.projection
        self.notes = []
        self.band_numbers = list(range(1, raster.dims + 1))
        self.blocks = [Block(self.name, raster.dims, 1)]
        self.files = [self.source]

    def read_block(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        return self.embedding.window(y, x, h, w)

    def has_data(self, y: int, x: int, h: int, w: int) -> bool:
        return y < self.height and x < self.width and y + h > 0 and x + w > 0

    def maps_runner(self, model, blocks):
        name = self.name

        def maps(x: np.ndarray) -> list:
            return [{name: tile} for tile in x]

        return maps

    def fingerprint(self) -> dict:
        """What a head trained on it records in place of an encoder's fingerprint."""
        spec = self.embedding.spec
        return {"name": Path(self.source).stem, "embedding_source": spec.name, "title": spec.title,
                "embedding_dim": int(self.embedding.dims), "patch_size": 1}


def embedding_input(source, kind: Optional[str] = None, *, series: Optional[bool] = None, dates=None, aoi=None,
                    feature_raster=None, log=lambda m: None) -> EmbeddingInput:
    """``source`` (an embedding file: AlphaEarth, a TESSERA tile or GeoTIFF, or a float raster
    declared with ``kind``) read alone, for a head without Sentinel-2 and without an encoder. What
    does not apply to it is refused in words."""
    if hasattr(source, "read_block"):  # prepared already: an embedding, or a change pair of two of them
        from mpmae_core.runtime.inference.pixel_features import is_external

        if getattr(source, "blocks", None) and all(is_external(b.name) for b in source.blocks):
            return source
        raise ValueError("without an encoder model the input must be another model's embedding")
    if isinstance(source, (list, tuple)):
        if len(source) != 1:
            raise ValueError("an embedding read alone is one file (one year of one place); several dates of "
                             "Sentinel-2 need the encoder model")
        source = source[0]
    if series or dates:
        raise ValueError("an embedding read alone is one file: a series of dates needs the encoder model (give it "
                         "instead of 'none')")
    if aoi:
        raise ValueError("an area of interest is not applied to an embedding read alone: clip the embedding to it "
                         "first (QGIS: Raster > Extraction > Clip Raster by Mask Layer; gdalwarp -cutline "
                         "AREA.gpkg -crop_to_cutline)")
    if feature_raster:
        raise ValueError("a precomputed feature raster belongs to an encoder: an embedding read alone is its own "
                         "features (leave --features out)")
    spec = registry.EMBEDDING_SOURCES[kind] if kind else None
    raster = EmbeddingRaster(source, spec)
    log(f"read alone: {raster.spec.title}, {raster.dims} dimensions per pixel (no Sentinel-2 raster, no encoder)")
    return EmbeddingInput(raster, source)


def check_embedding_head(head_meta, head_path, prep: EmbeddingInput) -> None:
    """Refuse, in words, a head that cannot read this embedding alone: one that also reads
    Sentinel-2 spectra or MMEarth's maps, or one trained on another embedding source."""
    from mpmae_core.runtime.inference.pixel_features import EXTERNAL_PREFIX, base_name, is_external

    if not head_meta.per_pixel:
        raise ValueError(f"the head '{head_path}' is a patch head of an encoder: an embedding read alone needs a "
                         "per-pixel head trained on it (train-head with the model 'none')")
    others = [f for f in head_meta.features if not is_external(f)]
    if others:
        raise ValueError(f"the head '{head_path}' reads Sentinel-2 features too ({', '.join(others)}): give the "
                         f"Sentinel-2 raster and the encoder, with this embedding beside it (--embedding)")
    wanted = sorted({base_name(f)[len(EXTERNAL_PREFIX):] for f in head_meta.features})
    have = prep.embedding.spec.name
    if wanted != [have]:
        titles = ", ".join(registry.EMBEDDING_SOURCES[w].title if w in registry.EMBEDDING_SOURCES else w
                           for w in wanted)
        raise ValueError(f"the head '{head_path}' was trained on {titles}, not on the {prep.embedding.spec.title} "
                         f"given here: its map would be wrong. Give it that embedding, or train a head on this one")
    channels = {int(c) for c in head_meta.feature_channels}
    if channels != {prep.embedding.dims}:
        raise ValueError(f"the head '{head_path}' expects {min(channels)} dimensions but '{prep.source}' has "
                         f"{prep.embedding.dims}: train the head on this embedding")
