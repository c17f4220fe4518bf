"""A time series of one place as an input: its members, their dates, one grid, each with its masks.

A series is given as a list of sources (products or rasters), a glob, a folder of them, or a text
file of paths. Every member is read as the runtime reads one raster (``raster.prepare_input``: a
product's stack, its level and offset, its quality mask), onto the grid of the first member (or
of the one chosen): a member on another grid is warped onto it by nearest neighbour through a
VRT, and the run says so. Dates come from the members' metadata or names (``temporal.date_of``),
or are given; two members of one date are refused.

``SeriesInput`` reads the dates as one input: a tile of it is every date's tile, stacked, with
each date's validity. Wherever the runtime reads one raster (``raster.read_block``, the tiled
predictor, the labelled pixels' features, the panel's cache), it reads a series the same way, and
``SeriesMaps`` turns a tile of dates into the blocks a head asks for:

- the single-date blocks (``spectra``, ``stage1`` ... ``embedding``) of the *reference* date (the
  grid member by default);
- the temporal blocks: ``spectra:median``, ``spectra:p10``, ``spectra:p90``, ``spectra:std`` of
  the normalised bands over the valid dates (``temporal.reduce_series``), and ``<stage>:median``,
  the median of each encoder map over the dates, taken at the map's own stride (a cell counts
  for a date when at least half its pixels are valid; a cell no date sees takes the median of
  every date) and upsampled as a single date's map is. Before the encoder runs on a date, its
  masked pixels are filled with the median of the other dates there (``fill_from_other_dates``),
  so a cloud is not a hole that disturbs the maps around it.

The encoder runs once per date and tile; memory follows the tile times the number of dates,
never the raster. A series of one date is read as that date alone (exactly single-date
processing).

``series_features`` writes the temporal spectral features in row blocks.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from mpmae_core.runtime.inference import temporal
from mpmae_core.runtime.inference.pixel_features import REFERENCE_VALID, SPECTRA, Block, base_name, encoder_blocks, \
    is_temporal
from mpmae_core.runtime.io.sources import SeriesError, expand_series, looks_like_series  # noqa: F401 (API)

ROWS = 128  # rows per block
ENCODER_STATS = ("median",)  # the encoder maps' temporal statistic (the spread of 600 channels would cost 4x)
CELL_VALID = 0.5  # a map cell counts for a date when at least this share of its pixels is valid there


@dataclass
class Member:
    source: str
    date: _dt.date


def dated_members(sources: Sequence[str], dates: Optional[Sequence] = None) -> list[Member]:
    """The members with their dates (given, or from metadata and names), sorted by date; a member that
    holds features (another model's embedding, an embedding raster) is refused."""
    from mpmae_core.runtime.io.embeddings import features_not_bands
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.products import stack_path

    if dates is not None and len(dates) != len(sources):
        raise SeriesError(f"{len(dates)} dates given for {len(sources)} members: give one date per member")
    out = []
    for i, src in enumerate(sources):
        ds = open_raster(stack_path(src))
        kind = features_not_bands(ds, str(src))
        if kind is not None:
            raise SeriesError(f"'{src}' is {kind}, not an image: a series' dates are Sentinel-2 images of one place. "
                              "Leave it out of the dates (another model's embedding goes beside the raster: "
                              "--embedding on the command line)")
        if dates is not None:
            d = dates[i] if isinstance(dates[i], _dt.date) else temporal.date_from_text(str(dates[i]))
            if d is None:
                raise SeriesError(f"{dates[i]!r} is not a date: give YYYY-MM-DD")
        else:
            d = temporal.date_of(src, ds.GetMetadata() or {})
            if d is None:
                raise SeriesError(f"the date of '{src}' is neither in its metadata nor in its name: give the dates "
                                  "(YYYY-MM-DD,... in the members' order: --dates on the command line, 'Dates' in "
                                  "QGIS)")
        out.append(Member(str(src), d))
    out.sort(key=lambda m: m.date)
    for a, b in zip(out, out[1:]):
        if a.date == b.date:
            raise SeriesError(f"'{a.source}' and '{b.source}' are both of {a.date}: keep one per date (or mosaic "
                              "them first)")
    return out


def on_grid(source: str, ref_ds, log=lambda m: None) -> str:
    """``source`` itself when it lies on the reference grid; else a VRT of it warped onto that grid
    (nearest neighbour), with a note."""
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors, open_raster, same_grid
    from mpmae_core.runtime.io.products import stack_path

    path = stack_path(source)
    ds = open_raster(path)
    if same_grid(ds, ref_ds):
        return path
    gt = ref_ds.GetGeoTransform()
    w, h = ref_ds.RasterXSize, ref_ds.RasterYSize
    bounds = (gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3])
    out = f"/vsimem/mmearth-series-{uuid.uuid4().hex}.vrt"  # its own: a series unlinks its VRTs when closed
    with gdal_errors() as errors:
        warped = gdal().Warp(out, ds, format="VRT", outputBounds=bounds, width=w, height=h,
                             dstSRS=ref_ds.GetProjection(), resampleAlg="near")
    if warped is None:
        raise SeriesError(f"could not bring '{source}' onto the series' grid: {errors.text()}")
    # every band keeps its name, and the member its metadata (level, offsets, quality layer)
    for i in range(1, ds.RasterCount + 1):
        warped.GetRasterBand(i).SetDescription(ds.GetRasterBand(i).GetDescription())
    warped.SetMetadata(ds.GetMetadata() or {})
    warped = None
    crs, ref_crs = _crs_name(ds), _crs_name(ref_ds)
    where = f"{crs}" if crs != ref_crs else f"{crs} too, but its pixel edges lie elsewhere"
    log(f"'{Path(source).name}' lies on another grid ({where}); warped onto the series' grid "
        f"({ref_crs}) by nearest neighbour")
    return out


