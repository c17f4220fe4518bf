"""Runs inside the real QGIS desktop (``qgis --code startup.py``), driven by scripts/desktop/run.py.

As a person would: load the scene, open the dock from the plugin's menu action, pick the model from
the drop-down, type classes and press Add, click labels on the map with the point tool, wait for the
preview, press 'Suggest where to label', screenshot; save the project, clear it, reopen it and count
the labels; map the whole raster from the cache; draw a validation sample, label its points with
clicks and read the accuracy report; open the change algorithm's dialog; choose a toy AlphaEarth
file as the raster (read alone, no model), preview and compare the feature sources; quit through
QGIS's own Exit action. Steps are
chained with QTimer so QGIS's event loop runs between them. Everything measured and checked goes to
``log.json`` in the output folder, screenshots beside it.
"""

import json
import os
import time
import traceback
from pathlib import Path

from qgis.core import QgsProject
from qgis.PyQt.QtCore import QPoint, Qt, QTimer
from qgis.PyQt.QtTest import QTest
from qgis.PyQt.QtWidgets import QAction, QApplication
from qgis.utils import iface

CONFIG = json.loads(Path(os.environ["MMEARTH_DESKTOP_CONFIG"]).read_text())
OUT = Path(CONFIG["out"])
LOG = {"steps": [], "errors": [], "timings": {}, "checks": {}}
T0 = time.time()


def log(step: str, **kw):
    LOG["steps"].append({"t": round(time.time() - T0, 2), "step": step, **kw})
    (OUT / "log.json").write_text(json.dumps(LOG, indent=1))


def shot(name: str):
    iface.mapCanvas().refresh()
    iface.mapCanvas().waitWhileRendering()
    QApplication.processEvents()
    path = OUT / f"{name}.png"
    iface.mainWindow().grab().save(str(path))
    log("screenshot", file=path.name)


def fail(exc):
    LOG["errors"].append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    log("failed")
    quit_qgis()


def later(ms, fn):
    def run():
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded in the log, then QGIS quits
            fail(exc)

    QTimer.singleShot(ms, run)


def wait_for(condition, then, timeout_s=600, what=""):
    start = time.time()

    def poll():
        try:
            if condition():
                then()
            elif time.time() - start > timeout_s:
                raise TimeoutError(f"waited {timeout_s} s for {what}")
            else:
                QTimer.singleShot(200, poll_guarded)
        except Exception as exc:  # noqa: BLE001
            fail(exc)

    def poll_guarded():
        poll()

    QTimer.singleShot(200, poll_guarded)


def quit_qgis():
    (OUT / "log.json").write_text(json.dumps(LOG, indent=1))
    QgsProject.instance().setDirty(False)  # no 'save changes?' question on the way out
    iface.actionExit().trigger()


def _panel():
    from mmearth_qgis.panel import FewShotPanel

    found = iface.mainWindow().findChildren(FewShotPanel)
    return found[0] if found else None


def click_map(x, y):
    canvas = iface.mapCanvas()
    pt = canvas.getCoordinateTransform().transform(x, y)
    QTest.mouseClick(canvas.viewport(), Qt.LeftButton, Qt.NoModifier, QPoint(int(round(pt.x())), int(round(pt.y()))))


# ----------------------------------------------------------------------------- the steps

def step_load():
    layer = iface.addRasterLayer(CONFIG["scene"], "Sentinel-2 scene")
    LOG["checks"]["scene_valid"] = bool(layer and layer.isValid())
    iface.mapCanvas().setExtent(layer.extent())
    log("scene loaded")
    later(1500, step_open_dock)


