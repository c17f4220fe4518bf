"""Per-pixel features (spectra + hypercolumns), the numpy random forest, heads that choose
themselves, and their ONNX files, on real GeoTIFFs cut from the embedded Sentinel-2 scene."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from osgeo import gdal, ogr

from helpers import write_geotiff
from mpmae_core import registry
from mpmae_core.data import sample
from mpmae_core.export import export_encoder
from mpmae_core.models import build_encoder
from mpmae_core.runtime.heads import forest as rf
from mpmae_core.runtime.inference import pixel_features, tiling
from mpmae_core.runtime.heads import pixelhead
from mpmae_core.runtime.io.labels import cap_per_class_grouped, label_cells
from mpmae_core.runtime.models.metadata import default_normalisation
from mpmae_core.runtime.models.model import OnnxModel
from mpmae_core.runtime.inference.predict import features, segment
from mpmae_core.runtime.inference.raster import prepare_input

ROOT = Path(__file__).resolve().parents[1]
BANDS = list(registry.S2_MMEARTH_BANDS)


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Random-weight atto encoders at patch 16 and patch 8 (GRN and norms made non-trivial)."""
    d = tmp_path_factory.mktemp("enc")
    out = {}
    for p in (16, 8):
        torch.manual_seed(p)
        enc = build_encoder("atto", patch_size=p).eval()
        with torch.no_grad():
            for name, prm in enc.named_parameters():
                if ".grn." in name:
                    prm.add_(torch.randn(prm.shape) * 0.2)
        path, _ = export_encoder(enc, d / f"atto_p{p}.onnx", BANDS, default_normalisation(BANDS))
        out[p] = (enc, path)
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 640 x 400 px crop of the real scene (13 bands, names in band descriptions) and its labels."""
    d = tmp_path_factory.mktemp("scene")
    stack = gdal.Open(str(sample.build(verbose=False)["stack"]))
    path = d / "crop.tif"
    gdal.Translate(str(path), stack, srcWin=[256, 128, 640, 400])
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[128:528, 256:896]
    return path, lab


def _points(path, lab, classes, per_class, seed=0):
    """(wkb, class index) labelled points at random interior pixels of each class."""
    gt = gdal.Open(str(path)).GetGeoTransform()
    rng = np.random.default_rng(seed)
    feats = []
    for i, value in enumerate(classes):
        r, c = np.nonzero(lab == value)
        for j in rng.choice(len(r), per_class, replace=False):
            g = ogr.Geometry(ogr.wkbPoint)
            g.AddPoint_2D(gt[0] + (c[j] + 0.5) * gt[1], gt[3] + (r[j] + 0.5) * gt[5])
            feats.append((bytes(g.ExportToWkb()), i))
    return feats


def _torch_hypercolumns(enc, x):
    """Independent: spectra + every stage upsampled by torch's bilinear interpolation."""
    with torch.no_grad():
        maps = enc.forward_stages(torch.from_numpy(x)[None])
        ups = [torch.nn.functional.interpolate(m, size=x.shape[1:], mode="bilinear", align_corners=False)[0]
               for m in maps]
    return np.concatenate([x] + [u.numpy() for u in ups], axis=0)


