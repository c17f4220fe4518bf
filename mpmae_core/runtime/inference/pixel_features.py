"""Per-pixel features: a pixel's own spectra joined with the encoder's maps at every scale.

A pixel's feature vector is the concatenation of *blocks*, always in this order:

- ``spectra``: its bands, normalised by the model's per-band statistics (the encoder's input),
  never normalised across bands, so brightness and contrast stay in;
- each encoder output (``stage1``, ``stage2``, ``stage3`` and ``embedding``, at strides p/8, p/4,
  p/2 and p), upsampled to the pixel grid bilinearly with half-pixel centres (hypercolumns). With
  patch size 8 the first stage is already at 10 m.

Within a raster, every pixel takes its features from its *owner* tile (``tiling.axis_owner``),
so a pixel's vector is defined once: the same under a label, in a class map and in an exported
feature raster. Heads apply to features tile by tile, a few rows at a time, so memory stays
bounded by the tile, not by the raster or the number of channels.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

SPECTRA = "spectra"
#: The feature sets a head chooses from on one raster: block selections by role.
FEATURE_SETS = ("spectra", "encoder", "both")
#: On a series of dates (``series``), also the temporal blocks ("spectra:median", "stage1:median", ...):
#: the same roles over the valid dates instead of the reference date alone.
TEMPORAL_FEATURE_SETS = ("t-spectra", "t-encoder", "t-both")
#: On a change pair (``change``), also what changed alone: the blocks of after minus before.
DIFFERENCE_FEATURE_SETS = ("d-spectra", "d-encoder", "d-both")
#: With another model's embedding (``embedding_sources``): it alone, with the spectra, with MMEarth's maps.
EXTERNAL_FEATURE_SETS = ("embedding", "embedding+spectra", "embedding+encoder")
EXTERNAL_PREFIX = "ext-"  # the name of another model's embedding block: "ext-alphaearth"
#: Every feature set a head may name ("all": the single-date and the temporal blocks, for an ensemble).
ALL_FEATURE_SETS = FEATURE_SETS + TEMPORAL_FEATURE_SETS + DIFFERENCE_FEATURE_SETS + EXTERNAL_FEATURE_SETS + ("all",)
CHANGE_SUFFIX = "@change"  # the name ending of a change pair's difference blocks
#: Not a block: a map entry (1, h, w) telling where the reference date of a series is valid.
REFERENCE_VALID = "_reference_valid"


@dataclass(frozen=True)
class Block:
    name: str  # "spectra" or an encoder output name
    channels: int
    stride: int  # pixels per cell of the block's map (1 for spectra)


def encoder_blocks(meta) -> list[Block]:
    """Every block an encoder offers, spectra first, then its outputs from fine to coarse."""
    outs = sorted(meta.encoder_outputs(), key=lambda o: o[2])
    return [Block(SPECTRA, len(meta.input_bands), 1)] + [Block(n, int(c), int(s)) for n, c, s in outs]


def is_temporal(name: str) -> bool:
    """Whether a block is a temporal statistic ("<block>:<statistic>") of a series."""
    return ":" in name


def reference_own(name: str) -> bool:
    """Whether a block belongs to one date of a series (its reference date's own spectra and maps),
    not to every date (a temporal statistic) nor to none (another model's annual embedding)."""
    return not is_temporal(name) and not is_external(name)


def base_name(name: str) -> str:
    """The encoder output (or spectra) a block comes from: "stage1:median" (a temporal statistic)
    and "stage1@after" (one side of a change pair) -> "stage1"."""
    return name.split("@", 1)[0].split(":", 1)[0]


def feature_set_blocks(blocks: Sequence[Block], feature_set: str) -> list[Block]:
    """The blocks of a feature set: 'spectra', 'encoder' (every encoder output) or 'both' of the
    one raster (or the reference date of a series, or both sides of a change pair); 't-spectra',
    't-encoder', 't-both' the same roles over a series' dates; 'd-spectra', 'd-encoder', 'd-both'
    a change pair's differences alone; 'all' every block."""
    if feature_set not in ALL_FEATURE_SETS:
        raise ValueError(f"unknown feature set {feature_set!r}; choose one of {', '.join(ALL_FEATURE_SETS)}")
    if feature_set in EXTERNAL_FEATURE_SETS:
        ext = [b for b in blocks if is_external(b.name)]
        if not ext:
            return []
        beside = feature_set.partition("+")[2]
        return [b for b in blocks if is_external(b.name) or
                (beside and not is_temporal(b.name) and (base_name(b.name) == SPECTRA) == (beside == "spectra"))]
    blocks = [b for b in blocks if feature_set == "all" or not is_external(b.name)]
    prefix = feature_set[:2] if feature_set[:2] in ("t-", "d-") else ""
    role = feature_set[len(prefix):]
    out = []
    for b in blocks:
        if role != "all" and is_temporal(b.name) != (prefix == "t-"):
            continue
        if prefix == "d-" and not b.name.endswith(CHANGE_SUFFIX):
            continue
        spectral = base_name(b.name) == SPECTRA
        if role in ("both", "all") or (role == "spectra") == spectral:
            out.append(b)
    return out


def is_external(name: str) -> bool:
    """Whether a block is another model's embedding (``embedding_sources``)."""
    return base_name(name).startswith(EXTERNAL_PREFIX)


def union_feature_set(sets: Sequence[str]) -> str:
    """The smallest feature set holding every one of ``sets`` (an ensemble's members)."""
    sets = set(sets)
    if len(sets) == 1:
        return sets.pop()
    if sets & set(EXTERNAL_FEATURE_SETS):
        return "all"
    if all(not s.startswith("t-") and s != "all" for s in sets):
        return "both"  # which holds the differences of a change pair too
    if all(s.startswith("t-") for s in sets):
        return "t-both"
    return "all"


def blocks_by_name(available: Sequence[Block], names: Sequence[str], channels: Optional[Sequence[int]] = None,
                   what: str = "the head") -> list[Block]:
    """The named blocks, checked against what a head expects; a ValueError names the mismatch."""
    by_name = {b.name: b for b in available}
    missing = [n for n in names if n not in by_name]
    external = [n[len(EXTERNAL_PREFIX):] for n in missing if is_external(n)]
    if external:
        raise ValueError(f"{what} was trained with another model's embedding ({', '.join(external)}): give it the "
                         "embedding of this place too (--embedding on the command line)")
    temporal = [n for n in missing if is_temporal(n)]
    if temporal:
        raise ValueError(f"{what} was trained on a series of dates (it reads {', '.join(temporal)}): "
                         "give it a series of the same place (several dates: a quoted glob, paths separated by "
                         "commas or a text file of paths; --series for a folder of them)")
    if missing:
        raise ValueError(f"{what} needs the encoder output(s) {', '.join(missing)}, which this encoder model does not "
                         f"give (it gives {', '.join(b.name for b in available if b.name != SPECTRA)}): export the "
                         "encoder again with `python -m training.export`, or train the head on this encoder")
    out = [by_name[n] for n in names]
    if channels is not None:
        for b, c in zip(out, channels):
            if b.channels != int(c):
                raise ValueError(f"{what} expects {c} channels of '{b.name}' but the encoder gives {b.channels}: "
                                 "the head was trained on another encoder; train it again on this one")
    return out


def block_slices(blocks: Sequence[Block]) -> dict:
    """name -> slice of the block's channels in the joined feature vector."""
    out, start = {}, 0
    for b in blocks:
        out[b.name] = slice(start, start + b.channels)
        start += b.channels
    return out


def block_channels(blocks: Sequence[Block], columns: np.ndarray) -> dict:
    """name -> the block's own channel indices among ``columns`` (indices into the joined features
    of ``blocks``, increasing): what a head that reads only those columns needs of each block."""
    columns, slices = np.asarray(columns, np.int64), block_slices(blocks)
    return {name: columns[(columns >= sl.start) & (columns < sl.stop)] - sl.start for name, sl in slices.items()}


def block_columns(blocks: Sequence[Block], keep: Callable[[Block], bool]) -> np.ndarray:
    """The columns, in the joined feature vector of ``blocks``, of the blocks ``keep`` accepts."""
    sl = block_slices(blocks)
    return np.concatenate([np.arange(sl[b.name].start, sl[b.name].stop) for b in blocks if keep(b)] or
                          [np.zeros(0, np.int64)])


def without_masked_reference(x: np.ndarray, blocks: Sequence[Block]) -> tuple[np.ndarray, list, int]:
    """(x, blocks, lost) for a head on a series' labelled pixels ``x`` (n, F): when the reference
    date's own blocks lack data at ``lost`` > 0 pixels that the temporal blocks see (it is cloudy
    there), the temporal columns and blocks alone; else ``x`` and ``blocks`` as they are."""
    single = block_columns(blocks, lambda b: reference_own(b.name))
    temporal = block_columns(blocks, lambda b: not reference_own(b.name))  # and another model's embedding
    if not len(single) or not len(temporal):
        return x, list(blocks), 0
    seen = np.isfinite(x[:, temporal]).all(1)
    lost = int((seen & ~np.isfinite(x[:, single]).all(1)).sum())
    if not lost:
        return x, list(blocks), 0
    return x[:, temporal], [b for b in blocks if not reference_own(b.name)], lost


def feature_set_columns(blocks: Sequence[Block], feature_set: str) -> tuple[list[Block], np.ndarray]:
    """The blocks of a feature set and their columns in the joined feature vector of ``blocks``."""
    sub = feature_set_blocks(blocks, feature_set)
    sl = block_slices(blocks)
    return sub, np.concatenate([np.arange(sl[b.name].start, sl[b.name].stop) for b in sub])


# ----------------------------------------------------------------------------- bilinear (pure)

def bilinear_axis(n: int, factor: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fine pixels ``positions`` over a coarse axis of ``n`` cells of ``factor`` pixels: the
    two coarse neighbours and the weight of the second (half-pixel centres, edges clamped)."""
    c = (np.asarray(positions, np.float64) + 0.5) / factor - 0.5
    lo = np.floor(c)
    frac = (c - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    return np.clip(lo, 0, n - 1), np.clip(lo + 1, 0, n - 1), frac


def upsample_rows(x: np.ndarray, factor: int, r0: int, r1: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Rows r0..r1-1 of the bilinear upsampling of (C, h, w) by ``factor``: (C, r1 - r0, w * factor),
    written into ``out`` when given (no temporary of the output's size is made)."""
    if factor == 1:
        if out is None:
            return x[:, r0:r1]
        out[...] = x[:, r0:r1]
        return out
    ly, hy, fy = bilinear_axis(x.shape[1], factor, np.arange(r0, r1))
    lx, hx, fx = bilinear_axis(x.shape[2], factor, np.arange(x.shape[2] * factor))
    rows = x[:, ly] * (1 - fy)[None, :, None] + x[:, hy] * fy[None, :, None]
    if out is None:
        out = np.empty((x.shape[0], r1 - r0, x.shape[2] * factor), np.float32)
    # out = rows[..., lx] * (1 - fx) + rows[..., hx] * fx, the same float operations in the same order
    np.take(rows, lx, axis=2, out=out)
    out *= (1 - fx)[None, None, :]
    high = np.take(rows, hx, axis=2)
    high *= fx[None, None, :]
    out += high
    return out


def upsample_bilinear(x: np.ndarray, factor: int) -> np.ndarray:
    """(C, h, w) -> (C, h*f, w*f), bilinear with half-pixel centres (edges clamped)."""
    return upsample_rows(x, factor, 0, x.shape[1] * factor)


def sample_bilinear(x: np.ndarray, factor: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(n, C): the values ``upsample_bilinear(x, factor)`` has at pixels (ys, xs), computed only there
    (the same float operations in the same order, so the numbers are identical)."""
    if factor == 1:
        return x[:, ys, xs].T.copy()
    ly, hy, fy = bilinear_axis(x.shape[1], factor, ys)
    lx, hx, fx = bilinear_axis(x.shape[2], factor, xs)
    a = x[:, ly, lx] * (1 - fy)[None] + x[:, hy, lx] * fy[None]
    b = x[:, ly, hx] * (1 - fy)[None] + x[:, hy, hx] * fy[None]
    return (a * (1 - fx)[None] + b * fx[None]).T.copy()


def hypercolumns(spectra: np.ndarray, maps: dict, blocks: Sequence[Block], r0: int, r1: int,
                 columns: Optional[np.ndarray] = None, buffer: Optional[np.ndarray] = None) -> np.ndarray:
    """(F, r1 - r0, w) features of rows r0..r1-1 of a tile: ``spectra`` (C, h, w) is the tile's
    normalised input, ``maps`` name -> (c, h/stride, w/stride) the encoder's outputs for it. With
    ``columns`` (increasing), only those features, each computed as in the whole. Each block is
    written straight into its rows of the result, in worker threads (``fill_channel_shares``); with
    ``buffer`` (float32, at least F * (r1 - r0) * w values), the result is a view of its start."""
    if columns is not None:
        spectra, maps, blocks = select_columns(spectra, maps, blocks, columns)
    # (copy its rows, source): the tile's spectra, else an encoder map (or, in a series, one at stride 1)
    parts = [(True, spectra) if b.name == SPECTRA and SPECTRA not in maps else
             (False, np.asarray(maps[b.name], np.float32)) for b in blocks]
    shape = (sum(src.shape[0] for _, src in parts), r1 - r0, spectra.shape[2])
    size = shape[0] * shape[1] * shape[2]
    if buffer is not None and buffer.dtype == np.float32 and buffer.size >= size:
        out = buffer.reshape(-1)[:size].reshape(shape)  # contiguous: no page faults again
    else:
        out = np.empty(shape, np.float32)

    def fill(j, c0, c1, dst):
        copy, src = parts[j]
        if copy:
            dst[...] = src[c0:c1, r0:r1]
        else:
            upsample_rows(src[c0:c1], blocks[j].stride, r0, r1, out=dst)
    fill_channel_shares(out, [src.shape[0] for _, src in parts], fill)
    return out


def select_columns(spectra: np.ndarray, maps: dict, blocks: Sequence[Block],
                   columns: np.ndarray) -> tuple[np.ndarray, dict, list[Block]]:
    """The tile's spectra, maps and blocks cut to ``columns`` (increasing; blocks without one
    dropped): ``hypercolumns`` of the result equals ``hypercolumns(..., columns)``. A head that
    reads a few columns cuts a tile once, not every chunk of its rows."""
    keep = block_channels(blocks, columns)
    maps, kept = dict(maps), []
    for b in blocks:
        if not keep[b.name].size:
            continue
        kept.append(Block(b.name, int(keep[b.name].size), b.stride))
        if b.name == SPECTRA and SPECTRA not in maps:
            spectra = spectra[keep[b.name]]
        else:
            maps[b.name] = maps[b.name][keep[b.name]]
    return spectra, maps, kept


# ----------------------------------------------------------------------------- worker threads

#: Threads that build feature columns: numpy's copies and arithmetic release the GIL, and the model
#: does not run while the columns of its input are built, so the cores would otherwise wait.
COLUMN_THREADS = max(1, min(4, os.cpu_count() or 1))
_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


def column_threads(values: int) -> int:
    """Threads worth starting for ``values`` output values (a small chunk is not worth the hand-off)."""
    return max(1, min(COLUMN_THREADS, values // 262_144))


def fill_channel_shares(out: np.ndarray, sizes: Sequence[int],
                        fill: Callable[[int, int, int, np.ndarray], None]) -> None:
    """``out`` (F, ...) is parts of ``sizes`` channels one after another; ``fill(j, c0, c1, dst)``
    writes channels c0..c1-1 of part j into ``dst`` (their place in ``out``). In worker threads, each
    a share of every part's channels, so the numbers do not depend on the threads."""
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def share(which):
        i, n = which
        for j, size in enumerate(sizes):
            c0, c1 = size * i // n, size * (i + 1) // n
            if c0 < c1:
                fill(j, c0, c1, out[starts[j] + c0:starts[j] + c1])
    in_threads(share, column_threads(out.size))


def in_threads(fn: Callable[[tuple[int, int]], None], n: int) -> None:
    """``fn((i, n))`` for i < n: share 0 in this thread, the rest in the process's worker threads.
    Each share writes only its own part of the result, so the numbers do not depend on ``n``."""
    global _pool
    if n <= 1:
        fn((0, 1))
        return
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=COLUMN_THREADS - 1, thread_name_prefix="mmearth-columns")
        pending = [_pool.submit(fn, (i, n)) for i in range(1, n)]
    try:
        fn((0, n))
    finally:
        for f in pending:  # every share finishes (or fails) before the result is used or dropped
            f.exception()
    for f in pending:
        f.result()


def sample_hypercolumns(spectra: np.ndarray, maps: dict, blocks: Sequence[Block], ys: np.ndarray,
                        xs: np.ndarray) -> np.ndarray:
    """(n, F): :func:`hypercolumns` at pixels (ys, xs) of a tile, computed only there."""
    parts = []
    for b in blocks:
        if b.name == SPECTRA and SPECTRA not in maps:
            parts.append(spectra[:, ys, xs].T)
        else:
            parts.append(sample_bilinear(maps[b.name], b.stride, ys, xs))
    return np.concatenate(parts, axis=1).astype(np.float32, copy=False)


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rows_per_chunk(features: int, width: int, budget: int = 16_000_000) -> int:
    """Tile rows whose joined features fit in ``budget`` floats."""
    return max(1, min(width, budget // max(1, features * width)))


# ----------------------------------------------------------------------------- over a raster

class EncoderMaps:
    """The encoder outputs a set of blocks needs, for batches of tiles (nothing runs for spectra only)."""

    def __init__(self, model, blocks: Sequence[Block]):
        self.model = model
        self.names = [b.name for b in blocks if b.name != SPECTRA]
        if self.names and model is None:
            raise ValueError("encoder features need an encoder model")

    def __call__(self, x: np.ndarray) -> list[dict]:
        """(B, C, th, tw) normalised -> per tile: name -> (c, h, w)."""
        if not self.names:
            return [{} for _ in range(x.shape[0])]
        outs = self.model.run_outputs(x, self.names)
        return [{n: o[i] for n, o in zip(self.names, outs)} for i in range(x.shape[0])]


def maps_runner(prep, model, blocks: Sequence[Block]):
    """What gives a tile's maps: the encoder on one raster, or the series' own runner (its dates
    reduced, ``series.SeriesMaps``) when ``prep`` is a series."""
    own = getattr(prep, "maps_runner", None)
    return own(model, blocks) if own is not None else EncoderMaps(model, blocks)


def check_maps(maps: dict, blocks: Sequence[Block], th: int, tw: int) -> None:
    """Each map is the tile divided by its stride: anything else would misplace the hypercolumns."""
    for b in blocks:
        if b.name == SPECTRA:
            continue
        m = maps[b.name]
        if m.shape[1:] != (th // b.stride, tw // b.stride) or m.shape[0] != b.channels:
            raise ValueError(f"the encoder output '{b.name}' is {tuple(m.shape)} for a {th} x {tw} px tile; expected "
                             f"({b.channels}, {th // b.stride}, {tw // b.stride}). The model's metadata does not fit "
                             "its graph: export it again")


def sample_features(prep, model, blocks: Sequence[Block], rows: np.ndarray, cols: np.ndarray,
                    tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                    progress: Callable[[float], None] = lambda f: None,
                    cancelled: Callable[[], bool] = lambda: False) -> np.ndarray:
    """(n, F) features at raster pixels (rows, cols), each from its owner tile; NaN rows where the
    pixel has no data. Only tiles owning a requested pixel are read and run."""
    from mpmae_core.runtime.io.files import Cancelled
    from mpmae_core.runtime.inference.raster import read_block
    from mpmae_core.runtime.inference.tiling import axis_owner, raster_windows

    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    total = sum(b.channels for b in blocks)
    out = np.full((rows.size, total), np.nan, np.float32)
    if rows.size == 0:
        return out
    patch = model.metadata.patch_size if model is not None else 1
    windows = raster_windows(prep.height, prep.width, tile, overlap, patch)
    th, tw = windows[0][0].h, windows[0][0].w
    ty = axis_owner(rows, [r[0].y for r in windows], th)
    tx = axis_owner(cols, [w.x for w in windows[0]], tw)
    runner = maps_runner(prep, model, blocks)
    single = block_columns(blocks, lambda bl: reference_own(bl.name))
    owners = sorted(set(zip(ty.tolist(), tx.tolist())))
    for i, (a, b) in enumerate(owners):
        if cancelled():
            raise Cancelled("cancelled by the user; no output was written")
        win = windows[a][b]
        sel = np.flatnonzero((ty == a) & (tx == b))
        x, valid = read_block(prep, win.y, win.x, th, tw)
        maps = runner(x[None])[0]
        check_maps(maps, blocks, th, tw)
        ys, xs = rows[sel] - win.y, cols[sel] - win.x
        feats = sample_hypercolumns(x, maps, blocks, ys, xs)
        feats[~valid[ys, xs]] = np.nan
        if REFERENCE_VALID in maps:  # a series: the reference date's own features only where it is valid
            feats[np.ix_(maps[REFERENCE_VALID][0, ys, xs] < 0.5, single)] = np.nan
        out[sel] = feats
        progress((i + 1) / len(owners))
    return out


def linear_weights(head, n_features: int, seed: int = 0) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(W (K, F), b (K,)) when the head's logits are an affine function of its features, read by
    running it on the unit vectors (and zero), and confirmed on random features; else None."""
    probe = np.zeros((1, n_features, 1, n_features + 1), np.float32)
    probe[0, np.arange(n_features), 0, np.arange(n_features)] = 1.0
    try:
        out = np.asarray(head.run(probe), np.float64)[0, :, 0]
    except Exception:  # noqa: BLE001 - a head that cannot take this shape is applied the general way
        return None
    bias = out[:, n_features]
    weight = out[:, :n_features] - bias[:, None]
    x = np.random.default_rng(seed).standard_normal((1, n_features, 1, 8)).astype(np.float32)
    got = np.asarray(head.run(x), np.float64)[0, :, 0]
    want = weight @ x[0, :, 0].astype(np.float64) + bias[:, None]
    scale = max(1.0, float(np.abs(want).max()))
    if not np.allclose(got, want, rtol=0, atol=1e-4 * scale):
        return None
    return weight, bias


def linear_logits(weight: np.ndarray, bias: np.ndarray, spectra: np.ndarray, maps: dict,
                  blocks: Sequence[Block]) -> np.ndarray:
    """(K, h, w) logits of an affine head on a tile's hypercolumns, without building them: each
    block's weights applied at the block's own resolution, the K scores upsampled (bilinear
    upsampling is linear and its weights sum to 1, so this equals the head on the upsampled
    features up to float rounding), plus the bias. NaN where a feature has none."""
    sl = block_slices(blocks)
    h, w = spectra.shape[1:]
    total = np.zeros((weight.shape[0], h, w), np.float32)
    for b in blocks:
        src = spectra if b.name == SPECTRA and SPECTRA not in maps else maps[b.name]
        z = np.tensordot(weight[:, sl[b.name]].astype(np.float32), np.asarray(src, np.float32), axes=(1, 0))
        total += upsample_bilinear(z, b.stride) if b.stride > 1 else z
    return total + bias.astype(np.float32)[:, None, None]


class PixelHeadRunner:
    """Class probabilities per pixel of a batch of tiles: features, then the head, a few rows at a
    time; an affine head (logistic regression) is applied block by block at each block's own
    resolution instead (``linear_logits``), so the full hypercolumns are never built."""

    def __init__(self, model, head, blocks: Sequence[Block], prep=None):
        self.maps = maps_runner(prep, model, blocks)
        self.head, self.blocks = head, list(blocks)
        self.features = sum(b.channels for b in blocks)
        cols = getattr(getattr(head, "metadata", None), "input_columns", None) or []
        self.columns = np.asarray(cols, np.int64) if cols else None  # a forest's: only what its trees read
        self.linear = linear_weights(head, self.features) if self.columns is None else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b, _, th, tw = x.shape
        all_maps = self.maps(x)
        if self.linear is not None:
            out = np.empty((b, self.linear[0].shape[0], th, tw), np.float32)
            for i, maps in enumerate(all_maps):
                check_maps(maps, self.blocks, th, tw)
                logits = linear_logits(*self.linear, x[i], maps, self.blocks)
                missing = ~np.isfinite(logits).all(0)
                out[i] = softmax(np.where(missing[None], 0.0, logits), axis=0)
                if missing.any():
                    out[i][:, missing] = np.nan
            return out
        out = None
        width = self.features if self.columns is None else len(self.columns)
        step = rows_per_chunk(width, tw)
        buffer = np.empty(width * min(step, th) * tw, np.float32)  # one chunk's features, reused
        for i, maps in enumerate(all_maps):
            check_maps(maps, self.blocks, th, tw)
            # bilinear weights are in [0, 1]: from inputs this far inside float32's range every feature is finite
            bounded = all(np.all(np.abs(m) < 1e30) for m in (x[i], *maps.values()))
            spectra, blocks = x[i], self.blocks
            if self.columns is not None:
                spectra, maps, blocks = select_columns(spectra, maps, blocks, self.columns)
            for r0 in range(0, th, step):
                r1 = min(r0 + step, th)
                feats = hypercolumns(spectra, maps, blocks, r0, r1, buffer=buffer)
                if bounded:
                    logits = self.head.run(feats[None])[0]
                    missing = None
                else:
                    missing = ~np.isfinite(feats).all(0)  # a feature without data (a season no date saw): no class
                    logits = self.head.run(np.nan_to_num(feats)[None] if missing.any() else feats[None])[0]
                if out is None:
                    out = np.empty((b, logits.shape[0], th, tw), np.float32)
                out[i, :, r0:r1] = softmax(logits, axis=0)
                if missing is not None and missing.any():
                    out[i, :, r0:r1][:, missing] = np.nan
        return out


def small_raster_warning(prep, tile: int, log) -> None:
    from mpmae_core.runtime.inference.tiling import MIN_CONTEXT

    if min(prep.width, prep.height) < min(tile, MIN_CONTEXT):
        log(f"warning: the raster is only {prep.width} x {prep.height} px; it is mirrored out to "
            f"{min(tile, MIN_CONTEXT)} px for the model, so the map is less reliable near its edges")
