"""The dock panel *MMEarth few-shot mapping*, driven like a person would (pytest-qt, a real
QgsApplication and a real QgsMapCanvas): choose the scene and a model, add five classes, click ten
labels with the mouse on the map, see the preview and the confidence layer, take a suggestion, map
the whole raster, then repeat the run headless from the saved head with qgis_process."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["water", "forest", "farm", "meadow", "residential"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 768 x 512 px part of the embedded scene with its OSM landuse labels."""
    from mpmae_core.data import sample

    d = tmp_path_factory.mktemp("panel")
    path = d / "scene.tif"
    gdal.Translate(str(path), str(sample.build(verbose=False)["stack"]), srcWin=[384, 128, 768, 512])
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[128:640, 384:1152]
    return path, lab


@pytest.fixture
def canvas_and_layer(qgis_app, scene, qtbot):
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(scene[0]), "Sentinel-2 scene", "gdal")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    canvas = QgsMapCanvas()
    canvas.resize(768, 512)
    canvas.setDestinationCrs(layer.crs())
    canvas.setLayers([layer])
    canvas.setExtent(layer.extent())
    canvas.show()
    qtbot.addWidget(canvas)
    qtbot.waitExposed(canvas)
    canvas.refresh()
    canvas.waitWhileRendering()
    yield canvas, layer
    QgsProject.instance().clear()


def _label_places(lab, per_class=2, seed=0):
    """Interior pixels of each class (5 x 5 all that class), as an analyst would click."""
    from mpmae_core.data import sample
    from mpmae_core.evaluation import interior_pixels

    inner = interior_pixels(lab, np.ones(lab.shape, bool))
    rng = np.random.default_rng(seed)
    out = []
    for name in CLASSES:
        r, c = np.nonzero(inner & (lab == sample.OSM_CLASSES.index(name) + 1))
        for i in rng.choice(len(r), per_class, replace=False):
            out.append((name, int(r[i]), int(c[i])))
    return out


def _click(qtbot, canvas, x, y):
    from qgis.PyQt.QtCore import QPoint, Qt

    pt = canvas.getCoordinateTransform().transform(x, y)
    qtbot.mouseClick(canvas.viewport(), Qt.LeftButton, pos=QPoint(int(round(pt.x())), int(round(pt.y()))))


def _colours_in(image_path, colours, min_share=0.002):
    from qgis.PyQt.QtGui import QImage

    img = QImage(str(image_path)).convertToFormat(QImage.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.height() * img.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, :img.width() * 3]
    arr = arr.reshape(img.height(), img.width(), 3).astype(int)
    return [float((np.abs(arr - np.array(c)).sum(-1) <= 6).mean()) >= min_share for c in colours]


