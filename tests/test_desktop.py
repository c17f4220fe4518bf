"""The real QGIS desktop under Xvfb (scripts/desktop/run.py): the dock opened from its menu action,
the model picked from the drop-down, classes typed, labels clicked on the map, the preview, the
suggestions, the project saved and reopened, the whole raster mapped, QGIS quit through its own Exit
action (no question about temporary layers: it would block the exit). The screenshot must show the
classes, the labels and the suggestions on the map together."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "desktop"))

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("Xvfb") is None, reason="needs xvfb (scripts/setup)")]


def _pixels(path):
    from qgis.PyQt.QtGui import QImage

    img = QImage(str(path)).convertToFormat(QImage.Format_RGB888)
    ptr = img.constBits()
    ptr.setsize(img.height() * img.bytesPerLine())
    arr = np.frombuffer(ptr, np.uint8).reshape(img.height(), img.bytesPerLine())[:, :img.width() * 3]
    return arr.reshape(img.height(), img.width(), 3).astype(int)


def test_the_panel_in_the_real_desktop(models_dir, tmp_path, qgis_app):
    import run as desktop

    from mpmae_core import registry

    log = desktop.run(tmp_path / "desktop", "atto_test", models_dir, timeout_s=600)
    assert not log["errors"], log["errors"]
    checks = log["checks"]
    assert checks["dock_open"] and checks["raster_chosen"] and checks["model_in_drop_down"]
    assert checks["classes"] == desktop.CLASSES
    order = checks["layer_order"]
    assert order[:2] == ["MMEarth: label here next", "MMEarth labels (points)"]  # labels and suggestions on top
    assert order.index("MMEarth preview") < order.index("Sentinel-2 scene")
    assert checks["visible"]["MMEarth preview"] and not checks["visible"]["MMEarth confidence"]
    assert ".gpkg" in checks["labels_in_gpkg"]
    assert checks["labels_before_after"] == [10, 10]  # every label back after save and reopen
    assert checks["map_ok"]
    # check accuracy: 40 validation points drawn, labelled by clicks, the report from them
    assert checks["validation_points"] >= 40
    assert f"{checks['validation_points']} of {checks['validation_points']} validation points labelled" in \
        checks["validation_text"]
    assert checks["training_labels_unchanged"] and checks["accuracy_report"]
    assert "map accuracy" in checks["accuracy_text"] and "validation points" in checks["accuracy_text"]
    assert set(log["timings"]) == {"first_embedding_s", "preview_after_last_label_s", "map_whole_raster_s"}
    # the screenshot: the class colours over most of the map, the labels' white rings, the black crosses
    arr = _pixels(tmp_path / "desktop" / "2_preview_labels_suggestions.png")
    colours = [registry.suggest_class_colours(desktop.CLASSES)[i] for i in range(5)]
    shares = [float((np.abs(arr - np.array(c)).sum(-1) <= 6).mean()) for c in colours]
    assert sum(s > 0.002 for s in shares) >= 4, shares
    assert (np.abs(arr - 0).sum(-1) <= 30).mean() > 0.0005  # the suggestions' black crosses
    assert json.loads((tmp_path / "desktop" / "log.json").read_text())["wall_s"] > 0
    # the change algorithm's dialog in the desktop: both dates, the examples of change types, the maps
    assert {"INPUT", "AFTER", "MODEL", "OUTPUT", "LABELS", "CLASS_FIELD", "MAP"} <= set(checks["change_dialog_parameters"])
    assert (tmp_path / "desktop" / "5_change_dialog.png").stat().st_size > 10_000
    assert checks["other_dates_offered"] == 0  # the scene is the only raster that can feed a model
    # another model's embedding as the raster: read alone, the same labels preview over it, and the
    # comparison names it (the toy file follows the landuse, so it wins by construction)
    assert checks["embedding_layer_valid"] and checks["embedding_alone"], checks.get("embedding_findings")
    assert "AlphaEarth" in checks["embedding_findings"] and "no model" in checks["embedding_findings"]
    assert checks["comparison_text"].startswith("best: AlphaEarth"), checks["comparison_text"]
    arr = _pixels(tmp_path / "desktop" / "6_embedding_alone_preview.png")
    shares = [float((np.abs(arr - np.array(c)).sum(-1) <= 6).mean()) for c in colours]
    assert sum(s > 0.002 for s in shares) >= 4, shares
