"""A time series from the embedded real scene: the same place on several dates, each with the
scene's own clouds shifted elsewhere (as no data), one date on another grid. The temporal median
over the valid dates recovers the cloud-free pixels; one date equals the single-date spectra."""

import numpy as np
import pytest
from osgeo import gdal, osr

from mpmae_core.data import sample
from mpmae_core.runtime.inference import series as S


@pytest.fixture(scope="module")
def dates(tmp_path_factory):
    """Three dates of a 256 x 192 px crop (helpers.series_dates): the scene's clouds shifted by 0, 60
    and 120 px."""
    from helpers import series_dates

    d = tmp_path_factory.mktemp("series")
    paths, clouds, arr = series_dates(d)
    return paths, clouds, arr, d


def test_the_median_over_valid_dates_recovers_the_clear_scene(dates, models_dir, tmp_path):
    from mpmae_core.runtime.inference.raster import prepare_input, read_block
    from mpmae_core.runtime.models.model import read_metadata

    paths, clouds, arr, _ = dates
    logs = []
    res = S.series_features([str(p) for p in paths[::-1]], models_dir / "atto_test.onnx", tmp_path / "t.tif",
                            log=logs.append)
    assert res["dates"] == ["2017-02-16", "2017-03-18", "2017-04-27"]  # from their metadata, in date order
    out = gdal.Open(res["output"]).ReadAsArray()
    count = out[-1]
    np.testing.assert_array_equal(count, 3 - clouds.sum(0))
    # the clear scene as the model reads it: one date's normalised spectra, without clouds
    meta = read_metadata(models_dir / "atto_test.onnx")
    gdal.Translate(str(tmp_path / "clear.tif"), str(sample.build(verbose=False)["stack"]), srcWin=[600, 200, 256, 192])
    prep = prepare_input(str(tmp_path / "clear.tif"), meta)
    want, _ = read_block(prep, 0, 0, 192, 256)
    seen = count > 0
    c = len(meta.input_bands)
    np.testing.assert_allclose(out[:c][:, seen], want[:, seen], rtol=1e-5, atol=1e-5)  # the median
    assert (out[3 * c:4 * c][:, seen] < 1e-4).all()  # the same value on every valid date: no spread
    # a single date equals that date's spectra; its clouds are no data
    one = S.series_features([str(paths[0])], models_dir / "atto_test.onnx", tmp_path / "one.tif")
    o = gdal.Open(one["output"]).ReadAsArray()
    assert np.isnan(o[0][clouds[0]]).all()
    np.testing.assert_allclose(o[:c][:, ~clouds[0]], want[:, ~clouds[0]], rtol=1e-5, atol=1e-5)


def test_a_date_on_another_grid_is_warped_and_said_and_bad_series_are_refused(dates, models_dir, tmp_path):
    paths, clouds, arr, d = dates
    other = d / "S2A_MSIL1C_20170520T102101_T33UUU.tif"
    utm32 = osr.SpatialReference()
    utm32.ImportFromEPSG(32632)
    ds = gdal.Warp(str(other), str(paths[0]), dstSRS=utm32.ExportToWkt(), xRes=10, yRes=10, resampleAlg="near")
    ds.SetMetadataItem("ACQUISITION_DATE", "2017-05-20")
    ds = None
    logs = []
    res = S.series_features([str(p) for p in paths] + [str(other)], models_dir / "atto_test.onnx",
                            tmp_path / "t.tif", log=logs.append)
    assert any("another grid" in m and "EPSG:32632" in m for m in logs), logs
    assert len(res["dates"]) == 4 and gdal.Open(res["output"]).RasterXSize == 256
    with pytest.raises(S.SeriesError, match="both of 2017-02-16"):
        S.dated_members([str(paths[0]), str(paths[0])])
    undated = tmp_path / "scene.tif"
    gdal.Translate(str(undated), str(paths[0]), metadataOptions=["ACQUISITION_DATE="])
    assert S.dated_members([str(paths[1])])[0].date.isoformat() == "2017-03-18"
    with pytest.raises(S.SeriesError, match="give the dates"):
        S.dated_members([str(undated)])
    assert [m.date.isoformat() for m in S.dated_members([str(paths[0])], ["2020-01-02"])] == ["2020-01-02"]
    with pytest.raises(S.SeriesError, match="names no raster"):
        S.expand_series(str(tmp_path / "*.nothing"))
    few = S.series_features([str(p) for p in paths], models_dir / "atto_test.onnx", tmp_path / "few.tif",
                            min_valid=3)
    assert few["too_few"] == int((clouds.sum(0) > 0).sum())


