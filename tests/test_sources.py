"""Input sources are data: the registry's SourceSpec drives band matching, inspection, levels,
offsets, plausibility, normalisation and the model metadata.

A toy sensor is added here, in this test alone (no other file knows it), and a raster of it runs
through inspect and embed to the same numbers as the torch encoder. A new source therefore needs
a spec entry, plus a reader only where its files have a new format.
"""

import numpy as np
import pytest
import torch
from osgeo import gdal

from helpers import write_geotiff
from mpmae_core import registry
from mpmae_core.runtime.io import inspect as rinspect
from mpmae_core.runtime.models.metadata import (FORMAT_VERSION, MetadataError, ModelMetadata, default_normalisation,
                                                encoder_metadata)

TOY = registry.SourceSpec(
    name="toy_sensor",
    title="Toy sensor",
    bands=(registry.Band("T1", "violet", 420, 10, ("v",)), registry.Band("T2", "teal", 500, 10),
           registry.Band("T3", "amber", 600, 10), registry.Band("T4", "infra", 800, 10, ("ir", "near infra"))),
    model_bands=("T1", "T2", "T3", "T4"),
    product_order=("T1", "T2", "T3", "T4"),
    display_bands=("T3", "T2", "T1"),
    levels=(registry.Level("raw", "raw counts", r"TOY_LEVEL=RAW"),
            registry.Level("cal", "calibrated counts", r"TOY_LEVEL=CAL")),
    default_level="cal",
    units="toy counts (radiance x 100)",
    dn_scale=100.0,
    nodata=-1.0,
    plausible_p99=(20.0, 5000.0),
    offset_keys=("TOY_OFFSET",),
    statistics={"raw": {"T1": (300, 50), "T2": (400, 60), "T3": (500, 70), "T4": (900, 200)},
                "cal": {"T1": (100, 20), "T2": (110, 25), "T3": (120, 30), "T4": (400, 90)}},
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.SOURCES, TOY.name, TOY)
    return TOY


def test_toy_bands_match_by_name_common_name_and_alias(toy):
    m = registry.match_bands(["near-infra", "TEAL", "v", "T3"], toy.model_bands)
    assert m.source == "toy_sensor" and m.complete
    assert m.source_index == (2, 1, 3, 0)
    unnamed = registry.match_bands(["1", "2", "3", "4"], toy.model_bands)
    assert "no Toy sensor band names" in unnamed.describe_problem()
    assert "T1 T2 T3 T4" in unnamed.describe_problem()  # the naming command lists the source's order
    assert registry.source_for_bands(["T2", "T4"]) is toy
    with pytest.raises(ValueError, match="unknown Toy sensor band 'B4'"):
        registry.match_bands(["B4"], ["B4"], toy)


def test_toy_level_offset_and_plausibility_come_from_its_spec(toy):
    assert rinspect.detect_level(["T1"], {"TOY_LEVEL": "raw"}, toy)[0] == "raw"
    assert rinspect.detect_level(["T1"], {}, toy) == (None, "")
    assert rinspect.detect_dn_offset({"TOY_OFFSET": "-5"}, toy) == 5.0
    assert rinspect.detect_dn_offset({"BOA_ADD_OFFSET": "-1000"}, toy) is None  # Sentinel-2's key is not its
    small = rinspect.radiometry_findings([5.0], [10.0], ["Float32"], source=toy)
    assert len(small) == 1 and "small for toy counts" in small[0].message
    assert rinspect.radiometry_findings([500.0], [1000.0], ["Float32"], source=toy) == []
    # the same values are implausible for Sentinel-2, whose limits are its own
    assert rinspect.radiometry_findings([5.0], [10.0], ["UInt16"])


