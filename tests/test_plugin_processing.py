"""The plugin inside a real QgsApplication, run through real Processing (processing.run)."""

import csv

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsApplication, QgsProcessingException, QgsProject, QgsRasterLayer

from helpers import write_geotiff

PRODUCT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_provider_registered_with_inspect(mmearth_plugin):
    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("mmearth")
    assert provider is not None and provider.name() == "MMEarth"
    assert registry.algorithmById("mmearth:inspect") is not None
    assert not provider.icon().isNull()


def test_unload_removes_provider_and_init_restores_it(mmearth_plugin):
    registry = QgsApplication.processingRegistry()
    mmearth_plugin.unload()
    try:
        assert registry.providerById("mmearth") is None
        assert registry.algorithmById("mmearth:inspect") is None
    finally:
        mmearth_plugin.initProcessing()
    assert registry.algorithmById("mmearth:inspect") is not None
    mmearth_plugin.initProcessing()  # idempotent: a second call must not register a twin
    assert len([p for p in registry.providers() if p.id() == "mmearth"]) == 1


def test_inspect_real_scene_matches_gdal(run_alg, sample_stack, tmp_path):
    table, report = tmp_path / "bands.csv", tmp_path / "report.html"
    result, feedback = run_alg("mmearth:inspect", {"INPUT": str(sample_stack), "OUTPUT": str(table),
                                                   "REPORT": str(report)})
    ds = gdal.Open(str(sample_stack))
    assert result["BAND_COUNT"] == ds.RasterCount == 13
    assert (result["WIDTH"], result["HEIGHT"]) == (ds.RasterXSize, ds.RasterYSize) == (1536, 768)
    assert result["CRS"] == "EPSG:32633"
    assert (result["PIXEL_SIZE_X"], result["PIXEL_SIZE_Y"]) == (10.0, 10.0)
    assert result["S2_COMPATIBLE"] is True
    import json

    mapping = json.loads(result["BAND_MAPPING"])
    descriptions = [ds.GetRasterBand(i).GetDescription() for i in range(1, 14)]
    assert descriptions[mapping["B8A"] - 1] == "B8A" and descriptions[mapping["B8"] - 1] == "B08"
    assert "B10" not in mapping
    rows = list(csv.DictReader(table.open()))
    assert [r["description"] for r in rows] == descriptions
    assert all(r["data_type"] == "UInt16" for r in rows)
    b4 = ds.GetRasterBand(4).ReadAsArray()
    assert float(rows[3]["min"]) >= b4[b4 > 0].min() and float(rows[3]["max"]) <= b4.max()
    assert "can be fed" in report.read_text()
    assert any("YES" in line for line in feedback.infos)


def test_inspect_accepts_a_project_layer_by_id(run_alg, sample_stack):
    layer = QgsRasterLayer(str(sample_stack), "scene")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    try:
        result, _ = run_alg("mmearth:inspect", {"INPUT": layer.id()})
        assert result["BAND_COUNT"] == 13
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


def _failure_text(run_alg, params):
    with pytest.raises(QgsProcessingException) as info:
        run_alg("mmearth:inspect", params)
    return " ".join([str(info.value)] + info.value.feedback.errors)


def test_inspect_missing_file(run_alg, tmp_path):
    text = _failure_text(run_alg, {"INPUT": str(tmp_path / "missing.tif")})
    assert "does not exist" in text and "missing.tif" in text


def test_inspect_non_raster(run_alg, tmp_path):
    p = tmp_path / "table.tif"
    p.write_text("a,b\n1,2\n")
    text = _failure_text(run_alg, {"INPUT": str(p)})
    assert "not a raster GDAL can read" in text


def test_inspect_raster_without_crs(run_alg, tmp_path):
    arr = np.ones((13, 16, 16), dtype="uint16")
    path = write_geotiff(tmp_path / "nocrs.tif", arr, PRODUCT_ORDER, epsg=None)
    text = _failure_text(run_alg, {"INPUT": str(path)})
    assert "no coordinate reference system" in text


def test_inspect_incompatible_raster_succeeds_with_verdict(run_alg, tmp_path):
    arr = np.ones((3, 16, 16), dtype="uint16")
    path = write_geotiff(tmp_path / "rgb.tif", arr, ["B04", "B03", "B02"], nodata=0)
    result, _ = run_alg("mmearth:inspect", {"INPUT": str(path)})
    assert result["S2_COMPATIBLE"] is False
    assert "missing band(s) B1, B5, B6, B7, B8A, B8, B9, B11, B12" in result["FINDINGS"]
