"""Temporal reductions of a series (the several-dates issue's building blocks): checked pixel by
pixel against an independent loop, masked dates ignored, one date equal to itself, dates parsed
from real product names."""

import datetime as dt

import numpy as np
import pytest

from mpmae_core.runtime.inference import temporal as T


def _loop(values, valid, min_valid=1):
    """The statistics computed pixel by pixel on the valid dates, with plain numpy."""
    t, c, h, w = values.shape
    out = np.full((4 * c + 1, h, w), np.nan)
    for r in range(h):
        for q in range(w):
            ok = valid[:, r, q]
            out[-1, r, q] = ok.sum()
            if ok.sum() < max(min_valid, 1):
                continue
            v = values[ok, :, r, q]
            out[0 * c:1 * c, r, q] = np.median(v, 0)
            out[1 * c:2 * c, r, q] = np.percentile(v, 10, axis=0)
            out[2 * c:3 * c, r, q] = np.percentile(v, 90, axis=0)
            out[3 * c:4 * c, r, q] = v.std(0)
    return out


def test_the_statistics_equal_a_pixel_by_pixel_computation_and_ignore_masked_dates():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 3, 9, 11)).astype(np.float32)
    valid = rng.random((7, 9, 11)) > 0.35
    valid[:, 0, 0] = False  # a pixel never seen
    valid[:, 0, 1] = False
    valid[3, 0, 1] = True  # a pixel seen once
    out, names = T.reduce_series(values, valid)
    assert names[:3] == ["median:0", "median:1", "median:2"] and names[-1] == "count" and len(names) == out.shape[0]
    np.testing.assert_allclose(out, _loop(values, valid), rtol=1e-5, atol=1e-6)
    # a masked date's values do not matter: clouds can hold anything
    noisy = values.copy()
    noisy[~np.broadcast_to(valid[:, None], values.shape)] = 1e6
    np.testing.assert_array_equal(T.reduce_series(noisy, valid)[0], out)
    assert np.isnan(out[:-1, 0, 0]).all() and out[-1, 0, 0] == 0
    np.testing.assert_allclose(out[0:3, 0, 1], values[3, :, 0, 1])
    # too few valid dates: no data, the count still given
    few, _ = T.reduce_series(values, valid, min_valid=3)
    low = valid.sum(0) < 3
    assert np.isnan(few[:-1][:, low]).all() and not np.isnan(few[:-1][:, ~low]).any()
    np.testing.assert_array_equal(few[-1], valid.sum(0))


def test_a_series_of_one_date_is_that_date():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(1, 4, 5, 6)).astype(np.float32)
    out, _ = T.reduce_series(values, np.ones((1, 5, 6), bool))
    for k in range(3):  # median and both percentiles are the value itself
        np.testing.assert_array_equal(out[4 * k:4 * k + 4], values[0])
    assert (out[12:16] == 0).all() and (out[16] == 1).all()


def test_seasonal_windows_wrap_the_new_year():
    assert T.in_window(20, (335, 59)) and T.in_window(350, (335, 59)) and not T.in_window(180, (335, 59))
    assert T.in_window(180, (152, 243)) and not T.in_window(300, (152, 243))
    dates = [dt.date(2023, m, 15) for m in (1, 4, 7, 8, 12)]
    values = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1) * np.ones((5, 1, 2, 2), np.float32)
    valid = np.ones((5, 2, 2), bool)
    valid[4, 0, 0] = False  # December cloudy at one pixel
    out = T.seasonal_medians(values, valid, dates, [(335, 59), (152, 243), (100, 101)])
    assert out[0, 1, 1] == np.median([0, 4]) and out[0, 0, 0] == 0  # winter: January and December
    assert (out[1] == 2.5).all()  # summer: July and August
    assert np.isnan(out[2]).all()  # no date in that window


@pytest.mark.parametrize("text,want", [
    ("S2B_MSIL2A_20230612T101559_N0509_R065_T33UUU_20230612T123456.zip", dt.date(2023, 6, 12)),
    ("downloads/S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102204.SAFE/MTD_MSIL1C.xml",
     dt.date(2017, 2, 16)),
    ("T33UUU_20170216T102101_B02.jp2", dt.date(2017, 2, 16)),
    ("scene_2021-09-30.tif", dt.date(2021, 9, 30)),
    ("mosaic_20220101.tif", dt.date(2022, 1, 1)),
    ("scene_20231345.tif", None),  # no such month
    ("scene.tif", None),
])
def test_dates_from_product_names(text, want):
    assert T.date_of(text) == want


def test_metadata_comes_before_the_name_and_bad_shapes_are_refused():
    assert T.date_of("x_20200101.tif", {"PRODUCT_START_TIME": "2019-05-04T10:00:00.000Z"}) == dt.date(2019, 5, 4)
    assert T.date_of("item.json", {"DATETIME": "2024-03-02T00:00:00Z"}) == dt.date(2024, 3, 2)
    with pytest.raises(ValueError, match="a series needs values"):
        T.reduce_series(np.zeros((3, 4, 4)), np.ones((3, 4, 4), bool))
    with pytest.raises(ValueError, match="unknown statistic"):
        T.reduce_series(np.zeros((2, 1, 2, 2)), np.ones((2, 2, 2), bool), stats=("mean",))


def test_seasons_by_month_and_day_hold_the_same_dates_every_year():
    import datetime as dt

    assert T.parse_season("03-01:05-31") == (60, 151) and T.parse_season(" 3-01 : 05-31 ") == (60, 151)
    assert T.season_name(T.parse_season("12-01:02-28")) == "season1201-0228"
    assert T.season_of_name("season1201-0228") == T.parse_season("12-01:02-28")
    assert T.season_of_name("median") is None and T.season_of_name("season1399-0101") is None
    for bad in ("03-01", "13-01:05-31", "02-30:03-01", "spring"):
        with pytest.raises(ValueError, match="MM-DD:MM-DD"):
            T.parse_season(bad)
    spring = T.parse_season("03-01:05-31")
    for year in (2019, 2020):  # 2020 is a leap year: 1 March is still the season's first day
        assert T.in_window(T.day_of_year(dt.date(year, 3, 1)), spring)
        assert not T.in_window(T.day_of_year(dt.date(year, 2, 29 if year == 2020 else 28)), spring)