def test_metadata_names_the_source_and_reads_version_1(toy):
    norm = default_normalisation(toy.model_bands)
    assert norm == {"raw": {"mean": [300.0, 400.0, 500.0, 900.0], "std": [50.0, 60.0, 70.0, 200.0]},
                    "cal": {"mean": [100.0, 110.0, 120.0, 400.0], "std": [20.0, 25.0, 30.0, 90.0]}}
    meta = encoder_metadata((2, 2, 6, 2), (40, 80, 160, 320), 16, "sparse", toy.model_bands, norm)
    assert meta.input_source == "toy_sensor" and meta.dn_scale == 100.0 and meta.nodata == -1.0
    back = ModelMetadata.from_json(meta.to_json())
    assert back.input_source == "toy_sensor" and back.format_version == FORMAT_VERSION == 2
    # version 1 files have no source: read as Sentinel-2 (or its RGB bands)
    v1 = encoder_metadata((2, 2, 6, 2), (40, 80, 160, 320), 16, "sparse", registry.S2_RGB_BANDS,
                          default_normalisation(registry.S2_RGB_BANDS))
    data = v1.to_json().replace('"input_source": "sentinel2_rgb", ', "").replace('"format_version": 2', '"format_version": 1')
    old = ModelMetadata.from_json(data)
    assert old.format_version == 1 and old.input_source == "sentinel2_rgb"
    with pytest.raises(MetadataError, match="format 3 is newer"):
        ModelMetadata.from_json(meta.to_json().replace('"format_version": 2', '"format_version": 3'))
    # levels and bands are checked against the source
    bad = meta.to_json().replace('"raw"', '"l1c"')
    with pytest.raises(MetadataError, match="unknown level 'l1c'.*raw, cal"):
        ModelMetadata.from_json(bad)


def test_a_model_of_an_unknown_source_says_so(toy, monkeypatch):
    text = encoder_metadata((2, 2, 6, 2), (40, 80, 160, 320), 16, "sparse", toy.model_bands,
                            default_normalisation(toy.model_bands)).to_json()
    monkeypatch.delitem(registry.SOURCES, "toy_sensor")
    with pytest.raises(MetadataError, match="unknown input source 'toy_sensor'.*newer mpmae_core"):
        ModelMetadata.from_json(text)


def test_a_toy_raster_runs_through_inspect_and_embed_like_torch(toy, tmp_path):
    from mpmae_core.export import export_encoder
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.inference.predict import embed

    torch.manual_seed(0)
    enc = build_encoder("atto", in_chans=4, patch_size=16).eval()
    model = tmp_path / "toy.onnx"
    export_encoder(enc, model, toy.model_bands, default_normalisation(toy.model_bands))
    rng = np.random.default_rng(0)
    order = ["amber", "infra", "violet", "teal"]  # T3, T4, T1, T2: matched by name, not position
    arr = rng.uniform(200, 1200, (4, 96, 96)).astype(np.float32)
    path = write_geotiff(tmp_path / "toy.tif", arr, order, nodata=-1.0)
    ds = gdal.Open(str(path), gdal.GA_Update)
    ds.SetMetadata({"TOY_LEVEL": "RAW", "TOY_OFFSET": "-5"})
    ds = None

    a = rinspect.inspect_raster(path, source="toy_sensor")
    assert a.compatible and a.level_guess == "raw" and a.match.source_index == (2, 3, 0, 1)
    assert "MMEarth Toy sensor model: YES" in "\n".join(rinspect.summary_lines(a))

    res = embed(path, model, tmp_path / "emb.tif", tile=96, overlap=0, device="cpu")  # one tile, the whole raster
    assert res["level"] == "raw"
    got = gdal.Open(str(tmp_path / "emb.tif")).ReadAsArray()
    mean, std = toy.default_statistics("raw", toy.model_bands)
    x = arr[[2, 3, 0, 1]] - 5.0  # model order, the offset the metadata states taken off
    x = (x - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    with torch.no_grad():
        want = enc(torch.from_numpy(x.astype(np.float32))[None]).numpy()[0]
    np.testing.assert_allclose(got, want, atol=2e-4)
