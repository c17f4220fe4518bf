"""Sliding-window inference over rasters of any size: embeddings and class maps.

The raster is padded (virtually) to a multiple of the patch size and covered by overlapping tiles
aligned to the patch grid (``tiling``). Tiles are read in windows, run in batches, and their
outputs blended with smooth weights into accumulators that hold one band of tile rows only:
finished rows are written and dropped, so memory depends on the raster's width, never its height.
Nodata in gives nodata out; tiles with no valid pixel are not run. ``progress(fraction)`` is
called after each batch and ``cancelled()`` is checked before each: a cancel raises ``Cancelled``
and leaves no output file.

Note on equality with untiled inference: ConvNeXt V2's GRN normalises each channel by its L2 norm
over the whole window, so an embedding depends (weakly) on everything in its tile, not only on a
local neighbourhood. Large tiles, generous overlap and the blending keep tiled results close to
the untiled ones and free of seams; they cannot make them identical.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.embeddings import FEATURES_KEY
from mpmae_core.runtime.io.files import Cancelled, check_outputs  # noqa: F401 (API: re-exported)
from mpmae_core.runtime.io.sources import input_files  # noqa: F401 (API: re-exported)
from mpmae_core.runtime.models.model import OnnxModel
from mpmae_core.runtime.inference.pixel_features import PixelHeadRunner, softmax, upsample_bilinear  # noqa: F401 (upsample_bilinear: API)
from mpmae_core.runtime.inference.raster import PreparedInput, RasterWriter, has_data, output_geotransform, read_block
from mpmae_core.runtime.io.styles import BandMoments, paletted_qml, style_path
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, blend_weights, raster_windows, round_up


F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class TileSpec:
    tile: int = DEFAULT_TILE  # pixels, a multiple of the patch size
    overlap: int = DEFAULT_OVERLAP  # pixels, a multiple of the patch size
    batch: int = 1  # tiles per model call


#: Rows per GeoTIFF block of an embedding: written whole and flushed as each block row completes,
#: so GDAL's cache does not fill with a large raster's unfinished blocks (issue 26).
EMBED_BLOCK_ROWS = 16


def auto_batch(model: OnnxModel, tile: int = DEFAULT_TILE) -> int:
    """Tiles per call: batching buys nothing on CPU but costs memory (ORT's arena grows with the
    batch: about 0.5 GB at 1 tile of 512 px, 1.8 GB at 4); on a GPU it keeps the device busy with
    about 2 Mpx per call (8 tiles of 512 px, 2 of 1,024)."""
    return max(1, (8 * 512 * 512) // (tile * tile)) if model.device == "cuda" else 1


class TiledPredictor:
    """Run ``model`` (and an optional ``head`` on its output) over a prepared raster.

    mode "embed": encoder output at patch stride (or upsampled to pixels);
    mode "probabilities": class probabilities at pixel resolution, from a segmenter model, from an
    encoder followed by a head on its patch-stride embeddings, or from a per-pixel head on
    ``blocks`` (spectra and hypercolumns; ``model`` may then be None for spectra alone), or from
    any per-pixel ``runner`` (the change magnitudes of ``change``).
    """

    def __init__(self, model: Optional[OnnxModel], prep: PreparedInput, spec: TileSpec, mode: str = "embed",
                 head: Optional[OnnxModel] = None, upsample: bool = False, blocks=None, patch: int = 0,
                 runner=None):
        if mode not in ("embed", "probabilities"):
            raise ValueError(f"unknown mode {mode!r}")
        self.model, self.head, self.prep, self.mode = model, head, prep, mode
        # ``runner``: anything giving (B, K, th, tw) at pixel resolution for a batch of tiles
        self.pixel_head = runner or (PixelHeadRunner(model, head, blocks, prep) if blocks else None)
        self.p = patch or (model.metadata.patch_size if model is not None else 1)
        for name, value in (("tile", spec.tile), ("overlap", spec.overlap)):
            if value % self.p:
                raise ValueError(f"{name} ({value} px) must be a multiple of the model's patch size {self.p}")
        self.spec = spec
        self.pad_h, self.pad_w = round_up(prep.height, self.p), round_up(prep.width, self.p)
        self.stride = 1 if (mode == "probabilities" or upsample) else self.p
        self.out_h = math.ceil(prep.height / self.stride)
        self.out_w = math.ceil(prep.width / self.stride)
        probe = np.zeros((1, len(prep.band_numbers), 2 * self.p, 2 * self.p), np.float32)
        self.channels = self._run(probe).shape[1]

    def _run(self, x: np.ndarray) -> np.ndarray:
        """(B, C, th, tw) normalised -> (B, channels, th/stride, tw/stride) float32."""
        if self.pixel_head is not None:
            return self.pixel_head(x)
        out = self.model.run(x)
        if self.mode == "embed":
            return np.stack([upsample_bilinear(o, self.p) for o in out]) if self.stride == 1 else out
        factor = self.model.metadata.output_stride
        if self.head is not None:
            out = self.head.run(out)  # logits at patch stride
            factor = self.p
        probs = softmax(out, axis=1)
        return np.stack([upsample_bilinear(o, factor) for o in probs]) if factor > 1 else probs

    def windows(self):
        return raster_windows(self.prep.height, self.prep.width, self.spec.tile, self.spec.overlap, self.p)

    def row_span(self, block: tuple[int, int]) -> tuple[int, int]:
        """Output rows [y0, y1) that tile rows [a, b) finish (the rows a block task writes)."""
        rows, (a, b) = self.windows(), block
        y0 = rows[a][0].y // self.stride if a > 0 else 0
        y1 = min(rows[b][0].y // self.stride, self.out_h) if b < len(rows) else self.out_h
        return y0, y1

    def run(self, write: Callable[[int, np.ndarray, np.ndarray], None],
            progress: Callable[[float], None] = lambda f: None, cancelled: Callable[[], bool] = lambda: False,
            block: Optional[tuple[int, int]] = None) -> dict:
        """Process every tile; ``write(row, values (C, rows, out_w), valid (rows, out_w))`` receives
        finished output rows in order (NaN where invalid). Returns counts of tiles run and skipped.

        ``block`` = (a, b) runs tile rows a..b-1 only (and row a-1, whose overlap reaches into row a)
        and writes just the output rows they finish (``row_span``): the numbers are those of the whole
        run, so blocks of a huge raster can be computed apart and put together."""
        rows = self.windows()
        a, b = block if block is not None else (0, len(rows))
        s = self.stride
        ramp_cells = max(1, self.spec.overlap // s)
        th, tw = rows[0][0].h, rows[0][0].w
        width, height = self.pad_w // s, self.pad_h // s
        first = max(a - 1, 0)
        total = sum(len(r) for r in rows[first:b])
        done = run_count = skipped = 0
        # Accumulators of one tile row's height, allocated once: finished rows are written, then the
        # rest is shifted up, so memory depends on the width only.
        depth = th // s
        acc = np.zeros((self.channels, depth, width), np.float32)
        wsum = np.zeros((depth, width), np.float64)
        acc_y = max(rows[first][0].y // s, 0)  # output row of acc[:, 0]

        def load(batch):
            """Read a batch's tiles (in the reader thread: every access to the input dataset is there).
            Windows the raster itself knows to be empty (VRT gaps, sparse blocks) are not read."""
            batch_in = [win for win in batch if has_data(self.prep, win.y, win.x, th, tw)]
            inputs = [(win, *read_block(self.prep, win.y, win.x, th, tw)) for win in batch_in]
            return len(batch) - len(batch_in), inputs

        batches = [(r, rows[r][i:i + self.spec.batch]) for r in range(first, b)
                   for i in range(0, len(rows[r]), self.spec.batch)]
        # The next batch is read while the model runs on this one: reading overlaps the compute.
        reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmearth-read")
        pending = reader.submit(load, batches[0][1]) if batches else None
        k = 0
        try:
            for r in range(first, b):
                while k < len(batches) and batches[k][0] == r:
                    if cancelled():
                        raise Cancelled("cancelled by the user; no output was written")
                    batch = batches[k][1]
                    empty, inputs = pending.result()
                    k += 1
                    pending = reader.submit(load, batches[k][1]) if k < len(batches) else None
                    todo = [(win, x, valid) for win, x, valid in inputs if valid.any()]
                    skipped += empty + len(inputs) - len(todo)
                    self._accumulate(todo, acc, wsum, acc_y, ramp_cells, width, height)
                    run_count += len(todo)
                    done += len(batch)
                    progress(done / total)
                finish = min(rows[r + 1][0].y // s if r + 1 < len(rows) else self.out_h, self.out_h)
                if finish > acc_y:
                    n = finish - acc_y
                    valid = wsum[:n, :self.out_w] > 0
                    if valid.any() and r >= a:
                        # normalised in place (these rows are done): no copy of a band of rows as wide
                        # as the raster; ``write`` must not keep ``values`` beyond its call
                        values = acc[:, :n, :self.out_w]
                        values /= np.maximum(wsum[:n, :self.out_w], 1e-12)[None].astype(np.float32)
                        values[:, ~valid] = np.nan
                        write(acc_y, values, valid)
                    for i in range(depth - n):  # shift the rest up a row at a time (no temporary copy)
                        acc[:, i] = acc[:, i + n]
                        wsum[i] = wsum[i + n]
                    acc[:, depth - n:] = 0
                    wsum[depth - n:] = 0
                    acc_y = finish
        finally:
            if pending is not None:
                pending.cancel()
            reader.shutdown(wait=True)
        return {"tiles": total, "run": run_count, "skipped": skipped}

    def _accumulate(self, todo, acc, wsum, acc_y, ramp_cells, width, height) -> None:
        """Run the model on a batch of tiles and add their blended outputs to the accumulators."""
        if not todo:
            return
        s = self.stride
        outs = self._run(np.stack([x for _, x, _ in todo]))
        for (win, _, valid), out in zip(todo, outs):
            oh, ow = out.shape[1:]
            cell_valid = valid.reshape(oh, s, ow, s).any(axis=(1, 3)) if s > 1 else valid
            finite = np.isfinite(out).all(0)
            if not finite.all():  # an output without a value (its features had none) is no data, not a zero
                out = np.where(finite[None], out, 0.0)
                cell_valid = cell_valid & finite
            weight = blend_weights(win, oh, ow, ramp_cells) * cell_valid
            # windows may reach beyond the raster (mirrored context): keep the part inside
            oy, ox = win.y // s, win.x // s
            ya, yb, xa, xb = max(oy, 0), min(oy + oh, height), max(ox, 0), min(ox + ow, width)
            part = (slice(ya - oy, yb - oy), slice(xa - ox, xb - ox))
            acc[:, ya - acc_y:yb - acc_y, xa:xb] += out[(slice(None),) + part] * weight[part][None].astype(np.float32)
            wsum[ya - acc_y:yb - acc_y, xa:xb] += weight[part]


# ------------------------------------------------------------------------------------------
# What the command line and the QGIS plugin call
# ------------------------------------------------------------------------------------------

def writer_guard(writers, fn):
    """``fn()``; if it raises (cancel included), every writer drops its partial file first."""
    try:
        result = fn()
    except BaseException as exc:
        for w in writers:
            w.abort(exc)
        raise
    return result


def embed(source, model_path, output, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, batch: int = 0,
          device: str = "auto", dtype: str = "float32", upsample: bool = False, level: str = "auto", dn_offset="auto",
          band_map=None, scale: float = 1.0, cog: bool = False, style: bool = True, progress=lambda f: None,
          cancelled=lambda: False, log=lambda m: None, block: Optional[tuple] = None, aoi=None, masks=None) -> dict:
    """Embedding raster (D bands) at patch stride, or upsampled to pixels; NaN where no data. With
    ``style``, a .qml beside it shows the three bands of largest spread as RGB."""
    from mpmae_core.runtime.inference.raster import prepare_input

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    from mpmae_core.runtime.io.sources import looks_like_series

    if looks_like_series(source):
        raise ValueError(f"'{source}' names several rasters: embed one date at a time, or give the series to "
                         "`features` (its temporal medians of every encoder stage) or to train-head and segment")
    check_tiling(tile, overlap, batch)
    check_outputs({"output": output}, input_files(source) + [str(model_path)])
    model = OnnxModel(model_path, device=device, log=log)
    if model.metadata.kind != "encoder":
        raise ValueError(f"'{model_path}' is a {model.metadata.kind} model; embed needs an encoder model")
    prep = prepare_input(source, model.metadata, level=level, dn_offset=dn_offset, band_map=band_map, log=log,
                         scale=scale, aoi=aoi, masks=masks)
    for note in prep.notes:
        log(note)
    runner = TiledPredictor(model, prep, TileSpec(tile, overlap, batch or auto_batch(model, tile)), "embed",
                            upsample=upsample)
    y0, y1 = runner.row_span(block) if block is not None else (0, runner.out_h)
    writer = RasterWriter(output, runner.out_w, y1 - y0, runner.channels, "float32",
                          block_geotransform(prep.geotransform, runner.stride, y0), prep.projection,
                          nodata=float("nan"), descriptions=[f"embedding_{i}" for i in range(runner.channels)],
                          half_float=dtype == "float16", cog=cog, stream_rows=EMBED_BLOCK_ROWS)
    moments = BandMoments(runner.channels)

    def write(y, values, valid):
        if dtype == "float16":  # beyond float16's range GDAL would store infinities
            np.clip(values, -F16_MAX, F16_MAX, out=values)
        writer.write_rows(y - y0, values, valid)
        moments.add(values, valid)

    stats = writer_guard([writer], lambda: runner.run(write, progress, cancelled, block))
    if stats["run"] == 0:
        log("warning: the raster holds no valid pixel: the output is all no-data")
    writer.close({style_path(output): moments.three_component_qml()} if style else None)
    return dict(stats, output=str(output), provider=model.providers[0], level=prep.level, dn_offset=prep.dn_offset,
                width=runner.out_w, height=y1 - y0, bands=runner.channels, tile_rows=len(runner.windows()))


FEATURE_BLOCK_ROWS = 16  # rows per GeoTIFF block of a feature raster: written whole, one chunk at a time


def features(source, model_path, output, *, blocks=None, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
             batch: int = 0, device: str = "auto", dtype: str = "float32", level: str = "auto", dn_offset="auto",
             band_map=None, scale: float = 1.0, cog: bool = False, progress=lambda f: None, cancelled=lambda: False,
             log=lambda m: None, aoi=None, masks=None, series: Optional[bool] = None, dates=None, reference: int = 0,
             min_valid: int = 1, seasons=()) -> dict:
    """Per-pixel feature raster: each pixel's normalised spectra and every encoder stage upsampled
    to it (``pixel`` module), from its owner tile, exactly the vectors a per-pixel head is trained
    and run on; NaN where no data. ``blocks``: names to keep (default every block). A series of
    dates (``series``) gives its reference date's blocks and the temporal ones."""
    import json

    from mpmae_core.runtime.inference.pixel_features import REFERENCE_VALID, block_columns, blocks_by_name, check_maps, \
        hypercolumns, is_temporal, rows_per_chunk
    from mpmae_core.runtime.inference.pixel_features import maps_runner
    from mpmae_core.runtime.inference.series import prepare_source, source_blocks
    from mpmae_core.runtime.inference.tiling import owned_span

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    check_tiling(tile, overlap, batch)
    check_outputs({"output": output}, input_files(source) + [str(model_path)])
    model = OnnxModel(model_path, device=device, log=log)
    meta = model.metadata
    if meta.kind != "encoder":
        raise ValueError(f"'{model_path}' is a {meta.kind} model; per-pixel features need an encoder model")
    p = meta.patch_size
    if tile % p or overlap % p:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of the model's patch size {p}")
    prep = prepare_source(source, meta, series=series, dates=dates, reference=reference, min_valid=min_valid,
                          level=level, dn_offset=dn_offset, band_map=band_map, log=log, scale=scale, aoi=aoi,
                          masks=masks, seasons=seasons)
    for note in prep.notes:
        log(note)
    available = source_blocks(prep, meta)
    chosen = blocks_by_name(available, blocks, what="the feature raster") if blocks else available
    n_feat = sum(b.channels for b in chosen)
    names = [f"{b.name}_{i}" for b in chosen for i in range(b.channels)]
    info = {"blocks": [[b.name, b.channels, b.stride] for b in chosen], "model": Path(model_path).name,
            "embedding_dim": meta.embedding_dim, "patch_size": p, "tile": tile, "overlap": overlap}
    writer = RasterWriter(output, prep.width, prep.height, n_feat, "float32", output_geotransform(prep.geotransform, 1),
                          prep.projection, nodata=float("nan"), descriptions=names, half_float=dtype == "float16",
                          cog=cog, block_rows=FEATURE_BLOCK_ROWS, metadata={FEATURES_KEY: json.dumps(info)},
                          compress="ZSTD")  # hundreds of float bands: ZSTD compresses them several times faster
    runner = maps_runner(prep, model, chosen)
    single = block_columns(chosen, lambda b: not is_temporal(b.name))
    windows = raster_windows(prep.height, prep.width, tile, overlap, p)
    th, tw = windows[0][0].h, windows[0][0].w
    ystarts, xstarts = [r[0].y for r in windows], [w.x for w in windows[0]]
    spans = [owned_span(i, xstarts, tw, prep.width) for i in range(len(xstarts))]
    step = max(FEATURE_BLOCK_ROWS, rows_per_chunk(n_feat, prep.width) // FEATURE_BLOCK_ROWS * FEATURE_BLOCK_ROWS)
    buffer, buf_valid, buf_y = [], [], 0
    counts = {"tiles": sum(len(r) for r in windows), "run": 0, "skipped": 0}

    def flush(final: bool = False):
        nonlocal buffer, buf_valid, buf_y
        rows_ready = sum(b.shape[1] for b in buffer)
        n = rows_ready if final else rows_ready // FEATURE_BLOCK_ROWS * FEATURE_BLOCK_ROWS
        if n == 0:
            return
        block, valid = np.concatenate(buffer, axis=1), np.concatenate(buf_valid, axis=0)
        values = block[:, :n]
        if dtype == "float16":
            np.clip(values, -F16_MAX, F16_MAX, out=values)
        writer.write_rows(buf_y, values, valid[:n])
        buffer, buf_valid, buf_y = [block[:, n:]], [valid[n:]], buf_y + n

    def work():
        for r, row in enumerate(windows):
            y_lo, y_hi = owned_span(r, ystarts, th, prep.height)
            if y_hi <= y_lo:
                continue
            tiles = []
            for win in row:
                if cancelled():
                    raise Cancelled("cancelled by the user; no output was written")
                if has_data(prep, win.y, win.x, th, tw):
                    x, valid = read_block(prep, win.y, win.x, th, tw)
                else:
                    x, valid = None, None
                if x is None or not valid.any():
                    counts["skipped"] += 1
                    tiles.append(None)
                    continue
                maps = runner(x[None])[0]
                check_maps(maps, chosen, th, tw)
                counts["run"] += 1
                tiles.append((win, x, valid, maps))
            for y0 in range(y_lo, y_hi, step):
                y1 = min(y0 + step, y_hi)
                block = np.full((n_feat, y1 - y0, prep.width), np.nan, np.float32)
                ok = np.zeros((y1 - y0, prep.width), bool)
                for (x_lo, x_hi), t in zip(spans, tiles):
                    if t is None or x_hi <= x_lo:
                        continue
                    win, x, valid, maps = t
                    f = hypercolumns(x, maps, chosen, y0 - win.y, y1 - win.y)[:, :, x_lo - win.x:x_hi - win.x]
                    v = valid[y0 - win.y:y1 - win.y, x_lo - win.x:x_hi - win.x]
                    f[:, ~v] = np.nan
                    if REFERENCE_VALID in maps:  # a series: the reference date's own blocks only where it is valid
                        ref = maps[REFERENCE_VALID][0, y0 - win.y:y1 - win.y, x_lo - win.x:x_hi - win.x] > 0.5
                        part = f[single]
                        part[:, ~ref] = np.nan
                        f[single] = part
                    block[:, :, x_lo:x_hi] = f
                    ok[:, x_lo:x_hi] = v
                buffer.append(block)
                buf_valid.append(ok)
                flush()
            progress((r + 1) / len(windows))
        flush(final=True)

    writer_guard([writer], work)
    writer.close()
    return dict(counts, output=str(output), provider=model.providers[0], level=prep.level, dn_offset=prep.dn_offset,
                width=prep.width, height=prep.height, bands=n_feat, blocks=info["blocks"])


def read_feature_raster_info(path) -> Optional[dict]:
    """The MMEARTH_FEATURES description of a per-pixel feature raster, or None for another raster."""
    import json

    from mpmae_core.runtime.io.gdal_io import open_raster

    text = open_raster(path).GetMetadataItem(FEATURES_KEY)
    if not text:
        return None
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) and isinstance(info.get("blocks"), list) else None


