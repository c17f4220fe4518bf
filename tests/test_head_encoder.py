"""A head knows the encoder it was trained on: segment (and so batch and the panel's whole map)
refuses another encoder, naming both models; the same weights through another export path (the
torch-free conversion, the float16 variant) are the same encoder. Class counts are bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr, osr

from helpers import write_geotiff
from mpmae_core import registry
from mpmae_core.checkpoints import save_checkpoint
from mpmae_core.export import export_encoder
from mpmae_core.models import build_encoder
from mpmae_core.runtime.models import fingerprint as FP
from mpmae_core.runtime.releases.pth_to_onnx import checkpoint_arrays, fp16_encoder
from mpmae_core.runtime.models.metadata import MetadataError, ModelMetadata, default_normalisation
from mpmae_core.runtime.models.model import OnnxModel
from mpmae_core.runtime.heads.pixelhead import train_pixel_head
from mpmae_core.runtime.inference.predict import segment

NAMES = registry.S2_MMEARTH_BANDS


def _encoder(path: Path, seed: int, patch: int = 16) -> Path:
    torch.manual_seed(seed)
    enc = build_encoder("atto", patch_size=patch).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "norm" in name or "grn" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    export_encoder(enc, path, NAMES, default_normalisation(NAMES))
    save_checkpoint(path.with_suffix(".pt"), enc)
    return path


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    out = {"a": _encoder(d / "enc_a.onnx", 0), "b": _encoder(d / "enc_b.onnx", 1),
           "a8": _encoder(d / "enc_a8.onnx", 0, patch=8)}
    data, _ = fp16_encoder(checkpoint_arrays(out["a"].with_suffix(".pt")))
    out["a16"] = d / "enc_a_fp16.onnx"
    out["a16"].write_bytes(data)
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    rng = np.random.default_rng(0)
    arr = rng.integers(500, 4000, (12, 128, 128)).astype("uint16")
    arr[:, :, 64:] //= 3  # two kinds of land, left and right
    path = write_geotiff(d / "scene.tif", arr, NAMES, nodata=0)
    labels = d / "labels.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(labels))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    layer = ds.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    for i in range(12):
        f = ogr.Feature(layer.GetLayerDefn())
        cls = "dark" if i % 2 else "bright"
        col = 90 + (i // 2) * 5 if cls == "dark" else 10 + (i // 2) * 5
        f.SetField("landuse", cls)
        f.SetGeometry(ogr.CreateGeometryFromWkt(f"POINT ({330000 + col * 10 + 5} {5822040 - (20 + i * 8) * 10 - 5})"))
        layer.CreateFeature(f)
    ds = None
    return path, labels


def test_the_probe_is_the_same_for_the_same_weights_and_differs_for_others(encoders):
    fps = {k: FP.encoder_fingerprint(OnnxModel(p, device="cpu")) for k, p in encoders.items()}
    assert FP.mismatch(fps["a"], fps["a16"]) == ""  # float16 variant of the same weights
    assert "other weights" in FP.mismatch(fps["a"], fps["b"])
    assert "patch size 16 against 8" in FP.mismatch(fps["a"], fps["a8"])
    assert FP.probe_distance(fps["a"]["probe"], fps["b"]["probe"]) > 20 * FP.TOLERANCE


def test_segment_refuses_a_head_on_another_encoder_naming_both(encoders, scene, tmp_path):
    raster, labels = scene
    feats, names = _label_features(raster, labels)
    head = tmp_path / "head.onnx"
    train_pixel_head(raster, encoders["a"], feats, names, head, feature_sets=["encoder"], classifiers=["logistic"],
                     tile=128, overlap=32, device="cpu", folds=3)
    meta = OnnxModel(head, device="cpu").metadata
    assert meta.encoder["name"] == "enc_a" and meta.encoder["patch_size"] == 16 and len(meta.encoder["probe"]) == 32
    ok = segment(raster, encoders["a"], tmp_path / "ok.tif", head_path=head, tile=128, overlap=32, device="cpu")
    assert ok["classes"] == names
    same = segment(raster, encoders["a16"], tmp_path / "fp16.tif", head_path=head, tile=128, overlap=32, device="cpu")
    agree = (gdal.Open(str(tmp_path / "ok.tif")).ReadAsArray() == gdal.Open(same["output"]).ReadAsArray()).mean()
    assert agree > 0.98
    for other, fragment in (("b", "other weights"), ("a8", "patch size 16 against 8")):
        out = tmp_path / f"wrong_{other}.tif"
        with pytest.raises(ValueError) as info:
            segment(raster, encoders[other], out, head_path=head, tile=128, overlap=32, device="cpu")
        text = str(info.value)
        assert "'enc_a'" in text and f"'{encoders[other].stem}'" in text and fragment in text, text
        assert not out.exists()


def _label_features(raster, labels):
    from mpmae_core.runtime.io.labels import read_label_file

    feats, names, _, _ = read_label_file(labels, "landuse", gdal.Open(str(raster)).GetProjection())
    return feats, names


def test_a_head_without_a_fingerprint_runs_with_a_warning(models_dir, encoders, scene, tmp_path):
    raster, _ = scene
    logs = []
    segment(raster, models_dir / "atto_test.onnx", tmp_path / "m.tif", head_path=models_dir / "head3.onnx",
            tile=128, overlap=32, device="cpu", log=logs.append)
    assert any("does not record which encoder" in m for m in logs), logs


def test_class_counts_are_bounded():
    names = [f"c{i}" for i in range(300)]
    with pytest.raises(MetadataError, match="300 classes.*at most 254"):
        ModelMetadata(kind="head", class_names=names, embedding_dim=4).validate()
    ModelMetadata(kind="head", class_names=names[:254], embedding_dim=4).validate()


def test_conflicting_cells_agree_with_a_dictionary_count():
    from mpmae_core.runtime.io.labels import conflicting_cells

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(0, 60))
        rows, cols = rng.integers(0, 5, n), rng.integers(0, 5, n)
        classes = rng.integers(0, 3, n)
        mask, pairs = conflicting_cells(rows, cols, classes, 5)
        seen: dict = {}
        for r, c, k in zip(rows.tolist(), cols.tolist(), classes.tolist()):
            seen.setdefault((r, c), set()).add(k)
        want = np.array([len(seen[(r, c)]) > 1 for r, c in zip(rows.tolist(), cols.tolist())], bool)
        assert np.array_equal(mask, want)
        want_pairs: dict = {}
        for ks in seen.values():
            if len(ks) > 1:
                key = (min(ks), max(ks))
                want_pairs[key] = want_pairs.get(key, 0) + 1
        assert {(a, b): m for a, b, m in pairs} == want_pairs


def test_identical_polygons_of_two_classes_are_named_and_left_out():
    from mpmae_core.runtime.io.labels import label_cells

    gt = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)
    square = ogr.CreateGeometryFromWkt("POLYGON ((330100 5821900, 330300 5821900, 330300 5821700, 330100 5821700, "
                                       "330100 5821900))")
    other = ogr.CreateGeometryFromWkt("POINT (330505 5821495)")
    feats = [(bytes(square.ExportToWkb()), 0), (bytes(square.ExportToWkb()), 1), (bytes(other.ExportToWkb()), 1)]
    cells = label_cells(feats, gt, 100, 100)
    assert cells.conflicts == [(0, 1, 400)]
    assert cells.rows.size == 1 and cells.classes.tolist() == [1]
    assert "400 labelled pixel(s) carry two different classes (water and forest at 400 pixel(s))" in \
        cells.conflict_warning(["water", "forest"])


def test_a_label_raster_with_implausibly_many_classes_is_refused(tmp_path):
    from mpmae_core.runtime.io.labels import LabelError, labels_on_grid

    class Prep:
        width, height = 64, 64
        geotransform = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)

    scene_like = np.random.default_rng(0).integers(0, 2480, (64, 64)).astype("uint16")
    path = write_geotiff(tmp_path / "scene_as_labels.tif", scene_like)
    with pytest.raises(LabelError, match=r"values up to 247\d \(\d+ distinct values\).*looks like an image"):
        labels_on_grid(path, Prep())


def test_a_label_raster_a_few_rows_off_the_image_grid_is_refused(tmp_path):
    """Same size, origin four rows north: labels read as they are would sit 40 m off their pixels."""
    from mpmae_core.runtime.io.labels import LabelError, labels_on_grid

    class Prep:
        width, height = 64, 64
        geotransform = (330000.0, 10.0, 0.0, 5822040.0, 0.0, -10.0)

    lab = np.zeros((64, 64), "uint8")
    lab[10:20, 10:20] = 1
    on = write_geotiff(tmp_path / "on.tif", lab)
    assert labels_on_grid(on, Prep())[0].sum() == 100
    off = write_geotiff(tmp_path / "off.tif", lab, geotransform=(330000.0, 10.0, 0.0, 5822080.0, 0.0, -10.0))
    with pytest.raises(LabelError, match="not on the image's grid"):
        labels_on_grid(off, Prep())


def test_labels_with_too_many_or_too_few_classes_are_refused():
    from mpmae_core.runtime.heads.linear import FewShotError, check_labels

    y = np.arange(300) % 300
    with pytest.raises(FewShotError, match="300 classes; class maps hold at most 254"):
        check_labels(y, np.arange(300), [f"c{i}" for i in range(300)])
    with pytest.raises(FewShotError, match="a fine-tuned segmenter needs at least two classes.*only one \\(water\\)"):
        check_labels(np.zeros(5, int), np.arange(5), ["water"], min_groups=1, what="a fine-tuned segmenter")
