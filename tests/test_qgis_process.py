"""The real qgis_process binary, through the project's wrapper, as an analyst or a batch script runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import write_geotiff

pytestmark = pytest.mark.qgis_process
ROOT = Path(__file__).resolve().parents[1]
WRAPPER = ROOT / "scripts" / "qgis_process"


@pytest.fixture(scope="module")
def qgis_process(tmp_path_factory):
    """Run scripts/qgis_process in a fresh profile (so enabling the plugin is part of the test)."""
    profile = tmp_path_factory.mktemp("qgis-profile")
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile),
               MMEARTH_VENV=sys.prefix if sys.prefix != sys.base_prefix
               else os.environ.get("MMEARTH_VENV", str(ROOT / ".venv")))

    def run(*args, timeout=120):
        return subprocess.run([str(WRAPPER), *args], capture_output=True, text=True, env=env, timeout=timeout)

    return run


def test_lists_mmearth_algorithms(qgis_process):
    proc = qgis_process("--json", "list")
    assert proc.returncode == 0, proc.stderr
    providers = json.loads(proc.stdout)["providers"]
    assert "mmearth:inspect" in providers["mmearth"]["algorithms"]


def test_runs_inspect_on_the_real_scene(qgis_process, sample_stack, tmp_path):
    report = tmp_path / "inspect.html"
    proc = qgis_process("--json", "run", "mmearth:inspect", "--", f"INPUT={sample_stack}", f"REPORT={report}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results["BAND_COUNT"] == 13 and results["CRS"] == "EPSG:32633"
    assert results["S2_COMPATIBLE"] is True
    assert json.loads(results["BAND_MAPPING"])["B8A"] == 9
    assert report.is_file() and "can be fed" in report.read_text()


def _fails_cleanly(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    for needle in needles:
        assert needle in out, out


def test_nonexistent_file(qgis_process, tmp_path):
    proc = qgis_process("run", "mmearth:inspect", "--", f"INPUT={tmp_path / 'absent.tif'}")
    _fails_cleanly(proc, "does not exist", "absent.tif")


def test_non_raster_file(qgis_process, tmp_path):
    p = tmp_path / "points.geojson"
    p.write_text('{"type": "FeatureCollection", "features": []}')
    proc = qgis_process("run", "mmearth:inspect", "--", f"INPUT={p}")
    _fails_cleanly(proc, "not a raster GDAL can read")


def test_raster_without_crs(qgis_process, tmp_path):
    path = write_geotiff(tmp_path / "nocrs.tif", np.ones((2, 8, 8), dtype="uint16"), ["B04", "B08"], epsg=None)
    proc = qgis_process("run", "mmearth:inspect", "--", f"INPUT={path}")
    _fails_cleanly(proc, "no coordinate reference system")
