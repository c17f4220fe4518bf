"""An interactive few-shot mapping session: the encoder runs once per raster and model, then every
new label gives a fresh head and preview in a fraction of a second.

The encoder's stage maps are cached on disk at their own strides (``StageCache``: one GeoTIFF
per stage, 30 values per pixel for an atto encoder at patch 16 instead of the 612 of the joined
hypercolumn), keyed by the raster file (path, size, time) and the model file, in
``$MMEARTH_CACHE/features`` (default ``~/.cache/mmearth/features``). A pixel's features are then
its normalised bands, read from the raster, and the cached maps sampled bilinearly at it: the
same blocks, in the same order, as ``pixel`` computes from tiles, so a head fitted here is an
ordinary per-pixel head that ``segment`` and ``qgis_process`` run.

``MappingSession`` holds a raster, a model and the cache; it fits a quick head (for the live
preview), previews the class probabilities of a window on a grid of at most ``max_pixels``
pixels, suggests the least confident places to label next, and trains the full self-choosing
head (``pixelhead``) on the cached features for the final map. No QGIS here: the plugin's dock
panel drives it from background tasks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mpmae_core.runtime.io.files import Cancelled
from mpmae_core.runtime.inference.pixel_features import SPECTRA, Block, base_name, encoder_blocks, feature_set_columns, \
    is_external, sample_bilinear, softmax
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

#: The head the live preview fits after every label: fast to fit and to apply, and rarely far from
#: the chosen one (the full choice runs when the raster is mapped).
PREVIEW_CANDIDATE = ("both", "logistic", 1e-2)
CACHE_VERSION = 2  # 2: windows spread evenly (issue 26): other tiles, other maps


def cache_root() -> Path:
    from mpmae_core.runtime.io.files import user_cache_dir

    return user_cache_dir() / "features"


def file_identity(path) -> dict:
    p = Path(path)
    st = p.stat()
    return {"path": str(p.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime)}


def cache_key(raster, model, options: dict) -> str:
    ident = {"raster": file_identity(raster), "model": file_identity(model) if model else None, "options": options,
             "version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class StageCache:
    folder: Path
    blocks: list  # encoder blocks (no spectra), the cached maps

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.tif"

    @property
    def complete(self) -> bool:
        """Every map is there (nothing to cache, as for an embedding read alone, is complete)."""
        return not self.blocks or ((self.folder / "info.json").is_file() and
                                   all(self.path(b.name).is_file() for b in self.blocks))


def build_stage_cache(prep, model, folder: Path, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                      progress: Callable[[float], None] = lambda f: None,
                      cancelled: Callable[[], bool] = lambda: False, blocks=None) -> StageCache:
    """Every encoder stage map of the raster at its own stride, each cell from the owner tile of
    its pixels (``tiling``), written as GeoTIFFs (float16) into ``folder``; info.json last, so a
    cache without it is incomplete and is rebuilt. ``blocks``: the maps to cache (default every
    encoder stage; a series' also its temporal medians)."""
    from mpmae_core.runtime.inference.pixel_features import check_maps, maps_runner
    from mpmae_core.runtime.inference.predict import writer_guard
    from mpmae_core.runtime.inference.raster import RasterWriter, has_data, read_block
    from mpmae_core.runtime.inference.tiling import owned_span, raster_windows

    blocks = list(blocks) if blocks is not None else [b for b in encoder_blocks(model.metadata) if b.name != SPECTRA]
    p = model.metadata.patch_size
    windows = raster_windows(prep.height, prep.width, tile, overlap, p)
    th, tw = windows[0][0].h, windows[0][0].w
    ystarts, xstarts = [r[0].y for r in windows], [w.x for w in windows[0]]
    gt = prep.geotransform
    writers = []
    for b in blocks:
        h, w = -(-prep.height // b.stride), -(-prep.width // b.stride)
        writers.append(RasterWriter(folder / f"{b.name}.tif", w, h, b.channels, "float32",
                                    [gt[0], gt[1] * b.stride, gt[2], gt[3], gt[4], gt[5] * b.stride],
                                    prep.projection, nodata=float("nan"), half_float=True))
    runner = maps_runner(prep, model, blocks)
    xspans = [owned_span(i, xstarts, tw, prep.width) for i in range(len(xstarts))]

    def work():
        for r, row in enumerate(windows):
            y_lo, y_hi = owned_span(r, ystarts, th, prep.height)
            if y_hi <= y_lo:
                continue
            # a cell belongs to the tile that owns its first pixel: cell spans never overlap
            cspan = {b.name: (-(-y_lo // b.stride), -(-y_hi // b.stride)) for b in blocks}
            bands = {b.name: np.full((b.channels, cspan[b.name][1] - cspan[b.name][0], -(-prep.width // b.stride)),
                                     np.nan, np.float32) for b in blocks}
            for win, (x_lo, x_hi) in zip(row, xspans):
                if cancelled():
                    raise Cancelled("cancelled by the user; the cache was not written")
                if x_hi <= x_lo or not has_data(prep, win.y, win.x, th, tw):
                    continue
                x, valid = read_block(prep, win.y, win.x, th, tw)
                if not valid.any():
                    continue
                maps = runner(x[None])[0]
                check_maps(maps, blocks, th, tw)
                for b in blocks:
                    s = b.stride
                    cy0, cy1 = cspan[b.name]
                    cx0, cx1 = -(-x_lo // s), -(-x_hi // s)
                    if cy1 <= cy0 or cx1 <= cx0:
                        continue
                    oy, ox = (win.y // s), (win.x // s)
                    cell_valid = valid[:th // s * s, :tw // s * s].reshape(th // s, s, tw // s, s).any(axis=(1, 3))
                    part = maps[b.name][:, cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox].copy()
                    part[:, ~cell_valid[cy0 - oy:cy1 - oy, cx0 - ox:cx1 - ox]] = np.nan
                    bands[b.name][:, :, cx0:cx1] = part
            for b, writer in zip(blocks, writers):
                band = bands[b.name]
                if band.shape[1]:
                    writer.write_rows(cspan[b.name][0], band, np.isfinite(band).any(0))
            progress((r + 1) / len(windows))

    folder.mkdir(parents=True, exist_ok=True)
    writer_guard(writers, work)
    for w in writers:
        w.close()
    info = {"blocks": [[b.name, b.channels, b.stride] for b in blocks], "created": time.strftime("%Y-%m-%d %H:%M"),
            "tile": tile, "overlap": overlap}
    (folder / "info.json").write_text(json.dumps(info))
    return StageCache(folder, blocks)


def _locked(fn):
    """One call at a time per session: the GDAL dataset and the model are used by one thread at once
    (the panel runs previews and the whole-raster map as background tasks)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return fn(self, *args, **kwargs)

    return wrapper


def _interpolate(win: np.ndarray, axes: tuple) -> np.ndarray:
    """A stage window's bilinear interpolation, rows then columns: (C, len(ly), len(lx))."""
    ly, hy, fy, lx, hx, fx = axes
    rows = win[:, ly] * (1 - fy)[None, :, None] + win[:, hy] * fy[None, :, None]
    return rows[:, :, lx] * (1 - fx)[None, None, :] + rows[:, :, hx] * fx[None, None, :]


def _joined(parts: list, ny: int, nx: int) -> np.ndarray:
    """(F, ny, nx) float32: the parts one after another, the stages interpolated in worker threads."""
    from mpmae_core.runtime.inference.pixel_features import fill_channel_shares

    out = np.empty((sum(p.shape[0] for p, _ in parts), ny, nx), np.float32)

    def fill(j, c0, c1, dst):
        part, axes = parts[j]
        dst[...] = part[c0:c1] if axes is None else _interpolate(part[c0:c1], axes)
    fill_channel_shares(out, [p.shape[0] for p, _ in parts], fill)
    return out


class MappingSession:
    """A raster and an encoder, with the stage-map cache, for live few-shot mapping; or another
    model's embedding read alone (``model_path`` None), or beside the raster (``embedding``)."""

    def __init__(self, raster, model_path, *, device: str = "auto", level: str = "auto", dn_offset="auto",
                 band_map=None, scale: float = 1.0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 cache_dir=None, masks=None, other_dates=(), dates=None, min_valid: int = 1, embedding=None,
                 embedding_kind: Optional[str] = None, log: Callable[[str], None] = lambda m: None):
        """``other_dates``: more dates of the same place; the session then works on the series of
        ``raster`` (its reference date) and them, with the temporal feature sets. ``model_path``
        None: ``raster`` is another model's embedding (``embedding_sources.embedding_input``),
        read alone. ``embedding``: another model's embedding of the place beside the raster; its
        feature sets join the candidates."""
        from mpmae_core.runtime.models.model import OnnxModel
        from mpmae_core.runtime.inference.embedding_sources import embedding_input, with_embedding, without_model
        from mpmae_core.runtime.inference.series import SeriesInput, prepare_source, source_blocks

        self.alone = without_model(model_path)
        self.raster, self.model_path = str(raster), (None if self.alone else str(model_path))
        if self.alone:
            if other_dates or embedding:
                raise ValueError("an embedding read alone takes no other dates and no other embedding: choose a "
                                 "model for a Sentinel-2 raster")
            self.model, meta = None, None
            self.prep = embedding_input(self.raster, embedding_kind, log=log)
        else:
            self.model = OnnxModel(model_path, device=device, log=log)
            meta = self.model.metadata
            if meta.kind != "encoder":
                raise ValueError(f"'{model_path}' is a {meta.kind} model; few-shot mapping needs an encoder")
            sources = [self.raster] + [str(o) for o in other_dates]
            series = dict(series=True, reference=self.raster, dates=dates, min_valid=min_valid) if other_dates else {}
            self.prep = prepare_source(sources if other_dates else self.raster, meta, level=level,
                                       dn_offset=dn_offset, band_map=band_map, log=log, scale=scale, masks=masks,
                                       **series)
            if embedding:
                if other_dates:
                    raise ValueError("another model's embedding goes beside one raster, not yet beside a series")
                self.prep = with_embedding(self.prep, embedding, meta, embedding_kind, log)
        self.is_series = isinstance(self.prep, SeriesInput)
        self.sources = [m.source for m in self.prep.members] if self.is_series else [self.raster]
        if embedding:
            self.sources.append(str(self.prep.embedding.path))
        self.blocks = source_blocks(self.prep, meta)
        self.tile, self.overlap = tile, overlap
        options = {"level": self.prep.level, "dn_offset": self.prep.dn_offset, "scale": scale,
                   "embedding": file_identity(self.prep.embedding.path) if embedding else None,
                   "band_map": band_map, "tile": tile, "overlap": overlap}
        if masks is not None:  # other masks, other encoder inputs: another cache
            options["masks"] = repr(masks)
        if self.is_series:  # every date is part of what the cache was computed from
            options["series"] = {"dates": [str(d) for d in self.prep.dates], "reference": self.prep.reference,
                                 "min_valid": self.prep.min_valid,
                                 "members": [file_identity(src) for src in self.sources]}
        root = Path(cache_dir) if cache_dir else cache_root()
        self.cache = StageCache(root / cache_key(raster, self.model_path, options),
                                [b for b in self.blocks if not self.at_pixels(b)])  # the encoder's maps
        self._maps: dict = {}
        self.train_blocks = self.blocks  # the blocks of the last training data's columns
        self.label_conflicts = None  # the LabelCells of the last labels (their conflict_warning)
        self.lock = threading.RLock()

    @staticmethod
    def at_pixels(block) -> bool:
        """Whether a block is read at its pixels (spectra, a series' spectral statistics, another
        model's embedding) rather than sampled from a cached map of the encoder's."""
        return base_name(block.name) == SPECTRA or is_external(block.name)

    # -- the cache ----------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.cache.complete

    @_locked
    def ensure_cache(self, progress=lambda f: None, cancelled=lambda: False) -> float:
        """Build the cache if needed; returns the seconds it took (0 when it was there)."""
        if self.ready:
            return 0.0
        t = time.perf_counter()
        build_stage_cache(self.prep, self.model, self.cache.folder, self.tile, self.overlap, progress, cancelled,
                          blocks=self.cache.blocks)
        return time.perf_counter() - t

    def _stage(self, name: str) -> np.ndarray:
        if name not in self._maps:  # a few tens of MB per stage for a Sentinel-2 scene of this size
            from mpmae_core.runtime.io.gdal_io import open_raster

            ds = open_raster(self.cache.path(name))
            self._maps[name] = ds.ReadAsArray().astype(np.float32).reshape(ds.RasterCount, ds.RasterYSize,
                                                                            ds.RasterXSize)
        return self._maps[name]

    # -- features -----------------------------------------------------------------------
    def _pixel_maps(self, y0: int, x0: int, h: int, w: int, names) -> dict:
        """The stride-1 blocks ``names`` (spectra, a series' spectral statistics) of a pixel window,
        as (C, h, w) with NaN where they have no data (a series' own date: where it is masked)."""
        from mpmae_core.runtime.inference.pixel_features import REFERENCE_VALID
        from mpmae_core.runtime.inference.raster import read_block

        x, valid = read_block(self.prep, y0, x0, h, w)
        if not self.is_series and not hasattr(self.prep, "maps_runner"):
            x = x.copy()
            x[:, ~valid] = np.nan
            return {SPECTRA: x}
        if not self.is_series:  # another model's embedding, alone or beside the raster's spectra
            maps = self.prep.maps_runner(None, [b for b in self.blocks if b.name in names])(x[None])[0]
            out = {}
            for name in names:
                m = np.array(maps[name], np.float32)
                m[:, ~valid] = np.nan
                out[name] = m
            return out
        runner = self.prep.maps_runner(None, [b for b in self.blocks if b.name in names])
        maps = runner.pixel_maps(*runner.split(x))
        out = {}
        for name in names:
            m = maps[name].copy()
            m[:, ~valid] = np.nan
            if name == SPECTRA:
                m[:, maps[REFERENCE_VALID][0] < 0.5] = np.nan
            out[name] = m
        return out

    @_locked
    def features_at(self, rows: np.ndarray, cols: np.ndarray, blocks=None) -> np.ndarray:
        """(n, F) features of ``blocks`` (default all) at raster pixels; NaN rows without data."""
        blocks = blocks or self.blocks
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        pixel = [b.name for b in blocks if self.at_pixels(b)]
        read = {n: np.full((rows.size, b.channels), np.nan, np.float32) for b in blocks for n in [b.name] if n in pixel}
        if pixel and rows.size:
            keys = (rows // 512) * (self.prep.width // 512 + 1) + cols // 512  # read 512 px squares, no more
            for key in np.unique(keys):
                sel = np.flatnonzero(keys == key)
                r0, c0 = int(rows[sel].min()), int(cols[sel].min())
                maps = self._pixel_maps(r0, c0, int(rows[sel].max()) - r0 + 1, int(cols[sel].max()) - c0 + 1, pixel)
                for name in pixel:
                    read[name][sel] = maps[name][:, rows[sel] - r0, cols[sel] - c0].T
        parts = [read[b.name] if b.name in read else sample_bilinear(self._stage(b.name), b.stride, rows, cols)
                 for b in blocks]
        return np.concatenate(parts, axis=1).astype(np.float32)

    @_locked
    def grid_features(self, ys: np.ndarray, xs: np.ndarray, blocks=None, weight: Optional[np.ndarray] = None,
                      columns: Optional[np.ndarray] = None) -> np.ndarray:
        """(F, len(ys), len(xs)) features on the grid of pixel rows ``ys`` x columns ``xs`` (both
        increasing): the window's bands read once, each stage interpolated separably (rows, then
        columns: the same numbers as :meth:`features_at`, far fewer operations). With ``weight``
        (K, F), an affine head's weights: (K, ...) their sum over the features instead, each block's
        weights applied at its own resolution before interpolating (the same sum up to float
        rounding; the features are never built). With ``columns`` (increasing), only those features
        (what a forest's trees read), each computed as in the whole."""
        from mpmae_core.runtime.inference.pixel_features import bilinear_axis, block_channels, block_slices

        blocks = blocks or self.blocks
        sl = block_slices(blocks)
        total = None
        keep = block_channels(blocks, columns) if columns is not None else {}  # block -> its channels
        if columns is not None:
            blocks = [b for b in blocks if keep[b.name].size]

        def add(part, b):
            nonlocal total
            z = np.tensordot(weight[:, sl[b.name]].astype(np.float32), part, axes=(1, 0))
            total = z if total is None else total + z
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        pixel = [b.name for b in blocks if self.at_pixels(b)]
        maps = {}
        if pixel:
            y0, x0 = int(ys[0]), int(xs[0])
            maps = self._pixel_maps(y0, x0, int(ys[-1]) - y0 + 1, int(xs[-1]) - x0 + 1, pixel)
        parts = []  # without weights: (pixel part, None) or (stage window, its bilinear rows and columns)
        for b in blocks:
            if b.name in maps:
                part = maps[b.name][:, ys - int(ys[0])][:, :, xs - int(xs[0])]
                if b.name in keep:
                    part = part[keep[b.name]]
                if weight is None:
                    parts.append((part, None))
                else:
                    add(part, b)
                continue
            m = self._stage(b.name)
            ly, hy, fy = bilinear_axis(m.shape[1], b.stride, ys)
            lx, hx, fx = bilinear_axis(m.shape[2], b.stride, xs)
            r0, r1 = int(ly.min()), int(hy.max()) + 1
            c0, c1 = int(lx.min()), int(hx.max()) + 1
            win = m[:, r0:r1, c0:c1] if b.name not in keep else m[keep[b.name], r0:r1, c0:c1]
            if weight is None:  # interpolated below, in worker threads
                parts.append((win, (ly - r0, hy - r0, fy, lx - c0, hx - c0, fx)))
                continue
            win = np.tensordot(weight[:, sl[b.name]].astype(np.float32), win, axes=(1, 0))  # K scores per cell
            part = _interpolate(win, (ly - r0, hy - r0, fy, lx - c0, hx - c0, fx))
            total = part if total is None else total + part
        if weight is not None:
            return total.astype(np.float32, copy=False)
        return _joined(parts, len(ys), len(xs))

    def label_pixels(self, features, buffer_m: float = 0.0):
        """(rows, cols, classes, groups) of labelled features on the raster's grid."""
        from mpmae_core.runtime.io.labels import label_cells

        cells = label_cells(features, self.prep.geotransform, self.prep.width, self.prep.height, buffer_m)
        self.label_conflicts = cells  # what the caller warns about: places labelled with two classes
        return cells.rows, cells.cols, cells.classes, cells.groups

    # -- heads --------------------------------------------------------------------------
    @_locked
    def training_data(self, features, max_per_class: int = 1000, buffer_m: float = 0.0, positions: bool = False):
        """(x, y, groups) of the labelled pixels, and their (rows, cols) with ``positions``."""
        from mpmae_core.runtime.io.labels import cap_per_class_grouped

        rows, cols, y, groups = self.label_pixels(features, buffer_m)
        keep = cap_per_class_grouped(y, groups, max_per_class)
        rows, cols, y, groups = rows[keep], cols[keep], y[keep], groups[keep]
        x = self.features_at(rows, cols)
        x, self.train_blocks = self.usable(x)  # the blocks of these columns
        ok = np.isfinite(x).all(1)
        if positions:
            return x[ok], y[ok], groups[ok], (rows[ok], cols[ok])
        return x[ok], y[ok], groups[ok]

    def usable(self, x: np.ndarray) -> tuple:
        """(x, blocks) for a head: on a series whose reference date is masked at a labelled pixel
        that other dates see, the temporal blocks only (as ``train_pixel_head`` decides)."""
        from mpmae_core.runtime.inference.pixel_features import without_masked_reference

        if not self.is_series:
            return x, self.blocks
        x, blocks, _ = without_masked_reference(x, self.blocks)
        return x, blocks

    @_locked
    def quick_head(self, features, class_names, class_colours=None, buffer_m: float = 0.0):
        """The preview head (PREVIEW_CANDIDATE) on every labelled pixel, and its 5-fold grouped CV."""
        from mpmae_core.runtime.heads.pixelhead import Candidate, PixelHead, score_candidates

        x, y, groups = self.training_data(features, buffer_m=buffer_m)
        blocks = self.train_blocks
        fs, clf, l2 = PREVIEW_CANDIDATE
        if self.is_series:  # a series: its dates, robust to clouds
            fs = "t-" + fs
        elif any(is_external(b.name) for b in blocks):  # another model's embedding: it, and the raster's beside
            fs = "embedding" if self.alone else "all"
        cand = Candidate(fs, clf, l2)
        present = sorted(set(y.tolist()))
        if len(present) < 2:
            raise ValueError("label at least two classes to see a map")
        sub, cols = feature_set_columns(blocks, cand.feature_set)
        head = PixelHead.fit(x[:, cols], y, sub, cand, list(class_names), class_colours)
        cv = None
        counts = [len(set(groups[y == c].tolist())) for c in present]
        if min(counts) >= 2:
            cv = score_candidates(x, y, groups, blocks, list(class_names), [cand], folds=5)[0]
        return head, cv

    @_locked
    def preview(self, head, window: Optional[tuple] = None, max_pixels: int = 250_000) -> dict:
        """Class probabilities of a pixel window (x0, y0, w, h; default the raster) on a regular grid
        of at most ``max_pixels``: {"probs" (K, gh, gw), "valid", "geotransform", "step"}."""
        x0, y0, w, h = window or (0, 0, self.prep.width, self.prep.height)
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        w, h = min(int(w), self.prep.width - x0), min(int(h), self.prep.height - y0)
        if w <= 0 or h <= 0:
            raise ValueError("the window does not overlap the raster")
        step = max(1, int(np.ceil(np.sqrt(w * h / max_pixels))))
        ys = np.arange(y0, y0 + h, step)
        xs = np.arange(x0, x0 + w, step)
        k = len(head.class_names)
        probs = np.full((k, len(ys), len(xs)), np.nan, np.float32)
        valid = np.zeros((len(ys), len(xs)), bool)
        linear = head.weight is not None and not head.members  # its weights at each block's resolution
        used = None if linear else head.used_columns()  # a forest's: only what its trees read
        chunk = max(1, 2_000_000 // max(1, (k if linear else head.n_features) * len(xs)))  # bounded memory
        for i in range(0, len(ys), chunk):
            if linear:
                logits = self.grid_features(ys[i:i + chunk], xs, head.blocks, weight=head.weight) + \
                    head.bias.astype(np.float32)[:, None, None]
                ok = np.isfinite(logits).all(0)
                probs[:, i:i + chunk] = np.where(ok[None], softmax(np.where(ok[None], logits, 0.0), axis=0), np.nan)
                valid[i:i + chunk] = ok
                continue
            feats = self.grid_features(ys[i:i + chunk], xs, head.blocks, columns=used)
            flat = feats.reshape(feats.shape[0], -1).T
            ok = np.isfinite(flat).all(1)
            part = np.full((k, flat.shape[0]), np.nan, np.float32)
            if ok.any():
                x = np.zeros((int(ok.sum()), head.n_features), np.float32)  # columns no tree reads stay 0
                x[:, used] = flat[ok]
                part[:, ok] = head.probabilities(x).T
            probs[:, i:i + chunk] = part.reshape(k, -1, len(xs))
            valid[i:i + chunk] = ok.reshape(-1, len(xs))
        gt = self.prep.geotransform
        out_gt = (gt[0] + x0 * gt[1], gt[1] * step, 0.0, gt[3] + y0 * gt[5], 0.0, gt[5] * step)
        return {"probs": probs, "valid": valid, "geotransform": out_gt, "step": step, "origin": (x0, y0)}

    @_locked
    def map_to_file(self, head, output, *, rows: int = 256, progress: Callable[[float], None] = lambda f: None,
                    cancelled: Callable[[], bool] = lambda: False) -> dict:
        """The whole raster's class map with ``head`` from the cached features (no encoder run), written
        as ``segment`` writes it: uint8, 255 = no data, class names, colours and a .qml; complete or not
        at all (a cancel leaves nothing)."""
        from mpmae_core.runtime.inference.predict import check_outputs, writer_guard
        from mpmae_core.runtime.inference.raster import RasterWriter
        from mpmae_core.runtime.io.styles import paletted_qml, style_path

        check_outputs({"class map": output}, self.sources + ([self.model_path] if self.model_path else []))
        if not self.ready:
            raise ValueError("the encoder's features are not cached yet: wait until they are computed")
        prep, names, colours = self.prep, list(head.class_names), [list(c) for c in head.class_colours]
        writer = RasterWriter(output, prep.width, prep.height, 1, "uint8", prep.geotransform, prep.projection,
                              nodata=255, descriptions=["few-shot"], class_names=names, class_colours=colours)
        t0, counts = time.time(), np.zeros(len(names), np.int64)

        def run():
            for y in range(0, prep.height, rows):
                if cancelled():
                    raise Cancelled("cancelled by the user; no map was written")
                n = min(rows, prep.height - y)
                pv = self.preview(head, (0, y, prep.width, n), max_pixels=prep.width * n)
                classes = np.where(pv["valid"], np.nan_to_num(pv["probs"]).argmax(0), 255).astype(np.uint8)
                counts[:] += np.bincount(classes[pv["valid"]], minlength=len(names))[:len(names)]
                writer.write_rows(y, classes[None], pv["valid"])
                progress((y + n) / prep.height)

        writer_guard([writer], run)
        writer_guard([writer], lambda: writer.close({style_path(output): paletted_qml(names, colours)}))
        return {"output": str(output), "classes": names, "pixels": counts.tolist(), "seconds": time.time() - t0}

    @staticmethod
    def suggest(preview: dict, n: int = 10, min_distance_px: int = 0) -> list:
        """Map coordinates (x, y) of the ``n`` least confident valid places of a preview (lowest
        top-class probability), spread out: no two closer than ``min_distance_px`` grid cells."""
        probs, valid, gt = preview["probs"], preview["valid"], preview["geotransform"]
        conf = np.full(valid.shape, np.inf)
        conf[valid] = probs[:, valid].max(axis=0)
        order = np.argsort(conf, axis=None)
        picked = []
        for flat in order:
            if not np.isfinite(conf.flat[flat]) or len(picked) >= n:
                break
            r, c = divmod(int(flat), conf.shape[1])
            if all(max(abs(r - pr), abs(c - pc)) > min_distance_px for pr, pc, _ in picked):
                picked.append((r, c, float(conf.flat[flat])))
        return [(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5], p) for r, c, p in picked]

    @_locked
    def train_full_head(self, features, class_names, output, *, class_colours=None, report_path=None,
                        buffer_m: float = 0.0, cancelled=lambda: False, log=lambda m: None) -> dict:
        """The self-choosing head of ``train_head`` (every candidate cross-validated) on the cached
        features, saved as ONNX (and its HTML report)."""
        from mpmae_core.runtime.io.files import check_output
        from mpmae_core.runtime.heads.pixelhead import choose_fit_and_write

        check_output(output, self.sources + ([self.model_path] if self.model_path else []), "head", (".onnx",),
                     "an ONNX model")
        from mpmae_core.runtime.heads.pixelhead import candidates, offered_feature_sets

        x, y, groups, positions = self.training_data(features, buffer_m=buffer_m, positions=True)
        blocks = self.train_blocks
        if self.is_series and len(blocks) < len(self.blocks):
            log(f"the reference date {self.prep.dates[self.prep.reference]} is masked at a labelled pixel: only the "
                "temporal feature sets are candidates")
        res = choose_fit_and_write(x, y, groups, blocks, class_names, output, self.model, self.model_path,
                                   class_colours=class_colours, report_path=report_path, cancelled=cancelled,
                                   cands=candidates(offered_feature_sets(blocks)), positions=positions,
                                   pixel_size_m=abs(self.prep.geotransform[1]),
                                   embedding=self.prep if self.alone else None, log=log)
        log(res["text"])
        return res


    @_locked
    def compare(self, features, class_names, *, validation=None, report=None, buffer_m: float = 0.0,
                cancelled=lambda: False, log=lambda m: None) -> dict:
        """``heads.compare`` on the cached features: every feature source the session offers on the
        labels, and with a ``validation`` sample (a points file with reference classes) each
        source's head assessed at its points. ``report``: the HTML table (whole or not at all)."""
        from mpmae_core.runtime.heads.compare import best_row, compare_sets, html_text, read_validation, table_text
        from mpmae_core.runtime.io.files import atomic_write_text, check_output

        if report:
            check_output(report, self.sources, "report", (".html", ".htm"), "an HTML page")
        x, y, groups, positions = self.training_data(features, buffer_m=buffer_m, positions=True)
        blocks = self.train_blocks
        val = vx = None
        if validation:
            p = self.prep
            val = read_validation(validation, "reference", p.geotransform, p.width, p.height, p.projection,
                                  list(class_names), log)
            vx = self.features_at(val.rows, val.cols, blocks) if val.rows.size else None
            if vx is None:
                val = None
                log("no validation point has a reference class yet: the table holds cross-validation only")
        rows = compare_sets(x, y, groups, blocks, list(class_names), positions=positions,
                            pixel_size_m=abs(self.prep.geotransform[1]), validation=val, validation_x=vx,
                            cancelled=cancelled, log=log)
        if report:
            atomic_write_text(report, html_text(rows, "Which features map this place best?"))
        return {"rows": rows, "text": table_text(rows), "best": rows[best_row(rows)[0]]["title"],
                "by": best_row(rows)[1], "report": str(report or "")}


__all__ = ["MappingSession", "StageCache", "build_stage_cache", "cache_root", "PREVIEW_CANDIDATE", "Block"]


def write_preview(preview: dict, head, folder, projection: str, stem: str = "preview") -> tuple[Path, Path]:
    """The preview as two small GeoTIFFs in ``folder``: the class map (uint8 with names, colours
    and a .qml) and the confidence (top-class probability, with a colour ramp)."""
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.styles import paletted_qml, pseudocolor_qml, style_path

    folder = Path(folder)
    probs, valid, gt = preview["probs"], preview["valid"], preview["geotransform"]
    k, h, w = probs.shape
    classes = np.where(valid, np.nan_to_num(probs).argmax(0), 255).astype(np.uint8)
    conf = np.where(valid, np.nanmax(np.where(valid[None], probs, -1), axis=0), np.nan).astype(np.float32)
    class_path, conf_path = folder / f"{stem}_classes.tif", folder / f"{stem}_confidence.tif"
    cw = RasterWriter(class_path, w, h, 1, "uint8", gt, projection, nodata=255, descriptions=["class"],
                      class_names=head.class_names, class_colours=head.class_colours)
    cw.write_rows(0, classes[None])
    cw.close({style_path(class_path): paletted_qml(head.class_names, head.class_colours)})
    fw = RasterWriter(conf_path, w, h, 1, "float32", gt, projection, nodata=float("nan"), descriptions=["confidence"])
    fw.write_rows(0, conf[None])
    lo = float(np.nanmin(conf)) if np.isfinite(conf).any() else 0.0
    fw.close({style_path(conf_path): pseudocolor_qml(lo, 1.0)})
    return class_path, conf_path
