"""Sliding windows and blending weights: pure functions, each tested on its own.

A raster of any size is covered by tiles of at most ``tile`` pixels that overlap by at least
``overlap`` pixels: along each axis the fewest windows that do, each as short as that allows,
spread evenly from edge to edge (``axis_layout``), so little is computed twice and no padding is
needed unless the raster is smaller than one tile. Each tile's output is weighted by a ramp that rises
from near 0 at a side shared with a neighbouring tile to 1 after the overlap, and stays 1 at the
raster's own edges, so overlapping outputs blend smoothly and no seam remains.

A raster smaller than ``MIN_CONTEXT`` pixels along an axis gets one window of ``MIN_CONTEXT``
pixels (or the tile, if smaller) centred on it; the reader fills the window beyond the raster by
mirror reflection, so the model sees the raster's own content all around it wherever that
content sits, instead of a border of zeros whose position would shape the output.

Each pixel also has one *owner* tile, the one whose centre part holds it (the overlap between
two neighbouring tiles is split at its middle): per-pixel features come from the owner tile, so
a pixel's feature vector is defined once, whether it is sampled under a label or written into a
feature raster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


#: The default tiling of every command, the plugin and the panel: windows of at most 768 px
#: overlapping by at least 96 px. Measured on the real scene and mosaics of it (``bench/RESULTS.md``,
#: issue 26): against 512/128 it computes 1.1-1.3x the raster's pixels instead of 1.5-1.8x and
#: differs less from an untiled run (mean 0.35-0.46 % against 0.57-0.71 %). Windows of up to
#: 1,024 px compute a little less on large rasters, but ONNX Runtime's memory grows with the
#: window (1.7 GB at 1,008 px): 768 keeps every raster of more than about 2,000 px on windows of
#: 736-768 px, so memory hardly depends on the raster's size.
DEFAULT_TILE = 768
DEFAULT_OVERLAP = 96

#: Windows are at least this many pixels along each axis (when the tile allows): smaller rasters
#: are mirrored out to it, so that GRN's statistics and the convolutions see enough content.
MIN_CONTEXT = 256


def window_length(length: int, tile: int, align: int = 1) -> int:
    """The window size along an axis of ``length`` pixels: the tile, or for a shorter axis the
    axis itself grown to ``MIN_CONTEXT`` (never beyond the tile), a multiple of ``align``."""
    if length >= tile:
        return tile
    return min(tile, max(round_up(length, align), round_up(MIN_CONTEXT, align)))


def axis_layout(length: int, tile: int, overlap: int, align: int = 1) -> tuple[int, list[int]]:
    """(window size, start offsets) along one axis of ``length`` pixels.

    An axis longer than the tile gets the fewest windows of at most ``tile`` pixels that overlap by
    at least ``overlap``, each as short as that allows (a multiple of ``align``, never under
    ``MIN_CONTEXT`` where the tile allows), spread evenly from edge to edge: on a 2,048 px axis
    tiles of up to 1,024 px with 96 px overlap are three windows of 752 px (2,256 px computed),
    where windows of the full tile stepped from the start would compute 3,072. Short windows also
    run faster per pixel on CPU (the encoder's activations stay in cache).

    An axis shorter than its window gets one window centred on it (a negative start, a multiple
    of ``align`` so that patch cells stay on the raster's grid)."""
    if length <= tile:
        size = window_length(length, tile, align)
        return size, [-(((size - length) // 2) // align * align)]
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    n = -(-(length - overlap) // (tile - overlap))  # >= 2 windows
    floor = min(tile, round_up(MIN_CONTEXT, align))
    size = max(floor, min(tile, round_up(-(-(length + (n - 1) * overlap) // n), align)))
    while True:
        starts = [int(round(i * (length - size) / (n - 1) / align)) * align for i in range(n)]
        starts[-1] = length - size
        if size >= tile or all(size - (b - a) >= overlap for a, b in zip(starts, starts[1:])):
            return size, starts
        size += align


@dataclass(frozen=True)
class Window:
    y: int
    x: int
    h: int  # pixels read from the raster (may be less than the tile for small rasters)
    w: int
    top: bool  # whether this tile touches the raster's top edge (no ramp there)
    bottom: bool
    left: bool
    right: bool


def tile_windows(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[list[Window]]:
    """Rows of windows covering a height x width raster; tiles are at most ``tile`` per side
    (shorter axes get a centred window of :func:`window_length`)."""
    th, ys = axis_layout(height, tile, overlap, align)
    tw, xs = axis_layout(width, tile, overlap, align)
    return [[Window(y, x, th, tw, top=iy == 0, bottom=iy == len(ys) - 1, left=ix == 0, right=ix == len(xs) - 1)
             for ix, x in enumerate(xs)] for iy, y in enumerate(ys)]


def raster_windows(height: int, width: int, tile: int, overlap: int, patch: int = 1) -> list[list[Window]]:
    """The windows the runtime runs over a raster: its size rounded up to whole patches (the
    rest mirrored in by the reader), windows on the patch grid."""
    return tile_windows(round_up(height, patch), round_up(width, patch), tile, overlap, patch)


def ramp(n: int, ramp_len: int, rise_start: bool, rise_end: bool) -> np.ndarray:
    """1-D weights of length n: rising over ``ramp_len`` cells at the start and/or end, else 1."""
    w = np.ones(n, dtype=np.float64)
    if ramp_len <= 0:
        return w
    r = (np.arange(n) + 0.5) / ramp_len
    rise = np.clip(r, 0, 1)
    # smooth (cosine) ramp: no kink where it reaches 1
    rise = 0.5 - 0.5 * np.cos(np.pi * rise)
    if rise_start:
        w = np.minimum(w, rise)
    if rise_end:
        w = np.minimum(w, rise[::-1])
    return w


def blend_weights(window: Window, out_h: int, out_w: int, ramp_cells: int) -> np.ndarray:
    """(out_h, out_w) weights for a tile's output: ramps only on sides shared with other tiles."""
    wy = ramp(out_h, ramp_cells, not window.top, not window.bottom)
    wx = ramp(out_w, ramp_cells, not window.left, not window.right)
    return np.outer(wy, wx)


def axis_owner(coords: np.ndarray, starts: list, size: int) -> np.ndarray:
    """Index of the window owning each coordinate: the overlap of windows i and i + 1 is split
    at its middle, so a pixel belongs to the window in which it lies farthest from the border."""
    coords = np.asarray(coords)
    if len(starts) == 1:
        return np.zeros(coords.shape, np.int64)
    cuts = np.array([(starts[i + 1] + starts[i] + size) // 2 for i in range(len(starts) - 1)])
    return np.searchsorted(cuts, coords, side="right")


def owned_span(index: int, starts: list, size: int, length: int) -> tuple[int, int]:
    """[lo, hi) of the coordinates (within 0..length) that window ``index`` owns."""
    cuts = [(starts[i + 1] + starts[i] + size) // 2 for i in range(len(starts) - 1)]
    lo = 0 if index == 0 else cuts[index - 1]
    hi = length if index == len(starts) - 1 else cuts[index]
    return max(lo, 0), min(hi, length)
