"""The settings page (pytest-qt) and the plugin without onnxruntime (real qgis_process)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_settings_page_sets_the_models_folder(qtbot, qgis_app, models_dir, tmp_path, monkeypatch):
    from mmearth_qgis import models
    from mmearth_qgis.settings import MMEarthOptionsFactory

    monkeypatch.delenv("MMEARTH_MODELS", raising=False)  # the setting, not the environment, decides here
    page = MMEarthOptionsFactory().createWidget(None)
    qtbot.addWidget(page)
    assert page.folder.filePath() == str(models.models_folder())
    page.folder.setFilePath(str(models_dir))  # as if browsed to
    assert "2 model(s): atto_test, head3" in page.listing.text()
    assert models.models_folder() != models_dir  # nothing is saved before OK/Apply
    page.apply()
    assert models.models_folder() == models_dir
    assert models.resolve_model("head3") == str(models_dir / "head3.onnx")
    page.folder.setFilePath(str(tmp_path))
    assert "no .onnx models" in page.listing.text()
    assert page.runtime.text().startswith("onnxruntime ")  # installed in the test environment


def test_install_command_names_this_python():
    from mpmae_core.runtime.models.model import install_command

    cmd = install_command()
    exe = cmd.split(" -m pip install")[0]
    assert Path(exe).is_file() and " onnxruntime-gpu" in cmd
    assert subprocess.run([exe, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True,
                          check=True).stdout.strip() == sys.prefix


@pytest.mark.qgis_process
def test_plugin_loads_without_onnxruntime_and_says_how_to_install_it(models_dir, tmp_path):
    """QGIS's own Python (no venv on its path) has no onnxruntime: the provider still loads and an
    algorithm that needs the runtime stops with the exact install command."""
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"), MMEARTH_VENV=str(tmp_path / "no-venv"))
    env.pop("PYTHONPATH", None)
    qp = str(ROOT / "scripts" / "qgis_process")
    listing = subprocess.run([qp, "list"], capture_output=True, text=True, env=env, timeout=300)
    assert "mmearth:embed" in listing.stdout and "mmearth:train_head" in listing.stdout, listing.stderr[-2000:]
    from mpmae_core.data import sample

    scene = str(sample.stack_path())
    proc = subprocess.run([qp, "run", "mmearth:embed", "--", f"INPUT={scene}",
                           f"MODEL={models_dir / 'atto_test.onnx'}", f"OUTPUT={tmp_path / 'e.tif'}"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "onnxruntime is not installed" in text and "-m pip install" in text and "onnxruntime-gpu" in text, text[-3000:]
    assert "Traceback" not in text
    exe = next(line for line in text.splitlines() if "-m pip install" in line).split(" -m pip")[0].strip()
    # the command is for QGIS's own Python: that interpreter imports qgis
    assert subprocess.run([exe, "-c", "import qgis.core"], capture_output=True, env=env, timeout=120).returncode == 0
    assert not (tmp_path / "e.tif").exists()


def test_the_catalogue_table_shows_whole_model_names(qtbot, qgis_app):
    from qgis.PyQt.QtGui import QFontMetrics

    from mmearth_qgis.settings import CataloguePanel

    panel = CataloguePanel(lambda: "/tmp/none", lambda: "")
    qtbot.addWidget(panel)
    metrics = QFontMetrics(panel.table.font())
    longest = max((panel.table.item(r, 0).text() for r in range(panel.table.rowCount())), key=len)
    assert panel.table.columnWidth(0) >= metrics.horizontalAdvance(longest)
