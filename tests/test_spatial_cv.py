"""Spatial-block cross-validation for the head's choice: blocks from the labels' spread, features
whole in one block, and a figure that is not fooled by labels clicked next to each other."""

import numpy as np
import pytest

from mpmae_core.runtime.heads import pixelhead, spatial
from mpmae_core.runtime.inference.pixel_features import Block


def test_blocks_follow_the_labels_spread_and_keep_features_whole():
    rng = np.random.default_rng(0)
    # 40 polygons of 9 pixels (3 x 3) spread over 1000 x 800 px
    centres = rng.uniform([0, 0], [800, 1000], (40, 2))
    rows = np.concatenate([c[0] + np.repeat([-1, 0, 1], 3) for c in centres])
    cols = np.concatenate([c[1] + np.tile([-1, 0, 1], 3) for c in centres])
    groups = np.repeat(np.arange(40) * 7 + 3, 9)
    side = spatial.block_side(rows, cols, groups, folds=5)
    span = np.ptp(centres, 0) + 1
    assert side >= np.sqrt(span[0] * span[1] / 20) - 1
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert side >= 2 * np.median(d.min(1)) - 1
    blocks = spatial.spatial_groups(rows, cols, groups, side)
    for g in np.unique(groups):  # a feature never straddles two blocks
        assert len(set(blocks[groups == g].tolist())) == 1
    assert 4 <= len(set(blocks.tolist())) <= 40
    # clicks in pairs next to each other share a block
    pairs = np.concatenate([centres, centres + 3])
    pr, pc, pg = pairs[:, 0], pairs[:, 1], np.arange(80)
    b = spatial.spatial_groups(pr, pc, pg, spatial.block_side(pr, pc, pg, 5))
    assert (b[:40] == b[40:]).mean() > 0.8


def test_spatial_folds_are_not_fooled_by_neighbouring_clicks():
    """Two classes whose labels sit in clusters; inside a cluster the pixels share a local signature
    (a place, not a class): grouped folds reward memorising places, spatial blocks do not."""
    rng = np.random.default_rng(1)
    rows, cols, y, groups, x = [], [], [], [], []
    g = 0
    for cluster in range(12):
        cls = cluster % 2
        cr, cc = rng.uniform(0, 2000, 2)
        signature = rng.normal(0, 3, 6)  # what the place looks like
        for _ in range(8):  # eight clicks per cluster, within 10 px
            rows.append(cr + rng.uniform(-10, 10))
            cols.append(cc + rng.uniform(-10, 10))
            y.append(cls)
            groups.append(g)
            g += 1
            x.append(np.r_[signature + rng.normal(0, 0.3, 6), rng.normal(0.3 * cls, 1.0, 6)])
    rows, cols, y, groups, x = (np.asarray(a) for a in (rows, cols, y, groups, x))
    x = x.astype(np.float32)
    blocks = [Block("spectra", 12, 1)]
    cands = pixelhead.candidates(["spectra"], ["forest"])
    grouped = pixelhead.score_candidates(x, y, groups, blocks, ["a", "b"], cands, folds=4)[0]
    side = spatial.block_side(rows, cols, groups, 4)
    sp = pixelhead.score_candidates(x, y, groups, blocks, ["a", "b"], cands, folds=4,
                                    fold_groups=spatial.spatial_groups(rows, cols, groups, side))[0]
    assert sp["cv"] == "spatial" and grouped["cv"] == "grouped"
    assert grouped["accuracy"] > 0.95  # neighbours of every test click were in training
    assert sp["accuracy"] < grouped["accuracy"] - 0.2  # new places: far harder


def test_train_head_reports_spatial_and_grouped_cv(tmp_path, models_dir, capsys):
    from mmearth.cli import main
    from mpmae_core.data import sample

    labels = tmp_path / "labels.gpkg"
    sample.label_points(labels, per_class=6, seed=0, classes=["water", "forest", "farm"])
    stack = str(sample.build(verbose=False)["stack"])
    out = tmp_path / "head.onnx"
    args = ["train-head", stack, str(models_dir / "atto_test.onnx"), str(labels), str(out), "--class-field", "landuse",
            "--feature-sets", "spectra", "--classifiers", "forest", "--device", "cpu", "--report",
            str(tmp_path / "r.html")]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "spatial-block CV (blocks of" in text and "grouped CV (by labelled feature" in text
    assert "Neither figure is the map's accuracy" in text
    assert "spatial-block CV" in (tmp_path / "r.html").read_text()
    assert main(args[:4] + [str(tmp_path / "h2.onnx")] + args[5:] + ["--block-size", "2500"]) == 0
    assert "blocks of 2500 m" in capsys.readouterr().out
    assert "candidates (cross-validated, grouped by labelled feature)" in text  # the default choice
    assert main(args[:4] + [str(tmp_path / "h3.onnx")] + args[5:] + ["--choose-on", "spatial"]) == 0
    text = capsys.readouterr().out
    assert "candidates (cross-validated, in spatial blocks)" in text and "grouped CV (by labelled feature" in text