def _crs_name(ds) -> str:
    from osgeo import osr

    s = osr.SpatialReference(wkt=ds.GetProjection() or "")
    return f"{s.GetAuthorityName(None) or ''}:{s.GetAuthorityCode(None) or ''}".strip(":") or s.GetName() or "no CRS"


def series_blocks(meta, stats: Sequence[str] = temporal.STATS, seasons: Sequence[tuple] = ()) -> list[Block]:
    """Every block a series offers: the reference date's (as one raster's), then the temporal ones
    (with ``seasons``, windows of the year, the median of the spectra within each too)."""
    single = encoder_blocks(meta)
    out = list(single)
    out += [Block(f"{SPECTRA}:{s}", single[0].channels, 1) for s in stats]
    out += [Block(f"{SPECTRA}:{temporal.season_name(w)}", single[0].channels, 1) for w in seasons]
    out += [Block(f"{b.name}:{s}", b.channels, b.stride) for b in single if b.name != SPECTRA for s in ENCODER_STATS]
    return out


def source_blocks(prep, meta) -> list[Block]:
    """The blocks a prepared input offers: a series' (``series_blocks``), a change pair's, or one
    raster's (``encoder_blocks``)."""
    return list(getattr(prep, "blocks", None) or encoder_blocks(meta))


def series_of(prep) -> Optional["SeriesInput"]:
    """The series a prepared input is, or holds beside another model's embedding
    (``embedding_sources.ExternalInput``); None for anything else."""
    if isinstance(prep, SeriesInput):
        return prep
    inner = getattr(prep, "prep", None)
    return inner if isinstance(inner, SeriesInput) else None