@pytest.mark.parametrize("p", [16, 8])
def test_hypercolumns_equal_a_direct_computation_on_a_small_tile(encoders, p):
    enc, path = encoders[p]
    model = OnnxModel(path, device="cpu")
    blocks = pixel_features.encoder_blocks(model.metadata)
    assert [b.name for b in blocks] == ["spectra", "stage1", "stage2", "stage3", "embedding"]
    assert [b.stride for b in blocks] == [1, p // 8, p // 4, p // 2, p]
    x = np.random.default_rng(p).normal(size=(12, 96, 64)).astype(np.float32)
    maps = pixel_features.EncoderMaps(model, blocks)(x[None])[0]
    got = pixel_features.hypercolumns(x, maps, blocks, 0, 96)
    np.testing.assert_allclose(got, _torch_hypercolumns(enc, x), atol=2e-4)
    # rows computed in pieces, and single pixels, are the same numbers
    np.testing.assert_array_equal(pixel_features.hypercolumns(x, maps, blocks, 40, 57), got[:, 40:57])
    ys, xs = np.array([0, 5, 95, 50]), np.array([63, 0, 31, 17])
    np.testing.assert_array_equal(pixel_features.sample_hypercolumns(x, maps, blocks, ys, xs), got[:, ys, xs].T)


def test_hypercolumns_built_in_threads_and_from_a_cut_tile_are_the_same_numbers(encoders, monkeypatch):
    """Issue 26: the columns are built in worker threads, each a share of every block's channels,
    into a reused buffer, and a forest's few columns from a tile cut once (``select_columns``): the
    numbers are those of one thread on the whole tile, bit for bit."""
    _, path = encoders[16]
    model = OnnxModel(path, device="cpu")
    blocks = pixel_features.encoder_blocks(model.metadata)
    x = np.random.default_rng(3).normal(size=(12, 96, 64)).astype(np.float32)
    maps = pixel_features.EncoderMaps(model, blocks)(x[None])[0]
    monkeypatch.setattr(pixel_features, "column_threads", lambda values: 1)
    one = pixel_features.hypercolumns(x, maps, blocks, 7, 90)
    for n in (2, 3, 5):  # more shares than some blocks have channels, and uneven ones
        monkeypatch.setattr(pixel_features, "COLUMN_THREADS", n)
        monkeypatch.setattr(pixel_features, "column_threads", lambda values, n=n: n)
        monkeypatch.setattr(pixel_features, "_pool", None)
        buffer = np.full(one.size + 100, np.nan, np.float32)
        got = pixel_features.hypercolumns(x, maps, blocks, 7, 90, buffer=buffer)
        np.testing.assert_array_equal(got, one)
        assert np.shares_memory(got, buffer) and got.flags.c_contiguous
        cols = np.sort(np.random.default_rng(n).choice(one.shape[0], 40, replace=False))
        cols[0] = 3  # a spectra column too
        cols = np.unique(cols)
        np.testing.assert_array_equal(pixel_features.hypercolumns(x, maps, blocks, 7, 90, cols), one[cols])
        spectra, cut, kept = pixel_features.select_columns(x, maps, blocks, cols)
        assert sum(b.channels for b in kept) == len(cols)
        np.testing.assert_array_equal(pixel_features.hypercolumns(spectra, cut, kept, 7, 90), one[cols])
    # a share that fails is reported, not lost, and the pool still works afterwards
    monkeypatch.setattr(pixel_features, "upsample_rows", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pixel_features.hypercolumns(x, maps, blocks, 7, 90)
    monkeypatch.undo()
    np.testing.assert_array_equal(pixel_features.hypercolumns(x, maps, blocks, 7, 90), one)


def test_small_raster_is_mirrored_and_its_map_does_not_depend_on_where_it_sits(encoders, scene, tmp_path):
    enc, path = encoders[16]
    src, lab = scene
    ds = gdal.Open(str(src))
    arr = ds.ReadAsArray()
    descs = [ds.GetRasterBand(i + 1).GetDescription() for i in range(13)]
    small = write_geotiff(tmp_path / "small.tif", arr[:, 40:160, 100:220], descs, nodata=0)
    model = OnnxModel(path, device="cpu")
    prep = prepare_input(small, model.metadata)
    blocks = pixel_features.encoder_blocks(model.metadata)
    rows, cols = np.mgrid[0:120, 0:120]
    got = pixel_features.sample_features(prep, model, blocks, rows.ravel(), cols.ravel())
    # independent: the raster mirrored out to the 256 px context, centred on the patch grid, by numpy
    start = tiling.axis_layout(128, 512, 128, 16)[1][0]
    assert start < 0 and tiling.window_length(128, 512, 16) == tiling.MIN_CONTEXT
    mean, std = registry.s2_default_statistics("l1c", BANDS)
    order = [descs.index(b if b in ("B8A", "B10", "B11", "B12") else f"B{int(b[1:]):02d}") for b in BANDS]
    x = (arr[order, 40:160, 100:220].astype(np.float32) - np.array(mean, np.float32)[:, None, None]) / \
        np.array(std, np.float32)[:, None, None]
    before, after = -start, 256 - 120 + start
    padded = np.pad(x, ((0, 0), (before, after), (before, after)), mode="symmetric")
    direct = _torch_hypercolumns(enc, padded)[:, before:before + 120, before:before + 120]
    np.testing.assert_allclose(got, direct.reshape(direct.shape[0], -1).T, atol=3e-4)
    # no zero border decides the map: two crops sharing 80 x 80 px map that part alike, and like the full raster
    head = _fit_head(enc, path, src, lab)
    maps = {}
    for name, (y, x0) in {"a": (40, 100), "b": (80, 140)}.items():
        tif = write_geotiff(tmp_path / f"{name}.tif", arr[:, y:y + 120, x0:x0 + 120], descs, nodata=0)
        segment(tif, path, tmp_path / f"{name}_map.tif", head_path=head, device="cpu")
        maps[name] = gdal.Open(str(tmp_path / f"{name}_map.tif")).ReadAsArray()
    segment(src, path, tmp_path / "full_map.tif", head_path=head, device="cpu")
    full = gdal.Open(str(tmp_path / "full_map.tif")).ReadAsArray()
    shared_a, shared_b = maps["a"][40:, 40:], maps["b"][:80, :80]
    assert (shared_a == shared_b).mean() > 0.9
    assert (maps["a"] == full[40:160, 100:220]).mean() > 0.9


def _fit_head(enc, path, src, lab, out=None, feature_sets=("both",), classifiers=("logistic",)):
    feats = _points(src, lab, [1, 2, 3, 4], 6)
    out = out or Path(str(path)).with_name("head_both.onnx")
    pixelhead.train_pixel_head(src, path, feats, ["water", "forest", "farm", "meadow"], out, device="cpu",
                               feature_sets=feature_sets, classifiers=classifiers)
    return out


@pytest.mark.slow
def test_tiled_features_and_maps_are_close_to_untiled(encoders, scene, tmp_path):
    _, path = encoders[16]
    src, lab = scene
    features(src, path, tmp_path / "untiled.tif", tile=640, overlap=0, device="cpu")
    res = features(src, path, tmp_path / "tiled.tif", tile=256, overlap=64, device="cpu")
    assert res["run"] == 6 and res["bands"] == 612
    a = gdal.Open(str(tmp_path / "untiled.tif")).ReadAsArray()
    b = gdal.Open(str(tmp_path / "tiled.tif")).ReadAsArray()
    np.testing.assert_array_equal(a[:12], b[:12])  # the spectra block is the pixels' own bands
    rel = np.abs(a[12:] - b[12:]).mean() / np.abs(a[12:]).mean()
    assert rel < 0.1 and np.corrcoef(a[12:].ravel(), b[12:].ravel())[0, 1] > 0.99
    head = _fit_head(None, path, src, lab, tmp_path / "h.onnx")
    segment(src, path, tmp_path / "m_untiled.tif", head_path=head, tile=640, overlap=0, device="cpu")
    segment(src, path, tmp_path / "m_tiled.tif", head_path=head, tile=256, overlap=64, device="cpu")
    agree = (gdal.Open(str(tmp_path / "m_untiled.tif")).ReadAsArray() ==
             gdal.Open(str(tmp_path / "m_tiled.tif")).ReadAsArray()).mean()
    assert agree > 0.95


def test_feature_raster_holds_exactly_what_heads_are_trained_on(encoders, scene, tmp_path):
    _, path = encoders[16]
    src, lab = scene
    features(src, path, tmp_path / "f.tif", tile=256, overlap=64, device="cpu")
    model = OnnxModel(path, device="cpu")
    prep = prepare_input(src, model.metadata)
    blocks = pixel_features.encoder_blocks(model.metadata)
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 400, 300), rng.integers(0, 640, 300)
    direct = pixel_features.sample_features(prep, model, blocks, rows, cols, 256, 64)
    stored = gdal.Open(str(tmp_path / "f.tif")).ReadAsArray()[:, rows, cols].T
    np.testing.assert_array_equal(np.nan_to_num(stored, nan=-9), np.nan_to_num(direct, nan=-9))
    info = json.loads(gdal.Open(str(tmp_path / "f.tif")).GetMetadataItem("MMEARTH_FEATURES"))
    assert info["blocks"][0] == ["spectra", 12, 1] and info["embedding_dim"] == 320
    # a head from the stored features scores and saves the same as one computed on the fly
    feats = _points(src, lab, [1, 2, 3], 5)
    names = ["water", "forest", "farm"]
    a = pixelhead.train_pixel_head(src, path, feats, names, tmp_path / "a.onnx", tile=256, overlap=64, device="cpu")
    b = pixelhead.train_pixel_head(src, path, feats, names, tmp_path / "b.onnx", tile=256, overlap=64, device="cpu",
                                   feature_raster=tmp_path / "f.tif")
    assert [s["confusion"] for s in a["scores"]] == [s["confusion"] for s in b["scores"]]
    assert a["chosen"] == b["chosen"]
    # a raster of another grid, or patch-stride embeddings, is refused with the fix
    from mpmae_core.runtime.inference.predict import embed

    embed(src, path, tmp_path / "emb.tif", device="cpu")
    with pytest.raises(ValueError, match="not a per-pixel feature raster"):
        pixelhead.train_pixel_head(src, path, feats, names, tmp_path / "c.onnx", feature_raster=tmp_path / "emb.tif")
    gdal.Translate(str(tmp_path / "small_f.tif"), str(tmp_path / "f.tif"), srcWin=[0, 0, 320, 200])
    with pytest.raises(ValueError, match="not on the input raster's grid"):
        pixelhead.train_pixel_head(src, path, feats, names, tmp_path / "c.onnx", feature_raster=tmp_path / "small_f.tif")
    assert not (tmp_path / "c.onnx").exists()


@pytest.mark.parametrize("classifier", ["logistic", "forest"])
@pytest.mark.parametrize("k", [2, 4])
def test_onnx_head_equals_the_numpy_head(classifier, k):
    rng = np.random.default_rng(k)
    blocks = [pixel_features.Block("spectra", 12, 1), pixel_features.Block("stage1", 20, 2)]
    x = rng.normal(size=(300, 32)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 15] > 0).astype(int) + (2 * (x[:, 3] > 0.5) if k == 4 else 0)
    cand = pixelhead.Candidate("both", classifier, 1e-2)
    head = pixelhead.PixelHead.fit(x, y, blocks, cand, [f"c{i}" for i in range(k)])
    grid = x[:280].T.reshape(1, 32, 14, 20)
    meta = OnnxModel(_write(head.onnx_bytes(16)), device="cpu").metadata
    if classifier == "forest":  # the graph takes only the features its trees split on
        used = sorted({int(f) for t in head.forest.trees for f in t.feature[t.feature >= 0]})
        assert meta.input_columns == (used if len(used) < 32 else [])
        grid = grid[:, used]
    else:
        assert meta.input_columns == []
    logits = ort.InferenceSession(head.onnx_bytes(16), providers=["CPUExecutionProvider"]).run(
        None, {"features": grid})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e / e.sum(1, keepdims=True))[0].reshape(k, -1).T
    np.testing.assert_allclose(probs, head.probabilities(x[:280]), atol=1e-5)
    assert meta.per_pixel and meta.features == ["spectra", "stage1"] and meta.feature_channels == [12, 20]
    assert meta.output_stride == 1 and meta.embedding_dim == 32