def test_the_command_line(dates, models_dir, tmp_path, capsys):
    from mmearth.cli import main

    paths, clouds, _, d = dates
    out = tmp_path / "f.tif"
    assert main(["series-features", ",".join(str(p) for p in paths), str(models_dir / "atto_test.onnx"), str(out),
                 "--min-valid", "2"]) == 0
    err = capsys.readouterr().err
    assert "series of 3 dates: 2017-02-16, 2017-03-18, 2017-04-27" in err and "fewer than 2 valid date(s)" in err
    ds = gdal.Open(str(out))
    assert ds.GetRasterBand(1).GetDescription() == "median:B1" and ds.GetRasterBand(ds.RasterCount).GetDescription() \
        == "count"
    assert main(["series-features", str(d / "S2A_*.tif"), str(models_dir / "atto_test.onnx"), str(tmp_path / "g.tif"),
                 "--dates", "2020-01-01"]) != 0
    err = capsys.readouterr().err
    assert "dates given for" in err and "Traceback" not in err and not (tmp_path / "g.tif").exists()


def test_grids_match_to_a_thousandth_of_a_pixel_not_relative_to_the_coordinates():
    from mpmae_core.runtime.io.gdal_io import grids_match

    gt = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)
    assert grids_match(gt, gt, 256, 192)
    assert grids_match(gt, (330000.005, 10.0, 0.0, 5822039.995, 0.0, -10.0), 256, 192)  # 0.5 mm: the same
    # four rows north: np.allclose took this for the same grid (1e-5 of 5.8e6 m is 58 m)
    assert np.allclose(gt, (330000.0, 10.0, 0.0, 5822080.0, 0.0, -10.0))
    assert not grids_match(gt, (330000.0, 10.0, 0.0, 5822080.0, 0.0, -10.0), 256, 192)
    assert not grids_match(gt, (330001.0, 10.0, 0.0, 5822040.0, 0.0, -10.0), 256, 192)  # a tenth of a pixel
    # a pixel size off by 1e-4 m is 0.1 px over 10,000 columns: the far corner tells
    assert grids_match(gt, (330000.0, 10.0001, 0.0, 5822040.0, 0.0, -10.0), 10, 10)
    assert not grids_match(gt, (330000.0, 10.0001, 0.0, 5822040.0, 0.0, -10.0), 10000, 10)
    assert not grids_match(gt, (330000.0, 10.0, 0.01, 5822040.0, 0.0, -10.0), 256, 192)  # rotated


def test_a_date_a_few_rows_off_the_reference_grid_is_warped_onto_it(tmp_path):
    """Same size and CRS, origin four rows (40 m) north: not the same grid. It is warped, and the
    warped date equals the reference crop where they overlap, instead of being read four rows off."""
    from mpmae_core.runtime.io.gdal_io import open_raster, same_grid

    stack = str(sample.build(verbose=False)["stack"])
    ref, shifted = tmp_path / "ref.tif", tmp_path / "shifted.tif"
    gdal.Translate(str(ref), stack, srcWin=[600, 200, 256, 192])
    gdal.Translate(str(shifted), stack, srcWin=[600, 196, 256, 192])
    ref_ds, shifted_ds = open_raster(str(ref)), open_raster(str(shifted))
    assert not same_grid(ref_ds, shifted_ds)
    assert same_grid(ref_ds, open_raster(str(ref)))
    logs = []
    out = S.on_grid(str(shifted), ref_ds, log=logs.append)
    assert out != str(shifted) and any("another grid" in m for m in logs), logs
    warped, want = gdal.Open(out).ReadAsArray(), ref_ds.ReadAsArray()
    np.testing.assert_array_equal(warped[:, :188], want[:, :188])
    assert not np.array_equal(shifted_ds.ReadAsArray()[:, :188], want[:, :188])  # unwarped it would be off


def test_an_embedding_given_as_a_date_is_refused_with_the_fix(dates, tmp_path):
    from helpers import write_alphaearth

    paths = dates[0]
    ds = gdal.Open(str(paths[0]))
    ae = write_alphaearth(tmp_path / "alphaearth_2017.tif", np.ones((19, 25, 64), np.int8), ds.GetGeoTransform(),
                          ds.GetProjection())
    with pytest.raises(S.SeriesError, match="is AlphaEarth.*not an image.*Leave it out of the dates.*--embedding"):
        S.dated_members([str(paths[0]), str(ae)])
