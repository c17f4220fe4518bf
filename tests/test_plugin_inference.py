"""mmearth:embed and mmearth:segment through real Processing and the real qgis_process binary."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from qgis.core import QgsProcessingException, QgsProcessingFeedback

from helpers import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from mpmae_core.data import sample

    stack = gdal.Open(str(sample.build(verbose=False)["stack"]))
    arr = stack.ReadAsArray(0, 0, 320, 256)
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    return write_geotiff(path, arr, PRODUCT, geotransform=stack.GetGeoTransform(), nodata=0), arr


def test_embed_by_model_name_keeps_crs_and_grid(run_alg, models_dir, scene, tmp_path):
    path, _ = scene
    out = tmp_path / "emb.tif"
    result, feedback = run_alg("mmearth:embed", {"INPUT": str(path), "MODEL": "atto_test", "OUTPUT": str(out)})
    assert result["OUTPUT"] == str(out)
    ds, src = gdal.Open(str(out)), gdal.Open(str(path))
    assert ds.RasterCount == 320 and (ds.RasterXSize, ds.RasterYSize) == (20, 16)
    gt, sgt = ds.GetGeoTransform(), src.GetGeoTransform()
    assert (gt[0], gt[3], gt[1], gt[5]) == (sgt[0], sgt[3], 160.0, -160.0)
    assert ds.GetSpatialRef().IsSame(src.GetSpatialRef())
    assert any("embedding bands" in m for m in feedback.infos)
    # the algorithm is the runtime: same numbers as calling it directly
    from mpmae_core.runtime.inference.predict import embed

    embed(path, models_dir / "atto_test.onnx", tmp_path / "direct.tif", device="cpu")
    np.testing.assert_array_equal(ds.ReadAsArray(), gdal.Open(str(tmp_path / "direct.tif")).ReadAsArray())


def test_segment_with_a_head_gives_its_classes(run_alg, models_dir, scene, tmp_path):
    path, _ = scene
    out, probs = tmp_path / "classes.tif", tmp_path / "probs.tif"
    result, _ = run_alg("mmearth:segment", {"INPUT": str(path), "MODEL": str(models_dir / "atto_test.onnx"),
                                            "HEAD": "head3", "OUTPUT": str(out), "PROBABILITIES": str(probs)})
    ds = gdal.Open(str(out))
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == 255
    assert set(np.unique(band.ReadAsArray())) <= {0, 1, 2}
    assert band.GetCategoryNames()[:3] == ["water", "forest", "field"]
    assert ds.GetGeoTransform() == gdal.Open(str(path)).GetGeoTransform()
    assert gdal.Open(result["PROBABILITIES"]).RasterCount == 3


def _fails(run_alg, params, alg="mmearth:embed"):
    with pytest.raises(QgsProcessingException) as info:
        run_alg(alg, params)
    return " ".join([str(info.value)] + info.value.feedback.errors)


def test_unknown_model_lists_the_available_ones(run_alg, models_dir, scene, tmp_path):
    path, _ = scene
    text = _fails(run_alg, {"INPUT": str(path), "MODEL": "no_such_model", "OUTPUT": str(tmp_path / "x.tif")})
    assert "was not found" in text and "atto_test" in text and "head3" in text


def test_geographic_crs_is_refused_with_the_fix(run_alg, models_dir, scene, tmp_path):
    _, arr = scene
    geo = write_geotiff(tmp_path / "geo.tif", arr, PRODUCT, epsg=4326,
                        geotransform=(12.5, 0.0001, 0, 52.5, 0, -0.0001), nodata=0)
    text = _fails(run_alg, {"INPUT": str(geo), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "x.tif")})
    assert "geographic CRS" in text and "Warp" in text
    assert not (tmp_path / "x.tif").exists()


def test_segment_without_head_on_an_encoder_says_what_to_do(run_alg, models_dir, scene, tmp_path):
    path, _ = scene
    text = _fails(run_alg, {"INPUT": str(path), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "x.tif")},
                  "mmearth:segment")
    assert "give a head model" in text


def test_missing_band_and_bad_band_map(run_alg, models_dir, scene, tmp_path):
    _, arr = scene
    rgb = write_geotiff(tmp_path / "rgb.tif", arr[[3, 2, 1]], ["B04", "B03", "B02"], nodata=0)
    text = _fails(run_alg, {"INPUT": str(rgb), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "x.tif")})
    assert "missing band(s) B1, B5" in text
    path, _ = scene
    text = _fails(run_alg, {"INPUT": str(path), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "y.tif"),
                            "BAND_MAP": "1,2,x"})
    assert "not a list of band numbers" in text


def test_cancel_leaves_no_output(qgis_app, models_dir, scene, tmp_path):
    import processing

    path, _ = scene
    feedback = QgsProcessingFeedback()
    feedback.cancel()
    with pytest.raises(QgsProcessingException):
        processing.run("mmearth:embed", {"INPUT": str(path), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "c.tif"),
                                         "TILE": 128, "OVERLAP": 32}, feedback=feedback)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qgis_process
def test_qgis_process_runs_segment_headless(models_dir, scene, tmp_path):
    path, _ = scene
    out = tmp_path / "classes.tif"
    env = dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "profile"),
               MMEARTH_VENV=sys.prefix)
    proc = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "run", "mmearth:segment", "--",
                           f"INPUT={path}", f"MODEL={models_dir / 'atto_test.onnx'}", f"HEAD={models_dir / 'head3.onnx'}",
                           f"OUTPUT={out}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert set(np.unique(gdal.Open(str(out)).ReadAsArray())) <= {0, 1, 2}


def test_vrt_and_project_layers_are_accepted(run_alg, models_dir, scene, tmp_path):
    """A VRT mosaic of two halves and a layer loaded in the project give the same embeddings as the file."""
    from qgis.core import QgsProject, QgsRasterLayer

    path, arr = scene
    src = gdal.Open(str(path))
    gt = src.GetGeoTransform()
    halves = []
    for i, (x0, w) in enumerate(((0, 160), (160, 160))):
        half = gdal.Translate(str(tmp_path / f"half{i}.tif"), src, srcWin=[x0, 0, w, 256])
        half = None
        halves.append(str(tmp_path / f"half{i}.tif"))
    vrt = gdal.BuildVRT(str(tmp_path / "mosaic.vrt"), halves)
    for b in range(vrt.RasterCount):  # BuildVRT drops band descriptions; a user's VRT would name them
        vrt.GetRasterBand(b + 1).SetDescription(src.GetRasterBand(b + 1).GetDescription())
    vrt = None
    assert gdal.Open(str(tmp_path / "mosaic.vrt")).GetGeoTransform() == gt
    run_alg("mmearth:embed", {"INPUT": str(tmp_path / "mosaic.vrt"), "MODEL": "atto_test",
                              "OUTPUT": str(tmp_path / "vrt.tif")})
    layer = QgsRasterLayer(str(path), "scene in project")
    QgsProject.instance().addMapLayer(layer)
    try:
        run_alg("mmearth:embed", {"INPUT": layer.id(), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "layer.tif")})
    finally:
        QgsProject.instance().removeMapLayer(layer.id())
    run_alg("mmearth:embed", {"INPUT": str(path), "MODEL": "atto_test", "OUTPUT": str(tmp_path / "file.tif")})
    ref = gdal.Open(str(tmp_path / "file.tif")).ReadAsArray()
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "vrt.tif")).ReadAsArray(), ref)
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "layer.tif")).ReadAsArray(), ref)
