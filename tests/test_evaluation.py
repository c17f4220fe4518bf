"""Evaluation: splits never leak, metrics aggregate as computed by hand, the report is written."""

import json

import numpy as np
import pytest

from mpmae_core import evaluation as ev
from mpmae_core.runtime.heads import metrics
from mpmae_core.runtime.io.labels import window_labels


def test_kshot_splits_take_k_per_class_and_never_leak():
    y = np.repeat(np.arange(4), [3, 10, 25, 6])
    for seed in range(25):
        train, test, used = ev.kshot_split(y, 5, seed)
        assert used == [1, 2, 3]  # class 0 has only 3 samples: it cannot give 5 shots and a test
        assert not set(train) & set(test)
        assert sorted(np.bincount(y[train], minlength=4).tolist()) == [0, 5, 5, 5]
        assert set(test) == set(np.flatnonzero(np.isin(y, used))) - set(train)  # everything else is tested
    a, b = ev.kshot_split(y, 5, 1)[0], ev.kshot_split(y, 5, 2)[0]
    assert not np.array_equal(a, b)  # seeds differ
    np.testing.assert_array_equal(ev.kshot_split(y, 5, 1)[0], a)  # and are reproducible


def test_splits_by_place_never_test_a_block_trained_on():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    blocks = rng.integers(0, 20, 400)
    for seed in range(10):
        train, test, used = ev.spatial_kshot_split(y, blocks, 5, seed)
        assert used == [0, 1, 2] and np.bincount(y[train], minlength=3).tolist() == [5, 5, 5]
        assert not set(blocks[train].tolist()) & set(blocks[test].tolist())  # no block on both sides
        assert len(set(blocks[test].tolist())) == 10  # half of the blocks held out, all their samples tested
        held = set(blocks[test].tolist())
        assert set(test.tolist()) == set(np.flatnonzero(np.isin(blocks, list(held))).tolist())
        probe, ptest, _ = ev.spatial_kshot_split(y, blocks, None, seed)  # the probe: every sample of the rest
        assert set(probe.tolist()) == set(np.flatnonzero(~np.isin(blocks, list(held))).tolist())
    assert not np.array_equal(ev.spatial_kshot_split(y, blocks, 5, 1)[1], ev.spatial_kshot_split(y, blocks, 5, 2)[1])


def test_fraction_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(3), [1, 10, 7])
    train, test, used = ev.fraction_split(y, 0.5, 0)
    assert used == [1, 2] and not set(train) & set(test)
    assert np.bincount(y[train], minlength=3).tolist() == [0, 5, 4]
    assert len(train) + len(test) == 17


def test_window_labels_and_block_mean_by_hand():
    lab = np.zeros((4, 6), int)
    lab[:2, :2] = [[1, 1], [1, 2]]  # 3 of 4 pixels class 1
    lab[:2, 2:4] = [[1, 2], [2, 0]]  # no class covers half... class 2 covers exactly half
    lab[2:, 4:] = 3
    np.testing.assert_array_equal(window_labels(lab, 2), [[1, 2, 0], [0, 0, 3]])
    np.testing.assert_array_equal(window_labels(lab, 2, min_share=0.8), [[0, 0, 0], [0, 0, 3]])
    x = np.arange(2 * 4 * 6, dtype=float).reshape(2, 4, 6)
    got = ev.block_mean(x, 2)
    assert got.shape == (2, 2, 3)
    assert got[1, 1, 2] == np.mean(x[1, 2:4, 4:6])


def test_aggregate_and_paired_difference_against_numpy():
    rng = np.random.default_rng(0)
    runs = []
    accs = {"a": [], "b": []}
    for seed in range(6):
        for rep in ("a", "b"):
            y = rng.integers(0, 3, 40)
            p = np.where(rng.random(40) < (0.8 if rep == "a" else 0.6), y, rng.integers(0, 3, 40))
            cm = metrics.confusion_matrix(y, p, 3)
            accs[rep].append(np.trace(cm) / cm.sum())
            runs.append(ev.RunResult(rep, "5", seed, "classification", cm, ["x", "y", "z"]))
    summary = ev.aggregate(runs)["classification"]["5"]
    assert summary["a"]["accuracy"] == pytest.approx((np.mean(accs["a"]), np.std(accs["a"])))
    assert summary["b"]["seeds"] == 6
    d, s, wins = ev.paired_difference(runs, "classification", "5", "a", "b")
    diffs = np.array(accs["a"]) - np.array(accs["b"])
    assert (d, s, wins) == (pytest.approx(diffs.mean()), pytest.approx(diffs.std()), int((diffs > 0).sum()))


