"""Linear heads in numpy: multinomial logistic regression, grouped folds, the ONNX head.

The self-choosing per-pixel head (``pixelhead``) fits its logistic candidates here, and the
evaluation's linear probe (``mpmae_core.evaluation``) fits ``LinearHead`` on embeddings.

The classifier follows the paper's linear-probe protocol: LayerNorm over each embedding (no
affine), then a linear layer, trained here as L2-regularised multinomial logistic regression
with class-balanced sample weights (a class with one big polygon counts as much as a class with
a few points). Features are standardised per channel after the LayerNorm; the standardisation is
folded into the ONNX head's LayerNormalization so the saved file is self-contained.

Optimisation is Nesterov's accelerated gradient with adaptive restart and step 1/L, where L
bounds the loss's curvature (0.5 * largest eigenvalue of the weighted feature covariance, plus
the L2 weight): deterministic, needs no tuning, converges in a few hundred cheap steps.

Folds are grouped and stratified: all samples of one labelled feature (a polygon) go to the
same fold, so nearby, near-identical samples never sit on both sides of a split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.models import onnx_writer
from mpmae_core.runtime.io.files import atomic_output
from mpmae_core.runtime.models.metadata import METADATA_KEY, ModelMetadata, head_metadata

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
    from mpmae_core.runtime.models.metadata import MAX_CLASSES

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


def cap_per_class(y: np.ndarray, cap: int, seed: int = 0) -> np.ndarray:
    """Indices keeping at most ``cap`` samples per class (random, seeded), in original order."""
    rng = np.random.default_rng(seed)
    keep = [idx if len(idx) <= cap else rng.choice(idx, cap, replace=False) for idx in
            (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.sort(np.concatenate(keep))