@pytest.mark.parametrize("k", [2, 4])
def test_onnx_ensemble_head_equals_the_numpy_mean_of_its_members(k):
    rng = np.random.default_rng(10 + k)
    blocks = [pixel_features.Block("spectra", 12, 1), pixel_features.Block("stage1", 20, 2)]
    x = rng.normal(size=(300, 32)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 15] > 0).astype(int) + (2 * (x[:, 3] > 0.5) if k == 4 else 0)
    members = [pixelhead.Candidate("spectra", "logistic", 1e-2), pixelhead.Candidate("encoder", "forest"),
               pixelhead.Candidate("both", "logistic", 1e-1)]
    cand = pixelhead.Candidate.ensemble(members)
    assert cand.feature_set == "both" and cand.name.startswith("mean of 3: spectra + logistic")
    names = [f"c{i}" for i in range(k)]
    head = pixelhead.PixelHead.fit(x, y, blocks, cand, names)
    # independently: each member fitted on its own columns, probabilities averaged
    singles = [pixelhead.PixelHead.fit(x[:, :12], y, blocks[:1], members[0], names),
               pixelhead.PixelHead.fit(x[:, 12:], y, blocks[1:], members[1], names),
               pixelhead.PixelHead.fit(x, y, blocks, members[2], names)]
    want = (singles[0].probabilities(x[:, :12]) + singles[1].probabilities(x[:, 12:]) + singles[2].probabilities(x)) / 3
    np.testing.assert_allclose(head.probabilities(x), want, atol=1e-6)
    grid = x[:280].T.reshape(1, 32, 14, 20)
    logits = ort.InferenceSession(head.onnx_bytes(16), providers=["CPUExecutionProvider"]).run(
        None, {"features": grid})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = (e / e.sum(1, keepdims=True))[0].reshape(k, -1).T
    np.testing.assert_allclose(probs, want[:280], atol=1e-5)
    meta = OnnxModel(_write(head.onnx_bytes(16)), device="cpu").metadata
    assert meta.features == ["spectra", "stage1"] and meta.embedding_dim == 32 and "mean probability of 3" in meta.classifier


