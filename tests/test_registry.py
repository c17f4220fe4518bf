import json
from pathlib import Path

import pytest

from mpmae_core import registry


def test_mmearth_band_order_puts_b8a_before_b8_and_drops_b10():
    bands = registry.S2_MMEARTH_BANDS
    assert len(bands) == 12
    assert "B10" not in bands
    assert bands.index("B8A") == bands.index("B8") - 1
    assert registry.S2_STORAGE_ORDER == (
        "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12")


@pytest.mark.parametrize("label, expected", [
    ("B04", "B4"), ("B4", "B4"), ("b4", "B4"), ("B8A", "B8A"), ("B08A", "B8A"), ("b8a", "B8A"),
    ("B08", "B8"), ("B8", "B8"), ("B1", "B1"), ("B12", "B12"), ("B10", "B10"), ("B11", "B11"),
    ("T33UUU_20170216T102101_B04", "B4"), ("sentinel2_B11", "B11"), ("S2_B8A", "B8A"),
    ("B04 (665 nm)", "B4"), ("Band 8A", "B8A"),
    ("red", "B4"), ("Red", "B4"), ("nir", "B8"), ("nir08", "B8A"), ("swir16", "B11"), ("swir22", "B12"),
    ("coastal", "B1"), ("rededge1", "B5"), ("red edge 3", "B7"), ("cirrus", "B10"), ("water vapour", "B9"),
    # not band names
    ("", None), (None, None), ("Band 1", None), ("1", None), ("B13", None), ("B0", None), ("B123", None),
    ("SB12X", None), ("B4 and B8", None), ("S2B_MSIL1C", None), ("elevation", None), ("rededge", None),
])
def test_canonical_s2_band(label, expected):
    assert registry.canonical_s2_band(label) == expected


PRODUCT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def test_match_product_order_stack_swaps_b8_b8a_and_drops_b10():
    m = registry.match_bands(PRODUCT_ORDER)
    assert m.complete and not m.is_identity
    # independent: where each wanted name sits in the product-order list
    expected = [PRODUCT_ORDER.index({"B1": "B01", "B2": "B02", "B3": "B03", "B4": "B04", "B5": "B05",
                                     "B6": "B06", "B7": "B07", "B8": "B08", "B9": "B09"}.get(w, w))
                for w in registry.S2_MMEARTH_BANDS]
    assert list(m.source_index) == expected
    assert m.source_index[7] == 8 and m.source_index[8] == 7  # B8A <- band 9, B8 <- band 8
    assert m.unused == (10,)  # B10
    assert m.describe_problem() == ""


def test_match_identity_when_already_in_model_order():
    m = registry.match_bands(list(registry.S2_MMEARTH_BANDS))
    assert m.is_identity


def test_match_reports_missing_bands_by_name():
    labels = [b for b in PRODUCT_ORDER if b not in ("B8A", "B01")]
    m = registry.match_bands(labels)
    assert not m.complete
    assert m.missing == ("B1", "B8A")
    assert "B1, B8A" in m.describe_problem()


def test_match_unnamed_bands_says_how_to_name_them():
    m = registry.match_bands([""] * 12)
    assert m.missing == registry.S2_MMEARTH_BANDS
    assert "no Sentinel-2 band names" in m.describe_problem()


def test_match_duplicate_names_are_ambiguous():
    m = registry.match_bands(["B04", "red"] + PRODUCT_ORDER[1:3])
    assert "B4" in m.duplicates and m.duplicates["B4"] == [0, 1]
    assert not m.complete
    assert "ambiguous" in m.describe_problem()


def test_match_rgb_subset():
    m = registry.match_bands(["B04", "B03", "B02"], registry.S2_RGB_BANDS)
    assert list(m.source_index) == [2, 1, 0]


def test_match_rejects_unknown_wanted_band():
    with pytest.raises(ValueError, match="unknown Sentinel-2 band 'B13'"):
        registry.match_bands(["B1"], ["B13"])


@pytest.mark.parametrize("level, key", [("l2a", "sentinel2_l2a"), ("L1C", "sentinel2_l1c_without_B10")])
def test_default_statistics_follow_band_names(level, key):
    raw = json.loads((Path(__file__).parents[1] / "mpmae_core" / "resources" / "mmearth_s2_band_stats.json").read_text())
    order = raw["band_order_l2a"]
    mean, std = registry.s2_default_statistics(level, ["B8", "B8A", "B2"])
    assert mean == [raw[key]["mean"][order.index(b)] for b in ["B8", "B8A", "B2"]]
    assert std == [raw[key]["std"][order.index(b)] for b in ["B8", "B8A", "B2"]]


def test_default_statistics_errors():
    with pytest.raises(ValueError, match="processing level"):
        registry.s2_default_statistics("l3")
    with pytest.raises(ValueError, match="B10"):
        registry.s2_default_statistics("l1c", ["B10"])