def test_classify_gives_every_representation_the_same_split():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 12)
    centres = rng.normal(size=(3, 4)) * 8
    good = centres[y] + rng.normal(size=(36, 4))
    feats = {"good": good, "noise": rng.normal(size=(36, 4))}
    results = ev.classify(feats, y, ["a", "b", "c"], shots=[2], seeds=4)
    for seed in range(4):
        supports = {r.representation: r.confusion.sum(1).tolist() for r in results
                    if r.seed == seed and r.setting == "2"}
        assert supports["good"] == supports["noise"] == [10, 10, 10]  # same test samples
    summary = ev.aggregate(results)["classification"]
    assert summary["probe"]["good"]["accuracy"][0] > 0.9 > summary["probe"]["noise"]["accuracy"][0]


def test_segmentation_never_tests_on_training_cells():
    patch = 4
    cells = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, 1]])
    pix = np.kron(cells, np.ones((patch, patch), int))
    feats = {"onehot": np.eye(3)[np.clip(cells, 0, 2)].astype(float)}
    spectra = np.stack([pix == c for c in range(3)]).astype(float)
    results = ev.segment_cells(feats, cells, pix, patch, spectra, ["a", "b", "c"], shots=[1], seeds=5, nodata=-1)
    labelled_pixels = int((pix >= 0).sum())
    for r in results:
        # one training cell per class: 3 cells' pixels are never scored, every other labelled pixel is
        assert r.confusion.sum() == labelled_pixels - 3 * patch * patch
        assert np.trace(r.confusion) == r.confusion.sum()  # separable: perfect
    assert {r.representation for r in results} == {"onehot", ev.SPECTRA}


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    from osgeo import gdal

    from helpers import write_geotiff
    from mpmae_core.data import sample

    paths = sample.build(verbose=False)
    d = tmp_path_factory.mktemp("evalscene")
    stack, labels = gdal.Open(str(paths["stack"])), gdal.Open(str(paths["labels"]))
    x0, y0, w, h = 512, 256, 512, 384
    names = [stack.GetRasterBand(i + 1).GetDescription() for i in range(stack.RasterCount)]
    gt = list(stack.GetGeoTransform())
    gt[0] += x0 * gt[1]
    gt[3] += y0 * gt[5]
    img = write_geotiff(d / "img.tif", stack.ReadAsArray(x0, y0, w, h), names, geotransform=gt, nodata=0)
    lab = write_geotiff(d / "lab.tif", labels.ReadAsArray(x0, y0, w, h), geotransform=gt)
    return img, lab