def test_the_ensemble_candidate_averages_the_best_head_of_the_three_best_families():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), 4)
    y = np.repeat(np.arange(30) % 3, 4)
    x = rng.normal(size=(len(y), 32)).astype(np.float32)
    x[:, 0] += y
    x[:, 20] -= y
    blocks = [pixel_features.Block("spectra", 12, 1), pixel_features.Block("stage1", 20, 2)]
    scores = pixelhead.score_candidates(x, y, groups, blocks, ["a", "b", "c"], pixelhead.candidates(), folds=4)
    ens, singles = scores[-1], scores[:-1]
    assert len(singles) == 12 and ens["candidate"].classifier == "ensemble"
    members = ens["candidate"].members
    # one per family, the three best families by Brier score
    best = {}
    for s in singles:
        fam = (s["candidate"].feature_set, s["candidate"].classifier)
        if fam not in best or s["brier"] < best[fam]["brier"]:
            best[fam] = s
    want = sorted(best.values(), key=lambda s: s["brier"])[:3]
    assert list(members) == [s["candidate"] for s in want]
    # its score comes from the mean of their out-of-fold probabilities, on the same folds
    oof = np.mean([s["oof"] for s in want], axis=0)
    np.testing.assert_allclose(ens["oof"], oof)
    sq = ((oof - np.eye(3)[y]) ** 2).sum(1)
    assert ens["brier"] == pytest.approx(np.mean([sq[y == c].mean() for c in range(3)]))
    assert ens["accuracy"] == pytest.approx((oof.argmax(1) == y).mean())
    assert sum(map(sum, ens["confusion"])) == len(y)
    # one family only (a single candidate): no ensemble
    one = pixelhead.score_candidates(x, y, groups, blocks, ["a", "b", "c"], pixelhead.candidates(["spectra"], ["forest"]),
                                     folds=4)
    assert len(one) == 1