@pytest.mark.qgis_process
def test_few_shot_mapping_in_the_canvas_like_a_person(qtbot, canvas_and_layer, scene, models_dir, tmp_path,
                                                      monkeypatch):
    from qgis.core import QgsProject

    from mmearth_qgis.panel import FewShotPanel

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    canvas, layer = canvas_and_layer
    path, lab = scene
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    panel.show()
    # choose the scene and the model: the inspection's verdict shows, the features are computed once
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000) as ready:
        panel.raster.setLayer(layer)
        panel.model.setEditText("atto_test")
    assert ready.args[0] is True and "Can feed" in panel.findings.text() and "YES" in panel.findings.text()
    # five classes, typed and added
    for name in CLASSES:
        qtbot.keyClicks(panel.class_name, name)
        qtbot.mouseClick(panel.add_button, 1)
    assert panel.class_names() == CLASSES
    assert len({tuple(c) for c in panel.class_colours()}) == 5  # the landcover-word palette
    # ten labels clicked on the map with the point tool
    panel.auto.setChecked(False)
    panel.point_tool_button.click()
    assert canvas.mapTool() is panel.point_tool
    gt = gdal.Open(str(path)).GetGeoTransform()
    places = _label_places(lab)
    for name, r, c in places:
        panel.classes.setCurrentRow(CLASSES.index(name))
        _click(qtbot, canvas, gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
    labels = panel.point_layer
    assert labels is not None and labels.featureCount() == 10 and labels.isEditable()
    # every click is saved at once in a GeoPackage (not a memory layer): another reader sees all ten
    from qgis.core import QgsVectorLayer

    assert labels.providerType() == "ogr" and ".gpkg" in labels.source()
    assert QgsVectorLayer(labels.source(), "reader", "ogr").featureCount() == 10
    got = sorted(f["class"] for f in labels.getFeatures())
    assert got == sorted(n for n, _, _ in places)
    for f in labels.getFeatures():  # each click landed on its pixel's class
        p = f.geometry().asPoint()
        r, c = int((p.y() - gt[3]) / gt[5]), int((p.x() - gt[0]) / gt[1])
        assert CLASSES[[n for n, _, _ in places].index(f["class"]) // 2] == f["class"]
        assert lab[r, c] == [0, "water", "forest", "farm", "meadow", "grass", "scrub", "wetland",
                             "residential"].index(f["class"])
    qtbot.mouseClick(panel.undo_button, 1)  # the panel's undo removes the last label, saved at once
    assert labels.featureCount() == 9 and QgsVectorLayer(labels.source(), "reader", "ogr").featureCount() == 9
    name, r, c = places[-1]
    panel.classes.setCurrentRow(CLASSES.index(name))
    _click(qtbot, canvas, gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
    assert labels.featureCount() == 10
    # the preview: class map of the view and the confidence, as layers of the project
    with qtbot.waitSignal(panel.preview_ready, timeout=60_000):
        qtbot.mouseClick(panel.preview_button, 1)
    preview, confidence = panel.preview_layers["classes"], panel.preview_layers["confidence"]
    assert QgsProject.instance().mapLayer(preview.id()) and QgsProject.instance().mapLayer(confidence.id())
    # in the layer tree: labels on top, then the preview group (classes shown, confidence hidden), then the scene
    root = QgsProject.instance().layerTreeRoot()
    order = [lyr.name() for lyr in root.layerOrder()]
    assert order.index("MMEarth labels (points)") < order.index("MMEarth preview") < order.index("Sentinel-2 scene")
    assert order.index("MMEarth preview") < order.index("MMEarth confidence") < order.index("Sentinel-2 scene")
    assert root.findLayer(preview.id()).isVisible() and not root.findLayer(confidence.id()).isVisible()
    root.findLayer(confidence.id()).setItemVisibilityChecked(True)  # the user turns confidence on
    assert preview.renderer().type() == "paletted"
    assert [c.label for c in preview.renderer().classes()] == CLASSES
    assert preview.extent().contains(canvas.extent().buffered(-50)) or preview.extent().intersects(canvas.extent())
    ds = gdal.Open(preview.source())
    values = ds.ReadAsArray()
    assert values[values != 255].max() <= 4 and (values != 255).mean() > 0.9  # 255: no data
    assert "agreement with the labels in cross-validation" in panel.status.text()
    assert "not the map's accuracy" in panel.status.text()
    assert "water 2" in panel.counts.text()
    # a new label updates the preview by itself
    panel.auto.setChecked(True)
    name, r, c = _label_places(lab, 1, seed=5)[0]
    panel.classes.setCurrentRow(CLASSES.index(name))
    with qtbot.waitSignal(panel.preview_ready, timeout=60_000):
        _click(qtbot, canvas, gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
    assert panel.preview_count == 2
    assert QgsProject.instance().mapLayersByName("MMEarth preview") == [panel.preview_layers["classes"]]  # replaced
    assert panel.preview_layers["classes"] is preview  # the same layer, new data: the user's choices stay
    assert root.findLayer(confidence.id()).isVisible() and "preview2" in confidence.source()
    assert [lyr.name() for lyr in root.layerOrder()] == order
    preview, confidence = panel.preview_layers["classes"], panel.preview_layers["confidence"]
    # label where the model is unsure
    qtbot.mouseClick(panel.suggest_button, 1)
    sugg = panel.suggestion_layer
    assert sugg.featureCount() == 10
    conf = [f["confidence"] for f in sugg.getFeatures()]
    probs = gdal.Open(confidence.source()).ReadAsArray()
    assert max(conf) <= np.nanpercentile(probs, 20)  # among the least confident places of the view
    # pictures of the panel and the map (README): the class colours are on the canvas
    canvas.setLayers([sugg, labels, preview, layer])
    canvas.refresh()
    canvas.waitWhileRendering()
    qtbot.wait(200)
    docs = Path(os.environ.get("MMEARTH_SCREENSHOTS", tmp_path))
    docs.mkdir(parents=True, exist_ok=True)
    assert canvas.grab().save(str(docs / "fewshot_canvas.png")) and panel.grab().save(str(docs / "fewshot_panel.png"))
    present = _colours_in(docs / "fewshot_canvas.png", panel.class_colours())
    assert sum(present) >= 4, present
    # map the whole raster: the head .onnx and the styled class map, as the Processing algorithms write
    out = tmp_path / "landcover.tif"
    with qtbot.waitSignal(panel.map_finished, timeout=600_000) as done:
        panel.map_raster(out)
    assert done.args[0] is True, done.args[1]
    head = out.with_name("landcover_head.onnx")
    assert out.is_file() and head.is_file() and out.with_suffix(".qml").is_file()
    mapped = gdal.Open(str(out)).ReadAsArray()
    assert mapped.shape == lab.shape and set(np.unique(mapped)) <= set(range(5)) | {255}
    # the same run, headless, from the saved head
    headless = tmp_path / "headless.tif"
    proc = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "run", "mmearth:segment", "--", f"INPUT={path}",
                           f"MODEL={models_dir / 'atto_test.onnx'}", f"HEAD={head}", f"OUTPUT={headless}"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile")))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    np.testing.assert_array_equal(gdal.Open(str(headless)).ReadAsArray(), mapped)
    # the panel's state is saved in the project and restored on reopening
    project_file = tmp_path / "fewshot.qgz"
    assert QgsProject.instance().write(str(project_file))
    QgsProject.instance().clear()
    assert QgsProject.instance().read(str(project_file))
    again = FewShotPanel(canvas)
    qtbot.addWidget(again)
    again.restore_state()
    assert again.class_names() == CLASSES and again.model.currentText() == "atto_test"
    assert again.raster_layer() is not None and again.raster_layer().source() == str(path)
    assert again.point_layer is not None and again.point_layer.featureCount() == 11  # every label came back


def test_cancelling_the_whole_raster_map_leaves_no_file(qtbot, canvas_and_layer, scene, models_dir, tmp_path,
                                                        monkeypatch):
    from mmearth_qgis.panel import FewShotPanel

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    canvas, layer = canvas_and_layer
    path, lab = scene
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000):
        panel.raster.setLayer(layer)
        panel.model.setEditText("atto_test")
    panel.auto.setChecked(False)
    for name in CLASSES[:2]:
        panel.add_class(name)
    gt = gdal.Open(str(path)).GetGeoTransform()
    from qgis.core import QgsPointXY

    for name, r, c in _label_places(lab, 3)[:6]:
        if name in CLASSES[:2]:
            panel.classes.setCurrentRow(CLASSES.index(name))
            panel.add_point(QgsPointXY(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]))
    for when in ("at once", "while mapping"):  # before the head is written, and after (the head is temporary)
        out = tmp_path / "cancelled.tif"
        with qtbot.waitSignal(panel.map_finished, timeout=300_000) as done:
            panel.map_raster(out)
            if when == "at once":
                panel.cancel_map()
            else:  # the cancel arrives once the head is written, as the map begins
                original = panel.session.map_to_file

                def cancel_then_map(*args, original=original, **kw):
                    assert list(tmp_path.glob(".cancelled_head.*.onnx"))  # the head exists, under a temporary name
                    panel.map_task.cancel()
                    return original(*args, **kw)

                monkeypatch.setattr(panel.session, "map_to_file", cancel_then_map)
        assert done.args[0] is False and "cancel" in done.args[1].lower()
        left = sorted(p.name for p in tmp_path.iterdir() if "cancelled" in p.name)
        assert left == [], (when, left)


def test_labels_live_beside_the_project_and_come_back_when_it_is_reopened(qtbot, canvas_and_layer, scene, tmp_path):
    """Labels are committed to <project>_mmearth_labels.gpkg at every click; saving, clearing and
    reopening the project brings every one back (a memory layer came back empty)."""
    from qgis.core import QgsPointXY, QgsProject

    from mmearth_qgis.panel import FewShotPanel

    canvas, layer = canvas_and_layer
    path, lab = scene
    project_file = tmp_path / "mapping.qgz"
    assert QgsProject.instance().write(str(project_file))
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    assert panel.raster_layer() is layer  # the only layer that can feed a model, chosen by itself
    panel.auto.setChecked(False)
    for name in ("water", "forest"):
        panel.add_class(name)
    gt = gdal.Open(str(path)).GetGeoTransform()
    for i, (name, r, c) in enumerate(_label_places(lab, 3)[:6]):
        panel.classes.setCurrentRow(i % 2)
        panel.add_point(QgsPointXY(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]))
    store = tmp_path / "mapping_mmearth_labels.gpkg"
    assert panel.point_layer.source().startswith(str(store)) and store.is_file()
    from osgeo import ogr

    assert ogr.Open(str(store)).GetLayerByName("points").GetFeatureCount() == 6  # on disk before any save
    from helpers import reopened_panel

    again = reopened_panel(panel, canvas, qtbot, project_file)
    assert again.class_names() == ["water", "forest"]
    assert again.point_layer is not None and again.point_layer.featureCount() == 6
    assert sorted(f["class"] for f in again.point_layer.getFeatures()) == ["forest"] * 3 + ["water"] * 3
    again.shutdown()
    assert not again.workdir.exists()  # the temporary folder goes with the panel


def test_other_dates_offer_images_only_not_embeddings(qtbot, canvas_and_layer, scene, tmp_path):
    """'Other dates' lists the project's other Sentinel-2 rasters, never another model's embedding
    (AlphaEarth's 64 bands) nor an embedding raster of this toolkit's, which are not dates."""
    from helpers import write_alphaearth
    from qgis.core import QgsProject, QgsRasterLayer

    from mmearth_qgis.panel import FewShotPanel

    canvas, layer = canvas_and_layer
    path, _ = scene
    ds = gdal.Open(str(path))
    gt, wkt = ds.GetGeoTransform(), ds.GetProjection()
    other = tmp_path / "S2A_MSIL1C_20170318T102101_T33UUU.tif"
    gdal.Translate(str(other), str(path))
    ae = write_alphaearth(tmp_path / "alphaearth.tif", np.ones((64, 96, 64), np.int8), gt, wkt)
    ours = tmp_path / "embedding.tif"
    e = gdal.GetDriverByName("GTiff").Create(str(ours), 48, 32, 3, gdal.GDT_Float32)
    e.SetGeoTransform((gt[0], 160.0, 0.0, gt[3], 0.0, -160.0))
    e.SetProjection(wkt)
    for i in range(3):
        e.GetRasterBand(i + 1).SetDescription(f"embedding_{i}")
    e = None
    added = [QgsRasterLayer(str(f), n, "gdal") for f, n in ((other, "date 2"), (ae, "AlphaEarth"), (ours, "ours"))]
    assert all(a.isValid() for a in added)
    QgsProject.instance().addMapLayers(added)
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    panel.auto.setChecked(False)
    panel.raster.setLayer(layer)
    panel.fill_other_dates()
    assert [panel.other_dates.itemText(i) for i in range(panel.other_dates.count())] == ["date 2"]
    panel.shutdown()


def test_errors_reach_the_message_bar_and_status_texts_are_true(qtbot, canvas_and_layer, models_dir):
    from qgis.gui import QgsMessageBar

    from mmearth_qgis.panel import FewShotPanel

    canvas, layer = canvas_and_layer
    bar = QgsMessageBar()
    qtbot.addWidget(bar)
    panel = FewShotPanel(canvas, message_bar=bar)
    qtbot.addWidget(panel)
    panel.raster.setLayer(None)
    qtbot.mouseClick(panel.preview_button, 1)
    assert panel.status.text() == "choose a Sentinel-2 raster first"  # not 'features are not ready'
    panel.raster.setLayer(layer)
    qtbot.mouseClick(panel.preview_button, 1)
    assert panel.status.text().startswith("choose a model first")
    panel.model.setEditText("head3")  # a head, not an encoder: the session cannot open
    items = bar.items()
    assert items and "few-shot mapping needs an encoder" in items[-1].text()
    assert "needs an encoder" in panel.status.text()


def test_a_place_labelled_with_two_classes_is_named_in_the_message_bar(qtbot, canvas_and_layer, scene, models_dir,
                                                                      tmp_path, monkeypatch):
    from qgis.core import QgsPointXY
    from qgis.gui import QgsMessageBar

    from mmearth_qgis.panel import FewShotPanel

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    canvas, layer = canvas_and_layer
    path, lab = scene
    bar = QgsMessageBar()
    qtbot.addWidget(bar)
    panel = FewShotPanel(canvas, message_bar=bar)
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000):
        panel.model.setEditText("atto_test")
    panel.auto.setChecked(False)
    for name in CLASSES[:2]:
        panel.add_class(name)
    gt = gdal.Open(str(path)).GetGeoTransform()
    places = [p for p in _label_places(lab, 3) if p[0] in CLASSES[:2]]
    for name, r, c in places:
        panel.classes.setCurrentRow(CLASSES.index(name))
        panel.add_point(QgsPointXY(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]))
    name, r, c = places[0]  # the same place again, as the other class
    panel.classes.setCurrentRow(1 - CLASSES.index(name))
    panel.add_point(QgsPointXY(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]))
    with qtbot.waitSignal(panel.preview_ready, timeout=60_000):
        panel.preview()
    assert any("carry two different classes (water and forest at 1 pixel(s))" in item.text()
               for item in bar.items()), [i.text() for i in bar.items()]


