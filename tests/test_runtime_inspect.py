"""The torch-free inspection runtime on real GeoTIFFs written through GDAL."""

import numpy as np
import pytest

from helpers import write_geotiff
from mpmae_core.runtime.io import inspect as rinspect
from mpmae_core.runtime.io.files import atomic_output, atomic_write_text
from mpmae_core.runtime.io.gdal_io import RasterError

PRODUCT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _s2_like(rng, bands=13, rows=40, cols=50, dtype="uint16"):
    return rng.integers(1, 12000, size=(bands, rows, cols)).astype(dtype)


def test_facts_match_an_independent_read(tmp_path):
    rng = np.random.default_rng(0)
    arr = _s2_like(rng)
    arr[:, :5, :] = 0  # a nodata strip
    path = write_geotiff(tmp_path / "s2.tif", arr, PRODUCT_ORDER, nodata=0)
    facts = rinspect.read_raster_facts(path)
    assert (facts.width, facts.height, len(facts.bands)) == (50, 40, 13)
    assert facts.crs_authid == "EPSG:32633" and not facts.crs_is_geographic
    assert facts.pixel_size == (10.0, 10.0)
    for i, b in enumerate(facts.bands):
        valid = arr[i][arr[i] != 0]
        assert b.description == PRODUCT_ORDER[i]
        assert b.data_type == "UInt16" and b.nodata == 0
        # the raster is smaller than the sample window, so the sample is the whole band
        assert b.sample_min == valid.min() and b.sample_max == valid.max()
        assert b.sample_mean == pytest.approx(valid.mean())
        assert b.sample_valid_fraction == pytest.approx(35 / 40)


def test_sample_read_is_bounded_for_large_rasters(tmp_path):
    arr = np.full((1, 1200, 1100), 7, dtype="uint16")
    arr[0, 600, 550] = 9999  # a single pixel a decimated read may miss
    path = write_geotiff(tmp_path / "big.tif", arr, ["B04"])
    b = rinspect.read_raster_facts(path).bands[0]
    assert b.sample_min == 7 and b.sample_max in (7, 9999)


def test_real_layout_is_compatible_and_reordered(tmp_path):
    path = write_geotiff(tmp_path / "s2.tif", _s2_like(np.random.default_rng(1)), PRODUCT_ORDER, nodata=0)
    a = rinspect.inspect_raster(path)
    assert a.compatible
    assert a.level_guess == "l1c"
    lines = a.mapping_lines()
    assert lines[7].split() == ["model", "input", "8", "B8A", "<-", "raster", "band", "9", "(B8A)"]
    assert lines[8].split()[-3:] == ["band", "8", "(B08)"]
    text = "\n".join(rinspect.summary_lines(a))
    assert "YES" in text and "B10" in text


def test_missing_band_makes_it_incompatible(tmp_path):
    names = [n for n in PRODUCT_ORDER if n != "B11"]
    path = write_geotiff(tmp_path / "s2.tif", _s2_like(np.random.default_rng(2), bands=12), names, nodata=0)
    a = rinspect.inspect_raster(path)
    assert not a.compatible
    assert any(f.severity == "error" and "B11" in f.message for f in a.findings)


def test_geographic_crs_warns_to_reproject(tmp_path):
    path = write_geotiff(tmp_path / "geo.tif", _s2_like(np.random.default_rng(3)), PRODUCT_ORDER, epsg=4326,
                         geotransform=(13.0, 0.0001, 0, 52.5, 0, -0.0001), nodata=0)
    a = rinspect.inspect_raster(path)
    assert a.compatible  # a warning, not an error: reprojecting fixes it
    assert any(f.severity == "warning" and "geographic CRS" in f.message and "Warp" in f.message for f in a.findings)


def test_wrong_resolution_warns(tmp_path):
    path = write_geotiff(tmp_path / "s2_20m.tif", _s2_like(np.random.default_rng(4)), PRODUCT_ORDER,
                         geotransform=(330000.0, 20.0, 0, 5822040.0, 0, -20.0), nodata=0)
    a = rinspect.inspect_raster(path)
    assert any("pixel size is 20 x 20 m" in f.message for f in a.findings)


def test_reflectance_scaled_to_one_warns(tmp_path):
    arr = (_s2_like(np.random.default_rng(5)) / 12000.0).astype("float32")
    path = write_geotiff(tmp_path / "refl.tif", arr, PRODUCT_ORDER)
    a = rinspect.inspect_raster(path)
    assert any("reflectance scaled to 0-1" in f.message and "10000" in f.message for f in a.findings)
    assert any("no nodata value" in f.message for f in a.findings)


def test_eight_bit_warns(tmp_path):
    arr = np.random.default_rng(6).integers(0, 255, size=(13, 8, 8)).astype("uint8")
    a = rinspect.inspect_raster(write_geotiff(tmp_path / "b.tif", arr, PRODUCT_ORDER))
    assert any("8-bit" in f.message for f in a.findings)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RasterError, match="does not exist"):
        rinspect.inspect_raster(tmp_path / "nope.tif")


def test_non_raster_says_so(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_text("hello")
    with pytest.raises(RasterError, match="not a raster GDAL can read"):
        rinspect.inspect_raster(p)


def test_raster_without_crs_says_how_to_assign_one(tmp_path):
    path = write_geotiff(tmp_path / "nocrs.tif", _s2_like(np.random.default_rng(7)), PRODUCT_ORDER, epsg=None)
    with pytest.raises(RasterError, match="no coordinate reference system.*Assign Projection"):
        rinspect.inspect_raster(path)


def test_html_report_escapes_and_reports_verdict(tmp_path):
    names = PRODUCT_ORDER[:-1] + ["<script>"]
    path = write_geotiff(tmp_path / "s2.tif", _s2_like(np.random.default_rng(8)), names, nodata=0)
    page = rinspect.html_report(rinspect.inspect_raster(path))
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert "cannot be fed" in page  # "<script>" names no band: B12 is missing


def test_atomic_output_renames_only_on_success(tmp_path):
    dest = tmp_path / "out" / "report.html"
    atomic_write_text(dest, "first")
    with pytest.raises(RuntimeError):
        with atomic_output(dest) as tmp:
            assert tmp.parent == dest.parent and tmp.suffix == ".html"
            tmp.write_text("half")
            raise RuntimeError("cancelled")
    assert dest.read_text() == "first"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["report.html"]


def test_atomic_output_moves_gdal_sidecars_and_sets_normal_permissions(tmp_path):
    import os

    dest = tmp_path / "map.tif"
    with atomic_output(dest) as tmp:
        tmp.write_bytes(b"raster")
        (tmp.parent / (tmp.name + ".aux.xml")).write_text("<PAMDataset/>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "other.tif") as tmp:
            (tmp.parent / (tmp.name + ".aux.xml")).write_text("<PAMDataset/>")
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]
