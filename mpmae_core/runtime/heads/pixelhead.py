"""Per-pixel few-shot heads that choose themselves on the user's labels.

Labels are taken at the raster's own resolution (``labels.label_cells`` on the raster's grid: a
point labels its pixel, or the pixels within a buffer; a polygon its pixels, capped per class).
Each labelled pixel gets its feature vector (``pixel``: spectra and hypercolumns). Then every
*candidate* is scored by grouped, stratified cross-validation (all pixels of one labelled feature
in one fold), on the same folds, and the chosen one is also scored in spatial blocks
(``heads.spatial``: the labels in one square block of the map in one fold, so no head is scored
next to a place it trained on), shown beside; ``choose_on="spatial"`` chooses on the blocks
instead. Neither figure is the map's accuracy (``heads.validation`` gives that, from a validation
sample). The candidates:

- feature sets: ``spectra`` (the pixel's normalised bands), ``encoder`` (every encoder stage,
  upsampled), ``both``;
- classifiers: multinomial logistic regression at a few L2 strengths, and a random forest;
- and one ensemble: the mean class probability of the best head of each of the three best
  families (a family is a feature set with a classifier), scored on the same folds from its
  members' out-of-fold probabilities. With a dozen labels per class a single head's choice is
  noisy, and averaging heads that see different features or decide differently lowers the
  variance; the ensemble wins only where its cross-validated score says so.

The chosen candidate has the lowest cross-validated Brier score, averaged per class so that every
class counts the same (as in a few-shot map every class matters). The Brier score is a proper
scoring rule on the predicted probabilities: with a dozen labels per class it separates
candidates far more steadily than accuracy, which moves in steps of one labelled point. An exact
tie goes to the candidate cheaper to run (fewer features, then logistic before forest, then
stronger regularisation). Accuracy, balanced accuracy and mIoU are reported for every candidate.
The chosen head is fitted on all labels and saved as ONNX: a linear layer with the
standardisation folded in, a ``TreeEnsembleClassifier``, or for the ensemble both kinds side by
side on their own columns, their probabilities averaged.

Feature blocks are weighted equally: for logistic regression each standardised block is scaled so
that every block carries the same total variance (12 bands are not drowned by 600 encoder
channels); the forest draws the features it tries at a node with the same block-equal weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.heads import metrics
from mpmae_core.runtime.models import onnx_writer
from mpmae_core.runtime.heads.linear import FewShotError, check_labels, fit_softmax, grouped_folds
from mpmae_core.runtime.heads.forest import RandomForest
from mpmae_core.runtime.models.metadata import METADATA_KEY, ModelMetadata
from mpmae_core.runtime.inference.pixel_features import ALL_FEATURE_SETS, DIFFERENCE_FEATURE_SETS, \
    EXTERNAL_FEATURE_SETS, FEATURE_SETS, SPECTRA, TEMPORAL_FEATURE_SETS, Block, feature_set_blocks, \
    feature_set_columns, reference_own, union_feature_set
from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

CLASSIFIERS = ("logistic", "forest")
L2_STRENGTHS = (1e-3, 1e-2, 1e-1)
TIE = 1e-9  # Brier scores this close count as a tie, won by the cheaper candidate
FOREST_TREES = 100
ENSEMBLE_SIZE = 3  # the ensemble candidate averages the best head of this many candidate families


@dataclass(frozen=True)
class Candidate:
    feature_set: str
    classifier: str  # "logistic", "forest" or "ensemble" (the mean probability of ``members``)
    l2: float = 0.0
    members: tuple = ()

    @classmethod
    def ensemble(cls, members: Sequence["Candidate"]) -> "Candidate":
        return cls(union_feature_set([m.feature_set for m in members]), "ensemble", 0.0, tuple(members))

    @property
    def name(self) -> str:
        if self.classifier == "ensemble":
            return f"mean of {len(self.members)}: " + "; ".join(m.name for m in self.members)
        how = f"logistic regression (L2 {self.l2:g})" if self.classifier == "logistic" else "random forest"
        return f"{self.feature_set} + {how}"

    def cost(self, blocks: Sequence[Block]) -> tuple:
        """Sort key: cheaper first (fewer features, linear before forest before an ensemble, stronger
        regularisation)."""
        n = sum(b.channels for b in feature_set_blocks(blocks, self.feature_set))
        rank = len(CLASSIFIERS) if self.classifier == "ensemble" else CLASSIFIERS.index(self.classifier)
        return (n, rank, -self.l2)


def candidates(feature_sets: Sequence[str] = FEATURE_SETS, classifiers: Sequence[str] = CLASSIFIERS,
               l2s: Sequence[float] = L2_STRENGTHS) -> list[Candidate]:
    out = []
    for fs in feature_sets:
        if fs not in ALL_FEATURE_SETS:
            raise ValueError(f"unknown feature set {fs!r}; choose from {', '.join(ALL_FEATURE_SETS)}")
        for clf in classifiers:
            if clf not in CLASSIFIERS:
                raise ValueError(f"unknown classifier {clf!r}; choose from {', '.join(CLASSIFIERS)}")
            out += [Candidate(fs, clf, l2) for l2 in l2s] if clf == "logistic" else [Candidate(fs, clf)]
    return out


def block_scales(blocks: Sequence[Block]) -> np.ndarray:
    """Per feature: the factor giving every block the same total variance once standardised
    (1 everywhere for a single block)."""
    total = sum(b.channels for b in blocks)
    return np.concatenate([np.full(b.channels, np.sqrt(total / (len(blocks) * b.channels))) for b in blocks])


@dataclass
class PixelHead:
    """A fitted head on the joined features of ``blocks``."""

    blocks: list
    classifier: str
    class_names: list
    class_colours: list = field(default_factory=list)
    l2: float = 0.0
    weight: Optional[np.ndarray] = None  # logistic: (K, F) on raw features (standardisation folded in)
    bias: Optional[np.ndarray] = None
    forest: Optional[RandomForest] = None
    members: list = field(default_factory=list)  # ensemble: (head, its columns of these features)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, blocks: Sequence[Block], candidate: Candidate, class_names,
            class_colours=None, seed: int = 0) -> "PixelHead":
        """``x``: (n, F) features of exactly ``blocks``."""
        k = len(class_names)
        colours = [list(c) for c in (class_colours or registry.suggest_class_colours(class_names))]
        head = cls(list(blocks), candidate.classifier, list(class_names), colours, candidate.l2)
        if candidate.classifier == "ensemble":
            for m in candidate.members:
                sub, cols = feature_set_columns(blocks, m.feature_set)
                head.members.append((cls.fit(x[:, cols], y, sub, m, class_names, colours, seed=seed), cols))
        elif candidate.classifier == "logistic":
            mean = x.mean(0)
            std = x.std(0)
            std = np.where(std > 1e-6, std, 1.0)
            scale = block_scales(blocks) / std
            w, b = fit_softmax((x - mean) * scale, y, k, l2=candidate.l2)
            head.weight = (w * scale[None, :]).astype(np.float64)
            head.bias = (b - head.weight @ mean).astype(np.float64)
        else:
            fw = np.concatenate([np.full(bl.channels, 1.0 / bl.channels) for bl in blocks])
            head.forest = RandomForest(n_trees=FOREST_TREES, seed=seed).fit(x, y, k, feature_weights=fw)
        return head

    @property
    def n_features(self) -> int:
        return sum(b.channels for b in self.blocks)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        if self.members:
            return np.mean([h.probabilities(x[:, cols]) for h, cols in self.members], axis=0)
        if self.forest is not None:
            return self.forest.predict_proba(x)
        z = np.asarray(x, np.float64) @ self.weight.T + self.bias
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(1, keepdims=True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x).argmax(1)

    def describe(self) -> str:
        sets = "+".join(b.name for b in self.blocks)
        if self.members:
            return f"mean probability of {len(self.members)} heads (" + "; ".join(
                h.describe() for h, _ in self.members) + f") on {sets} ({self.n_features} features per pixel)"
        how = f"logistic regression, L2 {self.l2:g}" if self.classifier == "logistic" else \
            f"random forest, {FOREST_TREES} trees"
        return f"{how} on {sets} ({self.n_features} features per pixel)"

    def metadata(self, patch_size: int, source: str = "", task: str = "few-shot",
                 encoder: Optional[dict] = None, input_columns: Sequence[int] = ()) -> ModelMetadata:
        return ModelMetadata(kind="head", task=task, class_names=list(self.class_names), encoder=dict(encoder or {}),
                             class_colours=[[int(v) for v in c] for c in self.class_colours],
                             embedding_dim=self.n_features, patch_size=patch_size, output_stride=1, source=source,
                             features=[b.name for b in self.blocks], feature_channels=[b.channels for b in self.blocks],
                             classifier=self.describe(), input_columns=[int(c) for c in input_columns])

    def used_columns(self) -> np.ndarray:
        """The feature columns the head reads (a forest: only those its trees split on), increasing."""
        if getattr(self, "_used_columns", None) is None:
            self._used_columns = self.graph_parts()[1]
        return self._used_columns

    def graph_parts(self, full_input: bool = False) -> tuple[list, np.ndarray]:
        """(the graph's members, the columns of the features it reads): a forest's trees read only
        the features they split on, so its graph takes only those (``input_columns`` of the
        metadata; ``segment`` then builds only them); a linear member reads all of its columns."""
        own = self.members or [(self, np.arange(self.n_features))]
        parts = []
        for h, cols in own:
            cols = np.asarray(cols, np.int64)
            if h.forest is not None and full_input:
                parts.append({"columns": cols, "kind": "forest", "trees": h.forest.onnx_arrays()})
            elif h.forest is not None:
                trees = h.forest.onnx_arrays()
                split = trees["mode"] != "LEAF" if isinstance(trees["mode"], np.ndarray) else \
                    np.array([m != "LEAF" for m in trees["mode"]])
                used = np.unique(trees["feature"][split]) if split.any() else np.zeros(1, np.int64)
                trees = dict(trees, feature=np.where(split, np.searchsorted(used, trees["feature"]), 0))
                parts.append({"columns": cols[used], "kind": "forest", "trees": trees})
            else:
                parts.append({"columns": cols, "kind": "linear", "weight": h.weight, "bias": h.bias})
        needed = np.unique(np.concatenate([p["columns"] for p in parts]))
        for p in parts:  # each member's columns among those the graph takes
            p["columns"] = np.searchsorted(needed, p["columns"])
        return parts, needed

    def onnx_bytes(self, patch_size: int, source: str = "", encoder: Optional[dict] = None,
                   full_input: bool = False) -> bytes:
        """The head as ONNX with its metadata; ``full_input``: a forest's graph on every column, as
        written before issue 26 (the benchmark's and the tests' baseline)."""
        if self.weight is not None and not self.members:
            meta = {METADATA_KEY: self.metadata(patch_size, source, encoder=encoder).to_json()}
            return onnx_writer.linear_head(self.weight, self.bias, metadata=meta, input_name="features")
        parts, needed = self.graph_parts(full_input)
        columns = needed if needed.size < self.n_features else ()
        meta = {METADATA_KEY: self.metadata(patch_size, source, encoder=encoder, input_columns=columns).to_json()}
        if self.members:
            return onnx_writer.ensemble_head(int(needed.size), len(self.class_names), parts, metadata=meta)
        return onnx_writer.forest_head(int(needed.size), len(self.class_names), parts[0]["trees"], metadata=meta)


# ----------------------------------------------------------------------------- selection

def score_candidates(x: np.ndarray, y: np.ndarray, groups: np.ndarray, blocks: Sequence[Block], class_names,
                     cands: Sequence[Candidate], folds: int = 5, seed: int = 0, cancelled=lambda: False,
                     progress=lambda f: None, fold_groups: Optional[np.ndarray] = None) -> list[dict]:
    """Cross-validated scores of every candidate on the same grouped, stratified folds. ``x``
    holds the features of all ``blocks``; no fold ever scores a labelled feature it trained on.
    ``fold_groups`` (spatial blocks, ``heads.spatial``; each holding whole features): folds by
    them instead, so no fold scores a place next to one it trained on. With candidates of at least
    two families, the ensemble candidate (:func:`ensemble_score`) comes last."""
    from mpmae_core.runtime.io.files import Cancelled

    k_classes = len(class_names)
    kind = "grouped" if fold_groups is None else "spatial"
    by = groups if fold_groups is None else np.asarray(fold_groups)
    if fold_groups is None:
        min_groups = min(len(set(groups[y == c].tolist())) for c in np.unique(y))
    else:  # a block may hold several classes: at most as many folds as blocks
        min_groups = len(set(by.tolist()))
    k = int(max(2, min(folds, min_groups)))
    fold_idx = grouped_folds(y, by, k, seed)
    out = []
    for i, cand in enumerate(cands):
        sub, cols = feature_set_columns(blocks, cand.feature_set)
        oof = np.full((len(y), k_classes), np.nan)
        t0 = time.time()
        for test in fold_idx:
            if cancelled():
                raise Cancelled("cancelled by the user; no output was written")
            train = np.setdiff1d(np.arange(len(y)), test)
            if len(np.unique(y[train])) < 2:
                continue
            head = PixelHead.fit(x[np.ix_(train, cols)], y[train], sub, cand, class_names, seed=seed)
            prob = head.probabilities(x[np.ix_(test, cols)])
            oof[test] = prob
        out.append(_oof_score(cand, oof, y, class_names, k, time.time() - t0, kind))
        progress((i + 1) / len(cands))
    ens = ensemble_score(out, y, class_names)
    if ens is not None:
        out.append(ens)
    return out


def _oof_score(cand: Candidate, oof: np.ndarray, y: np.ndarray, class_names, folds: int, seconds: float,
               kind: str = "grouped") -> dict:
    """Scores from out-of-fold class probabilities (rows of NaN: never scored)."""
    k_classes = len(class_names)
    ok = np.isfinite(oof).all(1)
    cm = metrics.confusion_matrix(y[ok], oof[ok].argmax(1), k_classes)
    sq_err = np.full(len(y), np.nan)
    sq_err[ok] = ((oof[ok] - np.eye(k_classes)[y[ok]]) ** 2).sum(1)
    s = metrics.summary(cm, class_names)
    return {"candidate": cand, "name": cand.name, "accuracy": s["accuracy"],
            "balanced_accuracy": s["balanced_accuracy"], "miou": s["miou"], "brier": balanced_brier(sq_err, y),
            "confusion": cm.tolist(), "per_class": s["per_class"], "folds": folds, "seconds": seconds, "oof": oof,
            "cv": kind}


def ensemble_members(scores: Sequence[dict], size: int = ENSEMBLE_SIZE) -> list[int]:
    """Indices of the ensemble's members: the best (lowest Brier) candidate of each family
    (feature set and classifier), the ``size`` best families. A family is counted once, so the
    members differ in what they see or how they decide, not only in their regularisation."""
    seen, picked = set(), []
    for i in sorted(range(len(scores)), key=lambda j: scores[j]["brier"]):
        c = scores[i]["candidate"]
        if c.classifier == "ensemble" or (c.feature_set, c.classifier) in seen:
            continue
        seen.add((c.feature_set, c.classifier))
        picked.append(i)
    return picked[:size]


def ensemble_score(scores: Sequence[dict], y: np.ndarray, class_names, size: int = ENSEMBLE_SIZE):
    """The ensemble candidate, scored on the same folds from its members' out-of-fold
    probabilities (their mean), or None with fewer than two families. Its members are picked on
    those folds too, so its score is slightly optimistic; that is why it averages a few
    different families rather than searching for the best combination."""
    idx = ensemble_members(scores, size)
    if len(idx) < 2:
        return None
    oof = np.mean([scores[i]["oof"] for i in idx], axis=0)
    cand = Candidate.ensemble([scores[i]["candidate"] for i in idx])
    return _oof_score(cand, oof, y, class_names, scores[idx[0]]["folds"], sum(scores[i]["seconds"] for i in idx),
                      scores[idx[0]].get("cv", "grouped"))


def balanced_brier(sq_err: np.ndarray, y: np.ndarray) -> float:
    """Mean over classes of the mean squared probability error of their samples (NaN-free part)."""
    ok = np.isfinite(sq_err)
    per_class = [sq_err[ok & (y == c)].mean() for c in np.unique(y[ok])]
    return float(np.mean(per_class)) if per_class else float("inf")


def choose(scores: list[dict], blocks: Sequence[Block], tie: float = TIE) -> tuple[int, str]:
    """Index of the chosen candidate and why, in words (see the module's rule)."""
    best = min(s["brier"] for s in scores)
    close = [i for i, s in enumerate(scores) if s["brier"] <= best + tie]
    pick = min(close, key=lambda i: scores[i]["candidate"].cost(blocks))
    s = scores[pick]
    how = "in spatial blocks" if s.get("cv") == "spatial" else "grouped by labelled feature"
    why = (f"lowest cross-validated Brier score ({s['brier']:.3f}, class-balanced; {s['folds']}-fold, {how}), "
           f"balanced accuracy {s['balanced_accuracy']:.1%}")
    runner = min((x for i, x in enumerate(scores) if i not in close), key=lambda x: x["brier"], default=None)
    if runner:
        why += f"; next best {runner['name']} at {runner['brier']:.3f}"
    if len(close) > 1:
        why += f"; {len(close) - 1} other candidate(s) tie and this one is the cheapest to run"
    return pick, why


NOT_MAP_ACCURACY = ("Neither figure is the map's accuracy: both come from the labels, which sit on clear, chosen "
                    "places. A validation sample the map did not choose gives that (mmearth sample-design, then "
                    "mmearth assess; in QGIS 'Validation sample design' and 'Accuracy and area').")


def cv_lines(cv: dict) -> list:
    """The chosen head's cross-validated figures: spatial blocks (when used) beside grouped folds."""
    lines = []
    sp, gr = cv.get("spatial"), cv.get("grouped")
    if sp:
        lines.append(f"spatial-block CV (blocks of {cv['block_m']:g} m, {sp['folds']} folds): accuracy "
                     f"{sp['accuracy']:.1%}, balanced accuracy {sp['balanced_accuracy']:.1%}")
    if gr:
        lines.append(f"grouped CV (by labelled feature, {gr['folds']} folds): accuracy {gr['accuracy']:.1%}, "
                     f"balanced accuracy {gr['balanced_accuracy']:.1%}")
    lines.append(NOT_MAP_ACCURACY)
    return lines


def report_text(scores: list[dict], chosen: int, why: str, samples: dict, cv: Optional[dict] = None) -> str:
    names = list(samples)
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  features  pixels"]
    for n in names:
        lines.append(f"{n:<{width}}  {samples[n]['features']:>8}  {samples[n]['pixels']:>6}")
    how = "in spatial blocks" if scores[chosen].get("cv") == "spatial" else "grouped by labelled feature"
    lines.append(f"candidates (cross-validated, {how}):")
    cw = max(len(s["name"]) for s in scores)
    lines.append(f"  {'candidate':<{cw}}  accuracy  balanced  mIoU  Brier")
    for i, s in enumerate(scores):
        mark = "*" if i == chosen else " "
        lines.append(f"{mark} {s['name']:<{cw}}  {s['accuracy']:>8.1%}  {s['balanced_accuracy']:>8.1%}  "
                     f"{s['miou']:>4.2f}  {s['brier']:.3f}")
    lines.append(f"chosen: {scores[chosen]['name']} - {why}")
    if cv:
        lines += cv_lines(cv)
    return "\n".join(lines)


def report_html(scores: list[dict], chosen: int, why: str, samples: dict, title: str, cv: Optional[dict] = None) -> str:
    from html import escape

    s = scores[chosen]
    names = list(samples)
    rows = "".join(
        f"<tr{' style=font-weight:bold' if i == chosen else ''}><td>{escape(c['name'])}</td>"
        f"<td>{c['accuracy']:.1%}</td><td>{c['balanced_accuracy']:.1%}</td><td>{c['miou']:.2f}</td>"
        f"<td>{c['brier']:.3f}</td><td>{c['seconds']:.1f}</td></tr>" for i, c in enumerate(scores))
    counts = "".join(f"<tr><td>{escape(n)}</td><td>{samples[n]['features']}</td><td>{samples[n]['pixels']}</td>"
                     f"<td>{s['per_class'][n]['recall']:.1%}</td><td>{s['per_class'][n]['precision']:.1%}</td>"
                     f"<td>{s['per_class'][n]['iou']:.2f}</td></tr>" for n in names)
    cm_head = "".join(f"<th>{escape(n)}</th>" for n in names)
    cm_rows = "".join(f"<tr><th>{escape(n)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                      for n, row in zip(names, s["confusion"]))
    plain = [{k: v for k, v in c.items() if k not in ("candidate", "oof")} for c in scores]
    return (f"<html><head><meta charset='utf-8'><title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"
            f"<p><b>Chosen: {escape(s['name'])}</b>: {escape(why)}.</p>"
            + "".join(f"<p>{escape(line)}</p>" for line in (cv_lines(cv) if cv else [NOT_MAP_ACCURACY])) +
            f"<h2>Candidates</h2><p>{s['folds']}-fold cross-validation on the same folds for every candidate, "
            + ("in spatial blocks (the labels in one block of the map go to one fold, so no head is scored next to a "
               "place it trained on)" if s.get("cv") == "spatial" else "grouped by labelled feature (the pixels of one "
               "point or polygon never score a head trained on them)") + ".</p>"
            "<table border='1'><tr><th>candidate</th><th>accuracy</th><th>balanced accuracy</th><th>mIoU</th>"
            f"<th>Brier score (lower is better)</th><th>seconds</th></tr>{rows}</table>"
            "<h2>Chosen head per class</h2><table border='1'><tr><th>class</th><th>features</th><th>pixels</th>"
            f"<th>CV recall</th><th>CV precision</th><th>CV IoU</th></tr>{counts}</table>"
            f"<h2>Confusion matrix of the chosen head</h2><p>rows: labelled class; columns: predicted</p>"
            f"<table border='1'><tr><th></th>{cm_head}</tr>{cm_rows}</table>"
            f"<pre>{escape(json.dumps(plain, indent=1, default=float))}</pre></body></html>")


# ----------------------------------------------------------------------------- the whole job

def gather_pixels(prep, model, blocks, features, class_names, *, buffer_m: float = 0.0, max_per_class: int = 1000,
                  seed: int = 0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, feature_ids=None,
                  log=lambda m: None, progress=lambda f: None, cancelled=lambda: False, feature_raster=None,
                  optional=()) -> tuple:
    """Features (n, F) under the labels at pixel resolution, their classes, groups and counts;
    computed from the raster, or read from a precomputed ``feature_raster`` (blocks in order).
    A labelled pixel without data is dropped, unless only the ``optional`` blocks lack it (they
    keep their NaN, for the caller to decide)."""
    from mpmae_core.runtime.io.labels import cap_per_class_grouped, label_cells, read_pixels
    from mpmae_core.runtime.inference.pixel_features import block_slices, sample_features

    features = list(features)
    ids = list(feature_ids) if feature_ids is not None else list(range(1, len(features) + 1))

    def id_list(numbers, most: int = 10) -> str:
        return ", ".join(str(ids[i]) for i in numbers[:most]) + (", ..." if len(numbers) > most else "")

    cells = label_cells(features, prep.geotransform, prep.width, prep.height, point_buffer=buffer_m)
    if cells.empty:
        log(f"warning: skipped {len(cells.empty)} feature(s) without a geometry")
    if cells.outside:
        log(f"warning: skipped {len(cells.outside)} of {len(features)} labelled feature(s) outside the raster "
            f"(feature ids {id_list(cells.outside)})")
    if cells.conflicts:
        log(cells.conflict_warning(class_names))
    if cells.rows.size == 0:
        raise FewShotError("none of the labelled features lies inside the raster: check that labels and raster "
                           "cover the same place (their CRS are reconciled automatically)")
    keep = cap_per_class_grouped(cells.classes, cells.groups, max_per_class, seed)
    if len(keep) < cells.rows.size:
        log(f"using {len(keep)} of {cells.rows.size} labelled pixels (at most {max_per_class} per class, every "
            "labelled feature kept)")
    rows, cols, y, groups = cells.rows[keep], cells.cols[keep], cells.classes[keep], cells.groups[keep]
    if feature_raster is not None:
        path, raster_blocks = feature_raster
        values = read_pixels(path, rows, cols)
        sl = block_slices(raster_blocks)
        x = np.concatenate([values[:, sl[b.name]] for b in blocks], axis=1)
    else:
        x = sample_features(prep, model, blocks, rows, cols, tile, overlap, progress, cancelled)
    sl = block_slices(blocks)
    required = np.ones(x.shape[1], bool)
    for name in optional:
        required[sl[name]] = False
    ok = np.isfinite(x[:, required]).all(1)
    nodata = sorted(set(groups[~ok].tolist()) - set(groups[ok].tolist()))
    if nodata:
        log(f"warning: skipped {len(nodata)} labelled feature(s) over pixels without data, or masked as clouds or "
            f"shadows by the product (feature ids "
            f"{id_list(nodata)})")
    if not ok.any():
        raise FewShotError("none of the labelled features lies over valid pixels of the raster")
    x, y, groups, rows, cols = x[ok], y[ok], groups[ok], rows[ok], cols[ok]
    return x, y, groups, sample_counts(y, groups, class_names), (rows, cols)


def sample_counts(y: np.ndarray, groups: np.ndarray, class_names) -> dict:
    """class -> labelled features and pixels, as the reports show them."""
    return {n: {"features": len(set(groups[y == i].tolist())), "pixels": int((y == i).sum())}
            for i, n in enumerate(class_names)}


def choose_fit_and_write(x, y, groups, blocks, class_names, output, model, model_path, *, samples=None,
                         class_colours=None, report_path=None, cands=None, folds: int = 5, seed: int = 0,
                         positions=None, pixel_size_m: float = 10.0, block_m: Optional[float] = None,
                         choose_on: str = "grouped", embedding=None, progress=lambda f: None,
                         cancelled=lambda: False, log=lambda m: None) -> dict:
    """What every self-choosing head ends with: cross-validate the candidates on (x, y, groups),
    choose, fit the choice on all the labels, and write the head (ONNX, with the fingerprint of
    ``model``, or with ``model`` None of the ``embedding_sources.EmbeddingInput`` read alone) and
    its HTML report, both whole or neither. ``train_pixel_head`` and the panel's
    session both end here.

    The candidates are scored and chosen on folds grouped by labelled feature (``choose_on``
    "grouped", the default) or on folds of spatial blocks (``heads.spatial``; "spatial"). With
    ``positions`` (the labelled pixels' rows and columns) the chosen head is also scored on the
    other kind of folds, so the report shows both figures (blocks of ``block_m`` metres, or from
    the labels' spread). On the embedded scene, choosing on spatial blocks made worse maps in 5 of
    5 label sets (docs/results.md), so the default choice stays on grouped folds while the more
    honest spatial figure is reported beside it."""
    from mpmae_core.runtime.heads import spatial
    from mpmae_core.runtime.io.files import Cancelled, PendingOutput
    from mpmae_core.runtime.models.fingerprint import encoder_fingerprint
    from mpmae_core.runtime.models.model import OnnxModel

    class_names = list(class_names)
    samples = samples if samples is not None else sample_counts(y, groups, class_names)
    check_labels(y, groups, class_names)
    if choose_on not in ("grouped", "spatial"):
        raise ValueError(f"unknown folds to choose on {choose_on!r}: grouped (by labelled feature) or spatial "
                         "(blocks of the map)")
    fold_groups, side = None, 0
    if positions is not None:
        rows, cols = positions
        side = max(1, int(round(block_m / pixel_size_m))) if block_m else spatial.block_side(rows, cols, groups, folds)
        fold_groups = spatial.spatial_groups(rows, cols, groups, side)
        if len(set(fold_groups.tolist())) < 2:
            log(f"warning: every label lies in one block of {side * pixel_size_m:g} m: no spatial-block figure "
                "(label places further apart, or give a smaller block size)")
            fold_groups = None
    scores = score_candidates(x, y, groups, blocks, class_names, list(cands or candidates()), folds=folds, seed=seed,
                              cancelled=cancelled, progress=progress,
                              fold_groups=fold_groups if choose_on == "spatial" else None)
    chosen, why = choose(scores, blocks)
    cand = scores[chosen]["candidate"]
    figures = ("accuracy", "balanced_accuracy", "miou", "brier", "folds")
    cv = {scores[chosen]["cv"]: {k: scores[chosen][k] for k in figures},
          "block_m": side * pixel_size_m if fold_groups is not None else 0.0}
    if fold_groups is not None:  # the chosen head on the other kind of folds too, to show beside
        members = list(cand.members) if cand.classifier == "ensemble" else [cand]
        other = score_candidates(x, y, groups, blocks, class_names, members, folds=folds, seed=seed,
                                 cancelled=cancelled, fold_groups=None if choose_on == "spatial" else fold_groups)[-1]
        cv[other["cv"]] = {k: other[k] for k in figures}
    sub, cols = feature_set_columns(blocks, cand.feature_set)
    if cancelled():
        raise Cancelled("cancelled by the user; no output was written")
    head = PixelHead.fit(x[:, cols], y, sub, cand, class_names, class_colours, seed=seed)
    if model is None:  # an embedding read alone: the head records that embedding instead of an encoder
        patch, identity, on = 1, embedding.fingerprint(), Path(embedding.source).name
    else:
        patch, identity, on = model.metadata.patch_size, encoder_fingerprint(model), Path(model_path).name
    pending = PendingOutput(output)
    try:
        pending.tmp.write_bytes(head.onnx_bytes(patch, source=f"per-pixel head on {on}", encoder=identity))
        if report_path:
            pending.companion(report_path).write_text(
                report_html(scores, chosen, why, samples, f"Few-shot head: {Path(output).name}", cv), encoding="utf-8")
        pending.commit(lambda tmp: OnnxModel(tmp, device="cpu"))
    except BaseException:
        pending.abort()
        raise
    best = scores[chosen]
    return {"output": str(output), "report": str(report_path or ""),
            "text": report_text(scores, chosen, why, samples, cv), "scores": scores, "chosen": best["name"], "why": why,
            "samples": samples, "classes": class_names,
            "cv": {"accuracy": best["accuracy"], "balanced_accuracy": best["balanced_accuracy"], "miou": best["miou"],
                   "folds": best["folds"], "kind": best["cv"]}, "cv_detail": cv, "head": head}


def offered_feature_sets(blocks: Sequence[Block]) -> list:
    """Every feature set that holds something of ``blocks``, once: a set holding what an earlier
    one holds (an embedding read alone is 'embedding' and 'embedding+spectra' alike) is left out."""
    out, seen = [], set()
    for fs in FEATURE_SETS + TEMPORAL_FEATURE_SETS + DIFFERENCE_FEATURE_SETS + EXTERNAL_FEATURE_SETS:
        held = tuple(b.name for b in feature_set_blocks(blocks, fs))
        if held and held not in seen:
            out.append(fs)
            seen.add(held)
    return out


def open_head_input(source, model_path, *, embedding=None, embedding_kind: Optional[str] = None,
                    tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, device: str = "auto",
                    series: Optional[bool] = None, dates=None, reference: int = 0, min_valid: int = 1,
                    level: str = "auto", dn_offset="auto", band_map=None, scale: float = 1.0, aoi=None, masks=None,
                    seasons=(), feature_raster=None, log=lambda m: None) -> tuple:
    """(model, its metadata, the prepared input, the overlap to use) for a per-pixel head: the
    encoder and the raster (or series), with another model's ``embedding`` beside it; or, with no
    model (``embedding_sources.without_model``), the input as another model's embedding read
    alone (model and metadata None, no overlap)."""
    from mpmae_core.runtime.models.model import OnnxModel
    from mpmae_core.runtime.inference.embedding_sources import embedding_input, without_model
    from mpmae_core.runtime.inference.series import prepare_source

    alone = without_model(model_path)
    if alone:
        if embedding:
            raise ValueError("without an encoder model the input itself is the embedding: give it as the input, "
                             "or give the Sentinel-2 raster and the encoder with the embedding beside them")
        model, meta = None, None
        prep = embedding_input(source, embedding_kind, series=series, dates=dates, aoi=aoi,
                               feature_raster=feature_raster, log=log)
        overlap = 0  # a pixel's features are its own: no context to share between tiles
    else:
        model = OnnxModel(model_path, device=device, log=log)
        meta = model.metadata
        if meta.kind != "encoder":
            raise ValueError(f"'{model_path}' is a {meta.kind} model; a per-pixel head needs an encoder model")
        if tile % meta.patch_size or overlap % meta.patch_size:
            raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of the model's patch size "
                             f"{meta.patch_size}")
        prep = prepare_source(source, meta, series=series, dates=dates, reference=reference, min_valid=min_valid,
                              level=level, dn_offset=dn_offset, band_map=band_map, log=log, scale=scale, aoi=aoi,
                              masks=masks, seasons=seasons)
    if embedding:  # another model's embedding beside the raster: its own feature sets join the candidates
        from mpmae_core.runtime.inference.embedding_sources import with_embedding
        from mpmae_core.runtime.inference.raster import PreparedInput
        from mpmae_core.runtime.inference.series import SeriesInput

        if not isinstance(prep, (PreparedInput, SeriesInput)):
            raise ValueError("another model's embedding goes beside a raster or a series of dates")
        prep = with_embedding(prep, embedding, meta, embedding_kind, log)
    return model, meta, prep, overlap


def train_pixel_head(source, model_path, features, class_names, output, *, report_path=None, feature_ids=None,
                     class_colours=None, buffer_m: float = 0.0, feature_sets: Optional[Sequence[str]] = None,
                     classifiers: Sequence[str] = CLASSIFIERS, max_pixels_per_class: int = 1000, folds: int = 5,
                     seed: int = 0, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, device: str = "auto",
                     level: str = "auto", dn_offset="auto", band_map=None, scale: float = 1.0, feature_raster=None,
                     aoi=None, masks=None, block_m: Optional[float] = None, choose_on: str = "grouped",
                     series: Optional[bool] = None, dates=None, reference: int = 0, min_valid: int = 1,
                     seasons=(), embedding=None, embedding_kind: Optional[str] = None, progress=lambda f: None,
                     cancelled=lambda: False, log=lambda m: None) -> dict:
    """Sample features under the labels (or read them from ``feature_raster``, written by
    ``predict.features`` with this encoder), score every candidate, fit the chosen one on every
    label and save it (ONNX) with its report. Both outputs appear whole or not at all.

    ``source`` may be a series of dates (``series.prepare_source``); the candidates then include
    the temporal feature sets (default: every feature set; with ``seasons``, "MM-DD:MM-DD"
    windows, the spectra's median within each joins t-spectra). The reference date's own feature sets
    stay candidates only when that date is valid at every labelled pixel: a head on them would map
    nothing where it is cloudy, and its labels there would be lost."""
    from mpmae_core.runtime.io.files import check_output
    from mpmae_core.runtime.inference.embedding_sources import without_model
    from mpmae_core.runtime.inference.pixel_features import base_name, small_raster_warning
    from mpmae_core.runtime.inference.predict import check_tiling, input_files
    from mpmae_core.runtime.inference.series import series_of, source_blocks

    alone = without_model(model_path)  # the input is another model's embedding, read alone
    check_tiling(tile, 0 if alone else overlap, 0)
    if not isinstance(buffer_m, (int, float)) or not np.isfinite(buffer_m) or buffer_m < 0:
        raise ValueError(f"the point buffer must be a distance in metres >= 0, got {buffer_m!r}")
    inputs = input_files(source) + ([] if alone else [str(model_path)]) + \
        (input_files(feature_raster) if feature_raster else [])
    check_output(output, inputs, "head", (".onnx",), "an ONNX model")
    if report_path:
        check_output(report_path, inputs + [str(output)], "report", (".html", ".htm"), "an HTML page")
    candidates(feature_sets or FEATURE_SETS, classifiers)  # names checked before any work
    model, meta, prep, overlap = open_head_input(
        source, model_path, embedding=embedding, embedding_kind=embedding_kind, tile=tile, overlap=overlap,
        device=device, series=series, dates=dates, reference=reference, min_valid=min_valid, level=level,
        dn_offset=dn_offset, band_map=band_map, scale=scale, aoi=aoi, masks=masks, seasons=seasons,
        feature_raster=feature_raster, log=log)
    is_series = series_of(prep) is not None  # a series, alone or with another model's embedding beside
    if feature_sets is None:  # every set the input offers: a series adds the temporal, a change pair the differences
        feature_sets = offered_feature_sets(source_blocks(prep, meta))
    else:
        empty = [fs for fs in feature_sets if not feature_set_blocks(source_blocks(prep, meta), fs)]
        if empty:
            raise ValueError(f"the feature set(s) {', '.join(empty)} hold nothing on this input: t-spectra, t-encoder "
                             "and t-both need a series of dates (a quoted glob, paths separated by commas, a text file "
                             "of paths); d-spectra, d-encoder and d-both a change pair (mmearth change); spectra, "
                             "encoder and both a Sentinel-2 raster and the encoder; embedding, embedding+spectra and "
                             "embedding+encoder another model's embedding")
    cands = candidates(feature_sets, classifiers)
    for note in prep.notes:
        log(note)
    if not alone:
        small_raster_warning(prep, tile, log)
    available = source_blocks(prep, meta)
    used = {b.name for c in cands for b in feature_set_blocks(available, c.feature_set)}
    blocks = [b for b in available if b.name in used]
    needs_encoder = any(base_name(b.name) != SPECTRA for b in blocks)
    stored = None
    if feature_raster:
        stored = (str(feature_raster), check_feature_raster(feature_raster, prep, meta, blocks))
    t0 = time.time()
    single = [b.name for b in blocks if reference_own(b.name)]
    single = single if is_series and len(single) < len(blocks) else []  # optional only beside temporal blocks
    x, y, groups, samples, positions = gather_pixels(prep, model if needs_encoder else None, blocks, features,
                                                     class_names, buffer_m=buffer_m,
                                                     max_per_class=max_pixels_per_class, seed=seed, tile=tile,
                                                     overlap=overlap, feature_ids=feature_ids, log=log,
                                                     progress=lambda f: progress(0.5 * f), cancelled=cancelled,
                                                     feature_raster=stored, optional=single)
    if single:
        x, blocks, cands = _reference_date_sets(x, blocks, cands, series_of(prep), log)
    log(f"features of {len(y)} labelled pixels ({x.shape[1]} per pixel) in {time.time() - t0:.1f} s")
    res = choose_fit_and_write(x, y, groups, blocks, class_names, output, model, model_path, samples=samples,
                               class_colours=class_colours, report_path=report_path, cands=cands, folds=folds,
                               seed=seed, positions=positions, choose_on=choose_on,
                               pixel_size_m=abs(prep.geotransform[1]),
                               block_m=block_m, embedding=prep if alone else None,
                               progress=lambda f: progress(0.5 + 0.45 * f), cancelled=cancelled, log=log)
    progress(1.0)
    return res


def _reference_date_sets(x, blocks, cands, prep, log) -> tuple:
    """(x, blocks, candidates) without the reference date's own blocks when that date is masked
    (clouds, no data) at any labelled pixel (``pixel_features.without_masked_reference``): a head on
    them would lose those labels and map nothing where the date is cloudy. Called only when
    temporal candidates are among them (with the reference date's sets alone, such labels are
    skipped as over any raster's clouds)."""
    from mpmae_core.runtime.inference.pixel_features import without_masked_reference

    x, kept, lost = without_masked_reference(x, blocks)
    if not lost:
        return x, blocks, cands
    log(f"the reference date {prep.dates[prep.reference]} is masked at {lost} of {len(x)} labelled pixels: only the "
        "temporal feature sets are candidates (a head on that date's own features would map nothing under its "
        "clouds)")
    return x, kept, [c for c in cands if not any(reference_own(b.name)
                                                 for b in feature_set_blocks(blocks, c.feature_set))]


def check_feature_raster(path, prep, meta, blocks) -> list:
    """The blocks stored in a per-pixel feature raster, after checking it was written for this
    raster's grid by this encoder and holds every block needed; a ValueError names the fix."""
    from mpmae_core.runtime.io.gdal_io import grids_match, open_raster
    from mpmae_core.runtime.inference.predict import read_feature_raster_info

    info = read_feature_raster_info(path)
    fix = ("compute it with `python -m mpmae_core.runtime features` (QGIS: 'Compute embeddings' with per-pixel "
           "features) and this encoder, or leave it empty to compute the features now")
    if info is None:
        raise ValueError(f"'{path}' is not a per-pixel feature raster (a patch-stride embedding raster cannot feed a "
                         f"per-pixel head): {fix}")
    ds = open_raster(path)
    if (ds.RasterXSize, ds.RasterYSize) != (prep.width, prep.height) or \
            not grids_match(ds.GetGeoTransform(), prep.geotransform, prep.width, prep.height):
        raise ValueError(f"the feature raster '{path}' is not on the input raster's grid ({prep.width} x "
                         f"{prep.height} px): {fix}")
    stored = [Block(str(n), int(c), int(st)) for n, c, st in info["blocks"]]
    by_name = {b.name: b for b in stored}
    for b in blocks:
        if b.name not in by_name:
            raise ValueError(f"the feature raster '{path}' holds {', '.join(by_name)} but the head may need "
                             f"'{b.name}': {fix}")
        if by_name[b.name].channels != b.channels or info.get("embedding_dim") != meta.embedding_dim:
            raise ValueError(f"the feature raster '{path}' was computed with another encoder: {fix}")
    return stored