@pytest.mark.slow
def test_check_accuracy_with_a_validation_sample_labelled_by_clicks(qtbot, canvas_and_layer, scene, models_dir,
                                                                     tmp_path, monkeypatch):
    """Label, map the whole raster, draw a validation sample, label its points with the same clicks
    (they never become training labels), and read the map's accuracy from them."""
    from mmearth_qgis.panel import FewShotPanel
    from mpmae_core.runtime.heads.validation import assess_map

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    canvas, layer = canvas_and_layer
    path, lab = scene
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    panel.show()
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000):
        panel.raster.setLayer(layer)
        panel.model.setEditText("atto_test")
    for name in CLASSES:
        qtbot.keyClicks(panel.class_name, name)
        qtbot.mouseClick(panel.add_button, 1)
    panel.auto.setChecked(False)
    panel.point_tool_button.click()
    gt = gdal.Open(str(path)).GetGeoTransform()
    for name, r, c in _label_places(lab):
        panel.classes.setCurrentRow(CLASSES.index(name))
        _click(qtbot, canvas, gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
    training = panel.point_layer.featureCount()
    qtbot.mouseClick(panel.report_button, 1)  # too early: said, nothing breaks
    assert "draw a validation sample" in panel.accuracy.text()
    qtbot.mouseClick(panel.validation_button, 1)
    assert "map the whole raster first" in panel.accuracy.text()
    out = tmp_path / "landcover.tif"
    with qtbot.waitSignal(panel.map_finished, timeout=600_000) as done:
        panel.map_raster(out)
    assert done.args[0] is True, done.args[1]
    panel.validation_size.setValue(40)
    errors = []
    monkeypatch.setattr(panel, "error", errors.append)
    qtbot.mouseClick(panel.validation_button, 1)
    val = panel.validation_layer
    assert val is not None, errors
    assert val.featureCount() >= 40 and "validation points drawn" in panel.accuracy.text()
    # label each point as a person would: with what the scene's landuse says there, and where it says
    # nothing (or names a class the map lacks) with the map's own class
    qtbot.mouseClick(panel.validation_tool_button, 1)
    assert canvas.mapTool() is panel.validation_tool
    osm = [0, "water", "forest", "farm", "meadow", "grass", "scrub", "wetland", "residential"]
    mapped = gdal.Open(str(out)).ReadAsArray()
    points = list(val.getFeatures())
    for i, f in enumerate(points):
        if i == 3:  # too few labelled yet: the report says which class needs more
            qtbot.mouseClick(panel.report_button, 1)
            assert errors and ("label more points there" in errors[-1] or "label points there too" in errors[-1])
            assert any(n in errors[-1] for n in CLASSES)
        p = f.geometry().asPoint()
        r, c = int((p.y() - gt[3]) / gt[5]), int((p.x() - gt[0]) / gt[1])
        name = osm[lab[r, c]] if lab[r, c] else None
        if name not in CLASSES:
            name = CLASSES[mapped[r, c]]
        panel.classes.setCurrentRow(CLASSES.index(name))
        _click(qtbot, canvas, p.x(), p.y())
    labelled = len(points)
    assert f"{labelled} of {labelled} validation points labelled" in panel.accuracy.text()
    assert panel.point_layer.featureCount() == training  # the validation clicks are not training labels
    qtbot.mouseClick(panel.report_button, 1)
    assert "map accuracy" in panel.accuracy.text(), (panel.accuracy.text(), errors)
    report = out.with_name("landcover_accuracy.html")
    assert report.is_file() and report.with_suffix(".json").is_file()
    direct = assess_map(out, panel.validation_path())
    assert panel.validation_result["overall_accuracy"] == direct["overall_accuracy"]
    assert direct["sample_size"] == labelled
    # the preview now says what its figure is, beside the map's accuracy
    with qtbot.waitSignal(panel.preview_ready, timeout=60_000):
        qtbot.mouseClick(panel.preview_button, 1)
    assert "agreement with the labels in cross-validation" in panel.status.text()
    assert "validation points" in panel.status.text() and "map accuracy" in panel.status.text()
    # the project saved and reopened: the sample and the map it was drawn from come back with it, so the
    # report (and labelling more points) goes on where it was left
    from helpers import reopened_panel

    again = reopened_panel(panel, canvas, qtbot, tmp_path / "accuracy.qgz")
    assert again.last_map == out
    assert again.validation_layer is not None and again.validation_layer.featureCount() == labelled
    assert again.validation_file() == panel.validation_path()  # where it was drawn, not beside the project
    qtbot.mouseClick(again.report_button, 1)
    assert "map accuracy" in again.accuracy.text(), again.accuracy.text()
    assert again.validation_result["overall_accuracy"] == direct["overall_accuracy"]
    again.shutdown()


@pytest.mark.slow
def test_a_series_of_dates_in_the_panel(qtbot, qgis_app, models_dir, tmp_path, monkeypatch):
    """Three dates of one place as layers: the raster is one, the other two are checked in 'Other
    dates'; the panel computes the series' features once, labels clicked under one date's clouds
    count, the whole map has no data only where no date sees the ground, and the choice of dates
    comes back with the project."""
    from helpers import reopened_panel, series_dates
    from qgis.core import QgsPointXY, QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas
    from qgis.PyQt.QtCore import Qt

    from mpmae_core.data import sample
    from mmearth_qgis.panel import FewShotPanel

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    QgsProject.instance().clear()
    paths, clouds, _ = series_dates(tmp_path / "dates")
    layers = [QgsRasterLayer(str(p), f"date {i + 1}", "gdal") for i, p in enumerate(paths)]
    QgsProject.instance().addMapLayers(layers)
    canvas = QgsMapCanvas()
    qtbot.addWidget(canvas)
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    panel.auto.setChecked(False)
    panel.raster.setLayer(layers[0])
    assert panel.other_dates.count() == 2  # every other raster of the project, never the raster itself
    for i in range(panel.other_dates.count()):
        panel.other_dates.setItemCheckState(i, Qt.Checked)
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000) as ready:
        panel.model.setEditText("atto_test")
    assert ready.args[0] is True, ready.args[1]
    assert panel.session.is_series and "series of 3 dates" in panel.findings.text()
    osm = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()[200:392, 600:856]
    gt = gdal.Open(str(paths[0])).GetGeoTransform()
    rng = np.random.default_rng(4)
    for name in ("forest", "farm"):
        panel.add_class(name)
        rows, cols = np.nonzero((osm == sample.OSM_CLASSES.index(name) + 1) & ~clouds.any(0))
        for i in rng.choice(len(rows), 4, replace=False):
            panel.add_point(QgsPointXY(gt[0] + (cols[i] + 0.5) * gt[1], gt[3] + (rows[i] + 0.5) * gt[5]))
    r, c = np.argwhere(clouds[0] & ~clouds[1:].any(0) & (osm == sample.OSM_CLASSES.index("farm") + 1))[0]
    panel.add_point(QgsPointXY(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5]))  # under date 1's clouds
    out = tmp_path / "series_map.tif"
    with qtbot.waitSignal(panel.map_finished, timeout=600_000) as done:
        panel.map_raster(out)
    assert done.args[0] is True, done.args[1]
    mapped = gdal.Open(str(out)).ReadAsArray()
    np.testing.assert_array_equal(mapped == 255, clouds.all(0))
    again = reopened_panel(panel, canvas, qtbot, tmp_path / "series.qgz")
    assert sorted(QgsProject.instance().mapLayer(i).name() for i in again.other_dates.checkedItemsData()) == \
        ["date 2", "date 3"]
    assert again.session is not None and again.session.is_series
    again.shutdown()
    QgsProject.instance().clear()
