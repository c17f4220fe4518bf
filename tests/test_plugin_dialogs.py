"""QGIS's own Processing dialogs, driven as a person drives them: the real dialog from
``processing.createAlgorithmDialog``, its widgets set by picking the drop-down entry, then the check
that Run does (the panel's ``createProcessingParameters`` and the algorithm's
``checkParameterValues``), then the algorithm itself with those parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from osgeo import gdal


@pytest.fixture(scope="module")
def crop(tmp_path_factory, sample_stack):
    path = tmp_path_factory.mktemp("dlg") / "crop.tif"
    gdal.Translate(str(path), str(sample_stack), srcWin=[0, 0, 256, 256])
    return str(path)


class DesktopInterface:
    """The parts of QgisInterface that Processing's dialogs use, made of real widgets (a main window, a
    map canvas, a message bar, the browser model): not a mock. Tests without the desktop need it
    because ``processing.createAlgorithmDialog`` parents the dialog on ``iface.mainWindow()``."""

    def __init__(self):
        from qgis.gui import QgsBrowserGuiModel, QgsMapCanvas, QgsMessageBar
        from qgis.PyQt.QtWidgets import QMainWindow

        self._window = QMainWindow()
        self._canvas = QgsMapCanvas(self._window)
        self._bar = QgsMessageBar(self._window)
        self._browser = QgsBrowserGuiModel(self._window)
        self.active = None

    def mainWindow(self):  # noqa: N802
        return self._window

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        return self._bar

    def browserModel(self):  # noqa: N802
        return self._browser

    def activeLayer(self):  # noqa: N802
        return self.active


@pytest.fixture
def desktop(qgis_app, monkeypatch):
    import sys

    iface = DesktopInterface()
    for name, module in list(sys.modules.items()):
        if (name.startswith("processing") or name == "qgis.utils") and hasattr(module, "iface"):
            monkeypatch.setattr(module, "iface", iface)
    return iface


def _wrappers(dialog) -> dict:
    panel = dialog.mainWidget()
    return getattr(panel, "wrappers", None) or getattr(panel, "widgets", None) or {}


def _set(wrapper, value) -> None:
    """Set a parameter widget the way its own editor does (C++ wrappers and Python ones alike)."""
    if hasattr(wrapper, "setParameterValue"):
        from qgis.core import QgsProcessingContext

        wrapper.setParameterValue(value, QgsProcessingContext())
    else:
        wrapper.setValue(value)


def _pick(wrapper, text: str) -> None:
    """Choose ``text`` from the model drop-down, as a click on the entry does."""
    combo = wrapper.combo
    items = [combo.itemText(i) for i in range(combo.count())]
    assert text in items, items
    combo.setCurrentIndex(items.index(text))


def _run_check(dialog, alg):
    """What pressing Run does before the algorithm starts: the panel builds the parameters (QGIS's own
    per-parameter check raises there), then the algorithm's check."""
    from qgis.core import QgsProcessingContext, QgsProject

    params = dialog.mainWidget().createProcessingParameters()
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    ok, message = alg.checkParameterValues(params, context)
    return params, ok, message, context


@pytest.mark.parametrize("alg_id", ["mmearth:embed", "mmearth:segment"])
def test_a_model_chosen_from_the_drop_down_runs(desktop, models_dir, crop, tmp_path, alg_id):
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeedback, QgsProject, QgsRasterLayer

    layer = QgsRasterLayer(crop, "scene")
    QgsProject.instance().addMapLayer(layer)
    try:
        dialog = processing.createAlgorithmDialog(alg_id, {})
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        wrappers = _wrappers(dialog)
        _pick(wrappers["MODEL"], "atto_test")
        if alg_id == "mmearth:segment":
            _pick(wrappers["HEAD"], "head3")
        _set(wrappers["INPUT"], layer.id())
        _set(wrappers["OUTPUT"], str(tmp_path / "out.tif"))
        params, ok, message, context = _run_check(dialog, alg)
        assert ok, message
        assert params["MODEL"] == "atto_test"
        result = processing.run(alg_id, params, context=context, feedback=QgsProcessingFeedback())
        assert Path(result["OUTPUT"]).is_file()
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def test_a_wrong_model_name_is_named_by_the_check(desktop, models_dir, crop, tmp_path):
    import processing
    from qgis.core import QgsApplication

    dialog = processing.createAlgorithmDialog("mmearth:embed", {"INPUT": crop, "OUTPUT": str(tmp_path / "o.tif")})
    alg = QgsApplication.processingRegistry().algorithmById("mmearth:embed")
    _set(_wrappers(dialog)["MODEL"], "no_such_model")
    _, ok, message, _ = _run_check(dialog, alg)
    assert not ok and "no_such_model" in message and "was not found" in message


