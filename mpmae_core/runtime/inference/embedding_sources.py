"""Other models' embeddings read as feature sources (``io.embeddings`` has the rules): a TESSERA
tile written once as a GeoTIFF, and ``EmbeddingRaster``, which reads any known or declared
embedding raster as float32 windows with NaN for no data."""

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
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.files import user_cache_dir
    from mpmae_core.runtime.io.gdal_io import open_raster

    values, scales, mask = E.tessera_parts(path)
    ident = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in (values, scales, mask))
    folder = Path(cache_dir) if cache_dir else user_cache_dir() / "embeddings"
    out = folder / f"{values.stem[:60]}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}.tif"
    if out.is_file():
        return str(out)
    grid = open_raster(mask)
    arr = E.tessera_tile_array(values, scales)
    if (grid.RasterYSize, grid.RasterXSize) != arr.shape[1:]:
        raise E.EmbeddingError(f"the TESSERA tile '{values.name}' is {arr.shape[2]} x {arr.shape[1]} px but its landmask "
                             f"'{mask.name}' is {grid.RasterXSize} x {grid.RasterYSize}: they are not of one tile")
    folder.mkdir(parents=True, exist_ok=True)
    writer = RasterWriter(out, arr.shape[2], arr.shape[1], arr.shape[0], "float32", grid.GetGeoTransform(),
                          grid.GetProjection(), nodata=float("nan"),
                          descriptions=[registry.TESSERA.band_name(i) for i in range(arr.shape[0])],
                          metadata={"MMEARTH_EMBEDDING_SOURCE": "tessera", "MMEARTH_EMBEDDING_FROM": values.name})
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
        self.quantised = self.spec is registry.ALPHAEARTH and E.signed_bytes(band)
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
            return E.dequantise_alphaearth(raw.astype(np.int8) if raw.dtype != np.int8 else raw)
        out = raw.astype(np.float32)
        if self.nodata is not None and np.isfinite(self.nodata):
            out[raw == self.nodata] = np.nan
        return out


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
