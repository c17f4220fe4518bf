"""Change between two dates, or two periods, of one place.

Each side (``before``, ``after``) is one raster or product, or a series of dates (a period:
``series``). A side's features are its own blocks (one date) or its temporal medians (a period:
``spectra:median``, ``<stage>:median``), named by their role and side: ``spectra@before``,
``stage1@after``, ..., and what changed, block by block: ``spectra@change`` (after minus before),
``stage1@change``, ... (``PairInput``). Both sides are read on the grid of ``before``; the other
is brought onto it, as a series' dates are.

Where one side is masked (clouds, no data) and the other is not, the masked pixels are filled
with the other side's values before the encoder sees them: a cloud is then no change, and does
not disturb the maps around it (its edges do not light up as change). A pixel is mapped only
where both sides are valid.

``change_magnitude`` writes, per pixel:

- ``cosine_distance``: 1 minus the mean, over the encoder's outputs (every stage and the
  embedding, upsampled to the pixel), of the cosine similarity of the two sides' vectors: 0 for
  the same, 1 for unrelated, 2 for opposite; for two embeddings of another model read alone
  (two years of AlphaEarth, say; no encoder), of their vectors, and this is the only band;
- ``spectral_change``: the length of the change vector of the normalised bands, divided by the
  square root of their number (so in units of the bands' standard deviations).

and suggests a threshold on each (``otsu_threshold`` of their histograms): a suggestion, stated
as one. With labelled examples of change types, ``PairInput`` is an input like any other: the
self-choosing per-pixel head (``heads.pixelhead``) trains on the two sides' features and
``segment`` maps the change classes (``heads.change``), and the validation design and area
report of ``heads.validation`` apply to that map as to any other.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mpmae_core.runtime.inference.pixel_features import CHANGE_SUFFIX, SPECTRA, Block, base_name, encoder_blocks, \
    rows_per_chunk, upsample_rows
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

SIDES = ("before", "after")
CHANGE = CHANGE_SUFFIX[1:]  # the blocks of after minus before
OTSU_BINS = 2000
RANGES = {"cosine_distance": (0.0, 2.0), "spectral_change": (0.0, 10.0)}  # histogram ranges for the threshold
THRESHOLD_KEYS = {"cosine_distance": "MMEARTH_CHANGE_COSINE_THRESHOLD",
                  "spectral_change": "MMEARTH_CHANGE_SPECTRAL_THRESHOLD"}


def side_blocks(prep, meta) -> list[Block]:
    """A side's summary blocks in its own names: one raster's blocks, or a series' medians."""
    from mpmae_core.runtime.inference.series import SeriesInput

    if isinstance(prep, SeriesInput):
        return [b for b in prep.blocks if b.name.endswith(":median")]
    return list(getattr(prep, "blocks", None) or encoder_blocks(meta))  # another model's embedding: its block


