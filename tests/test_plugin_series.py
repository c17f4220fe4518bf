"""Several dates in QGIS: the few-shot head and the landcover map on a series (the input and its
other dates, picked in QGIS's own dialogs), and mmearth:change from its dialog and from the real
qgis_process, with each half-given option refused in words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from mpmae_core.data import sample
from test_plugin_dialogs import _pick, _run_check, _set, _wrappers, desktop  # noqa: F401 (fixture)
from test_qgis_process import qgis_process  # noqa: F401 (fixture)

CLASSES = ["forest", "farm", "meadow", "residential"]


@pytest.fixture(autouse=True)
def _models_by_name(models_dir):
    return models_dir


@pytest.fixture(scope="module")
def dates(tmp_path_factory):
    from helpers import point_labels, series_dates

    d = tmp_path_factory.mktemp("qgis_series")
    paths, clouds, _ = series_dates(d)
    osm = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()[200:392, 600:856]
    rng = np.random.default_rng(2)
    points = []
    for name in CLASSES:
        rows, cols = np.nonzero((osm == sample.OSM_CLASSES.index(name) + 1) & ~clouds.any(0))
        for i in rng.choice(len(rows), 6, replace=False):
            points.append((int(rows[i]), int(cols[i]), name))
    # one label under the first date's clouds only
    r, c = np.argwhere(clouds[0] & ~clouds[1:].any(0))[0]
    points.append((int(r), int(c), "forest"))
    ds = gdal.Open(str(paths[0]))
    labels = point_labels(d / "labels.gpkg", points, ds.GetProjection(), ds.GetGeoTransform())
    return [str(p) for p in paths], clouds, str(labels), d


@pytest.mark.slow
def test_a_series_from_the_dialogs_trains_and_maps(desktop, dates, tmp_path):  # noqa: F811
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeedback

    paths, clouds, labels, _ = dates
    dialog = processing.createAlgorithmDialog("mmearth:train_head", {})
    alg = QgsApplication.processingRegistry().algorithmById("mmearth:train_head")
    w = _wrappers(dialog)
    _set(w["INPUT"], paths[0])
    _set(w["OTHER_DATES"], paths[1:])
    _set(w["LABELS"], labels)
    _set(w["CLASS_FIELD"], "landuse")
    _pick(w["MODEL"], "atto_test")
    _set(w["OUTPUT"], str(tmp_path / "head.onnx"))
    params, ok, message, context = _run_check(dialog, alg)
    assert ok, message
    params["CLASSIFIERS"] = [0]
    feedback = QgsProcessingFeedback()
    result = processing.run("mmearth:train_head", params, context=context, feedback=feedback)
    assert "t-" in result["CHOSEN"]  # the first date is cloudy at a label: temporal features only
    log = feedback.textLog()
    assert "series of 3 dates" in log and "only the temporal feature sets" in log, log

    dialog = processing.createAlgorithmDialog("mmearth:segment", {})
    alg = QgsApplication.processingRegistry().algorithmById("mmearth:segment")
    w = _wrappers(dialog)
    _set(w["INPUT"], paths[0])
    _set(w["OTHER_DATES"], paths[1:])
    _pick(w["MODEL"], "atto_test")
    _set(w["HEAD"], str(tmp_path / "head.onnx"))
    _set(w["OUTPUT"], str(tmp_path / "map.tif"))
    params, ok, message, context = _run_check(dialog, alg)
    assert ok, message
    result = processing.run("mmearth:segment", params, context=context, feedback=QgsProcessingFeedback())
    got = gdal.Open(result["OUTPUT"]).ReadAsArray()
    np.testing.assert_array_equal(got == 255, clouds.all(0))
    # the same head on one date alone is refused, and says how to give the dates
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="trained on a series"):
        processing.run("mmearth:segment", {"INPUT": paths[0], "MODEL": "atto_test", "HEAD": str(tmp_path / "head.onnx"),
                                           "OUTPUT": str(tmp_path / "one.tif")}, feedback=QgsProcessingFeedback())


@pytest.mark.slow
def test_change_from_its_dialog_with_labelled_change_types(desktop, dates, tmp_path):  # noqa: F811
    import processing
    from helpers import point_labels
    from qgis.core import QgsApplication, QgsProcessingFeedback

    paths, clouds, _, _ = dates
    # the later date: the first with a 30 px block of another place pasted in (a real change)
    after = tmp_path / "S2A_MSIL1C_20170610T102101_T33UUU.tif"
    src = gdal.Open(paths[2])
    arr = src.ReadAsArray()
    arr[:, 20:50, 20:50] = arr[:, 150:180, 200:230]
    ds = gdal.GetDriverByName("GTiff").CreateCopy(str(after), src)
    ds.SetMetadataItem("ACQUISITION_DATE", "2017-06-10")
    for b in range(arr.shape[0]):
        ds.GetRasterBand(b + 1).WriteArray(arr[b])
    ds = None
    seen = ~(clouds[0] | clouds[2])
    rng = np.random.default_rng(0)
    points = [(25 + 4 * k, 25 + 3 * k, "pasted") for k in range(5)]
    rows, cols = np.nonzero(seen)
    far = (rows > 60) | (cols > 60)
    for i in rng.choice(np.flatnonzero(far), 8, replace=False):
        points.append((int(rows[i]), int(cols[i]), "no change"))
    ref = gdal.Open(paths[0])
    labels = point_labels(tmp_path / "change.gpkg", points, ref.GetProjection(), ref.GetGeoTransform(), "change")
    dialog = processing.createAlgorithmDialog("mmearth:change", {})
    alg = QgsApplication.processingRegistry().algorithmById("mmearth:change")
    w = _wrappers(dialog)
    _set(w["INPUT"], paths[0])
    _set(w["AFTER"], str(after))
    _pick(w["MODEL"], "atto_test")
    _set(w["OUTPUT"], str(tmp_path / "change.tif"))
    _set(w["LABELS"], str(labels))
    _set(w["CLASS_FIELD"], "change")
    _set(w["MAP"], str(tmp_path / "types.tif"))
    params, ok, message, context = _run_check(dialog, alg)
    assert ok, message
    result = processing.run("mmearth:change", params, context=context, feedback=QgsProcessingFeedback())
    assert np.isfinite(result["COSINE_THRESHOLD"]) and result["CHOSEN"]
    change = gdal.Open(result["OUTPUT"])
    assert change.RasterCount == 2 and change.GetRasterBand(1).GetDescription() == "cosine_distance"
    types = gdal.Open(result["MAP"]).ReadAsArray()
    inner = np.zeros(types.shape, bool)
    inner[23:47, 23:47] = True
    inner &= seen
    # the wiring, not the accuracy (tests/test_series_heads.py measures that on real changes): most of the
    # block is "pasted" (classes in order: "no change", "pasted"), where parts of it resemble what was there
    assert (types[inner] == 1).mean() > 0.6
    assert (types[seen & ~np.pad(np.ones((40, 40), bool), ((10, 142), (10, 206)))] == 0).mean() > 0.95


@pytest.mark.qgis_process
def test_change_through_qgis_process(qgis_process, dates, models_dir, tmp_path):  # noqa: F811
    paths = dates[0]
    model = str(models_dir / "atto_test.onnx")
    proc = qgis_process("run", "mmearth:change", "--", f"INPUT={paths[0]}", f"AFTER={paths[1]}", f"MODEL={model}",
                        f"OUTPUT={tmp_path / 'c.tif'}", f"MAP={tmp_path / 'm.tif'}", timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "needs labelled examples of change types" in text and "Traceback" not in text
    assert not (tmp_path / "c.tif").exists()
    proc = qgis_process("--json", "run", "mmearth:change", "--", f"INPUT={paths[0]}", f"AFTER={paths[1]}",
                        f"MODEL={model}", f"OUTPUT={tmp_path / 'c.tif'}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert Path(results["OUTPUT"]).is_file() and results["COSINE_THRESHOLD"] >= 0
