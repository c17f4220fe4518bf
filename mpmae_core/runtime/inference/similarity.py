"""Similarity maps: how much each place's embedding resembles the embeddings at a few query points.

Cosine similarity after centring on the scene's mean embedding: embeddings of one scene share a
large common component that would otherwise push every similarity towards 1. With several
queries, each cell gets its best match (``max``) or the similarity to the queries' mean (``mean``).
The map is on the embedding grid (one cell per patch), with NaN where there is no data.
"""

from __future__ import annotations

import numpy as np

from mpmae_core.runtime.io.gdal_io import open_raster
from mpmae_core.runtime.inference.raster import RasterWriter

AGGREGATES = ("max", "mean")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def centred_cosine(cells: np.ndarray, queries: np.ndarray, centre: np.ndarray, aggregate: str = "max") -> np.ndarray:
    """(n, D) cells, (q, D) queries -> (n,) similarity in [-1, 1]."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    q = _unit(queries - centre)
    if aggregate == "mean":
        q = _unit(q.mean(0, keepdims=True))
    return (_unit(cells - centre) @ q.T).max(1)


class _Plain:
    """An embedding raster of this toolkit's (float, NaN no data), read as it is."""

    def __init__(self, path):
        self.ds = open_raster(path)
        self.dims, self.width, self.height = self.ds.RasterCount, self.ds.RasterXSize, self.ds.RasterYSize
        self.geotransform, self.projection = self.ds.GetGeoTransform(), self.ds.GetProjection()

    def read(self, x, y, w, h):
        return self.ds.ReadAsArray(x, y, w, h).astype(np.float64).reshape(self.dims, h, w)


def _row_blocks(reader, rows: int = 64):
    for y in range(0, reader.height, rows):
        n = min(rows, reader.height - y)
        yield y, reader.read(0, y, reader.width, n).astype(np.float64)


def similarity(source, model_path, queries, output, *, embeddings=None, aggregate: str = "max", style: bool = True,
               progress=lambda f: None, cancelled=lambda: False, log=lambda m: None, **embed_kw) -> dict:
    """``queries``: WKB points/polygons in the embeddings raster's CRS. Writes a one-band float32 map.
    ``embeddings`` may be another model's embedding (AlphaEarth, TESSERA: ``io.embeddings``),
    read by its own rules; ``source`` and ``model_path`` are then not needed."""
    import tempfile

    from mpmae_core.runtime.io.labels import LabelError, label_cells
    from mpmae_core.runtime.io.files import GEOTIFF_EXTENSIONS, check_output
    from mpmae_core.runtime.inference.embedding_sources import external_embedding
    from mpmae_core.runtime.inference.predict import Cancelled, embeddings_for, input_files, writer_guard
    from mpmae_core.runtime.io.styles import pseudocolor_qml, style_path

    other = external_embedding(embeddings) if embeddings else None
    inputs = (input_files(embeddings) if embeddings else []) + ([] if other is not None else
                                                                 input_files(source) + [str(model_path)])
    check_output(output, inputs, "similarity map", GEOTIFF_EXTENSIONS, "a GeoTIFF")
    queries = list(queries)
    with tempfile.TemporaryDirectory(prefix="mmearth-sim-") as work:
        if other is not None:
            reader = other
            log(f"{other.spec.title}: {other.dims} dimensions, read by its own rules")
        else:
            emb, _ = embeddings_for(source, model_path, embeddings, work, cancelled=cancelled, log=log,
                                    progress=lambda f: progress(0.8 * f), **embed_kw)
            reader = _Plain(emb)
        cells = label_cells([(wkb, 0) for wkb in queries], reader.geotransform, reader.width, reader.height)
        if cells.outside:
            log(f"warning: skipped {len(cells.outside)} query feature(s) outside the raster")
        q = np.array([reader.read(int(c), int(r), 1, 1)[:, 0, 0] for r, c in zip(cells.rows, cells.cols)],
                     np.float64).reshape(-1, reader.dims)
        q = q[np.isfinite(q).all(1)]
        if not len(q):
            raise LabelError("no query point lies over valid pixels of the raster: put the query points inside "
                               "the raster, where it has data")
        total, count = np.zeros(reader.dims), 0
        for _, block in _row_blocks(reader):
            flat = block.reshape(reader.dims, -1)
            ok = np.isfinite(flat).all(0)
            total += flat[:, ok].sum(1)
            count += int(ok.sum())
        centre = total / max(count, 1)
        writer = RasterWriter(output, reader.width, reader.height, 1, "float32", reader.geotransform,
                              reader.projection, nodata=float("nan"), descriptions=[f"similarity ({aggregate})"])

        def write_all():
            lo, hi = np.inf, -np.inf
            for y, block in _row_blocks(reader):
                if cancelled():
                    raise Cancelled("cancelled by the user; no output was written")
                flat = block.reshape(reader.dims, -1).T
                ok = np.isfinite(flat).all(1)
                sim = np.full(len(flat), np.nan, np.float32)
                if ok.any():
                    sim[ok] = centred_cosine(flat[ok], q, centre, aggregate)
                    lo, hi = min(lo, float(sim[ok].min())), max(hi, float(sim[ok].max()))
                writer.write_rows(y, sim.reshape(1, block.shape[1], block.shape[2]))
                progress(0.8 + 0.2 * min(1.0, (y + block.shape[1]) / reader.height))
            return lo, hi

        lo, hi = writer_guard([writer], write_all)
        qml = pseudocolor_qml(max(lo, -1.0), min(hi, 1.0)) if style and np.isfinite(lo) else None
        writer.close({style_path(output): qml} if qml else None)
        reader = None
    return {"output": str(output), "queries": int(len(q)), "min": lo, "max": hi}