class PairInput:
    """Two sides of one place on one grid, read as one input (see the module). ``read_block``
    gives both sides' stacked channels; a pixel is valid where both sides are."""

    def __init__(self, before, after, meta, files: Sequence[str] = ()):
        self.sides = [before, after]
        self.meta = meta
        self.width, self.height = before.width, before.height
        self.geotransform, self.projection = before.geotransform, before.projection
        self.dn_offset, self.scale = before.dn_offset, before.scale
        self.level = "/".join(p.level for p in self.sides)
        self.source = str(before.source)
        self.notes = []
        for p in self.sides:
            self.notes += [n for n in p.notes if n not in self.notes]
        self.own_blocks = [side_blocks(p, meta) for p in self.sides]
        self.blocks = [Block(f"{base_name(b.name)}@{side}", b.channels, b.stride)
                       for side, blocks in zip(SIDES, self.own_blocks) for b in blocks]
        # and what changed: after minus before, block by block (no change is then near zero whatever
        # the ground, which a few "no change" examples teach far better than both sides side by side)
        self.blocks += [Block(f"{base_name(b.name)}@{CHANGE}", b.channels, b.stride) for b in self.own_blocks[0]]
        # one date: its bands and its validity; a series: its dates' bands and validity (SeriesInput)
        self.widths = [len(p.band_numbers) + (0 if self._series(p) else 1) for p in self.sides]
        self.band_numbers = list(range(1, sum(self.widths) + 1))
        self.files = list(files)

    @staticmethod
    def _series(prep) -> bool:
        from mpmae_core.runtime.inference.series import SeriesInput

        return isinstance(prep, SeriesInput)

    @property
    def embedding(self):
        """Another model's embedding, when both sides are one read alone (else None)."""
        return getattr(self.sides[0], "embedding", None) if hasattr(self.sides[0], "fingerprint") else None

    def fingerprint(self) -> dict:
        """What a head on two embeddings read alone records (their source's)."""
        return self.sides[0].fingerprint()

    def read_block(self, y: int, x: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Both sides' channels, each as it reads itself (a series: its dates' bands and validity;
        one date, or an embedding: its values, then its validity as one more channel); valid where
        both are."""
        from mpmae_core.runtime.inference.raster import read_block

        parts, ok = [], np.ones((h, w), bool)
        for p in self.sides:
            values, valid = read_block(p, y, x, h, w)
            parts.append(values if self._series(p) else np.concatenate([values, valid[None].astype(np.float32)]))
            ok &= valid
        return np.concatenate(parts, axis=0), ok

    def has_data(self, y: int, x: int, h: int, w: int) -> bool:
        from mpmae_core.runtime.inference.raster import has_data

        return all(has_data(p, y, x, h, w) for p in self.sides)

    def maps_runner(self, model, blocks: Sequence[Block]) -> "PairMaps":
        return PairMaps(self, model, blocks)

    def close(self) -> None:
        for p in self.sides:
            if hasattr(p, "close"):
                p.close()


class PairMaps:
    """A batch of pair tiles -> per tile: "<block>@<side>" -> map, for the blocks asked for."""

    def __init__(self, pair: PairInput, model, blocks: Sequence[Block]):
        from mpmae_core.runtime.inference.pixel_features import maps_runner
        from mpmae_core.runtime.inference.series import SeriesInput

        self.pair, self.names = pair, {b.name for b in blocks}
        self.runners, self.renames, self.series = [], [], []
        self.differences = [base_name(n) for n in self.names if n.endswith(f"@{CHANGE}")]
        for side, prep, own in zip(SIDES, pair.sides, pair.own_blocks):
            wanted = [b for b in own if f"{base_name(b.name)}@{side}" in self.names or
                      base_name(b.name) in self.differences]
            self.runners.append(maps_runner(prep, model, wanted))
            self.renames.append({b.name: f"{base_name(b.name)}@{side}" for b in wanted})
            self.series.append(isinstance(prep, SeriesInput))

    def split(self, i: int, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Side i's part of a tile -> (T, C, h, w) values and (T, h, w) validity (T = 1 for one date)."""
        if self.series[i]:
            return self.runners[i].split(part)
        return part[:-1][None], (part[-1] > 0.5)[None]

    def __call__(self, x: np.ndarray) -> list[dict]:
        from mpmae_core.runtime.inference import temporal

        a = self.pair.widths[0]
        out = []
        for tile in x:
            sides = [self.split(0, tile[:a].copy()), self.split(1, tile[a:].copy())]
            summaries = []
            for values, valid in sides:  # each side's bands where it sees the ground: its median over dates
                med, _ = temporal.reduce_series(values, valid, ("median",), 1)
                summaries.append((med[:-1], valid.any(0)))
            maps = {}
            for i, (values, valid) in enumerate(sides):
                other, seen = summaries[1 - i]
                hole = ~valid.any(0) & seen  # this side never sees the pixel, the other does: no change there
                if hole.any():
                    for t in range(values.shape[0]):
                        values[t][:, hole] = other[:, hole]
                if self.series[i]:
                    part = np.concatenate([values.reshape(-1, *values.shape[2:]), valid.astype(np.float32)])
                else:
                    part = values[0]
                got = self.runners[i](part[None])[0]
                if not self.series[i] and SPECTRA in self.renames[i]:
                    got[SPECTRA] = values[0]
                maps.update({self.renames[i][k]: v for k, v in got.items() if k in self.renames[i]})
            for name in self.differences:
                maps[f"{name}@{CHANGE}"] = maps[f"{name}@after"] - maps[f"{name}@before"]
            out.append(maps)
        return out


