"""mmearth:train_head and mmearth:similarity through real Processing on the real sample scene,
with labelled points drawn from its OpenStreetMap landuse raster, and each bad input an analyst
can give: labels in another CRS, outside the raster, one class, too few features."""

import numpy as np
import pytest
from osgeo import gdal, ogr
from qgis.core import QgsProcessingException, QgsRasterLayer

from mpmae_core.data import sample
from mpmae_core.runtime.models.metadata import ModelMetadata

CLASSES = ["farm", "water"]  # water against farmland: separable even by a random-weight encoder


@pytest.fixture(autouse=True)
def _models_by_name(models_dir):
    """Every test here names the model 'atto_test': the models folder ($MMEARTH_MODELS) must hold it,
    whichever tests run (a -m 'not slow' run skips the one that asked for it first)."""
    return models_dir


@pytest.fixture(scope="module")
def scene():
    return str(sample.build(verbose=False)["stack"])


@pytest.fixture(scope="module")
def embeddings(scene, models_dir, tmp_path_factory):
    from mpmae_core.runtime.inference.predict import embed

    out = tmp_path_factory.mktemp("emb") / "scene_emb.tif"
    embed(scene, models_dir / "atto_test.onnx", out, device="cpu")
    return str(out)


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    d = tmp_path_factory.mktemp("labels")
    utm, wgs = d / "points_utm.gpkg", d / "points_wgs84.gpkg"
    sample.label_points(utm, per_class=8, seed=1, classes=CLASSES)
    sample.label_points(wgs, per_class=8, seed=1, classes=CLASSES, epsg=4326)
    return utm, wgs


def _read_points(path):
    ds = ogr.Open(str(path))
    layer = ds.GetLayer(0)
    return [(f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY(), f.GetField("landuse")) for f in layer]


def _write_points(path, rows, epsg=32633):
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    for x, y, name in rows:
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("landuse", name)
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(x, y)
        f.SetGeometry(g)
        layer.CreateFeature(f)
    ds = None
    return str(path)


def _train(run_alg, scene, labels, out, **extra):
    params = {"INPUT": scene, "MODEL": "atto_test", "LABELS": str(labels), "CLASS_FIELD": "landuse",
              "OUTPUT": str(out), "REPORT": str(out.with_suffix(".html"))}
    params.update(extra)
    return run_alg("mmearth:train_head", params)


@pytest.mark.slow
def test_few_shot_head_separates_the_labelled_classes(run_alg, scene, points, models_dir, tmp_path):
    head = tmp_path / "head.onnx"
    result, feedback = _train(run_alg, scene, points[0], head)
    assert result["BALANCED_ACCURACY"] >= 0.8  # cross-validated, grouped by point
    assert result["CHOSEN"].split(" + ")[0] in ("spectra", "encoder", "both")
    import onnxruntime as ort

    meta = ModelMetadata.from_json(ort.InferenceSession(str(head)).get_modelmeta().custom_metadata_map["mmearth"])
    assert (meta.kind, meta.class_names, meta.output_stride) == ("head", CLASSES, 1) and meta.per_pixel
    report = (tmp_path / "head.html").read_text()
    assert "Confusion matrix" in report and "farm" in report and "Candidates" in report
    assert any(m.startswith("chosen: ") for m in feedback.infos)
    assert sum("logistic regression" in m or "random forest" in m for m in feedback.infos) >= 12
    # the class map from this head: on the input's grid, only the head's classes, right at the labels
    out = tmp_path / "classes.tif"
    run_alg("mmearth:segment", {"INPUT": scene, "MODEL": "atto_test", "HEAD": str(head), "OUTPUT": str(out)})
    ds, src = gdal.Open(str(out)), gdal.Open(scene)
    assert ds.GetGeoTransform() == src.GetGeoTransform() and ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    classes = ds.ReadAsArray()
    assert set(np.unique(classes)) <= {0, 1, 255}  # 255: pixels without data
    assert (classes != 255).mean() > 0.5
    gt = ds.GetGeoTransform()
    hits = [classes[int((y - gt[3]) / gt[5]), int((x - gt[0]) / gt[1])] == CLASSES.index(name)
            for x, y, name in _read_points(points[0])]
    assert np.mean(hits) >= 0.9
    # a fresh layer picks up the style written beside the map: class names in the legend
    layer = QgsRasterLayer(str(out), "classes", "gdal")
    assert layer.renderer().type() == "paletted"
    assert [c.label for c in layer.renderer().classes()] == CLASSES


