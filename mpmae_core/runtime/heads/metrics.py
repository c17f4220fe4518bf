"""Classification metrics from a confusion matrix: small pure numpy functions.

Convention: ``cm[i, j]`` counts samples of true class i predicted as class j. Classes absent
from the truth have undefined recall; they are NaN and left out of balanced accuracy and mIoU
(the means are over classes present in the truth).
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    y_true, y_pred = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{y_true.size} true labels but {y_pred.size} predictions")
    for name, y in (("true", y_true), ("predicted", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"{name} labels outside 0..{n_classes - 1}")
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num, den):
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def accuracy(cm) -> float:
    cm = np.asarray(cm)
    return float(np.trace(cm) / cm.sum()) if cm.sum() else float("nan")


def recall(cm) -> np.ndarray:
    """Per-class recall (the per-class accuracy): correct / true samples of the class."""
    cm = np.asarray(cm)
    return _ratio(np.diag(cm), cm.sum(1))


def precision(cm) -> np.ndarray:
    cm = np.asarray(cm)
    return _ratio(np.diag(cm), cm.sum(0))


def f1(cm) -> np.ndarray:
    p, r = precision(cm), recall(cm)
    return _ratio(2 * p * r, p + r)


def iou(cm) -> np.ndarray:
    """Per-class intersection over union: TP / (TP + FP + FN); NaN for classes absent from the truth."""
    cm = np.asarray(cm)
    tp = np.diag(cm).astype(np.float64)
    out = _ratio(tp, cm.sum(0) + cm.sum(1) - tp)
    out[cm.sum(1) == 0] = np.nan
    return out


def balanced_accuracy(cm) -> float:
    r = recall(cm)
    return float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")


def mean_iou(cm) -> float:
    v = iou(cm)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def summary(cm, class_names=None) -> dict:
    """Everything a report shows, as plain Python numbers."""
    cm = np.asarray(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    per_class = {n: {"support": int(cm[i].sum()), "recall": float(recall(cm)[i]), "precision": float(precision(cm)[i]),
                     "f1": float(f1(cm)[i]), "iou": float(iou(cm)[i])} for i, n in enumerate(names)}
    return {"accuracy": accuracy(cm), "balanced_accuracy": balanced_accuracy(cm), "miou": mean_iou(cm),
            "per_class": per_class, "confusion": cm.tolist(), "classes": names}