class ChangeRunner:
    """(B, 2, th, tw): cosine distance of the encoder's maps and spectral change, per pixel."""

    def __init__(self, pair: PairInput, model):
        self.encoder = [(base_name(b.name), b.stride) for b in pair.own_blocks[0] if base_name(b.name) != SPECTRA]
        self.spectra = any(base_name(b.name) == SPECTRA for b in pair.own_blocks[0])  # not of embeddings alone
        self.names = ["cosine_distance"] + (["spectral_change"] if self.spectra else [])
        self.maps = PairMaps(pair, model, pair.blocks)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        b, _, th, tw = x.shape
        out = np.empty((b, len(self.names), th, tw), np.float32)
        for i, tile in enumerate(x):
            maps = self.maps(tile[None])[0]
            if self.spectra:
                out[i, 1] = spectral_change(maps[f"{SPECTRA}@before"], maps[f"{SPECTRA}@after"])
            step = rows_per_chunk(2 * sum(maps[f"{n}@before"].shape[0] for n, _ in self.encoder), tw)
            for r0 in range(0, th, step):
                r1 = min(th, r0 + step)
                pairs = [(upsample_rows(maps[f"{n}@before"], s, r0, r1), upsample_rows(maps[f"{n}@after"], s, r0, r1))
                         for n, s in self.encoder]
                out[i, 0, r0:r1] = cosine_distance(pairs)
        return out


def cosine_distance(pairs: Sequence[tuple]) -> np.ndarray:
    """1 - the mean over blocks of the cosine similarity of (a, b), each (c, h, w); 1 where a
    vector is all zero (nothing to compare)."""
    sims = []
    for a, b in pairs:
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        dot = (a * b).sum(0)
        norm = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        sims.append(np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0))
    return (1.0 - np.mean(sims, axis=0)).astype(np.float32)


def spectral_change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The change vector's length over the bands, divided by sqrt(bands): (C, h, w) x2 -> (h, w)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.sqrt((d * d).mean(0)).astype(np.float32)


