"""A random forest in numpy, for few-shot heads where neither torch nor scikit-learn exists.

Classic Breiman forests (bootstrap samples, a random subset of features at each node, the split
that most lowers the class-weighted Gini impurity), grown level by level so that every node of a
level is split in a few vectorised numpy passes instead of a Python loop per node. Split
thresholds are taken from at most ``n_bins`` quantile cut points per feature (midpoints between
distinct values when a feature has fewer), as histogram-based forests do; with a few hundred
labelled pixels that is every distinct value.

Two choices made for few-shot mapping:
- class-balanced weights (each class weighs the same in every impurity and leaf), as the linear
  heads use, so that a class labelled with one big polygon does not drown the rest;
- ``feature_weights``: the features a node may try are drawn with these probabilities (without
  replacement), so that a block of 12 spectral bands is not swamped by 600 encoder channels.

A fitted forest is written to ONNX as ``TreeEnsembleClassifier`` (``onnx_writer.forest_head``);
its split tests are the same float32 comparisons, so ONNX Runtime gives the same probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

MAX_CHUNK = 8_000_000  # histogram entries per vectorised pass (bounds memory at deep levels)


def cut_points(x: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Per feature: sorted float32 thresholds t; a split sends x <= t left."""
    cuts = []
    for column in np.asarray(x, np.float32).T:
        values = np.unique(column[np.isfinite(column)])
        if values.size > n_bins:
            q = np.quantile(values, np.arange(1, n_bins) / n_bins)
            values = np.unique(q.astype(np.float32))
            cuts.append(values)
            continue
        cuts.append(((values[:-1].astype(np.float64) + values[1:]) / 2).astype(np.float32))
    return cuts


def bin_features(x: np.ndarray, cuts: list) -> np.ndarray:
    """(n, F) uint8 bins: the number of cut points below each value, so bin <= b <=> x <= cuts[b]."""
    x = np.asarray(x, np.float32)
    out = np.empty(x.shape, np.uint8)
    for f, c in enumerate(cuts):
        out[:, f] = np.searchsorted(c, x[:, f], side="left")
    return out


@dataclass
class Tree:
    feature: np.ndarray  # (nodes,) int, -1 at leaves
    threshold: np.ndarray  # (nodes,) float32
    left: np.ndarray  # (nodes,) int
    right: np.ndarray
    value: np.ndarray  # (nodes, K) class probabilities (leaves)


def _weighted_choice(rng, weights: np.ndarray, n_nodes: int, m: int) -> np.ndarray:
    """(n_nodes, m) distinct feature indices per node, drawn with probability ~ weights (Gumbel top-m)."""
    keys = np.log(rng.random((n_nodes, weights.size))) / weights[None, :]
    return np.argpartition(-keys, m - 1, axis=1)[:, :m]