def test_labels_in_another_crs_are_reprojected(run_alg, scene, points, tmp_path):
    a, fb_a = _train(run_alg, scene, points[0], tmp_path / "utm.onnx")
    b, fb_b = _train(run_alg, scene, points[1], tmp_path / "wgs.onnx")
    assert any("reprojecting" in m and "EPSG:4326" in m for m in fb_b.infos)
    assert not any("reprojecting" in m for m in fb_a.infos)
    assert a["ACCURACY"] == b["ACCURACY"] and a["CHOSEN"] == b["CHOSEN"]
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(tmp_path / n)) for n in ("utm.onnx", "wgs.onnx")]
    dim = sessions[0].get_inputs()[0].shape[1]
    probe = np.random.default_rng(0).normal(size=(1, dim, 4, 4)).astype(np.float32)
    outs = [s.run(None, {"features": probe})[0] for s in sessions]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)  # same pixels sampled: the same head


def test_labels_outside_the_raster_are_skipped_with_a_warning(run_alg, scene, points, tmp_path):
    rows = _read_points(points[0]) + [(200000.0, 5000000.0, "water"), (900000.0, 5800000.0, "farm")]
    labels = _write_points(tmp_path / "some_outside.gpkg", rows)
    result, feedback = _train(run_alg, scene, labels, tmp_path / "h.onnx")
    assert any("skipped 2 of 18 labelled feature(s) outside the raster" in w for w in feedback.warnings)
    assert (tmp_path / "h.onnx").is_file()
    far = _write_points(tmp_path / "all_outside.gpkg", rows[-2:] * 2)
    with pytest.raises(QgsProcessingException) as err:
        _train(run_alg, scene, far, tmp_path / "none.onnx")
    assert "none of the labelled features lies inside the raster" in str(err.value)
    assert not (tmp_path / "none.onnx").exists()


@pytest.mark.parametrize("case, expected", [
    ("single", "at least two classes"),
    ("too_few", "too few labelled features for 'water' (1)"),
])
def test_single_class_or_too_few_labels_stop_with_the_fix(run_alg, scene, points, tmp_path, case, expected):
    rows = _read_points(points[0])
    farm = [r for r in rows if r[2] == "farm"]
    water = [r for r in rows if r[2] == "water"]
    labels = _write_points(tmp_path / f"{case}.gpkg", farm if case == "single" else farm + water[:1])
    with pytest.raises(QgsProcessingException) as err:
        _train(run_alg, scene, labels, tmp_path / "h.onnx")
    assert expected in str(err.value)
    assert not list(tmp_path.glob("h.*"))  # neither head nor report


def test_polygon_labels_with_an_integer_class_field(run_alg, scene, tmp_path):
    polygons = sample.scene_dir() / "s2l1c_ref.gpkg"  # 30 reference polygons, one entirely outside the scene
    result, feedback = run_alg("mmearth:train_head", {
        "INPUT": scene, "MODEL": "atto_test", "LABELS": str(polygons), "CLASS_FIELD": "cid",
        "OUTPUT": str(tmp_path / "poly.onnx"), "MAX_PIXELS": 200, "FEATURE_SETS": [0, 2]})
    assert any("skipped 1 of 30 labelled feature(s) outside the raster" in w for w in feedback.warnings)
    assert any(m.startswith("1 ") for m in feedback.infos)  # report row of class '1'
    assert any("at most 200 per class" in m for m in feedback.infos)
    assert not any("encoder + " in m for m in feedback.infos)  # only the feature sets asked for
    assert 0.0 <= result["ACCURACY"] <= 1.0