def _labels_gpkg(path: Path, raster: str) -> Path:
    """Points with the fields a real labels file has: an id, a name, the class (landuse)."""
    from osgeo import ogr, osr

    ds = gdal.Open(raster)
    gt = ds.GetGeoTransform()
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    out = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = out.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("id", ogr.OFTInteger))
    layer.CreateField(ogr.FieldDefn("name", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    for i in range(12):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("id", i)
        f.SetField("name", f"site {i}")
        f.SetField("landuse", ["water", "forest"][i % 2])
        col, row = 20 + (i % 6) * 40, 30 + (i // 6) * 150 + (i % 2) * 20
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({gt[0] + (col + 0.5) * gt[1]} {gt[3] + (row + 0.5) * gt[5]})"))
        layer.CreateFeature(f)
    out = None
    return path


def test_train_head_dialog_picks_the_class_field_and_runs(desktop, models_dir, crop, tmp_path):
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeedback, QgsProject, QgsVectorLayer

    labels = QgsVectorLayer(str(_labels_gpkg(tmp_path / "labels.gpkg", crop)), "labels", "ogr")
    assert labels.isValid() and labels.fields().names()[0] == "fid"
    QgsProject.instance().addMapLayer(labels)
    try:
        dialog = processing.createAlgorithmDialog("mmearth:train_head", {})
        alg = QgsApplication.processingRegistry().algorithmById("mmearth:train_head")
        wrappers = _wrappers(dialog)
        _set(wrappers["LABELS"], labels.id())
        assert wrappers["CLASS_FIELD"].value() == "landuse"  # never fid, id or name
        _pick(wrappers["MODEL"], "atto_test")
        _set(wrappers["INPUT"], crop)
        _set(wrappers["OUTPUT"], str(tmp_path / "head.onnx"))
        params, ok, message, context = _run_check(dialog, alg)
        assert ok, message
        params["FEATURE_SETS"] = [0]  # spectra only: quick
        params["CLASSIFIERS"] = [0]
        result = processing.run("mmearth:train_head", params, context=context, feedback=QgsProcessingFeedback())
        assert Path(result["OUTPUT"]).is_file()
    finally:
        QgsProject.instance().removeMapLayer(labels.id())


def test_class_field_suggestion():
    from mpmae_core.runtime.io.labels import suggest_class_field

    assert suggest_class_field([("fid", False), ("id", False), ("name", True), ("landuse", True)]) == "landuse"
    assert suggest_class_field([("fid", False), ("code", False), ("Class", True)]) == "Class"
    assert suggest_class_field([("fid", False), ("landcover_code", False), ("note", True)]) == "landcover_code"
    assert suggest_class_field([("fid", False), ("note", True), ("value", False)]) == "note"
    assert suggest_class_field([("fid", False), ("value", False)]) == "value"
    assert suggest_class_field([("fid", False), ("OBJECTID", False)]) == ""


def test_the_raster_input_starts_on_a_layer_that_can_feed_the_model(desktop, crop, tmp_path):
    """QGIS starts a raster input on the active layer; when that is one of the plugin's outputs (here
    'MMEarth confidence', one band), the dialog starts on the scene instead."""
    import processing
    from qgis.core import QgsProject, QgsRasterLayer

    from helpers import write_geotiff
    from mmearth_qgis.layers import mark_output

    import numpy as np

    scene = QgsRasterLayer(crop, "scene")
    conf_path = write_geotiff(tmp_path / "confidence.tif", np.ones((1, 32, 32), np.float32))
    confidence = mark_output(QgsRasterLayer(str(conf_path), "MMEarth confidence"))
    QgsProject.instance().addMapLayers([scene, confidence])
    desktop.active = confidence
    try:
        for alg_id in ("mmearth:embed", "mmearth:segment", "mmearth:train_head"):
            dialog = processing.createAlgorithmDialog(alg_id, {})
            value = _wrappers(dialog)["INPUT"].parameterValue()
            assert getattr(value, "id", lambda: value)() == scene.id(), alg_id
    finally:
        QgsProject.instance().removeMapLayers([scene.id(), confidence.id()])


from helpers import field_gpkg  # noqa: E402
from test_plugin_products import bands_dir, l2a_zip  # noqa: E402,F401 - fixtures


def test_a_downloaded_product_and_an_area_in_the_segment_dialog(desktop, models_dir, l2a_zip, tmp_path):
    """The product's zip picked with the input's file button, the area as a polygon layer, the
    clouds grown by a pixel: the dialog's own check passes and the map is the area's."""
    import processing
    from qgis.core import QgsApplication

    z, _ = l2a_zip
    field = field_gpkg(tmp_path / "field.gpkg", epsg=4326)
    dialog = processing.createAlgorithmDialog("mmearth:segment", {})
    alg = QgsApplication.processingRegistry().algorithmById("mmearth:segment")
    wrappers = _wrappers(dialog)
    assert {"AREA", "EXTENT", "MASK", "MASK_DILATE", "PRODUCT_MASK"} <= set(wrappers)
    _pick(wrappers["MODEL"], "atto_test")
    _pick(wrappers["HEAD"], "head3")
    _set(wrappers["INPUT"], str(z))
    _set(wrappers["AREA"], str(field))
    _set(wrappers["MASK_DILATE"], 1)
    _set(wrappers["OUTPUT"], str(tmp_path / "field.tif"))
    params, ok, message, context = _run_check(dialog, alg)
    assert ok, message
    from qgis.core import QgsProcessingFeedback

    result = processing.run("mmearth:segment", params, context=context, feedback=QgsProcessingFeedback())
    ds = gdal.Open(result["OUTPUT"])
    assert (ds.RasterXSize, ds.RasterYSize) != (1536, 768) and ds.RasterXSize <= 640
    # a damaged download is named by the check, before anything runs
    cut = tmp_path / "cut.zip"
    cut.write_bytes(z.read_bytes()[:4000])
    _set(wrappers["INPUT"], str(cut))
    _, ok, message, _ = _run_check(dialog, alg)
    assert not ok and "not a readable zip" in message, message