def otsu_threshold(counts: np.ndarray, edges: np.ndarray) -> float:
    """Otsu's threshold of a histogram: the bin edge that maximises the between-class variance of
    the values below and above it (the middle one when an empty gap gives several); NaN for an
    empty histogram."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return float("nan")
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)[:-1]
    w1 = total - w0
    s0 = np.cumsum(counts * centres)[:-1]
    m0 = s0 / np.where(w0 > 0, w0, 1)
    m1 = (s0[-1] + counts[-1] * centres[-1] - s0) / np.where(w1 > 0, w1, 1) if len(s0) else s0
    between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (m0 - m1) ** 2, -1.0)
    if not len(between) or between.max() < 0:
        return float("nan")
    # splits inside an empty gap of the histogram are the same split: take the gap's middle
    plateau = set(np.flatnonzero(between >= between.max() * (1 - 1e-9)).tolist())
    first = last = int(np.argmax(between))
    while last + 1 in plateau:
        last += 1
    while first - 1 in plateau:
        first -= 1
    return float(edges[1 + (first + last) // 2])


def prepare_pair(before, after, meta, *, before_dates=None, after_dates=None, min_valid: int = 1,
                 log: Callable[[str], None] = lambda m: None, **prep_kw) -> PairInput:
    """Both sides prepared on the grid of ``before`` (``series.prepare_source`` for each: a raster,
    a product or a series); with ``meta`` None, two embeddings of another model read alone
    (``embedding_sources.embedding_input``; e.g. two years of AlphaEarth)."""
    from mpmae_core.runtime.inference.predict import input_files
    from mpmae_core.runtime.inference.series import looks_like_series, prepare_source, reference_source
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.products import stack_path

    if meta is None:
        from mpmae_core.runtime.inference.embedding_sources import EmbeddingInput, embedding_input, on_grid_of

        kind = prep_kw.get("embedding_kind")
        a = embedding_input(before, kind, dates=before_dates, aoi=prep_kw.get("aoi"), log=log)
        b = embedding_input(after, kind, dates=after_dates, aoi=prep_kw.get("aoi"), log=log)
        if a.embedding.spec is not b.embedding.spec or a.embedding.dims != b.embedding.dims:
            raise ValueError(f"the two sides are different embeddings ({a.embedding.spec.title}, "
                             f"{b.embedding.spec.title}): their change means nothing; give two of one source")
        b = EmbeddingInput(on_grid_of(b.embedding, a, log), after)
        return PairInput(a, b, None, input_files(before) + input_files(after))

    a = prepare_source(before, meta, dates=before_dates, min_valid=min_valid, log=log, **prep_kw)
    grid = open_raster(stack_path(reference_source(before, dates=before_dates)))
    b = prepare_source(after, meta, dates=after_dates, min_valid=min_valid, grid=grid, log=log, **prep_kw)
    if (a.width, a.height) != (b.width, b.height):
        raise ValueError(f"the two sides are {a.width} x {a.height} and {b.width} x {b.height} px after bringing "
                         "them onto one grid: give both the same area of interest")
    for side, src in zip(SIDES, (before, after)):
        kind = "a period (series)" if looks_like_series(src) or (side == "before" and before_dates) or \
            (side == "after" and after_dates) else "one date"
        log(f"{side}: {kind}")
    return PairInput(a, b, meta, input_files(before) + input_files(after))


def change_magnitude(before, after, model_path, output, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                     batch: int = 0, device: str = "auto", before_dates=None, after_dates=None, min_valid: int = 1,
                     cog: bool = False, style: bool = True, progress=lambda f: None, cancelled=lambda: False,
                     log=lambda m: None, **prep_kw) -> dict:
    """The change magnitudes (see the module) as a 2-band float32 GeoTIFF, with the suggested
    thresholds in its metadata and a .qml showing the cosine distance."""
    from mpmae_core.runtime.inference.predict import TiledPredictor, TileSpec, check_outputs, check_tiling, \
        input_files, writer_guard
    from mpmae_core.runtime.inference.raster import RasterWriter
    from mpmae_core.runtime.io.styles import pseudocolor_qml, style_path
    from mpmae_core.runtime.inference.embedding_sources import without_model
    from mpmae_core.runtime.models.model import OnnxModel

    alone = without_model(model_path)  # two embeddings of another model, read alone
    check_tiling(tile, 0 if alone else overlap, batch)
    check_outputs({"output": output}, input_files(before) + input_files(after) + ([] if alone else [str(model_path)]))
    model = None if alone else OnnxModel(model_path, device=device, log=log)
    if model is not None and model.metadata.kind != "encoder":
        raise ValueError(f"'{model_path}' is a {model.metadata.kind} model; change needs an encoder model")
    pair = prepare_pair(before, after, model.metadata if model else None, before_dates=before_dates,
                        after_dates=after_dates, min_valid=min_valid, log=log, **prep_kw)
    for note in pair.notes:
        log(note)
    runner = ChangeRunner(pair, model)
    predictor = TiledPredictor(model, pair, TileSpec(tile, 0 if alone else overlap, 1), "probabilities",
                               runner=runner, patch=model.metadata.patch_size if model else 1)
    names = runner.names
    hist = {n: np.zeros(OTSU_BINS, np.int64) for n in names}
    edges = {n: np.linspace(*RANGES[n], OTSU_BINS + 1) for n in names}
    writer = RasterWriter(output, predictor.out_w, predictor.out_h, len(names), "float32", pair.geotransform,
                          pair.projection, nodata=float("nan"), descriptions=names, cog=cog)

    def write(y, values, valid):
        writer.write_rows(y, values, valid)
        for k, n in enumerate(names):
            v = values[k][valid]
            hist[n] += np.histogram(np.clip(v, *RANGES[n]), bins=edges[n])[0]

    stats = writer_guard([writer], lambda: predictor.run(write, progress, cancelled))
    thresholds = {n: otsu_threshold(hist[n], edges[n]) for n in names}
    writer.ds.SetMetadata({THRESHOLD_KEYS[n]: f"{t:.6g}" for n, t in thresholds.items()})
    changed = {n: float(hist[n][np.searchsorted(edges[n], t, side="right") - 1:].sum() / max(hist[n].sum(), 1))
               for n, t in thresholds.items() if np.isfinite(t)}
    cosine, suggested = hist["cosine_distance"], thresholds["cosine_distance"]
    p99_bin = int(np.searchsorted(np.cumsum(cosine), 0.99 * cosine.sum())) + 1
    p99 = float(edges["cosine_distance"][min(OTSU_BINS, p99_bin)])
    qml = pseudocolor_qml(0.0, max(p99, suggested * 1.5 if np.isfinite(suggested) else p99, 1e-3))  # the colours' top
    writer_guard([writer], lambda: writer.close({style_path(output): qml} if style else None))
    for n, t in thresholds.items():
        if np.isfinite(t):
            log(f"suggested threshold on {n.replace('_', ' ')} (Otsu): {t:.3g}; {changed[n]:.1%} of the valid pixels "
                "lie above it. A suggestion from the histogram, not a tested rule: check it against places you know")
    pair.close()
    return dict(stats, output=str(output), thresholds=thresholds, changed=changed, width=predictor.out_w,
                height=predictor.out_h, provider=model.providers[0] if model else "numpy")
