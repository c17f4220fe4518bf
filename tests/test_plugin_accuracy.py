"""mmearth:sample_design and mmearth:assess in QGIS (processing.run, and the real qgis_process)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from osgeo import gdal, ogr

from mpmae_core.runtime.heads import validation as V
from test_validation import _label, truth_and_map  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]


def test_design_then_assess_in_qgis_equals_the_command_line(run_alg, truth_and_map, tmp_path):
    from qgis.core import QgsProcessingException

    truth, mapped, path = truth_and_map
    out = tmp_path / "val.gpkg"
    result, feedback = run_alg("mmearth:sample_design", {"MAP": str(path), "TARGET_SE": 0.02, "MIN_PER_CLASS": 30,
                                                         "SEED": 4, "OUTPUT": str(out)})
    ds = ogr.Open(str(out))
    n = ds.GetLayer("validation").GetFeatureCount()
    ds = None
    assert result["POINTS"] == n and any("farm:" in m for m in feedback.infos)
    _label(out, truth, gdal.Open(str(path)).GetGeoTransform())
    report = tmp_path / "acc.html"
    result, feedback = run_alg("mmearth:assess", {"MAP": str(path), "POINTS": f"{out}|layername=validation",
                                                  "REFERENCE_FIELD": "reference", "REPORT": str(report)})
    cli = V.assess_map(path, out)
    assert result["OVERALL_ACCURACY"] == pytest.approx(cli["overall_accuracy"]["estimate"])
    assert result["OVERALL_ACCURACY_CI95"] == pytest.approx(cli["overall_accuracy"]["ci95"])
    assert result["ESTIMATOR"] == "stratified" and report.is_file() and report.with_suffix(".json").is_file()
    assert any("user's accuracy" in m for m in feedback.infos)
    with pytest.raises(QgsProcessingException, match="no field 'truth'|truth"):
        run_alg("mmearth:assess", {"MAP": str(path), "POINTS": f"{out}|layername=validation",
                                   "REFERENCE_FIELD": "truth", "REPORT": str(tmp_path / "bad.html")})
    assert not (tmp_path / "bad.html").exists()


@pytest.mark.qgis_process
def test_qgis_process_assess(truth_and_map, tmp_path, tmp_path_factory):
    truth, _, path = truth_and_map
    out = tmp_path / "val.gpkg"
    V.sample_design(path, out, size=300, min_per_class=30, seed=5)
    _label(out, truth, gdal.Open(str(path)).GetGeoTransform())
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path_factory.mktemp("profile")),
               MMEARTH_VENV=sys.prefix if sys.prefix != sys.base_prefix else str(ROOT / ".venv"))
    proc = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "--json", "run", "mmearth:assess", "--",
                           f"MAP={path}", f"POINTS={out}|layername=validation", "DESIGN=1",
                           f"REPORT={tmp_path / 'r.html'}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results["ESTIMATOR"] == "simple random" and 0.5 < results["OVERALL_ACCURACY"] < 1