def _write(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    f.write(data)
    f.close()
    return f.name


def test_candidate_selection_never_scores_a_training_features_pixels(monkeypatch):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(24), 7)  # 24 labelled features of 7 pixels each
    y = np.repeat(np.arange(24) % 3, 7)
    x = rng.normal(size=(len(y), 13)).astype(np.float32)
    x[:, 0] = groups  # the group id rides along in the spectra block
    blocks = [pixel_features.Block("spectra", 13, 1)]
    seen = []
    fit, probabilities = pixelhead.PixelHead.fit, pixelhead.PixelHead.probabilities

    def spy_fit(cls, xs, ys, *a, **kw):
        head = fit(xs, ys, *a, **kw)
        head._train_groups = set(xs[:, 0].astype(int).tolist())
        return head

    def spy_probabilities(self, xs):
        seen.append((self._train_groups, set(xs[:, 0].astype(int).tolist())))
        return probabilities(self, xs)

    monkeypatch.setattr(pixelhead.PixelHead, "fit", classmethod(spy_fit))
    monkeypatch.setattr(pixelhead.PixelHead, "probabilities", spy_probabilities)
    cands = pixelhead.candidates(["spectra"])
    scores = pixelhead.score_candidates(x, y, groups, blocks, ["a", "b", "c"], cands, folds=4)
    assert len(seen) == 4 * len(cands)
    for train, test in seen:
        assert train and test and not train & test
    folds = {frozenset(t) for _, t in seen}
    assert len(folds) == 4 and set().union(*folds) == set(range(24))  # every feature tested once per candidate
    assert all(sum(map(sum, s["confusion"])) == len(y) for s in scores)


def test_choice_takes_the_lowest_brier_score_and_the_cheaper_of_a_tie():
    blocks = [pixel_features.Block("spectra", 12, 1), pixel_features.Block("stage1", 40, 2)]
    mk = lambda fs, clf, l2, b: {"candidate": pixelhead.Candidate(fs, clf, l2), "brier": b, "balanced_accuracy": 0.5,  # noqa
                                 "name": pixelhead.Candidate(fs, clf, l2).name, "folds": 5}
    scores = [mk("both", "forest", 0, 0.40), mk("spectra", "logistic", 0.01, 0.45), mk("encoder", "logistic", 0.01, 0.6)]
    pick, why = pixelhead.choose(scores, blocks)
    assert pick == 0 and "lowest cross-validated Brier score (0.400" in why and "next best" in why
    scores[1]["brier"] = 0.40
    pick, why = pixelhead.choose(scores, blocks)
    assert pick == 1 and "cheapest" in why
    y = np.array([0, 0, 0, 1])
    assert pixelhead.balanced_brier(np.array([0.0, 0.0, 0.0, 1.0]), y) == pytest.approx(0.5)  # not 0.25


def test_forest_depth_one_finds_the_gini_optimal_split():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 1)).astype(np.float32)
    y = (x[:, 0] + rng.normal(scale=0.6, size=200) > 0.3).astype(int)
    forest = rf.RandomForest(n_trees=1, max_depth=1, n_bins=255).fit(x, y, 2)
    tree = forest.trees[0]
    # independent brute force over every midpoint, on the tree's own bootstrap weights
    boot = np.bincount(np.random.default_rng(0).integers(0, 200, 200), minlength=200).astype(float)
    counts = np.bincount(y, minlength=2)
    w = boot * (200 / (counts[y] * 2))
    values = np.unique(x[:, 0])
    best, best_t = np.inf, None
    for t in (values[:-1] + values[1:]) / 2:
        left = x[:, 0] <= np.float32(t)
        imp = 0.0
        for side in (left, ~left):
            cw = np.array([w[side & (y == c)].sum() for c in (0, 1)])
            if cw.sum() > 0:
                imp += cw.sum() - (cw ** 2).sum() / cw.sum()
        if imp < best - 1e-9:
            best, best_t = imp, t
    assert tree.feature[0] == 0 and tree.threshold[0] == pytest.approx(best_t, abs=1e-6)


def test_forest_learns_what_a_linear_model_cannot():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, size=(1500, 6)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)  # XOR
    forest = rf.RandomForest(n_trees=40).fit(x[:1000], y[:1000], 2, max_features=2)
    assert (forest.predict(x[1000:]) == y[1000:]).mean() > 0.9
    blocks = [pixel_features.Block("spectra", 6, 1)]
    lin = pixelhead.PixelHead.fit(x[:1000], y[:1000], blocks, pixelhead.Candidate("spectra", "logistic", 1e-3), ["a", "b"])
    assert (lin.predict(x[1000:]) == y[1000:]).mean() < 0.7


