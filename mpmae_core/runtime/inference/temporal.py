"""Several dates of one place, reduced per pixel: the building blocks of temporal features.

Each date gives values (spectra, or encoder features) and a validity mask (its clouds, shadows,
no data, as the products issue's masks say). Per pixel and channel, over the valid dates only:

- the median, the 10th and 90th percentiles (numpy's linear interpolation between order
  statistics), the standard deviation (population, ddof 0);
- the count of valid dates (one band);
- optionally, the median within seasonal windows given as (first day, last day) of the year, a
  window may wrap the new year.

A pixel with fewer than ``min_valid`` valid dates gets NaN (no data) in every statistic; its count
is still given, so it can be reported. These are pure functions on one tile's arrays: memory
follows the tile, whatever the number of dates, when the caller streams tiles.

The dates themselves come from a product's metadata or its file name (``date_of``).
"""

from __future__ import annotations

import datetime as _dt
import re
import warnings
from typing import Optional, Sequence

import numpy as np

STATS = ("median", "p10", "p90", "std")


def reduce_series(values: np.ndarray, valid: np.ndarray, stats: Sequence[str] = STATS, min_valid: int = 1):
    """(out, names): ``values`` (T, C, H, W) and ``valid`` (T, H, W) bool reduced over the dates to
    (len(stats) * C + 1, H, W) float32: each statistic's C channels in order, then the count of
    valid dates. ``names`` says what each band is ("median:0", ..., "count")."""
    values = np.asarray(values, np.float32)
    valid = np.asarray(valid, bool)
    if values.ndim != 4 or valid.shape != (values.shape[0],) + values.shape[2:]:
        raise ValueError(f"a series needs values (dates, channels, rows, cols) and a mask (dates, rows, cols); got "
                         f"{values.shape} and {valid.shape}")
    unknown = [s for s in stats if s not in STATS]
    if unknown:
        raise ValueError(f"unknown statistic(s) {', '.join(unknown)}: choose from {', '.join(STATS)}")
    t, c, h, w = values.shape
    count = valid.sum(0)
    masked = np.where(valid[:, None], values, np.nan)
    masked[:, :, count < max(int(min_valid), 1)] = np.nan  # too few dates: no data
    out, names = [], []
    ordered = np.sort(masked, axis=0)  # NaN (masked) last: the valid values of a pixel come first, in order
    n = np.broadcast_to(np.where(count < max(int(min_valid), 1), 0, count)[None], (1, c, h, w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels are meant to give NaN
        for s in stats:
            if s == "median":
                r = quantile_of_sorted(ordered, n, 0.5)
            elif s == "p10":
                r = quantile_of_sorted(ordered, n, 0.1)
            elif s == "p90":
                r = quantile_of_sorted(ordered, n, 0.9)
            else:
                r = np.nanstd(masked, axis=0)
            out.append(r.astype(np.float32))
            names += [f"{s}:{i}" for i in range(c)]
    out.append(count[None].astype(np.float32))
    names.append("count")
    return np.concatenate(out, axis=0), names


def quantile_of_sorted(ordered: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile over axis 0 of values sorted with the invalid ones (NaN) last, ``n`` (1, ...)
    valid per position: numpy's default (linear interpolation between the order statistics at
    q * (n - 1)); NaN where n is 0. Vectorised, unlike ``np.nanpercentile`` on masked data."""
    n = n.astype(np.int64)
    pos = q * np.maximum(n - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
    a = np.take_along_axis(ordered, lo, axis=0)[0]
    b = np.take_along_axis(ordered, hi, axis=0)[0]
    out = a + (pos[0] - lo[0]) * (b - a)
    return np.where(n[0] > 0, out, np.nan)


def in_window(day_of_year: int, window: tuple[int, int]) -> bool:
    """Whether a day of the year (1-366) lies in ``window`` (first, last), which may wrap the new
    year (e.g. (335, 59): December to February)."""
    first, last = window
    return first <= day_of_year <= last if first <= last else (day_of_year >= first or day_of_year <= last)


def day_of_year(date: _dt.date) -> int:
    """The day of the year in a year of 365 days (29 February counts as the 28th), so a season
    given by month and day holds the same dates every year."""
    return _dt.date(2001, date.month, min(date.day, 28) if date.month == 2 else date.day).timetuple().tm_yday


_SEASON = re.compile(r"^\s*(\d{1,2})-?(\d{2})\s*[:/_]\s*(\d{1,2})-?(\d{2})\s*$")


def parse_season(text: str) -> tuple[int, int]:
    """A seasonal window "MM-DD:MM-DD" (first and last day; it may wrap the new year, e.g.
    "12-01:02-28") as (first, last) days of a 365-day year; a ValueError names the form."""
    m = _SEASON.match(str(text))
    try:
        if not m:
            raise ValueError
        first = _dt.date(2001, int(m.group(1)), int(m.group(2)))
        last = _dt.date(2001, int(m.group(3)), int(m.group(4)))
    except ValueError:
        raise ValueError(f"{text!r} is not a season: give its first and last day as MM-DD:MM-DD, e.g. 03-01:05-31 "
                         "(it may wrap the new year: 12-01:02-28)") from None
    return first.timetuple().tm_yday, last.timetuple().tm_yday


def season_name(window: tuple[int, int]) -> str:
    """A window's name in block and band names: "season0301-0531"."""
    a, b = (_dt.date(2001, 1, 1) + _dt.timedelta(days=d - 1) for d in window)
    return f"season{a:%m%d}-{b:%m%d}"


def season_of_name(name: str) -> Optional[tuple[int, int]]:
    """The window a "season0301-0531" name stands for, or None."""
    m = re.fullmatch(r"season(\d{2})(\d{2})-(\d{2})(\d{2})", str(name))
    if not m:
        return None
    try:
        return parse_season(f"{m.group(1)}-{m.group(2)}:{m.group(3)}-{m.group(4)}")
    except ValueError:
        return None


def seasonal_medians(values: np.ndarray, valid: np.ndarray, dates: Sequence[_dt.date],
                     windows: Sequence[tuple[int, int]], min_valid: int = 1) -> np.ndarray:
    """(len(windows) * C, H, W): the median over the valid dates within each seasonal window."""
    values = np.asarray(values, np.float32)
    valid = np.asarray(valid, bool)
    if len(dates) != values.shape[0]:
        raise ValueError(f"{len(dates)} dates for a series of {values.shape[0]}")
    out = []
    for win in windows:
        pick = np.array([in_window(day_of_year(d), win) for d in dates], bool)
        if not pick.any():
            out.append(np.full(values.shape[1:], np.nan, np.float32))
            continue
        r, _ = reduce_series(values[pick], valid[pick], ("median",), min_valid)
        out.append(r[:-1])
    return np.concatenate(out, axis=0)


_COMPACT = re.compile(r"(?<!\d)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])T\d{6}")
_ISO = re.compile(r"(?<!\d)(20\d{2})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])")
_PLAIN = re.compile(r"(?<![\dA-Za-z])(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")
DATE_KEYS = ("PRODUCT_START_TIME", "DATATAKE_SENSING_START", "DATETIME", "PROPERTIES_DATETIME", "ACQUISITION_DATE",
             "SENSING_TIME")


def date_from_text(text: str) -> Optional[_dt.date]:
    """The acquisition date in a product's name or a timestamp: ``..._20230612T101559_...``,
    ``2023-06-12T10:15:59Z``, or a lone ``20230612``; the first one found; None without one."""
    for pattern in (_COMPACT, _ISO, _PLAIN):
        m = pattern.search(str(text))
        if m:
            try:
                return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
            except ValueError:  # 2023-02-30
                continue
    return None


def date_of(source: str, metadata: Optional[dict] = None) -> Optional[_dt.date]:
    """A date of a series member: from its metadata (product start time, STAC datetime), else from
    its file name (the last part of the path first, then the folders above it)."""
    for key in DATE_KEYS:
        value = (metadata or {}).get(key)
        if value:
            found = date_from_text(str(value))
            if found:
                return found
    parts = re.split(r"[\\/]", str(source))
    for part in reversed(parts):
        found = date_from_text(part)
        if found:
            return found
    return None
