"""Few-shot heads on embeddings, in numpy: fit, cross-validate, save as ONNX.

The classifier follows the paper's linear-probe protocol: LayerNorm over each embedding (no
affine), then a linear layer, trained here as L2-regularised multinomial logistic regression
with class-balanced sample weights (a class with one big polygon counts as much as a class with
a few points). Features are standardised per channel after the LayerNorm; the standardisation is
folded into the ONNX head's LayerNormalization so the saved file is self-contained.

Optimisation is Nesterov's accelerated gradient with adaptive restart and step 1/L, where L
bounds the loss's curvature (0.5 * largest eigenvalue of the weighted feature covariance, plus
the L2 weight): deterministic, needs no tuning, converges in a few hundred cheap steps.

Cross-validation is grouped and stratified: all cells of one labelled feature (a polygon) go
to the same fold, so nearby, near-identical cells never sit on both sides of a split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime import metrics, onnx_writer
from mpmae_core.runtime.files import atomic_output
from mpmae_core.runtime.metadata import METADATA_KEY, ModelMetadata, head_metadata

LN_EPS = 1e-6


class FewShotError(ValueError):
    """The labels cannot give a head: too few classes or samples; the message says what to add."""


def layer_norm(x: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    """LayerNorm without affine over the last axis (float64)."""
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Sample weights summing to 1 with every present class summing to the same share."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = (counts > 0).sum()
    return 1.0 / (present * counts[y])


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2, sample_weight=None,
                iters: int = 500, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: minimise sum_i w_i CE(W x_i + b, y_i) + l2/2 ||W||^2.
    Returns W (K, D) and b (K,). Weights default to class-balanced (summing to 1)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.int64)
    n, d = x.shape
    w = balanced_weights(y, n_classes) if sample_weight is None else np.asarray(sample_weight, np.float64)
    w = w / w.sum()
    xb = np.hstack([x, np.ones((n, 1))])
    onehot = np.eye(n_classes)[y]
    lipschitz = 0.5 * float(np.linalg.eigvalsh((xb * w[:, None]).T @ xb)[-1]) + l2
    step = 1.0 / lipschitz
    reg = np.ones((d + 1, 1))
    reg[-1] = 0.0  # the bias is not regularised

    def gradient(theta):  # of the objective above (the restart rule needs no loss values)
        z = xb @ theta
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        return xb.T @ ((p - onehot) * w[:, None]) + l2 * theta * reg

    theta = np.zeros((d + 1, n_classes))
    look, t = theta.copy(), 1.0
    for _ in range(iters):
        grad = gradient(look)
        new = look - step * grad
        if np.sum(grad * (new - theta)) > 0:  # adaptive restart (O'Donoghue and Candes): drop the momentum
            t = 1.0
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        look = new + ((t - 1) / t_new) * (new - theta)
        converged = np.abs(new - theta).max() < tol
        theta, t = new, t_new
        if converged:
            break
    return theta[:-1].T.copy(), theta[-1].copy()


@dataclass
class LinearHead:
    """LayerNorm -> standardise -> linear, over embedding vectors; saved as an ONNX head."""

    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    mean: np.ndarray  # (D,) of the LayerNormed training features
    std: np.ndarray  # (D,)
    class_names: list
    class_colours: list = field(default_factory=list)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, class_names: Sequence[str], class_colours=None,
            l2: float = 1e-2, iters: int = 500) -> "LinearHead":
        k = len(class_names)
        feats = layer_norm(x)
        mean, std = feats.mean(0), feats.std(0)
        std = np.where(std > 1e-6, std, 1.0)
        weight, bias = fit_softmax((feats - mean) / std, y, k, l2=l2, iters=iters)
        colours = [list(c) for c in (class_colours or registry.suggest_class_colours(class_names))]
        return cls(weight, bias, mean, std, list(class_names), colours)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((layer_norm(x) - self.mean) / self.std) @ self.weight.T + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).argmax(1)

    def metadata(self, **kw) -> ModelMetadata:
        return head_metadata(self.class_names, self.class_colours, self.weight.shape[1], **kw)

    def onnx_bytes(self, **meta_kw) -> bytes:
        return onnx_writer.linear_head(self.weight, self.bias, mean=self.mean, std=self.std, layer_norm=True,
                                       eps=LN_EPS, metadata={METADATA_KEY: self.metadata(**meta_kw).to_json()})

    def save(self, path, **meta_kw) -> Path:
        path = Path(path)
        data = self.onnx_bytes(**meta_kw)
        with atomic_output(path) as tmp:
            Path(tmp).write_bytes(data)
        return path


# ----------------------------------------------------------------------------- validation

def check_labels(y: np.ndarray, groups: np.ndarray, class_names: Sequence[str], min_groups: int = 2,
                 what: str = "a head") -> None:
    """Refuse labels that cannot give a validated head (or segmenter), naming what to add."""
    from mpmae_core.runtime.metadata import MAX_CLASSES

    if len(class_names) > MAX_CLASSES:
        raise FewShotError(f"the labels name {len(class_names)} classes; class maps hold at most {MAX_CLASSES} "
                           "(one byte, 255 = no data). Check the class field (an id or a free-text field has a "
                           "value per feature), or merge classes")
    present = sorted(set(np.asarray(y).tolist()))
    if len(present) < 2:
        only = class_names[present[0]] if present else "none"
        raise FewShotError(f"{what} needs at least two classes, but the labels inside the raster have only one "
                           f"({only}). Label some places of at least one other class.")
    short = []
    for c in range(len(class_names)):
        n = len(set(np.asarray(groups)[np.asarray(y) == c].tolist()))
        if n < min_groups:
            short.append(f"'{class_names[c]}' ({n})")
    if short:
        raise FewShotError(f"too few labelled features for {', '.join(short)}: each class needs at least {min_groups} "
                           "points or polygons inside the raster (to train and to cross-validate). Add labels for "
                           "these classes, or remove them from the class field.")


def grouped_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """Fold index (0..k-1) per sample: each class's groups are shuffled and dealt round-robin, so
    every fold holds each class (when it has >= k groups) and no group is split across folds."""
    y, groups = np.asarray(y), np.asarray(groups)
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), np.int64)
    offset = 0
    for c in np.unique(y):
        members = np.unique(groups[y == c])
        rng.shuffle(members)
        for i, g in enumerate(members):
            fold[groups == g] = (i + offset) % k
        offset += len(members)  # start the next class where this one stopped: folds stay balanced
    return [np.flatnonzero(fold == f) for f in range(k)]


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray, class_names: Sequence[str], folds: int = 5,
                   seed: int = 0, l2: float = 1e-2, iters: int = 500) -> dict:
    """Grouped stratified k-fold (k = min(folds, fewest groups in a class)); the confusion matrix
    is pooled over folds. Returns metrics.summary plus the number of folds."""
    k_classes = len(class_names)
    min_groups = min(len(set(groups[y == c].tolist())) for c in np.unique(y))
    k = int(max(2, min(folds, min_groups)))
    cm = np.zeros((k_classes, k_classes), np.int64)
    for test in grouped_folds(y, groups, k, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        if len(np.unique(y[train])) < 2:
            continue
        head = LinearHead.fit(x[train], y[train], class_names, l2=l2, iters=iters)
        cm += metrics.confusion_matrix(y[test], head.predict(x[test]), k_classes)
    out = metrics.summary(cm, class_names)
    out["folds"] = k
    return out


def report_text(cv: dict, samples: dict) -> str:
    """Plain-text report: samples per class, cross-validated per-class accuracy, confusion matrix."""
    names = cv["classes"]
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  features  cells  CV accuracy  CV IoU"]
    for n in names:
        s, pc = samples.get(n, {}), cv["per_class"][n]
        lines.append(f"{n:<{width}}  {s.get('features', 0):>8}  {s.get('cells', 0):>5}  {pc['recall']:>11.1%}  "
                     f"{pc['iou']:>6.2f}")
    lines.append(f"overall accuracy {cv['accuracy']:.1%}, balanced accuracy {cv['balanced_accuracy']:.1%}, "
                 f"mIoU {cv['miou']:.2f} ({cv['folds']}-fold cross-validation, grouped by feature)")
    lines.append("confusion matrix (rows: labelled class, columns: predicted):")
    lines.append(" " * (width + 2) + " ".join(f"{n[:7]:>7}" for n in names))
    for n, row in zip(names, cv["confusion"]):
        lines.append(f"{n:<{width}}  " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def report_html(cv: dict, samples: dict, title: str = "Few-shot head") -> str:
    from html import escape

    names = cv["classes"]
    rows = "".join(
        f"<tr><td>{escape(n)}</td><td>{samples.get(n, {}).get('features', 0)}</td><td>{samples.get(n, {}).get('cells', 0)}"
        f"</td><td>{cv['per_class'][n]['recall']:.1%}</td><td>{cv['per_class'][n]['precision']:.1%}</td>"
        f"<td>{cv['per_class'][n]['iou']:.2f}</td></tr>" for n in names)
    cm_head = "".join(f"<th>{escape(n)}</th>" for n in names)
    cm_rows = "".join(f"<tr><th>{escape(n)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                      for n, row in zip(names, cv["confusion"]))
    return (f"<html><head><meta charset='utf-8'><title>{escape(title)}</title></head><body><h1>{escape(title)}</h1>"
            f"<p>{cv['folds']}-fold cross-validation grouped by labelled feature: overall accuracy "
            f"{cv['accuracy']:.1%}, balanced accuracy {cv['balanced_accuracy']:.1%}, mIoU {cv['miou']:.2f}.</p>"
            "<table border='1'><tr><th>class</th><th>features</th><th>cells</th><th>CV accuracy (recall)</th>"
            f"<th>CV precision</th><th>CV IoU</th></tr>{rows}</table><h2>Confusion matrix</h2>"
            f"<p>rows: labelled class; columns: predicted class</p><table border='1'><tr><th></th>{cm_head}</tr>"
            f"{cm_rows}</table><pre>{escape(json.dumps(cv, indent=1))}</pre></body></html>")


# ----------------------------------------------------------------------------- the whole job

def gather_samples(embeddings, features, class_names, log=lambda m: None, feature_ids=None) -> tuple:
    """Embedding vectors under labelled features: (x, y, groups, per-class sample counts).
    ``features``: (WKB in the embeddings raster's CRS, class index). Features outside the raster
    or over no data are skipped with a warning."""
    from mpmae_core.runtime.gdal_io import open_raster
    from mpmae_core.runtime.labels import label_cells, read_cells

    features = list(features)
    ids = list(feature_ids) if feature_ids is not None else list(range(1, len(features) + 1))

    def id_list(numbers, most: int = 10) -> str:
        return ", ".join(str(ids[i]) for i in numbers[:most]) + (", ..." if len(numbers) > most else "")

    ds = open_raster(embeddings)
    cells = label_cells(features, ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize)
    if cells.empty:
        log(f"warning: skipped {len(cells.empty)} feature(s) without a geometry")
    if cells.outside:
        log(f"warning: skipped {len(cells.outside)} of {len(features)} labelled feature(s) outside the raster "
            f"(feature ids {id_list(cells.outside)})")
    if cells.conflicts:
        log(cells.conflict_warning(class_names))
    x = read_cells(embeddings, cells.rows, cells.cols)
    ok = np.isfinite(x).all(1)
    nodata_features = sorted(set(cells.groups[~ok].tolist()) - set(cells.groups[ok].tolist()))
    if nodata_features:
        log(f"warning: skipped {len(nodata_features)} labelled feature(s) over pixels without data (feature ids "
            f"{id_list(nodata_features)})")
    if not ok.any():
        raise FewShotError("none of the labelled features lies over valid pixels of the raster: check that labels "
                           "and raster cover the same place (their CRS are reconciled automatically)")
    x, y, groups = x[ok], cells.classes[ok], cells.groups[ok]
    samples = {n: {"features": len(set(groups[y == i].tolist())), "cells": int((y == i).sum())}
               for i, n in enumerate(class_names)}
    return x, y, groups, samples


def labels_extent(source, features, workdir, log=lambda m: None, margin: int = 128, multiple: int = 32,
                  max_share: float = 0.5) -> str:
    """``source``, or a VRT window of it around the labels (plus ``margin`` px of context) when
    that window is at most ``max_share`` of the raster: only that part needs embedding."""
    from mpmae_core.runtime.gdal_io import gdal, open_raster
    from mpmae_core.runtime.labels import label_window

    ds = open_raster(source)
    window = label_window(features, ds.GetGeoTransform(), ds.RasterXSize, ds.RasterYSize, margin, multiple)
    if window is None or window[2] * window[3] > max_share * ds.RasterXSize * ds.RasterYSize:
        return str(source)
    vrt = str(Path(workdir) / "labels_extent.vrt")
    out = gdal().Translate(vrt, ds, format="VRT", srcWin=list(window))
    if out is None:
        return str(source)
    out = None
    log(f"embedding only the labels' extent: {window[2]} x {window[3]} of {ds.RasterXSize} x {ds.RasterYSize} px")
    return vrt


def cap_per_class(y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Indices keeping at most ``cap`` samples per class (random, seeded), in original order."""
    rng = np.random.default_rng(seed)
    keep = [idx if len(idx) <= cap else rng.choice(idx, cap, replace=False) for idx in
            (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.sort(np.concatenate(keep))


def train_head(source, model_path, features, class_names, output, *, embeddings=None, report_path=None, feature_ids=None,
               class_colours=None, l2: float = 1e-2, folds: int = 5, max_cells_per_class: int = 2000, seed: int = 0,
               progress=lambda f: None, cancelled=lambda: False, log=lambda m: None, **embed_kw) -> dict:
    """Embed (or reuse ``embeddings``), sample under the labels, cross-validate, fit on everything
    and save the head (ONNX) and an HTML report. Both outputs appear whole or not at all."""
    import tempfile

    from mpmae_core.runtime.files import PendingOutput, check_output
    from mpmae_core.runtime.fingerprint import encoder_fingerprint
    from mpmae_core.runtime.model import OnnxModel
    from mpmae_core.runtime.predict import Cancelled, embeddings_for, input_files

    inputs = input_files(source) + [str(model_path)] + (input_files(embeddings) if embeddings else [])
    check_output(output, inputs, "head", (".onnx",), "an ONNX model")
    if report_path:
        check_output(report_path, inputs + [str(output)], "report", (".html", ".htm"), "an HTML page")
    features = list(features)
    with tempfile.TemporaryDirectory(prefix="mmearth-head-") as work:
        if not embeddings:
            source = labels_extent(source, features, work, log, embed_kw.get("overlap", 128))
        emb, meta = embeddings_for(source, model_path, embeddings, work, cancelled=cancelled, log=log,
                                   progress=lambda f: progress(0.9 * f), **embed_kw)
        x, y, groups, samples = gather_samples(emb, features, class_names, log, feature_ids)
    check_labels(y, groups, class_names)
    keep = cap_per_class(y, max_cells_per_class, seed)
    if len(keep) < len(y):
        log(f"using {len(keep)} of {len(y)} labelled cells (at most {max_cells_per_class} per class)")
    x, y, groups = x[keep], y[keep], groups[keep]
    if cancelled():
        raise Cancelled("cancelled by the user; no output was written")
    cv = cross_validate(x, y, groups, class_names, folds=folds, seed=seed, l2=l2)
    progress(0.97)
    head = LinearHead.fit(x, y, class_names, class_colours, l2=l2)
    text = report_text(cv, samples)
    # The head and its report appear together, each complete, or neither does.
    pending = PendingOutput(output)
    try:
        pending.tmp.write_bytes(head.onnx_bytes(patch_size=meta.patch_size,
                                                source=f"few-shot head on {Path(model_path).name}",
                                                encoder=encoder_fingerprint(OnnxModel(model_path, device="cpu"))))
        if report_path:
            pending.companion(report_path).write_text(report_html(cv, samples, f"Few-shot head: {Path(output).name}"),
                                                      encoding="utf-8")
        pending.commit(lambda tmp: OnnxModel(tmp, device="cpu"))
    except BaseException:
        pending.abort()
        raise
    progress(1.0)
    return {"output": str(output), "report": str(report_path or ""), "text": text, "cv": cv, "samples": samples,
            "classes": list(class_names)}