@pytest.mark.slow
def test_evaluate_command_writes_the_report(small_scene, tmp_path):
    from training.evaluate import main

    img, lab = small_scene
    assert main(["--image", str(img), "--labels", str(lab), "--random", "atto", "--shots", "1,5", "--seeds", "3",
                 "--pixel-shots", "5", "--pixel-seeds", "2", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Per-pixel few-shot mapping" in report and "| spectra RF |" in report
    assert "| random atto: chosen head |" in report and "the better spectral baseline" in report
    assert (tmp_path / "pixel_shots.png").read_bytes()[:4] == b"\x89PNG"
    assert "| raw spectra |" in report and "| random atto |" in report and "5-shot" in report
    assert "## Findings" in report and "paired over 3 seeds" in report
    for png in ("classification_shots.png", "classification_confusion.png", "segmentation_shots.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "results.json").read_text())
    pixel = [r for r in data["runs"] if r["task"] == "pixel"]
    assert len(pixel) == 2 * (2 + 4 + 1)  # 2 seeds x (2 baselines, 4 fixed candidates, the chosen head)
    runs = [r for r in data["runs"] if r["task"] == "classification" and r["setting"] == "5"]
    assert len(runs) == 3 * 2  # 3 seeds x (spectra, random)
    assert [r for r in data["runs"] if r["task"] == "classification_spatial"]  # beside the random splits
    assert "## Classification, split by place" in report and "split by place: blocks of" in report
    acc = [r["accuracy"] for r in runs if r["representation"] == "random atto"]
    assert data["summary"]["classification"]["5"]["random atto"]["accuracy"][0] == pytest.approx(np.mean(acc))


def test_evaluate_refuses_bad_labels(small_scene, tmp_path, capsys):
    from training.evaluate import main

    img, _ = small_scene
    from mpmae_core.data import sample

    assert main(["--image", str(img), "--labels", str(sample.labels_path()), "--random", "atto",
                 "--out", str(tmp_path)]) == 2
    assert "not on the image's grid" in capsys.readouterr().err
    gpkg = sample.scene_dir() / "s2l1c_ref.gpkg"
    assert main(["--image", str(img), "--labels", str(gpkg), "--random", "atto", "--out", str(tmp_path)]) == 2
    assert "give --class-field" in capsys.readouterr().err
    assert main(["--image", str(img), "--labels", str(gpkg), "--class-field", "nope", "--random", "atto",
                 "--out", str(tmp_path)]) == 2
    assert "has no field 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_vector_labels_are_rasterised_onto_the_image():
    from osgeo import ogr

    from mpmae_core.data import sample
    from training.evaluate import load_image, load_labels

    _, _, prep = load_image(sample.build(verbose=False)["stack"])
    lab, names = load_labels(sample.scene_dir() / "s2l1c_ref.gpkg", prep, "cid")
    assert names == ["1", "2"] and set(np.unique(lab)) == {0, 1, 2}
    gt = prep.geotransform
    checked = 0
    ds = ogr.Open(str(sample.scene_dir() / "s2l1c_ref.gpkg"))  # keep the dataset alive while reading its layer
    for f in ds.GetLayer(0):
        p = f.GetGeometryRef().PointOnSurface()
        col, row = int((p.GetX() - gt[0]) / gt[1]), int((p.GetY() - gt[3]) / gt[5])
        if 0 <= row < lab.shape[0] and 0 <= col < lab.shape[1] and f.GetGeometryRef().GetArea() > 400:
            assert lab[row, col] == names.index(str(f.GetField("cid"))) + 1
            checked += 1
    assert checked >= 20


def test_encoders_load_from_our_and_reference_checkpoints(tmp_path):
    import torch

    from mpmae_core import checkpoints as C
    from mpmae_core.models import build_mpmae
    from training.evaluate import load_encoder

    torch.manual_seed(3)
    model = build_mpmae("atto", "S2", patch_size=16)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the encoder's final norm is frozen at identity, as in the reference
                p.add_(torch.randn_like(p) * 0.01)
    C.save_checkpoint(tmp_path / "ours.pt", model)
    torch.save({"model": C.export_reference_layout(model)}, tmp_path / "checkpoint-199.pth")
    expected = model.encoder.state_dict()
    for spec, name in ((str(tmp_path / "ours.pt"), "ours"), (f"mmearth={tmp_path / 'checkpoint-199.pth'}", "mmearth")):
        got_name, enc = load_encoder(spec)
        assert got_name == name and not enc.training
        state = enc.state_dict()
        for key, value in expected.items():
            if key in state and state[key].shape == value.shape:
                torch.testing.assert_close(state[key], value)
        assert sum(k in state for k in expected) >= len(expected) - 2


def test_per_pixel_protocol_points_are_interior_and_never_near_a_test_pixel():
    from mpmae_core.evaluation import far_from, interior_pixels, pixel_sample, points_split

    lab = np.zeros((60, 80), np.int64)
    lab[5:30, 5:40] = 1
    lab[30:55, 40:75] = 2
    lab[10:12, 50:52] = 3  # too small to hold an interior pixel
    valid = np.ones_like(lab, bool)
    valid[20, 20] = False
    inner = interior_pixels(lab, valid)
    assert inner[7:28, 7:38].sum() == inner[lab == 1].sum() - 0 and not inner[lab == 3].any()
    assert not inner[18:23, 18:23].any()  # a pixel without data spoils its neighbourhood
    pool, test = pixel_sample(lab, valid, test_per_class=100, pool_per_class=50, seed=1)
    assert set(np.unique(lab.ravel()[pool])) == {1, 2} and inner.ravel()[pool].all()
    assert set(np.unique(lab.ravel()[test])) == {1, 2, 3}
    y = lab.ravel()[pool] - 1
    for seed in range(3):
        train = points_split(y, 5, seed)
        assert np.bincount(y[train]).tolist() == [5, 5]
        pts = np.stack(np.divmod(pool[train], 80), 1)
        rc = np.stack(np.divmod(test, 80), 1)
        keep = far_from(pts, rc, 5)
        dist = np.abs(rc[keep][:, None, :] - pts[None]).max(-1).min(1)
        assert dist.min() > 5 and (~keep).any()
