"""Sentinel-2 products in QGIS: a SAFE zip given by path, a product QGIS opened itself (GDAL's
SENTINEL2 driver, as when it is dragged onto the map), an area of interest as polygons or as the
standard extent parameter, the mask options, and mmearth:stack; in processing.run and in the
real qgis_process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from scipy import ndimage

from mpmae_core.data import sample
from helpers import field_gpkg
from test_masks import l2a_product
from test_products import hand_stack, make_safe, zip_folder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bands_dir():
    sample.build(verbose=False)
    return sample.scene_dir() / "IMG_DATA"


@pytest.fixture(scope="module")
def l2a_zip(bands_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("l2a")
    safe, scl, _ = l2a_product(d, bands_dir, cldprb=False)
    return zip_folder(safe, d / (safe.stem + ".zip")), scl


def test_segment_a_zip_with_an_area_and_dilated_clouds_equals_the_command_line(run_alg, l2a_zip, models_dir,
                                                                                tmp_path):
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.masks import MaskOptions

    z, scl = l2a_zip
    field = field_gpkg(tmp_path / "field.gpkg")
    out = tmp_path / "map.tif"
    result, feedback = run_alg("mmearth:segment", {
        "INPUT": str(z), "MODEL": str(models_dir / "atto_test.onnx"), "HEAD": str(models_dir / "head3.onnx"),
        "AREA": str(field), "MASK_DILATE": 1, "DEVICE": 1, "OUTPUT": str(out)})
    ds = gdal.Open(result["OUTPUT"])
    _, _, gt = hand_stack()
    ogt = ds.GetGeoTransform()
    c0, r0 = round((ogt[0] - gt[0]) / gt[1]), round((ogt[3] - gt[3]) / gt[5])
    assert (c0, r0, ds.RasterXSize, ds.RasterYSize) == (288, 192, 624, 416)
    got = ds.ReadAsArray()
    cli = segment(z, models_dir / "atto_test.onnx", tmp_path / "cli.tif", head_path=models_dir / "head3.onnx",
                  device="cpu", aoi=str(field), masks=MaskOptions(dilate=1))
    np.testing.assert_array_equal(got, gdal.Open(cli["output"]).ReadAsArray())
    cloud = ndimage.binary_dilation(np.isin(scl, [0, 1, 3, 8, 9, 10]), structure=np.ones((3, 3), bool))
    assert (got[cloud[r0:r0 + 416, c0:c0 + 624]] == 255).all()
    assert any("masks dilated by 1 px" in m for m in feedback.infos)


def test_a_product_qgis_opened_itself_and_the_extent_parameter(run_alg, bands_dir, models_dir, tmp_path):
    """QGIS opens a SAFE product with GDAL's SENTINEL2 driver, one resolution at a time (the 10 m
    layer has 4 bands). The algorithms read the whole product behind such a layer; an extent in
    another CRS (EPSG:4326) cuts the work like polygons do."""
    from qgis.core import QgsProject, QgsRasterLayer

    safe = make_safe(tmp_path, bands_dir)
    z = zip_folder(safe, tmp_path / (safe.stem + ".zip"))
    name = f"SENTINEL2_L1C:/vsizip/{z}/{safe.name}/MTD_MSIL1C.xml:10m:EPSG_32633"
    layer = QgsRasterLayer(name, "dragged", "gdal")
    assert layer.isValid() and layer.bandCount() == 4
    QgsProject.instance().addMapLayer(layer)
    try:
        _, _, gt = hand_stack()
        utm, wgs = osr.SpatialReference(), osr.SpatialReference()
        utm.ImportFromEPSG(32633)
        wgs.ImportFromEPSG(4326)
        for s in (utm, wgs):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        tr = osr.CoordinateTransformation(utm, wgs)
        lon0, lat0, _ = tr.TransformPoint(gt[0] + 400 * gt[1], gt[3] + 500 * gt[5])
        lon1, lat1, _ = tr.TransformPoint(gt[0] + 700 * gt[1], gt[3] + 300 * gt[5])
        extent = f"{lon0},{lon1},{lat0},{lat1} [EPSG:4326]"  # QGIS's order: xmin, xmax, ymin, ymax
        result, feedback = run_alg("mmearth:embed", {
            "INPUT": layer.id(), "MODEL": str(models_dir / "atto_test.onnx"), "EXTENT": extent, "DEVICE": 1,
            "OUTPUT": str(tmp_path / "emb.tif")})
        ds = gdal.Open(result["OUTPUT"])
        assert ds.RasterCount > 4  # the encoder's embedding, from all 13 bands of the product
        egt = ds.GetGeoTransform()
        c0, r0 = (egt[0] - gt[0]) / gt[1], (egt[3] - gt[3]) / gt[5]
        cells_x, cells_y = ds.RasterXSize * egt[1] / gt[1], ds.RasterYSize * -egt[5] / gt[1]
        assert 384 <= c0 <= 400 and 288 <= r0 <= 300 and 300 <= cells_x <= 336 and 200 <= cells_y <= 240
        assert any("area of interest: a window of" in m for m in feedback.infos)
    finally:
        QgsProject.instance().removeMapLayer(layer.id())


@pytest.mark.slow
def test_mmearth_stack_in_qgis_and_products_that_cannot_be_read(run_alg, l2a_zip, models_dir, tmp_path):
    from qgis.core import QgsProcessingException

    z, scl = l2a_zip
    result, _ = run_alg("mmearth:stack", {"INPUT": str(z), "MASK_SNOW": True, "OUTPUT": str(tmp_path / "s.tif")})
    arr = gdal.Open(result["OUTPUT"]).ReadAsArray()
    np.testing.assert_array_equal(arr[-1], np.isin(scl, [0, 1, 3, 8, 9, 10, 11])[: arr.shape[1], : arr.shape[2]])
    assert 'redBand="4"' in (tmp_path / "s.qml").read_text()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(z.read_bytes()[: z.stat().st_size // 3])
    for alg, params, message in (
            ("mmearth:segment", {"INPUT": str(cut)}, "not a readable zip"),
            ("mmearth:segment", {"INPUT": str(z), "EXTENT": "0,1,0,1 [EPSG:4326]"}, "outside the raster"),
            ("mmearth:segment", {"INPUT": str(z), "CLOUD_PROBABILITY": 40}, "no cloud probability layer"),
            ("mmearth:stack", {"INPUT": str(sample.build(verbose=False)["stack"])}, "is not a Sentinel-2 product")):
        out = tmp_path / "bad.tif"
        params = dict(params, MODEL=str(models_dir / "atto_test.onnx"), HEAD=str(models_dir / "head3.onnx"),
                      OUTPUT=str(out), DEVICE=1)
        if alg == "mmearth:stack":
            params = {k: params[k] for k in ("INPUT", "OUTPUT")}
        with pytest.raises(QgsProcessingException) as info:
            run_alg(alg, params)
        assert message in str(info.value) and not out.exists(), str(info.value)


@pytest.mark.slow
@pytest.mark.qgis_process
def test_qgis_process_segments_the_zip_with_an_area(l2a_zip, models_dir, tmp_path, tmp_path_factory):
    z, _ = l2a_zip
    field = field_gpkg(tmp_path / "field.gpkg", epsg=4326)
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path_factory.mktemp("profile")),
               MMEARTH_VENV=sys.prefix if sys.prefix != sys.base_prefix else str(ROOT / ".venv"))
    out = tmp_path / "map.tif"
    proc = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "--json", "run", "mmearth:segment", "--",
                           f"INPUT={z}", f"MODEL={models_dir / 'atto_test.onnx'}", f"HEAD={models_dir / 'head3.onnx'}",
                           f"AREA={field}", "DEVICE=1", f"OUTPUT={out}"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["results"]["OUTPUT"] == str(out)
    ds = gdal.Open(str(out))
    assert ds.RasterXSize < 700 and ds.RasterYSize < 500 and (ds.ReadAsArray() == 255).any()


def test_the_panel_adds_a_product_in_natural_colour_and_shows_its_masked_share(qgis_app, qtbot, l2a_zip, tmp_path):
    from qgis.core import QgsProject
    from qgis.gui import QgsMapCanvas

    from mmearth_qgis.panel import FewShotPanel

    z, scl = l2a_zip
    QgsProject.instance().clear()
    canvas = QgsMapCanvas()
    qtbot.addWidget(canvas)
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    try:
        layer = panel.add_product(str(z))
        assert layer is not None and layer.bandCount() == 12 and panel.raster.currentLayer() is layer
        renderer = layer.renderer()
        assert (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (4, 3, 2)
        share = float(panel.findings.text().split("%")[0].split()[-1]) / 100
        assert abs(share - np.isin(scl, [0, 1, 3, 8, 9, 10]).mean()) < 0.01, panel.findings.text()
        assert "Scene classification" in panel.findings.text()
        messages = []
        panel.error = messages.append
        assert panel.add_product(str(tmp_path / "none.zip")) is None and "does not exist" in messages[0]
    finally:
        panel.close()
        QgsProject.instance().clear()