class SeriesInput:
    """Several dates of one place on one grid, read as one input (see the module).

    ``read_block`` gives (T*C + T, h, w): every date's normalised bands (as ``raster.read_block``
    gives them), then every date's validity (1 or 0); its valid mask is where at least
    ``min_valid`` dates are valid (and, with ``require_reference``, the reference date too: a head
    on the reference date's own features maps only there)."""

    def __init__(self, members: Sequence[Member], preps: Sequence, reference: int, min_valid: int, meta,
                 temporaries: Sequence[str] = (), stats: Sequence[str] = temporal.STATS, seasons: Sequence = ()):
        self.members, self.preps, self.reference = list(members), list(preps), int(reference)
        self.min_valid = max(int(min_valid), 1)
        self.meta, self.stats = meta, tuple(stats)
        ref = self.preps[self.reference]
        self.width, self.height = ref.width, ref.height
        self.geotransform, self.projection = ref.geotransform, ref.projection
        self.dn_offset, self.scale = ref.dn_offset, ref.scale
        self.level = "+".join(sorted({p.level for p in self.preps}))
        self.source = str(ref.source)
        self.channels = len(ref.band_numbers)
        self.band_numbers = list(range(1, len(self.preps) * (self.channels + 1) + 1))  # the stacked channels
        self.notes = []
        for p in self.preps:
            self.notes += [n for n in p.notes if n not in self.notes]
        self.seasons = [tuple(w) for w in seasons]
        self.blocks = series_blocks(meta, self.stats, self.seasons)
        self.require_reference = False
        self._temporaries = list(temporaries)

    @property
    def dates(self) -> list:
        return [m.date for m in self.members]

    def __len__(self) -> int:
        return len(self.preps)

    def read_series(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, C, h, w) normalised and (T, h, w) valid: every date's ``raster.read_block``."""
        from mpmae_core.runtime.inference.raster import read_block

        values = np.empty((len(self.preps), self.channels, h, w), np.float32)
        valid = np.empty((len(self.preps), h, w), bool)
        for t, p in enumerate(self.preps):
            values[t], valid[t] = read_block(p, y, x, h, w)
        return values, valid

    def read_block(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        values, valid = self.read_series(y, x, h, w)
        stacked = np.concatenate([values.reshape(-1, h, w), valid.astype(np.float32)], axis=0)
        ok = valid.sum(0) >= self.min_valid
        if self.require_reference:
            ok &= valid[self.reference]
        return stacked, ok

    def has_data(self, y: int, x: int, h: int, w: int) -> bool:
        from mpmae_core.runtime.inference.raster import has_data

        return any(has_data(p, y, x, h, w) for p in self.preps)

    def maps_runner(self, model, blocks: Sequence[Block]) -> "SeriesMaps":
        return SeriesMaps(model, blocks, len(self.preps), self.channels, self.reference, self.min_valid, self.dates)

    def offer(self, names: Sequence[str], log: Callable[[str], None] = lambda m: None) -> None:
        """Offer the seasonal blocks among ``names`` (a head's features carry their windows): a head
        trained with seasons maps with them, without naming them again."""
        for name in names:
            base, _, stat = str(name).partition(":")
            window = temporal.season_of_name(stat) if base == SPECTRA else None
            if window is not None and window not in self.seasons:
                self.seasons.append(window)
                self.blocks.append(Block(name, self.channels, 1))
                dates = [d for d in self.dates if temporal.in_window(temporal.day_of_year(d), window)]
                log(f"season {stat[6:10]}-{stat[11:]}: {len(dates)} of the series' dates" +
                    ("" if dates else " - none: that season's median is no data everywhere"))

    def close(self) -> None:
        from mpmae_core.runtime.io.gdal_io import gdal

        self.preps = []
        for path in self._temporaries:
            gdal().Unlink(path)
        self._temporaries = []

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass


def cell_validity(valid: np.ndarray, stride: int) -> np.ndarray:
    """(T, h/s, w/s): whether at least CELL_VALID of each cell's pixels are valid, per date."""
    t, h, w = valid.shape
    cells = valid[:, :h // stride * stride, :w // stride * stride].reshape(t, h // stride, stride, w // stride, stride)
    return cells.mean(axis=(2, 4)) >= CELL_VALID


def reduce_maps(maps: np.ndarray, valid: np.ndarray, stat: str = "median") -> np.ndarray:
    """(c, h, w): a statistic over the dates of (T, c, h, w) maps where ``valid`` (T, h, w); a cell
    valid on no date takes the statistic over every date (it still needs a value: its neighbours
    are interpolated from it)."""
    out, _ = temporal.reduce_series(maps, valid, (stat,), 1)
    out = out[:-1]
    empty = ~valid.any(0)
    if empty.any():
        every, _ = temporal.reduce_series(maps, np.ones_like(valid), (stat,), 1)
        out[:, empty] = every[:-1][:, empty]
    return out


def fill_from_other_dates(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(T, C, h, w) with each date's masked pixels replaced by the median of the dates valid there
    (left as they are where no date is): what the encoder sees around a cloud is then the ground
    the other dates saw, not a hole, so its maps near cloud edges are not disturbed."""
    if valid.all():
        return values
    median, _ = temporal.reduce_series(values, valid, ("median",), 1)
    median = median[:-1]
    seen = valid.any(0)
    out = values.copy()
    for t in range(values.shape[0]):
        hole = ~valid[t] & seen
        if hole.any():
            out[t][:, hole] = median[:, hole]
    return out


class SeriesMaps:
    """A batch of series tiles (B, T*C + T, th, tw) -> per tile: block name -> map (see the module),
    and REFERENCE_VALID (1, th, tw): where the reference date is valid."""

    def __init__(self, model, blocks: Sequence[Block], dates: int, channels: int, reference: int, min_valid: int,
                 when: Sequence = ()):
        self.model, self.t, self.c, self.reference = model, int(dates), int(channels), int(reference)
        self.min_valid = int(min_valid)
        self.when = list(when)  # the dates themselves (for seasonal medians)
        self.blocks = list(blocks)
        self.single = [b.name for b in self.blocks if not is_temporal(b.name) and b.name != SPECTRA]
        spectral = [b.name.split(":", 1)[1] for b in self.blocks if is_temporal(b.name) and base_name(b.name) == SPECTRA]
        self.spectral_stats = [st for st in spectral if st in temporal.STATS]
        self.seasons = [(st, temporal.season_of_name(st)) for st in spectral if temporal.season_of_name(st)]
        self.temporal = [b for b in self.blocks if is_temporal(b.name) and base_name(b.name) != SPECTRA]
        if (self.single or self.temporal) and model is None:
            raise ValueError("encoder features need an encoder model")
        self.run_names = sorted(set(self.single) | {base_name(b.name) for b in self.temporal})

    def split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One stacked tile (T*C + T, h, w) -> (T, C, h, w) values and (T, h, w) validity."""
        h, w = x.shape[1:]
        return x[:self.t * self.c].reshape(self.t, self.c, h, w), x[self.t * self.c:] > 0.5

    def pixel_maps(self, values: np.ndarray, valid: np.ndarray) -> dict:
        """The stride-1 maps of one tile: the reference date's spectra and the spectral statistics."""
        out = {SPECTRA: values[self.reference], REFERENCE_VALID: valid[self.reference][None].astype(np.float32)}
        if self.spectral_stats:
            reduced, names = temporal.reduce_series(values, valid, self.spectral_stats, self.min_valid)
            for i, stat in enumerate(self.spectral_stats):
                out[f"{SPECTRA}:{stat}"] = reduced[i * self.c:(i + 1) * self.c]
        for name, window in self.seasons:
            out[f"{SPECTRA}:{name}"] = temporal.seasonal_medians(values, valid, self.when, [window], self.min_valid)
        return out

    def __call__(self, x: np.ndarray) -> list[dict]:
        result = []
        for tile in x:
            values, valid = self.split(tile)
            out = self.pixel_maps(values, valid)
            if self.run_names:
                values = fill_from_other_dates(values, valid)
                dates = range(self.t) if self.temporal else [self.reference]
                per_date = {}
                for t in dates:  # one date at a time: ONNX Runtime's memory grows with the batch
                    per_date[t] = dict(zip(self.run_names, (o[0] for o in self.model.run_outputs(values[t][None],
                                                                                                   self.run_names))))
                for name in self.single:
                    out[name] = per_date[self.reference][name]
                for b in self.temporal:
                    stack = np.stack([per_date[t][base_name(b.name)] for t in range(self.t)])
                    out[b.name] = reduce_maps(stack, cell_validity(valid, b.stride), b.name.split(":", 1)[1])
            result.append(out)
        return result


def prepare_series(series, meta, *, dates=None, reference: int = 0, min_valid: int = 1, level: str = "auto",
                   dn_offset="auto", band_map=None, scale: float = 1.0, aoi=None, masks=None, grid=None,
                   seasons: Sequence = (), log: Callable[[str], None] = lambda m: None):
    """A series ready to read (``SeriesInput``): its members dated and sorted, each brought onto the
    grid of the ``reference`` member (its place in date order, or its source) and prepared as one
    raster is, with its own
    level, offset and masks (or onto ``grid``, an open dataset, when given). One member: that
    member's ``raster.prepare_input`` (single-date processing, exactly)."""
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.products import stack_path

    members = dated_members(expand_series(series), dates)
    if isinstance(reference, (str, Path)):  # a member named: its place in date order
        reference = next((i for i, m in enumerate(members) if m.source == str(reference)), reference)
    if isinstance(reference, bool) or not isinstance(reference, (int, np.integer)) or \
            not 0 <= reference < len(members):
        raise SeriesError(f"the reference member {reference!r} does not exist: the series has {len(members)} "
                          f"member(s), 0 to {len(members) - 1} in date order")
    said = set()

    def once(message: str) -> None:  # every date says the same things: say each once
        if message not in said:
            said.add(message)
            log(message)

    kw = dict(level=level, dn_offset=dn_offset, band_map=band_map, scale=scale, aoi=aoi, masks=masks, log=once)
    if len(members) == 1:
        if seasons:
            raise SeriesError("seasons need a series of several dates; this one holds one date")
        log(f"the series holds one date ({members[0].date}): it is read as that raster alone")
        return prepare_on_grid(members[0].source, meta, grid, **kw)
    ref = grid if grid is not None else open_raster(stack_path(members[reference].source))
    preps, temporaries = [], []
    try:
        for m in members:
            path = on_grid(m.source, ref, once)
            if path.startswith("/vsimem/"):
                temporaries.append(path)
            preps.append(prepare_input(path, meta, **kw))
    except BaseException:
        for path in temporaries:
            from mpmae_core.runtime.io.gdal_io import gdal

            gdal().Unlink(path)
        raise
    levels = sorted({p.level for p in preps})
    if len(levels) > 1:
        log(f"the series mixes processing levels ({', '.join(lv.upper() for lv in levels)}): each date is normalised "
            "with its own level's statistics and DN offset")
    offsets = sorted({p.dn_offset for p in preps})
    if len(offsets) > 1:
        log("the series mixes processing baselines: each date's own DN offset is subtracted (" +
            ", ".join(f"{m.date}: {p.dn_offset:g}" for m, p in zip(members, preps)) + ")")
    log(f"series of {len(members)} dates: " + ", ".join(str(m.date) for m in members) +
        f"; the reference date (grid and single-date features) is {members[reference].date}")
    windows = [temporal.parse_season(w) if isinstance(w, str) else tuple(w) for w in seasons or ()]
    prep = SeriesInput(members, preps, reference, min_valid, meta, temporaries)
    prep.offer([f"{SPECTRA}:{temporal.season_name(w)}" for w in windows], log)
    return prep


def prepare_on_grid(source, meta, grid=None, log: Callable[[str], None] = lambda m: None, **prep_kw):
    """One raster's ``raster.prepare_input``; with ``grid`` (an open dataset), after bringing it
    onto that grid (``on_grid``)."""
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.io.gdal_io import gdal

    if grid is None:
        return prepare_input(source, meta, log=log, **prep_kw)
    path = on_grid(source, grid, log)
    prep = prepare_input(path, meta, log=log, **prep_kw)
    if path.startswith("/vsimem/") and not prep_kw.get("aoi"):
        gdal().Unlink(path)  # open already; an area's window still reads through it, so it stays then
    return prep


def prepare_source(source, meta, *, series: Optional[bool] = None, dates=None, reference: int = 0,
                   min_valid: int = 1, grid=None, seasons: Sequence = (), log: Callable[[str], None] = lambda m: None,
                   **prep_kw):
    """One raster's ``raster.prepare_input``, or a series' ``prepare_series`` when ``series`` is
    True (or None and the source looks like one: ``looks_like_series``). An input prepared
    already (a series, a change pair) is returned as it is. ``grid``: an open dataset to read on."""
    if hasattr(source, "read_block"):
        return source
    if series is None:
        series = looks_like_series(source) or dates is not None
    if not series:
        if seasons:
            raise SeriesError("seasons need a series of several dates: give the dates (a quoted glob, paths separated "
                              "by commas, a text file of paths)")
        if isinstance(source, (list, tuple)) and len(source) == 1:  # a list of one raster is that raster
            source = source[0]
        return prepare_on_grid(source, meta, grid, log=log, **prep_kw)
    return prepare_series(source, meta, dates=dates, reference=reference, min_valid=min_valid, grid=grid,
                          seasons=seasons, log=log, **prep_kw)


def reference_source(source, *, series: Optional[bool] = None, dates=None, reference: int = 0, **_) -> str:
    """The member whose grid (and CRS) a series is read on; ``source`` itself for one raster."""
    if hasattr(source, "read_block"):
        return source.source
    if series is None:
        series = looks_like_series(source) or dates is not None
    if not series:
        return source[0] if isinstance(source, (list, tuple)) and len(source) == 1 else source
    if isinstance(reference, (str, Path)):
        return str(reference)
    members = dated_members(expand_series(source), dates)
    return members[min(max(int(reference), 0), len(members) - 1)].source


def series_features(series, model_path, output, *, dates=None, stats: Sequence[str] = temporal.STATS,
                    min_valid: int = 1, grid: int = 0, masks=None, aoi=None, seasons: Sequence = (),
                    progress=lambda f: None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Temporal spectral features of a series (see the module) as a float32 GeoTIFF: per statistic
    the model's bands (normalised as the model reads them), then the count of valid dates. Pixels
    with fewer than ``min_valid`` valid dates are NaN (reported). ``grid``: the member (in date
    order) whose grid the others are brought onto. ``seasons`` ("MM-DD:MM-DD", ...): the median of
    the bands within each, before the count."""
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.files import check_outputs
    from mpmae_core.runtime.io.sources import input_files
    from mpmae_core.runtime.models.model import read_metadata

    members = dated_members(expand_series(series), dates)
    check_outputs({"output": output}, [f for m in members for f in input_files(m.source)] + [str(model_path)])
    meta = read_metadata(model_path)
    windows = [temporal.parse_season(w) if isinstance(w, str) else tuple(w) for w in seasons or ()]
    prep = prepare_series([m.source for m in members], meta, dates=[m.date for m in members], reference=grid,
                          min_valid=min_valid, masks=masks, aoi=aoi, log=log)
    if not isinstance(prep, SeriesInput):  # one date: a series of one
        prep = SeriesInput([members[0]], [prep], 0, min_valid, meta)
    w, h = prep.width, prep.height
    names = None
    too_few = 0
    writer = None
    try:
        for y in range(0, h, ROWS):
            rows = min(ROWS, h - y)
            values, valid = prep.read_series(y, 0, rows, w)
            out, names = temporal.reduce_series(values, valid, stats, min_valid)
            if windows:
                extra = temporal.seasonal_medians(values, valid, prep.dates, windows, min_valid)
                out = np.concatenate([out[:-1], extra, out[-1:]])
                names = names[:-1] + [f"{temporal.season_name(win)}:{i}" for win in windows
                                      for i in range(len(meta.input_bands))] + names[-1:]
            if writer is None:
                descriptions = [n.split(":")[0] + (f":{meta.input_bands[int(n.split(':')[1])]}" if ":" in n else "")
                                for n in names]
                writer = RasterWriter(output, w, h, len(names), "float32", prep.geotransform, prep.projection,
                                      nodata=float("nan"), descriptions=descriptions,
                                      metadata={"MMEARTH_SERIES_DATES": ",".join(str(d) for d in prep.dates),
                                                "MMEARTH_SERIES_MIN_VALID": str(min_valid)})
            too_few += int((out[-1] < max(min_valid, 1)).sum())
            writer.write_rows(y, out)
            progress(min(1.0, (y + rows) / h))
        path = writer.close()
    except BaseException as exc:
        if writer is not None:
            writer.abort(exc)
        raise
    finally:
        prep.close()
    if too_few:
        log(f"{too_few} pixel(s) ({too_few / (w * h):.1%}) have fewer than {max(min_valid, 1)} valid date(s): no data")
    return {"output": str(path), "dates": [str(d) for d in prep.dates], "bands": names, "too_few": too_few,
            "width": w, "height": h}