def step_open_dock():
    action = next(a for a in iface.mainWindow().findChildren(QAction) if a.text() == "MMEarth few-shot mapping")
    action.trigger()
    QApplication.processEvents()
    p = _panel()
    LOG["checks"]["dock_open"] = bool(p and p.isVisible())
    LOG["checks"]["raster_chosen"] = p.raster_layer() is not None and p.raster_layer().name() == "Sentinel-2 scene"
    items = [p.model.itemText(i) for i in range(p.model.count())]
    LOG["checks"]["model_in_drop_down"] = CONFIG["model"] in items
    LOG["t_model_chosen"] = time.time()
    p.model.setCurrentIndex(items.index(CONFIG["model"]))
    log("dock opened, model chosen from the drop-down")
    shot("1_dock")
    wait_for(lambda: p.session is not None and p.session.ready, step_classes, what="the encoder features")


def step_classes():
    p = _panel()
    LOG["timings"]["first_embedding_s"] = round(time.time() - LOG.pop("t_model_chosen"), 2)
    log("features ready", status=p.status.text())
    for name in CONFIG["classes"]:
        QTest.keyClicks(p.class_name, name)
        QTest.mouseClick(p.add_button, Qt.LeftButton)
    LOG["checks"]["classes"] = p.class_names()
    p.point_tool_button.click()
    later(300, step_labels)


def step_labels():
    p = _panel()
    p.auto.setChecked(True)
    for name, x, y in CONFIG["labels"]:
        p.classes.setCurrentRow(CONFIG["classes"].index(name))
        click_map(x, y)
        QApplication.processEvents()
    log("labels clicked", count=len(CONFIG["labels"]))
    LOG["t_last_label"] = time.time()
    n = len(CONFIG["labels"])
    wait_for(lambda: p.point_layer is not None and p.point_layer.featureCount() == n and p.preview_count > 0
             and not p.tasks and "preview" in p.status.text(), step_suggest, what="the preview")


def step_suggest():
    p = _panel()
    LOG["timings"]["preview_after_last_label_s"] = round(time.time() - LOG.pop("t_last_label"), 2)
    QTest.mouseClick(p.suggest_button, Qt.LeftButton)
    QApplication.processEvents()
    root = QgsProject.instance().layerTreeRoot()
    order = [lyr.name() for lyr in root.layerOrder()]
    visible = {lyr.name(): root.findLayer(lyr.id()).isVisible() for lyr in root.layerOrder()}
    LOG["checks"]["layer_order"] = order
    LOG["checks"]["visible"] = visible
    LOG["checks"]["labels_in_gpkg"] = p.point_layer.source()
    log("suggestions", status=p.status.text())
    shot("2_preview_labels_suggestions")
    later(200, step_save_reopen)


def step_save_reopen():
    p = _panel()
    project = OUT / "project.qgz"
    LOG["checks"]["project_saved"] = QgsProject.instance().write(str(project))
    before = p.point_layer.featureCount()
    QgsProject.instance().clear()
    QApplication.processEvents()
    LOG["checks"]["project_read"] = QgsProject.instance().read(str(project))
    QApplication.processEvents()
    layers = QgsProject.instance().mapLayersByName("MMEarth labels (points)")
    LOG["checks"]["labels_before_after"] = [before, layers[0].featureCount() if layers else 0]
    log("project saved and reopened")
    later(500, step_map)


def step_map():
    p = _panel()
    wait_for(lambda: p.session is not None and p.session.ready, step_map_go, what="the session after reopening")


def step_map_go():
    p = _panel()
    LOG["t_map"] = time.time()
    p.map_finished.connect(step_mapped)
    p.map_raster(str(OUT / "landcover.tif"))


def step_mapped(ok, text):
    LOG["timings"]["map_whole_raster_s"] = round(time.time() - LOG.pop("t_map"), 2)
    LOG["checks"]["map_ok"] = ok
    log("whole raster mapped", text=text)
    later(800, step_validation)