def test_point_buffer_polygons_and_caps_at_pixel_resolution():
    gt = (1000.0, 10.0, 0.0, 2000.0, 0.0, -10.0)
    pt = ogr.Geometry(ogr.wkbPoint)
    pt.AddPoint_2D(1055.0, 1945.0)  # centre of pixel (row 5, col 5)
    poly = ogr.CreateGeometryFromWkt("POLYGON ((1200 1900, 1250 1900, 1250 1870, 1200 1870, 1200 1900))")
    cells = label_cells([(bytes(pt.ExportToWkb()), 0), (bytes(poly.ExportToWkb()), 1)], gt, 50, 50)
    assert list(zip(cells.rows[cells.groups == 0], cells.cols[cells.groups == 0])) == [(5, 5)]
    assert (cells.groups == 1).sum() == 15  # 5 x 3 pixel centres inside the polygon
    buffered = label_cells([(bytes(pt.ExportToWkb()), 0)], gt, 50, 50, point_buffer=15.0)
    d = np.hypot(buffered.rows - 5, buffered.cols - 5) * 10
    assert len(d) == 9 and d.max() <= 15  # the 3 x 3 block: centres within 15 m (diagonals 14.1 m)
    y = np.array([0] * 100 + [1] * 5)
    g = np.array([0] * 97 + [1, 2, 3] + [4] * 5)
    keep = cap_per_class_grouped(y, g, 10, seed=0)
    assert (y[keep] == 0).sum() == 10 and set(g[keep][y[keep] == 0]) == {0, 1, 2, 3} and (y[keep] == 1).sum() == 5


def test_spectra_head_maps_without_running_the_encoder_and_at_10_m(encoders, scene, tmp_path, monkeypatch):
    _, path = encoders[16]
    src, lab = scene
    head = _fit_head(None, path, src, lab, tmp_path / "spec.onnx", feature_sets=("spectra",),
                     classifiers=("forest",))
    calls = []
    run = OnnxModel.run_outputs
    monkeypatch.setattr(OnnxModel, "run_outputs", lambda self, x, names: calls.append(self.path) or run(self, x, names))
    segment(src, path, tmp_path / "m.tif", head_path=head, device="cpu")
    assert not any(Path(c) == Path(path) for c in calls)  # only the head ran
    m = gdal.Open(str(tmp_path / "m.tif")).ReadAsArray()
    assert m.shape == lab.shape
    # 10 m edges: the class changes between neighbouring pixels inside 16 px cells, not only on a 160 m grid
    inner = (m[:, 1:] != m[:, :-1])[:, np.arange(639) % 16 != 15].mean()
    assert inner > 0.01


