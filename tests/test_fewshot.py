"""Few-shot heads in numpy: the ONNX writer, the classifier, metrics, folds, label cells, styles."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from osgeo import ogr

from mpmae_core.runtime.heads import linear, metrics

from mpmae_core.runtime.io import labels, styles

from mpmae_core.runtime.models import onnx_writer
from mpmae_core.runtime.models.metadata import ModelMetadata


# ----------------------------------------------------------------------------- ONNX writer

@pytest.mark.parametrize("layer_norm", [False, True])
def test_written_head_runs_in_onnxruntime_like_numpy(layer_norm, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 24)), rng.normal(size=5)
    kw = dict(mean=rng.normal(size=24), std=rng.uniform(0.5, 2, 24)) if layer_norm else {}
    data = onnx_writer.linear_head(w, b, layer_norm=layer_norm, metadata={"mmearth": "{}", "note": "é"}, **kw)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for shape in [(1, 24, 1, 1), (3, 24, 7, 5)]:  # symbolic batch, height and width
        x = rng.normal(size=shape).astype(np.float32)
        got = session.run(None, {"embedding": x})[0]
        np.testing.assert_allclose(got, onnx_writer.head_reference(x, w, b, layer_norm=layer_norm, **kw), atol=1e-4)
    assert session.get_modelmeta().custom_metadata_map == {"mmearth": "{}", "note": "é"}


def test_written_head_passes_the_onnx_checker():
    onnx = pytest.importorskip("onnx")
    rng = np.random.default_rng(1)
    proto = onnx.load_from_string(onnx_writer.linear_head(rng.normal(size=(3, 8)), np.zeros(3), layer_norm=True))
    onnx.checker.check_model(proto, full_check=True)
    assert [n.op_type for n in proto.graph.node] == ["Transpose", "LayerNormalization", "MatMul", "Add", "Transpose"]
    assert proto.opset_import[0].version == onnx_writer.OPSET


def test_varint_matches_protobuf_encoding():
    assert onnx_writer._varint(1) == b"\x01"
    assert onnx_writer._varint(300) == b"\xac\x02"  # the protobuf documentation's example
    assert onnx_writer._varint(-1) == b"\xff" * 9 + b"\x01"


# ----------------------------------------------------------------------------- classifier

def _objective(theta_w, theta_b, x, y, k, l2):
    w = linear.balanced_weights(y, k)
    z = x @ theta_w.T + theta_b
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -(w * logp[np.arange(len(y)), y]).sum() + 0.5 * l2 * (theta_w ** 2).sum()


def test_softmax_fit_reaches_the_optimum():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    y = rng.integers(0, 3, 60)
    x[y == 1] += 1.0
    w, b = linear.fit_softmax(x, y, 3, l2=0.05, iters=5000)
    best = _objective(w, b, x, y, 3, 0.05)
    # independent check: no small perturbation lowers the objective (first-order optimality)
    for _ in range(20):
        dw, db = rng.normal(size=w.shape) * 1e-3, rng.normal(size=b.shape) * 1e-3
        assert _objective(w + dw, b + db, x, y, 3, 0.05) >= best - 1e-9
    scipy_opt = pytest.importorskip("scipy.optimize")
    res = scipy_opt.minimize(lambda t: _objective(t[:18].reshape(3, 6), t[18:], x, y, 3, 0.05), np.zeros(21),
                             method="L-BFGS-B", options={"maxiter": 5000, "gtol": 1e-10})
    assert best <= res.fun + 1e-6


def test_head_separates_separable_classes_and_saves_what_it_predicts(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 16)) * 3
    y = np.repeat(np.arange(3), 5)  # five shots per class
    x = centres[y] + rng.normal(size=(15, 16))
    head = linear.LinearHead.fit(x, y, ["a", "b", "c"])
    test_y = np.repeat(np.arange(3), 50)
    test_x = centres[test_y] + rng.normal(size=(150, 16))
    assert (head.predict(test_x) == test_y).mean() > 0.95
    path = head.save(tmp_path / "h.onnx", patch_size=16)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    maps = test_x.T.reshape(1, 16, 10, 15).astype(np.float32)
    got = session.run(None, {"embedding": maps})[0].reshape(3, -1).T
    np.testing.assert_allclose(got, head.logits(test_x), atol=1e-3)
    meta = ModelMetadata.from_json(session.get_modelmeta().custom_metadata_map["mmearth"])
    assert (meta.kind, meta.class_names, meta.embedding_dim) == ("head", ["a", "b", "c"], 16)


# ----------------------------------------------------------------------------- metrics

def test_metrics_against_hand_computation():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 2]
    cm = metrics.confusion_matrix(y_true, y_pred, 4)
    assert cm[:3, :3].tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 4]] and cm[3].sum() == 0 and cm[:, 3].sum() == 0
    assert metrics.accuracy(cm) == pytest.approx(7 / 10)
    np.testing.assert_allclose(metrics.recall(cm)[:3], [2 / 3, 1 / 2, 4 / 5])
    np.testing.assert_allclose(metrics.precision(cm)[:3], [2 / 3, 1 / 2, 4 / 5])
    # IoU = TP / (TP + FP + FN): class 0: 2/(2+1+1), class 1: 1/(1+1+1), class 2: 4/(4+1+1)
    np.testing.assert_allclose(metrics.iou(cm)[:3], [2 / 4, 1 / 3, 4 / 6])
    assert np.isnan(metrics.recall(cm)[3]) and np.isnan(metrics.iou(cm)[3])  # absent class: undefined, skipped
    assert metrics.balanced_accuracy(cm) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert metrics.mean_iou(cm) == pytest.approx((2 / 4 + 1 / 3 + 4 / 6) / 3)
    assert metrics.f1(cm)[2] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix([0, 5], [0, 1], 3)


# ----------------------------------------------------------------------------- folds and label checks

def test_grouped_folds_never_split_a_group_and_cover_each_sample_once():
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(30), rng.integers(1, 9, 30))
    y = (groups % 3).astype(int)
    folds = linear.grouped_folds(y, groups, 4, seed=7)
    everything = np.concatenate(folds)
    assert sorted(everything.tolist()) == list(range(len(y)))
    for test in folds:
        train = np.setdiff1d(np.arange(len(y)), test)
        assert not set(groups[test]) & set(groups[train])  # no feature on both sides
        assert set(y[test]) == {0, 1, 2}  # stratified: each fold tests each class


def test_check_labels_names_what_is_missing():
    names = ["water", "forest", "town"]
    with pytest.raises(linear.FewShotError, match=r"at least two classes.*\(water\)"):
        linear.check_labels(np.zeros(5, int), np.arange(5), names)
    y, g = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 2, 3, 4])
    with pytest.raises(linear.FewShotError, match=r"'town' \(1\)"):
        linear.check_labels(y, g, names)
    y, g = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 3, 4, 4])  # town: two cells of one polygon
    with pytest.raises(linear.FewShotError, match=r"'town' \(1\)"):
        linear.check_labels(y, g, names)
    linear.check_labels(np.array([0, 0, 1, 1, 2, 2]), np.arange(6), names)


# ----------------------------------------------------------------------------- label cells

GT = (1000.0, 160.0, 0.0, 5000.0, 0.0, -160.0)  # a 10 x 8 grid of 160 m cells


def _wkb(wkt):
    return bytes(ogr.CreateGeometryFromWkt(wkt).ExportToWkb())


def test_points_and_polygons_label_the_cells_they_cover():
    feats = [
        (_wkb("POINT (1170 4830)"), 0),  # cell row 1, col 1
        (_wkb("MULTIPOINT ((1010 4990), (2590 3700))"), 1),  # (0, 0) and (8, 9)
        (_wkb("POLYGON ((1320 4680, 1800 4680, 1800 4360, 1320 4360, 1320 4680))"), 2),  # centres of cols 2-4, rows 2-3
        (_wkb("POLYGON ((1500 4500, 1510 4500, 1510 4490, 1500 4490, 1500 4500))"), 2),  # tiny: the cell it touches
        (_wkb("POINT (9000 9000)"), 0),  # outside
        (None, 1),
    ]
    cells = labels.label_cells(feats, GT, 10, 9)
    got = {(int(g), int(r), int(c)) for g, r, c in zip(cells.groups, cells.rows, cells.cols)}
    expected = {(0, 1, 1), (1, 0, 0), (1, 8, 9), (3, 3, 3)} | {(2, r, c) for r in (2, 3) for c in (2, 3, 4)}
    assert got == expected
    assert cells.outside == [4] and cells.empty == [5]
    assert set(cells.classes[cells.groups == 2]) == {2}


def test_read_cells_reads_values_and_nodata(tmp_path):
    from helpers import write_geotiff

    arr = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5)
    arr[1, 2, 3] = -9
    path = write_geotiff(tmp_path / "e.tif", arr, nodata=-9)
    got = labels.read_cells(path, np.array([2, 5, 0]), np.array([3, 4, 1]))
    np.testing.assert_array_equal(got[:, 0], arr[0, [2, 5, 0], [3, 4, 1]])
    assert np.isnan(got[0, 1]) and got[1, 1] == arr[1, 5, 4]


# ----------------------------------------------------------------------------- styles and similarity

def test_styles_are_valid_qgis_xml():
    pal = ET.fromstring(styles.paletted_qml(["water & lakes", "forest"], [(0, 0, 255), (0, 128, 0)]).split("\n", 1)[1])
    entries = pal.findall(".//paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        ("0", "water & lakes", "#0000ff"), ("1", "forest", "#008000")]
    moments = styles.BandMoments(5)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 4, 6)) * np.array([1, 5, 2, 9, 0.1])[:, None, None]
    moments.add(values, np.ones((4, 6), bool))
    rgb = ET.fromstring(moments.three_component_qml().split("\n", 1)[1]).find(".//rasterrenderer")
    assert (rgb.get("redBand"), rgb.get("greenBand"), rgb.get("blueBand")) == ("4", "2", "3")  # largest spreads
    lo = float(rgb.find("redContrastEnhancement/minValue").text)
    assert lo == pytest.approx(values[3].mean() - 2 * values[3].std(), rel=1e-5)


def test_centred_cosine():
    from mpmae_core.runtime.inference.similarity import centred_cosine

    centre = np.array([10.0, 10.0, 10.0])
    q = np.array([[11.0, 10.0, 10.0], [10.0, 12.0, 10.0]])
    cells = np.array([[13.0, 10.0, 10.0], [10.0, 10.0, 9.0], [9.0, 10.0, 10.0], [11.0, 11.0, 10.0]])
    # best of the two queries: the third cell is opposite to the first query but orthogonal to the second
    np.testing.assert_allclose(centred_cosine(cells, q, centre, "max"), [1.0, 0.0, 0.0, np.sqrt(0.5)], atol=1e-12)
    np.testing.assert_allclose(centred_cosine(cells, q, centre, "mean"), [np.sqrt(0.5), 0.0, -np.sqrt(0.5), 1.0],
                               atol=1e-12)


def test_class_colours_follow_landcover_words_and_stay_distinct():
    from mpmae_core import registry

    names = ["Water bodies", "forest", "grass", "meadow", "Residential area", "class 7"]
    colours = registry.suggest_class_colours(names)
    dw = dict(zip(registry.DYNAMIC_WORLD_NAMES, map(list, registry.DYNAMIC_WORLD_COLOURS)))
    assert colours[0] == dw["water"] and colours[1] == dw["trees"] and colours[4] == dw["built"]
    assert colours[2] == dw["grass"] and colours[3] != dw["grass"]  # meadow is grass too, but needs its own colour
    assert len({tuple(c) for c in colours}) == len(names)


def test_preview_reads_class_colours_names_and_natural_colour(tmp_path):
    from helpers import write_geotiff
    from mpmae_core.runtime.io.preview import class_map_rgb, natural_colour, side_by_side
    from mpmae_core.runtime.inference.raster import RasterWriter

    arr = np.array([[0, 1, 255], [1, 1, 0]], np.uint8)
    w = RasterWriter(tmp_path / "c.tif", 3, 2, 1, "uint8", (0, 10, 0, 20, 0, -10), "", nodata=255,
                     class_names=["water", "forest"], class_colours=[(0, 0, 255), (0, 128, 0)])
    w.write_rows(0, arr[None])
    w.close()
    rgba, legend = class_map_rgb(tmp_path / "c.tif")
    assert legend == [("water", (0, 0, 255)), ("forest", (0, 128, 0))]
    np.testing.assert_allclose(rgba[0, 1], [0, 128 / 255, 0, 1])
    assert rgba[0, 2, 3] == 0  # no data is transparent
    bands = np.stack([np.full((2, 3), v, np.uint16) for v in (100, 200, 300)])
    bands[:, 0, 0] = [1000, 0, 0]  # B2 brightest at (0, 0), darkest elsewhere
    scene = write_geotiff(tmp_path / "s.tif", bands, ["B02", "B03", "B04"])
    rgb = natural_colour(scene)
    assert rgb.shape == (2, 3, 3) and rgb[0, 0, 2] == 1.0 and rgb[1, 1, 2] == 0.0  # blue channel is B2
    out = side_by_side(scene, tmp_path / "c.tif", tmp_path / "p.png", "t")
    assert out.read_bytes()[:4] == b"\x89PNG"