def step_validation():
    """Check accuracy: draw a validation sample, label each point with a click (the class the scene's
    landuse gives there; where it gives none, the map's own), then the report."""
    from osgeo import gdal

    shot("3_whole_map")
    p = _panel()
    p.validation_size.setValue(40)
    QTest.mouseClick(p.validation_button, Qt.LeftButton)
    QApplication.processEvents()
    val = p.validation_layer
    LOG["checks"]["validation_points"] = val.featureCount() if val is not None else 0
    QTest.mouseClick(p.validation_tool_button, Qt.LeftButton)
    ds = gdal.Open(CONFIG["landuse"])
    lab, gt = ds.ReadAsArray(), ds.GetGeoTransform()
    mapped = gdal.Open(str(OUT / "landcover.tif")).ReadAsArray()
    classes, osm = CONFIG["classes"], CONFIG["osm_classes"]
    training = p.point_layer.featureCount()
    for f in list(val.getFeatures()):
        pt = f.geometry().asPoint()
        r, c = int((pt.y() - gt[3]) / gt[5]), int((pt.x() - gt[0]) / gt[1])
        name = osm[lab[r, c] - 1] if lab[r, c] else None
        if name not in classes:
            name = classes[mapped[r, c]]
        p.classes.setCurrentRow(classes.index(name))
        click_map(pt.x(), pt.y())
        QApplication.processEvents()
    LOG["checks"]["validation_text"] = p.accuracy.text()
    LOG["checks"]["training_labels_unchanged"] = p.point_layer.featureCount() == training
    QTest.mouseClick(p.report_button, Qt.LeftButton)
    QApplication.processEvents()
    LOG["checks"]["accuracy_text"] = p.accuracy.text()
    LOG["checks"]["accuracy_report"] = (OUT / "landcover_accuracy.html").is_file()
    log("validation sample labelled and assessed", text=p.accuracy.text())
    later(500, step_end)


def step_end():
    shot("4_check_accuracy")
    later(300, step_change_dialog)


def step_change_dialog():
    """The change algorithm's own Processing dialog over the desktop, its dates and model filled in,
    and the dock's 'Other dates' (the project's other rasters: none here but the scene's outputs)."""
    import processing

    dialog = processing.createAlgorithmDialog("mmearth:change", {"INPUT": CONFIG["scene"], "AFTER": CONFIG["scene"],
                                                                 "MODEL": CONFIG["model"]})
    dialog.show()
    QApplication.processEvents()
    panel = dialog.mainWidget()
    wrappers = getattr(panel, "wrappers", None) or getattr(panel, "widgets", None) or {}
    LOG["checks"]["change_dialog_parameters"] = sorted(wrappers)
    dialog.grab().save(str(OUT / "5_change_dialog.png"))
    log("screenshot", file="5_change_dialog.png")
    LOG["checks"]["other_dates_offered"] = _panel().other_dates.count()
    dialog.close()
    later(300, step_embedding)


def step_embedding():
    """Another model's embedding as the panel's raster (a toy AlphaEarth-format file of the scene):
    read alone, no model needed; the same labels give a preview over it."""
    p = _panel()
    layer = iface.addRasterLayer(CONFIG["embedding"], "AlphaEarth (toy)")
    LOG["checks"]["embedding_layer_valid"] = bool(layer and layer.isValid())
    p.raster.setLayer(layer)
    QApplication.processEvents()
    LOG["checks"]["embedding_alone"] = bool(p.session is not None and p.session.alone)
    LOG["checks"]["embedding_findings"] = p.findings.text()
    LOG["preview_count"] = p.preview_count
    p.preview()
    wait_for(lambda: p.preview_count > LOG["preview_count"] and not p.tasks, step_embedding_compare,
             what="the preview over the embedding")


def step_embedding_compare():
    p = _panel()
    LOG.pop("preview_count", None)
    LOG["checks"]["embedding_preview_status"] = p.status.text()
    shot("6_embedding_alone_preview")
    QTest.mouseClick(p.compare_button, Qt.LeftButton)
    wait_for(lambda: p.compare_button.isEnabled() and not p.tasks and bool(p.comparison.text())
             and not p.comparison.text().startswith("comparing"), lambda: later(600, step_embedding_done),
             what="the comparison of feature sources")


def step_embedding_done():
    p = _panel()
    LOG["checks"]["comparison_text"] = p.comparison.text()
    shot("7_compare_feature_sources")
    log("done")
    quit_qgis()


later(1000, step_load)
