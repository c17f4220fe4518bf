"""Sliding windows and blending weights: pure functions, each tested on its own.

A raster of any size is covered by tiles of ``tile`` pixels that overlap by at least ``overlap``
pixels; the last tile of a row or column is moved back so it ends at the raster's edge (no padding
unless the raster is smaller than one tile). Each tile's output is weighted by a ramp that rises
from near 0 at a side shared with a neighbouring tile to 1 after the overlap, and stays 1 at the
raster's own edges, so overlapping outputs blend smoothly and no seam remains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis: step tile - overlap, the last tile flush with the end."""
    if length <= tile:
        return [0]
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


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


def tile_windows(height: int, width: int, tile: int, overlap: int) -> list[list[Window]]:
    """Rows of windows covering a height x width raster; tiles are at most ``tile`` per side."""
    th, tw = min(tile, height), min(tile, width)
    ys, xs = axis_starts(height, th, overlap), axis_starts(width, tw, overlap)
    return [[Window(y, x, th, tw, top=iy == 0, bottom=iy == len(ys) - 1, left=ix == 0, right=ix == len(xs) - 1)
             for ix, x in enumerate(xs)] for iy, y in enumerate(ys)]


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