def block_geotransform(gt, stride: int, first_row: int) -> list:
    """The geotransform of an output at ``stride`` whose first row is output row ``first_row``."""
    out = output_geotransform(gt, stride)
    out[0] += first_row * out[2]
    out[3] += first_row * out[5]
    return out


def check_tiling(tile, overlap, batch) -> None:
    """Tile, overlap and batch as the runtime needs them, or a ValueError naming the fix."""
    for name, value, low in (("tile", tile, 1), ("overlap", overlap, 0), ("batch", batch, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    if overlap >= tile:
        raise ValueError(f"the overlap ({overlap} px) must be smaller than the tile ({tile} px)")


def segment(source, model_path, output, *, head_path=None, probabilities_path=None, tile: int = DEFAULT_TILE,
            overlap: int = DEFAULT_OVERLAP, batch: int = 0, device: str = "auto", level: str = "auto", dn_offset="auto",
            band_map=None, scale: float = 1.0, cog: bool = False, style: bool = True, progress=lambda f: None,
            cancelled=lambda: False, log=lambda m: None, block: Optional[tuple] = None, aoi=None, masks=None,
            series: Optional[bool] = None, dates=None, reference: int = 0, min_valid: int = 1,
            seasons=(), embedding=None, embedding_kind: Optional[str] = None) -> dict:
    """Class map (uint8, 255 = no data, colour table and class names; with ``style`` a .qml whose
    legend names the classes) and optional probabilities. ``block``: tile rows (a, b) only, as
    ``TiledPredictor.run`` describes (for huge rasters split across tasks).

    ``source`` may be a series of dates (``series.prepare_source``: a glob, a list, or ``series``
    True) for a per-pixel head trained on one: ``dates``, the ``reference`` member and
    ``min_valid`` dates as ``series.prepare_series`` takes them."""
    from mpmae_core.runtime.inference.series import prepare_source, series_of, source_blocks

    from mpmae_core.runtime.inference.embedding_sources import without_model

    alone = without_model(model_path)
    check_tiling(tile, 0 if alone else overlap, batch)  # an embedding read alone needs no overlap
    inputs = input_files(source) + ([] if alone else [str(model_path)]) + ([str(head_path)] if head_path else [])
    check_outputs({"class map": output, "probabilities": probabilities_path}, inputs)
    if alone:
        return _segment_embedding(source, output, head_path, probabilities_path, tile=tile, batch=batch,
                                  device=device, cog=cog, style=style, progress=progress, cancelled=cancelled,
                                  log=log, block=block, aoi=aoi, series=series, dates=dates, embedding=embedding,
                                  embedding_kind=embedding_kind)
    model = OnnxModel(model_path, device=device, log=log)
    blocks = None
    head = OnnxModel(head_path, device=device, log=log) if head_path else None
    meta = model.metadata
    if head is not None:
        if meta.kind != "encoder" or head.metadata.kind != "head":
            raise ValueError(f"with a head, the model must be an encoder and the head a head model; got a "
                             f"{meta.kind} model and a {head.metadata.kind} head")
        from mpmae_core.runtime.models.fingerprint import check_head_encoder

        warning = check_head_encoder(head.metadata, head_path, model)
        if warning:
            log(warning)
        if head.metadata.per_pixel:
            blocks = []  # chosen once the input is open: a series offers more blocks than a raster
        elif head.metadata.embedding_dim not in (0, meta.embedding_dim):
            raise ValueError(f"the head takes {head.metadata.embedding_dim}-dim embeddings but the encoder gives "
                             f"{meta.embedding_dim}: train the head on this encoder's embeddings")
        classes = head.metadata
    elif meta.kind == "segmenter":
        classes = meta
    else:
        raise ValueError(f"'{model_path}' is an encoder without a class head: give a head model (--head), or export "
                         "a segmenter with `python -m training.export CKPT --head esa_worldcover`")
    prep = prepare_source(source, meta, series=series, dates=dates, reference=reference, min_valid=min_valid,
                          level=level, dn_offset=dn_offset, band_map=band_map, log=log, scale=scale, aoi=aoi,
                          masks=masks, seasons=seasons)
    if embedding:  # another model's embedding beside the raster, for a head trained with it
        from mpmae_core.runtime.inference.embedding_sources import with_embedding

        if series_of(prep) is None and not isinstance(prep, PreparedInput) or blocks is None:
            raise ValueError("another model's embedding feeds a per-pixel head trained with it, beside a raster or "
                             "a series of dates")
        prep = with_embedding(prep, embedding, meta, embedding_kind, log)
    for note in prep.notes:
        log(note)
    if not isinstance(prep, PreparedInput) and blocks is None:
        raise ValueError("a series of dates (or a pair of them) is mapped by a per-pixel head trained on it (train-head "
                         "on the series, or mmearth change with labels); this model maps one raster: give one date")
    if blocks is not None:
        from mpmae_core.runtime.inference.pixel_features import blocks_by_name, is_external, is_temporal

        series = series_of(prep)
        if series is not None:  # a head trained with seasons names their windows
            series.offer(head.metadata.features, log)
        blocks = blocks_by_name(source_blocks(prep, meta), head.metadata.features, head.metadata.feature_channels,
                                f"the head '{head_path}'")
        if series is not None and any(not is_temporal(b.name) and not is_external(b.name) for b in blocks):
            series.require_reference = True
            log(f"the head reads the reference date's own features ({series.dates[series.reference]}): pixels masked "
                "on that date are no data in the map")
    spec = TileSpec(tile, overlap, batch or auto_batch(model, tile))
    return _write_class_map(runner_for(model, prep, spec, head, blocks, meta.patch_size, log), prep, classes, output,
                            probabilities_path, cog=cog, style=style, progress=progress, cancelled=cancelled, log=log,
                            block=block, provider=model.providers[0])


def runner_for(model, prep, spec, head, blocks, patch, log) -> "TiledPredictor":
    """The class probabilities' runner: a per-pixel head on ``blocks``, or ``model`` (with ``head``)."""
    if blocks is not None:
        from mpmae_core.runtime.inference.pixel_features import small_raster_warning

        small_raster_warning(prep, spec.tile, log)
        encoder = model if any(b.name != "spectra" for b in blocks) else None
        return TiledPredictor(encoder, prep, spec, "probabilities", head=head, blocks=blocks, patch=patch)
    return TiledPredictor(model, prep, spec, "probabilities", head=head)


def _segment_embedding(source, output, head_path, probabilities_path, *, tile, batch, device, embedding,
                       embedding_kind, log, series=None, dates=None, aoi=None, **kw) -> dict:
    """``segment`` of another model's embedding read alone (no encoder): a per-pixel head trained on
    that embedding alone (``embedding_sources.check_embedding_head``)."""
    from mpmae_core.runtime.inference.embedding_sources import check_embedding_head, embedding_input

    if not head_path:
        raise ValueError("an embedding read alone is mapped by a head trained on it: give the head (--head; train "
                         "it with train-head and the model 'none')")
    if embedding:
        raise ValueError("without an encoder model the input itself is the embedding: give it as the input, or give "
                         "the Sentinel-2 raster and the encoder with the embedding beside them")
    head = OnnxModel(head_path, device=device, log=log)
    if head.metadata.kind != "head":
        raise ValueError(f"'{head_path}' is a {head.metadata.kind} model, not a head")
    prep = embedding_input(source, embedding_kind, series=series, dates=dates, aoi=aoi, log=log)
    check_embedding_head(head.metadata, head_path, prep)
    from mpmae_core.runtime.inference.pixel_features import blocks_by_name

    blocks = blocks_by_name(prep.blocks, head.metadata.features, head.metadata.feature_channels,
                            f"the head '{head_path}'")
    runner = TiledPredictor(None, prep, TileSpec(tile, 0, batch or 1), "probabilities", head=head, blocks=blocks,
                            patch=1)
    return _write_class_map(runner, prep, head.metadata, output, probabilities_path, log=log,
                            provider=head.providers[0], **kw)


def _write_class_map(runner, prep, classes, output, probabilities_path, *, cog, style, progress, cancelled, log,
                     block, provider) -> dict:
    """Run ``runner`` and write its class map (and probabilities): what every ``segment`` ends with."""
    names = classes.class_names or [f"class {i}" for i in range(runner.channels)]
    if len(names) != runner.channels:
        raise ValueError(f"the model gives {runner.channels} classes but its metadata names {len(names)}: the file's "
                         "graph and metadata do not belong together; export it again")
    colours = classes.class_colours or registry.suggest_class_colours(names)
    y0, y1 = runner.row_span(block) if block is not None else (0, runner.out_h)
    gt = block_geotransform(prep.geotransform, 1, y0)
    writers = [RasterWriter(output, runner.out_w, y1 - y0, 1, "uint8", gt, prep.projection, nodata=255,
                            descriptions=[classes.task or "class"], cog=cog, class_names=names,
                            class_colours=colours)]
    if probabilities_path:
        writers.append(writer_guard(writers, lambda: RasterWriter(
            probabilities_path, runner.out_w, y1 - y0, runner.channels, "float32", gt, prep.projection,
            nodata=float("nan"), descriptions=list(names), cog=cog)))

    def write(y, values, valid):
        classes_block = np.where(valid, np.nan_to_num(values).argmax(0), 255).astype(np.uint8)
        writers[0].write_rows(y - y0, classes_block[None], valid)
        if len(writers) > 1:
            writers[1].write_rows(y - y0, values, valid)

    stats = writer_guard(writers, lambda: runner.run(write, progress, cancelled, block))
    if stats["run"] == 0:
        log("warning: the raster holds no valid pixel: the class map is all no-data")
    # The probabilities first: the class map (the main output) appears only when everything worked.
    writer_guard(writers, lambda: [w.close() for w in writers[1:]])
    writer_guard(writers[:1], lambda: writers[0].close({style_path(output): paletted_qml(names, colours)}
                                                       if style else None))
    return dict(stats, output=str(output), probabilities=str(probabilities_path or ""), provider=provider,
                level=prep.level, classes=list(names), tile_rows=len(runner.windows()), height=y1 - y0)


def embeddings_for(source, model_path, embeddings, workdir, *, progress=lambda f: None, **embed_kw) -> tuple:
    """(embedding raster path, encoder metadata): the given ``embeddings`` raster after checking it
    fits the model, or a fresh one computed from ``source`` into ``workdir``."""
    from pathlib import Path

    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.models.model import read_metadata

    meta = read_metadata(model_path)
    if meta.kind != "encoder":
        raise ValueError(f"'{model_path}' is a {meta.kind} model; an encoder model is needed")
    if embeddings:
        ds = open_raster(embeddings)
        if ds.RasterCount != meta.embedding_dim:
            raise ValueError(f"the embeddings raster '{embeddings}' has {ds.RasterCount} bands but the model gives "
                             f"{meta.embedding_dim}-dim embeddings: compute them with this model (mmearth:embed), or "
                             "leave the embeddings empty to compute them now")
        return str(embeddings), meta
    out = Path(workdir) / "embeddings.tif"
    embed(source, model_path, out, style=False, progress=progress, **embed_kw)
    return str(out), meta
