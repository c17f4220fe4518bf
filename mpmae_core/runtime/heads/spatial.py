"""Spatial blocks for cross-validation: labels near each other fall in one fold.

Grouping the folds by labelled feature keeps the pixels of one click together, but analysts click
clear, pure places, often close to each other: a head tested on a click a few pixels from one it
trained on looks far better than it will on the rest of the map. Folds by square blocks of the
map keep whole neighbourhoods together, so a head is tested on places it did not see around it.

The block side, unless the user gives one, follows the labels' spread: the larger of
- the side that cuts the labels' bounding box into about ``4 x folds`` blocks (so each fold gets
  a few blocks, from different parts of the area), and
- twice the median distance from a labelled feature to its nearest neighbour (so that clicks
  made next to each other share a block).

Each labelled feature goes whole into the block of its centre. Pure numpy.
"""

from __future__ import annotations

import numpy as np


def feature_centres(rows: np.ndarray, cols: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group ids, (n, 2) mean row and column of each labelled feature)."""
    ids, inverse = np.unique(groups, return_inverse=True)
    n = np.bincount(inverse)
    centres = np.stack([np.bincount(inverse, rows) / n, np.bincount(inverse, cols) / n], axis=1)
    return ids, centres


def block_side(rows, cols, groups, folds: int = 5) -> int:
    """The block side in pixels from the labels' spread (see the module)."""
    _, c = feature_centres(np.asarray(rows, float), np.asarray(cols, float), np.asarray(groups))
    if len(c) < 2:
        return 1
    span = c.max(0) - c.min(0) + 1
    by_area = np.sqrt(span[0] * span[1] / (4 * max(int(folds), 1)))
    d = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)) if len(c) <= 4000 else None
    if d is not None:
        np.fill_diagonal(d, np.inf)
        nn = float(np.median(d.min(1)))
    else:  # many features: a sample of them
        rng = np.random.default_rng(0)
        pick = rng.choice(len(c), 4000, replace=False)
        d = np.sqrt(((c[pick, None, :] - c[None, :, :]) ** 2).sum(-1))
        d[d == 0] = np.inf
        nn = float(np.median(d.min(1)))
    return int(np.ceil(max(by_area, 2 * nn, 1.0)))


def spatial_groups(rows, cols, groups, side: int) -> np.ndarray:
    """Per pixel: the id of the block (of ``side`` pixels) that holds the centre of its feature."""
    rows, cols, groups = np.asarray(rows, float), np.asarray(cols, float), np.asarray(groups)
    ids, c = feature_centres(rows, cols, groups)
    side = max(int(side), 1)
    br, bc = np.floor(c[:, 0] / side).astype(np.int64), np.floor(c[:, 1] / side).astype(np.int64)
    block_of = br * 1_000_003 + bc
    return block_of[np.searchsorted(ids, groups)]
