"""The plugin zip: built by scripts/build_plugin.py, installed into a clean QGIS profile the way
"Install from ZIP" does it (QGIS's own unzip), and run from the real qgis_process binary on its
vendored runtime alone (no checkout, no installed mpmae_core, no torch)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

ROOT = Path(__file__).resolve().parents[1]
QGIS_BIN = os.environ.get("QGIS_PROCESS_BIN", "/usr/bin/qgis_process.bin")


def test_zip_layout(tmp_path):
    zpath = tmp_path / "plugin.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin.py"), "--out", str(zpath)], check=True,
                   capture_output=True)
    names = zipfile.ZipFile(zpath).namelist()
    assert {n.split("/")[0] for n in names} == {"mmearth_qgis"}
    meta = zipfile.ZipFile(zpath).read("mmearth_qgis/metadata.txt").decode()
    assert meta == (ROOT / "metadata.txt").read_text()  # the file itself, not a symlink
    assert "mmearth_qgis/vendor/mpmae_core/runtime/models/onnx_writer.py" in names
    assert "mmearth_qgis/vendor/mpmae_core/resources/mmearth_s2_band_stats.json" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert not any("mpmae_core/models/" in n or "engine" in n or "training" in n for n in names)  # no torch code


@pytest.mark.slow
@pytest.mark.qgis_process
def test_zip_installs_into_a_clean_profile_and_runs_headless(tmp_path, models_dir):
    if not os.access(QGIS_BIN, os.X_OK):
        pytest.skip(f"{QGIS_BIN} not installed")
    from mpmae_core.data import sample

    zpath = tmp_path / "plugin.zip"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_plugin.py"), "--out", str(zpath)], check=True,
                   capture_output=True)
    profile = tmp_path / "profile"
    plugins = profile / "profiles" / "default" / "python" / "plugins"
    sys.path.append("/usr/share/qgis/python")
    from pyplugin_installer.unzip import unzip  # what Install from ZIP calls

    with zipfile.ZipFile(zpath) as zf:  # as installFromZipFile finds the plugin's name
        plugin_name = os.path.split(sorted(f for f in zf.namelist() if f.endswith("metadata.txt"))[0])[0]
    assert plugin_name == "mmearth_qgis"
    unzip(str(zpath), str(plugins))

    site = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QGIS_", "PYTHON", "MMEARTH_VENV"))}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(profile), QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(site),
               XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    # onnxruntime comes from the venv's folder, but mpmae_core cannot (an editable install needs .pth
    # processing, which PYTHONPATH entries do not get): the plugin must run on its vendored copy
    probe = subprocess.run(["/usr/bin/python3", "-c", "import mpmae_core"], env=env, cwd=tmp_path, capture_output=True)
    assert probe.returncode != 0

    def qp(*args):
        proc = subprocess.run([QGIS_BIN, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr

    code, out = qp("plugins", "enable", "mmearth_qgis")
    assert code in (0, 1), out[-2000:]
    code, out = qp("list")
    assert "mmearth:train_head" in out and "mmearth:similarity" in out, out[-2000:]

    scene = str(sample.build(verbose=False)["stack"])
    labels = tmp_path / "points.gpkg"
    sample.label_points(labels, per_class=6, seed=2, classes=["water", "farm"])
    head, classes = tmp_path / "head.onnx", tmp_path / "classes.tif"
    code, out = qp("run", "mmearth:train_head", "--", f"INPUT={scene}", f"MODEL={models_dir / 'atto_test.onnx'}",
                   f"LABELS={labels}", "CLASS_FIELD=landuse", f"OUTPUT={head}")
    assert code == 0 and head.is_file(), out[-3000:]
    assert "chosen: " in out and "random forest" in out
    code, out = qp("run", "mmearth:segment", "--", f"INPUT={scene}", f"MODEL={models_dir / 'atto_test.onnx'}",
                   f"HEAD={head}", f"OUTPUT={classes}")
    assert code == 0, out[-3000:]
    values = gdal.Open(str(classes)).ReadAsArray()
    assert set(np.unique(values)) <= {0, 1, 255} and (values != 255).any()