def test_precomputed_per_pixel_features_are_reused(run_alg, scene, points, models_dir, tmp_path):
    from qgis.core import QgsProcessingException

    crop = str(tmp_path / "crop.tif")
    gdal.Translate(crop, scene, srcWin=[0, 0, 512, 384])
    feats, _ = run_alg("mmearth:embed", {"INPUT": crop, "MODEL": "atto_test", "PER_PIXEL": True,
                                         "OUTPUT": str(tmp_path / "feats.tif")})
    assert gdal.Open(str(tmp_path / "feats.tif")).RasterCount == 612
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[:384, :512]
    gt = gdal.Open(crop).GetGeoTransform()
    rows = []
    rng = np.random.default_rng(0)
    for name in CLASSES:
        r, c = np.nonzero(lab == sample.OSM_CLASSES.index(name) + 1)
        for j in rng.choice(len(r), 6, replace=False):
            rows.append((gt[0] + (c[j] + 0.5) * gt[1], gt[3] + (r[j] + 0.5) * gt[5], name))
    labels = _write_points(tmp_path / "crop_pts.gpkg", rows)
    direct, _ = _train(run_alg, crop, labels, tmp_path / "a.onnx")
    reused, _ = _train(run_alg, crop, labels, tmp_path / "b.onnx", EMBEDDINGS=str(tmp_path / "feats.tif"))
    assert (direct["ACCURACY"], direct["CHOSEN"]) == (reused["ACCURACY"], reused["CHOSEN"])
    with pytest.raises(QgsProcessingException, match="not on the input raster's grid"):
        _train(run_alg, scene, labels, tmp_path / "c.onnx", EMBEDDINGS=str(tmp_path / "feats.tif"))


def test_train_head_cancel_leaves_nothing(qgis_app, scene, points, models_dir, tmp_path):
    import processing
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException):
        processing.run("mmearth:train_head", {"INPUT": scene, "MODEL": "atto_test", "LABELS": str(points[0]),
                                              "CLASS_FIELD": "landuse", "OUTPUT": str(tmp_path / "c.onnx"),
                                              "REPORT": str(tmp_path / "c.html")}, feedback=feedback)
    assert list(tmp_path.iterdir()) == []


def test_similarity_is_highest_at_places_like_the_queries(run_alg, scene, points, embeddings, tmp_path):
    rows = _read_points(points[0])
    queries = _write_points(tmp_path / "q.gpkg", [r for r in rows if r[2] == "water"][:3])
    out = tmp_path / "sim.tif"
    result, feedback = run_alg("mmearth:similarity", {"INPUT": scene, "MODEL": "atto_test", "QUERY": queries,
                                                      "OUTPUT": str(out)})
    ds, emb = gdal.Open(str(out)), gdal.Open(embeddings)
    assert ds.GetGeoTransform() == emb.GetGeoTransform() and ds.GetSpatialRef().IsSame(emb.GetSpatialRef())
    sim = ds.ReadAsArray()
    assert np.nanmax(sim) <= 1.0 + 1e-6 and np.nanmin(sim) >= -1.0 - 1e-6
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[8::16, 8::16][:sim.shape[0], :sim.shape[1]]
    water, farm = sample.OSM_CLASSES.index("water") + 1, sample.OSM_CLASSES.index("farm") + 1
    assert np.nanmean(sim[lab == water]) > np.nanmean(sim[lab == farm]) + 0.2
    gt = ds.GetGeoTransform()
    for x, y, _ in [r for r in rows if r[2] == "water"][:3]:  # a query's own cell is a perfect match
        assert sim[int((y - gt[3]) / gt[5]), int((x - gt[0]) / gt[1])] == pytest.approx(1.0, abs=1e-5)
    assert QgsRasterLayer(str(out), "sim", "gdal").renderer().type() == "singlebandpseudocolor"


def test_embeddings_get_a_three_component_style(run_alg, scene, embeddings):
    layer = QgsRasterLayer(embeddings, "emb", "gdal")
    renderer = layer.renderer()
    assert renderer.type() == "multibandcolor"
    ds = gdal.Open(embeddings)
    spreads = [np.nanstd(ds.GetRasterBand(i + 1).ReadAsArray()) for i in range(ds.RasterCount)]
    assert renderer.redBand() == int(np.argmax(spreads)) + 1