def test_command_line_features_and_train_head(encoders, scene, tmp_path):
    _, path = encoders[16]
    src, lab = scene
    gpkg = tmp_path / "pts.gpkg"
    from osgeo import osr

    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    srs = osr.SpatialReference(wkt=gdal.Open(str(src)).GetProjection())
    layer = ds.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    names = ["water", "forest", "farm"]
    for wkb, c in _points(src, lab, [1, 2, 3], 5):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("landuse", names[c])
        f.SetGeometry(ogr.CreateGeometryFromWkb(wkb))
        layer.CreateFeature(f)
    ds = None
    cmd = [sys.executable, "-m", "mpmae_core.runtime"]
    proc = subprocess.run(cmd + ["train-head", str(src), str(path), str(gpkg), str(tmp_path / "h.onnx"),
                                 "--class-field", "landuse", "--report", str(tmp_path / "h.html"), "--buffer", "10",
                                 "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "chosen:" in proc.stdout and "Chosen:" in (tmp_path / "h.html").read_text()
    assert OnnxModel(tmp_path / "h.onnx", device="cpu").metadata.class_names == ["farm", "forest", "water"]
    proc = subprocess.run(cmd + ["features", str(src), str(path), str(tmp_path / "f.tif"), "--blocks",
                                 "spectra,stage1", "--dtype", "float16", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert gdal.Open(str(tmp_path / "f.tif")).RasterCount == 52
    bad = subprocess.run(cmd + ["train-head", str(src), str(path), str(gpkg), str(tmp_path / "x.onnx"),
                                "--class-field", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "no field 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run(cmd + ["train-head", str(src), str(path), str(gpkg), str(tmp_path / "x.onnx"),
                                "--class-field", "landuse", "--classifiers", "svm"], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode == 2 and "unknown classifier 'svm'" in bad.stderr


def test_whole_raster_map_from_the_cache_equals_segment(encoders, scene, tmp_path, monkeypatch):
    """The panel's 'Map whole raster' maps from the session's cached stage maps (no second encoder
    run): the same classes as segment() running the encoder, up to the cache's float16 rounding, with
    the same names, colours and style; the encoder is not called while mapping."""
    from mpmae_core.runtime.heads.session import MappingSession

    path, lab = scene
    _, model = encoders[16]
    session = MappingSession(path, model, device="cpu", cache_dir=tmp_path / "cache")
    session.ensure_cache()
    feats = _points(path, lab, [1, 2, 3], 6)
    trained = session.train_full_head(feats, ["water", "forest", "farm"], tmp_path / "head.onnx")
    calls = {"n": 0}
    original = session.model.run_outputs

    def counting(*a, **kw):
        calls["n"] += 1
        return original(*a, **kw)

    monkeypatch.setattr(session.model, "run_outputs", counting)
    res = session.map_to_file(trained["head"], tmp_path / "cached.tif", rows=96)
    assert calls["n"] == 0
    ref = segment(path, model, tmp_path / "segment.tif", head_path=tmp_path / "head.onnx", device="cpu")
    a = gdal.Open(res["output"]).ReadAsArray()
    b = gdal.Open(ref["output"]).ReadAsArray()
    assert a.shape == b.shape and np.array_equal(a == 255, b == 255)
    assert (a == b).mean() > 0.99, (a == b).mean()
    ds_a, ds_b = gdal.Open(res["output"]), gdal.Open(ref["output"])
    assert ds_a.GetGeoTransform() == ds_b.GetGeoTransform()
    ct_a, ct_b = ds_a.GetRasterBand(1).GetRasterColorTable(), ds_b.GetRasterBand(1).GetRasterColorTable()
    assert [ct_a.GetColorEntry(i) for i in range(3)] == [ct_b.GetColorEntry(i) for i in range(3)]
    assert (tmp_path / "cached.qml").read_text() == (tmp_path / "segment.qml").read_text()


@pytest.mark.parametrize("p", [16, pytest.param(8, marks=pytest.mark.slow)])
def test_a_linear_head_applied_at_each_stages_resolution_equals_it_on_the_hypercolumns(encoders, scene, tmp_path,
                                                                                       monkeypatch, p):
    """Issue 26: a logistic-regression head's map, its weights applied per block at the block's own
    stride and the class scores upsampled, equals today's map on the upsampled hypercolumns (class
    agreement at least 99.99 %, probabilities within 1e-4); a forest is not taken for linear."""
    from mpmae_core.runtime.inference import pixel_features as PF

    _, path = encoders[p]
    src, lab = scene
    head = _fit_head(None, path, src, lab, tmp_path / "both.onnx", feature_sets=("both",),
                     classifiers=("logistic",))
    fast = segment(src, path, tmp_path / "fast.tif", head_path=head, probabilities_path=tmp_path / "fast_p.tif",
                   device="cpu")
    onnx_head = OnnxModel(head, device="cpu")
    w, b = PF.linear_weights(onnx_head, sum(onnx_head.metadata.feature_channels))
    assert w.shape[0] == 4 and np.isfinite(w).all()
    monkeypatch.setattr(PF, "linear_weights", lambda *a, **k: None)  # today's path: the full hypercolumns
    slow = segment(src, path, tmp_path / "slow.tif", head_path=head, probabilities_path=tmp_path / "slow_p.tif",
                   device="cpu")
    a, c = (gdal.Open(r["output"]).ReadAsArray() for r in (fast, slow))
    assert (a == c).mean() >= 0.9999
    pa, pc = (gdal.Open(str(tmp_path / f)).ReadAsArray() for f in ("fast_p.tif", "slow_p.tif"))
    assert np.nanmax(np.abs(pa - pc)) < 1e-4
    np.testing.assert_array_equal(np.isnan(pa), np.isnan(pc))
    monkeypatch.undo()
    forest = _fit_head(None, path, src, lab, tmp_path / "forest.onnx", feature_sets=("spectra",),
                       classifiers=("forest",))
    assert PF.linear_weights(OnnxModel(forest, device="cpu"), 12) is None


def test_the_panels_linear_preview_equals_it_on_the_features(encoders, scene, tmp_path):
    """The panel's preview and whole-raster map with a logistic head: its weights applied at each
    stage's cached resolution equal the head on the interpolated features (the same head wrapped
    as an ensemble of one takes the features' path)."""
    from mpmae_core.runtime.heads.session import MappingSession

    path, lab = scene
    _, model = encoders[16]
    session = MappingSession(path, model, device="cpu", cache_dir=tmp_path / "cache")
    session.ensure_cache()
    feats = _points(path, lab, [1, 2, 3], 6)
    head, _ = session.quick_head(feats, ["water", "forest", "farm"])
    assert head.weight is not None and not head.members
    wrapped = pixelhead.PixelHead(head.blocks, "ensemble", head.class_names, head.class_colours,
                                  members=[(head, np.arange(head.n_features))])
    fast, slow = session.preview(head, max_pixels=40_000), session.preview(wrapped, max_pixels=40_000)
    np.testing.assert_array_equal(fast["valid"], slow["valid"])
    v = fast["valid"]
    assert np.abs(fast["probs"][:, v] - slow["probs"][:, v]).max() < 1e-4
    assert (fast["probs"].argmax(0)[v] == slow["probs"].argmax(0)[v]).mean() >= 0.9999


def test_the_panels_forest_preview_builds_only_the_columns_its_trees_read(encoders, scene, tmp_path):
    """Issue 26: the panel's preview and whole-raster map with a forest interpolate only the columns
    its trees split on; the probabilities are those of the forest on every feature."""
    from mpmae_core.runtime.heads.session import MappingSession

    path, lab = scene
    _, model = encoders[16]
    session = MappingSession(path, model, device="cpu", cache_dir=tmp_path / "cache")
    session.ensure_cache()
    names = ["water", "forest", "farm"]
    x, y, _ = session.training_data(_points(path, lab, [1, 2, 3], 6))
    head = pixelhead.PixelHead.fit(x, y, session.train_blocks, pixelhead.Candidate("both", "forest"), names)
    used = head.used_columns()
    assert 0 < used.size < head.n_features
    pv = session.preview(head, max_pixels=40_000)
    (x0, y0), step = pv["origin"], pv["step"]
    ys = np.arange(y0, session.prep.height, step)
    xs = np.arange(x0, session.prep.width, step)
    full = session.grid_features(ys, xs, head.blocks)  # every feature, as before issue 26
    flat = full.reshape(full.shape[0], -1).T
    ok = np.isfinite(flat[:, used]).all(1)
    np.testing.assert_array_equal(pv["valid"].ravel(), ok)
    want = head.probabilities(np.nan_to_num(flat[ok])).astype(np.float32)
    np.testing.assert_array_equal(pv["probs"].reshape(len(names), -1)[:, ok].T, want)


def test_the_panels_grid_features_in_threads_are_the_pixels_own_features(encoders, scene, tmp_path, monkeypatch):
    """Issue 26: the panel's grid of features (preview and whole-raster map) is interpolated in
    worker threads, a share of every block's channels each: bit for bit one thread's numbers, and
    those of the labelled pixels' own features (``features_at``)."""
    from mpmae_core.runtime.heads import session as session_module

    path, _ = scene
    _, model = encoders[16]
    session = session_module.MappingSession(path, model, device="cpu", cache_dir=tmp_path / "cache")
    session.ensure_cache()
    ys, xs = np.arange(3, 200, 7), np.arange(0, session.prep.width, 5)
    monkeypatch.setattr(pixel_features, "column_threads", lambda values: 1)
    one = session.grid_features(ys, xs)
    monkeypatch.setattr(pixel_features, "COLUMN_THREADS", 3)
    monkeypatch.setattr(pixel_features, "column_threads", lambda values: 3)
    monkeypatch.setattr(pixel_features, "_pool", None)
    np.testing.assert_array_equal(session.grid_features(ys, xs), one)
    rows, cols = np.repeat(ys, len(xs)), np.tile(xs, len(ys))
    at = session.features_at(rows, cols)
    np.testing.assert_array_equal(one.reshape(one.shape[0], -1).T, at)
    assert np.isfinite(one).all() and one.shape[0] == sum(b.channels for b in session.blocks)


@pytest.mark.parametrize("kind", ["forest", pytest.param("ensemble", marks=pytest.mark.slow)])
def test_forests_read_only_the_features_their_trees_use_and_map_the_same(encoders, scene, tmp_path, kind):
    """Issue 26: a forest's graph (alone or in an ensemble) takes only the columns its trees split
    on, and segment builds only those; the map and probabilities are identical to the graph that
    takes every column."""
    _, path = encoders[16]
    src, lab = scene
    feats = _points(src, lab, [1, 2, 3, 4], 6)
    names = ["water", "forest", "farm", "meadow"]
    res = pixelhead.train_pixel_head(src, path, feats, names, tmp_path / "new.onnx", device="cpu",
                                     feature_sets=("spectra", "both") if kind == "ensemble" else ("both",),
                                     classifiers=("forest",) if kind == "forest" else ("logistic", "forest"))
    head = res["head"]
    if kind == "ensemble":  # an ensemble of forests (with a linear member on every column nothing is saved)
        cand = pixelhead.Candidate.ensemble([pixelhead.Candidate("spectra", "forest"),
                                             pixelhead.Candidate("both", "forest")])
        rows, cols = np.nonzero(lab > 0)
        pick = np.random.default_rng(0).choice(len(rows), 400, replace=False)
        from mpmae_core.runtime.inference.raster import prepare_input

        model = OnnxModel(path, device="cpu")
        prep = prepare_input(src, model.metadata)
        x = pixel_features.sample_features(prep, model, head.blocks, rows[pick], cols[pick])
        y = np.clip(lab[rows[pick], cols[pick]] - 1, 0, 3)
        head = pixelhead.PixelHead.fit(x, y, head.blocks, cand, names)
        (tmp_path / "new.onnx").write_bytes(head.onnx_bytes(16))
    new_meta = OnnxModel(tmp_path / "new.onnx", device="cpu").metadata
    assert 0 < len(new_meta.input_columns) < head.n_features  # far fewer than the 612 columns
    (tmp_path / "old.onnx").write_bytes(head.onnx_bytes(16, full_input=True))
    assert OnnxModel(tmp_path / "old.onnx", device="cpu").metadata.input_columns == []
    outs = {}
    for name in ("new", "old"):
        segment(src, path, tmp_path / f"{name}.tif", head_path=tmp_path / f"{name}.onnx", device="cpu",
                probabilities_path=tmp_path / f"{name}_p.tif")
        outs[name] = (gdal.Open(str(tmp_path / f"{name}.tif")).ReadAsArray(),
                      gdal.Open(str(tmp_path / f"{name}_p.tif")).ReadAsArray())
    np.testing.assert_array_equal(outs["new"][0], outs["old"][0])
    np.testing.assert_array_equal(outs["new"][1], outs["old"][1])