def grow_tree(bins: np.ndarray, y: np.ndarray, w: np.ndarray, cuts: list, n_classes: int, max_features: int,
              feature_weights: np.ndarray, max_depth: int, min_leaf_weight: float, rng) -> Tree:
    """One tree on the samples with weight w > 0 (bootstrap multiplicity x class weight)."""
    n_bins = 1 + max(len(c) for c in cuts)
    samples = np.flatnonzero(w > 0)
    feature, threshold, left, right, value = [-1], [0.0], [-1], [-1], [None]
    node_of = np.zeros(samples.size, np.int64)  # index into the current level's open nodes
    open_ids = [0]
    depth = 0
    n_cuts = np.array([len(c) for c in cuts])
    while open_ids and samples.size:
        n_open = len(open_ids)
        ys, ws = y[samples], w[samples]
        totals = np.bincount(node_of * n_classes + ys, weights=ws, minlength=n_open * n_classes)
        totals = totals.reshape(n_open, n_classes)
        tsum = totals.sum(1)
        parent = tsum - (totals ** 2).sum(1) / np.maximum(tsum, 1e-300)
        for j, nid in enumerate(open_ids):
            value[nid] = totals[j] / max(tsum[j], 1e-300)
        can_split = (parent > 1e-12 * np.maximum(tsum, 1)) & (depth < max_depth) & (tsum >= 2 * min_leaf_weight)
        best_f = np.full(n_open, -1, np.int64)
        best_b = np.zeros(n_open, np.int64)
        if can_split.any():
            feats = _weighted_choice(rng, feature_weights, n_open, max_features)
            m = feats.shape[1]
            chunk = max(1, MAX_CHUNK // (m * n_bins * n_classes))
            for c0 in range(0, n_open, chunk):
                c1 = min(c0 + chunk, n_open)
                sel = (node_of >= c0) & (node_of < c1) & can_split[node_of]
                if not sel.any():
                    continue
                local = node_of[sel] - c0
                fsel = feats[node_of[sel]]  # (s, m)
                b = bins[samples[sel][:, None], fsel].astype(np.int64)  # (s, m)
                idx = ((local[:, None] * m + np.arange(m)[None, :]) * n_bins + b) * n_classes + ys[sel][:, None]
                hist = np.bincount(idx.ravel(), weights=np.repeat(ws[sel], m),
                                   minlength=(c1 - c0) * m * n_bins * n_classes)
                hist = hist.reshape(c1 - c0, m, n_bins, n_classes)
                lc = np.cumsum(hist, axis=2)  # left side of "bin <= b"
                tot = lc[:, :, -1:, :]
                rc = tot - lc
                ls, rs = lc.sum(-1), rc.sum(-1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    imp = (ls - (lc ** 2).sum(-1) / ls) + (rs - (rc ** 2).sum(-1) / rs)
                valid = (ls >= min_leaf_weight) & (rs >= min_leaf_weight)
                valid &= np.arange(n_bins)[None, None, :] < n_cuts[feats[c0:c1]][:, :, None]
                imp = np.where(valid, imp, np.inf)
                flat = imp.reshape(c1 - c0, -1)
                pick = flat.argmin(1)
                gain = parent[c0:c1] - flat[np.arange(c1 - c0), pick]
                ok = np.isfinite(flat[np.arange(c1 - c0), pick]) & (gain > 1e-12 * np.maximum(tsum[c0:c1], 1))
                ok &= can_split[c0:c1]
                fi, bi = np.divmod(pick, n_bins)
                best_f[c0:c1] = np.where(ok, feats[np.arange(c0, c1), fi], -1)
                best_b[c0:c1] = bi
        split = best_f >= 0
        new_index = np.full(n_open, -1, np.int64)
        next_open = []
        for j, nid in enumerate(open_ids):
            if not split[j]:
                continue
            f, b = int(best_f[j]), int(best_b[j])
            feature[nid], threshold[nid] = f, float(cuts[f][b])
            left[nid], right[nid] = len(feature), len(feature) + 1
            for _ in range(2):
                feature.append(-1)
                threshold.append(0.0)
                left.append(-1)
                right.append(-1)
                value.append(None)
            new_index[j] = len(next_open)
            next_open += [left[nid], right[nid]]
        keep = split[node_of]
        samples, node_of = samples[keep], node_of[keep]
        goes_left = bins[samples, best_f[node_of]] <= best_b[node_of]
        node_of = new_index[node_of] + (~goes_left)
        open_ids = next_open
        depth += 1
    k = n_classes
    val = np.array([v if v is not None else np.full(k, 1.0 / k) for v in value], np.float64)
    return Tree(np.array(feature, np.int64), np.array(threshold, np.float32), np.array(left, np.int64),
                np.array(right, np.int64), val)


def tree_leaves(tree: Tree, x: np.ndarray) -> np.ndarray:
    """Leaf index of each row of x (float32 comparisons, as ONNX Runtime makes them)."""
    x = np.asarray(x, np.float32)
    idx = np.zeros(x.shape[0], np.int64)
    rows = np.arange(x.shape[0])
    while True:
        f = tree.feature[idx]
        inner = f >= 0
        if not inner.any():
            return idx
        go_left = x[rows, np.maximum(f, 0)] <= tree.threshold[idx]
        idx = np.where(inner, np.where(go_left, tree.left[idx], tree.right[idx]), idx)


@dataclass
class RandomForest:
    n_trees: int = 100
    max_depth: int = 24
    n_bins: int = 32
    min_leaf_weight: float = 0.0  # in units of the (class-balanced, mean 1) sample weights
    seed: int = 0
    trees: list = field(default_factory=list)
    n_classes: int = 0
    n_features: int = 0

    def fit(self, x: np.ndarray, y: np.ndarray, n_classes: int, feature_weights: Optional[np.ndarray] = None,
            max_features: Optional[int] = None) -> "RandomForest":
        x = np.asarray(x, np.float32)
        y = np.asarray(y, np.int64)
        n, d = x.shape
        self.n_classes, self.n_features = n_classes, d
        fw = np.ones(d) if feature_weights is None else np.asarray(feature_weights, np.float64)
        fw = np.maximum(fw / fw.sum(), 1e-12)
        m = max_features or max(1, int(round(np.sqrt(d))))
        m = min(m, d)
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        class_w = np.where(counts > 0, n / (np.maximum(counts, 1) * (counts > 0).sum()), 0.0)
        cuts = cut_points(x, self.n_bins)
        bins = bin_features(x, cuts)
        rng = np.random.default_rng(self.seed)
        min_leaf = max(self.min_leaf_weight, 1e-9)
        self.trees = []
        for _ in range(self.n_trees):
            boot = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
            self.trees.append(grow_tree(bins, y, boot * class_w[y], cuts, n_classes, m, fw, self.max_depth,
                                        min_leaf, rng))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        out = np.zeros((x.shape[0], self.n_classes), np.float64)
        for t in self.trees:
            out += t.value[tree_leaves(t, x)]
        return out / max(len(self.trees), 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x).argmax(1)

    def onnx_arrays(self) -> dict:
        """The flat node and leaf arrays of TreeEnsembleClassifier (leaf weights = probability / trees)."""
        parts = {k: [] for k in ("tree", "node", "feature", "threshold", "mode", "true", "false",
                                 "leaf_tree", "leaf_node", "leaf_class", "leaf_weight")}
        k = self.n_classes
        for t_id, t in enumerate(self.trees):
            n = t.feature.size
            leaf = t.feature < 0
            parts["tree"].append(np.full(n, t_id, np.int64))
            parts["node"].append(np.arange(n, dtype=np.int64))
            parts["feature"].append(np.where(leaf, 0, t.feature))
            parts["threshold"].append(np.where(leaf, 0, t.threshold).astype(np.float32))
            parts["mode"] += ["LEAF" if lf else "BRANCH_LEQ" for lf in leaf]
            parts["true"].append(np.where(leaf, 0, t.left))
            parts["false"].append(np.where(leaf, 0, t.right))
            leaves = np.flatnonzero(leaf)
            parts["leaf_tree"].append(np.full(leaves.size * k, t_id, np.int64))
            parts["leaf_node"].append(np.repeat(leaves, k))
            parts["leaf_class"].append(np.tile(np.arange(k, dtype=np.int64), leaves.size))
            parts["leaf_weight"].append((t.value[leaves] / len(self.trees)).astype(np.float32).ravel())
        return {key: (val if key == "mode" else np.concatenate(val)) for key, val in parts.items()}
