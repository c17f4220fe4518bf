"""ONNX export parity and the torch-free tiled runtime on real GeoTIFFs through GDAL."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

from helpers import write_geotiff
from mpmae_core import registry
from mpmae_core.export import export_encoder, export_head, export_pretext_segmenter
from mpmae_core.models import build_encoder, build_mpmae
from mpmae_core.runtime.inference import tiling
from mpmae_core.runtime.io.gdal_io import RasterError
from mpmae_core.runtime.models.metadata import default_normalisation
from mpmae_core.runtime.models.model import ModelError, OnnxModel
from mpmae_core.runtime.inference.predict import Cancelled, embed, segment, upsample_bilinear

ROOT = Path(__file__).resolve().parents[1]
BANDS = list(registry.S2_MMEARTH_BANDS)
PRODUCT = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def _nontrivial(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".grn." in name or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    enc = _nontrivial(build_encoder("atto", patch_size=16))
    norm = default_normalisation(BANDS)
    enc_path, enc_diff = export_encoder(enc, d / "encoder.onnx", BANDS, norm, source="test")
    mp = _nontrivial(build_mpmae("atto", "pix_mod", patch_size=16, share_decoder=True), seed=1)
    seg_path, seg_diff = export_pretext_segmenter(mp, "esa_worldcover", d / "worldcover.onnx", norm)
    w, b = torch.randn(4, 320) * 0.1, torch.randn(4)
    head_path, head_diff = export_head(w, b, d / "head.onnx", ["water", "forest", "field", "town"],
                                       [[0, 0, 255], [0, 128, 0], [255, 255, 0], [255, 0, 0]])
    return dict(enc=enc, enc_path=enc_path, mp=mp, seg_path=seg_path, head_path=head_path, w=w, b=b,
                diffs=(enc_diff, seg_diff, head_diff))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 13-band product-order raster of real structure: a crop of the embedded Sentinel-2 scene."""
    from mpmae_core.data import sample

    stack = gdal.Open(str(sample.build(verbose=False)["stack"]))
    arr = stack.ReadAsArray(0, 0, 640, 400)
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    gt = stack.GetGeoTransform()
    return write_geotiff(path, arr, PRODUCT, geotransform=gt, nodata=0), arr


def _torch_embedding(enc, arr, order=BANDS, level="l1c"):
    mean, std = registry.s2_default_statistics(level, order)
    idx = [PRODUCT.index(b if b in ("B8A", "B10", "B11", "B12") else f"B{int(b[1:]):02d}") for b in order]
    x = (arr[idx].astype(np.float32) - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
    with torch.no_grad():
        return enc(torch.from_numpy(x)[None]).numpy()[0]


def test_exported_graphs_match_torch(models):
    assert all(d < 1e-4 for d in models["diffs"])  # checked by the exporter on a fresh input size
    enc_model = OnnxModel(models["enc_path"], device="cpu")
    x = torch.randn(3, 12, 80, 48)
    with torch.no_grad():
        ref = models["enc"](x).numpy()
    np.testing.assert_allclose(enc_model.run(x.numpy()), ref, atol=1e-4, rtol=0)
    head = OnnxModel(models["head_path"], device="cpu")
    emb = np.random.default_rng(0).normal(size=(2, 320, 5, 7)).astype(np.float32)
    expected = np.einsum("kd,ndhw->nkhw", models["w"].numpy(), emb) + models["b"].numpy()[None, :, None, None]
    np.testing.assert_allclose(head.run(emb), expected, atol=1e-4)


def test_export_leaves_only_the_model_file(models):
    folder = Path(models["enc_path"]).parent
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.onnx", "head.onnx", "worldcover.onnx"]


def test_exported_models_carry_no_stack_traces_or_machine_paths(models):
    """torch's exporter writes the Python stack (absolute paths of this machine) on every node; a model
    that is shared must not carry them."""
    import onnx

    here = str(Path(__file__).resolve().parents[1])
    for key in ("enc_path", "seg_path", "head_path"):
        raw = Path(models[key]).read_bytes()
        assert here.encode() not in raw and b"stack_trace" not in raw and b".py\", line" not in raw, key
        proto = onnx.load(str(models[key]))
        assert not any(n.metadata_props or n.doc_string for n in proto.graph.node), key


def test_metadata_inside_the_file(models):
    meta = OnnxModel(models["enc_path"], device="cpu").metadata
    assert meta.kind == "encoder" and meta.input_bands == BANDS and meta.patch_size == 16
    assert meta.embedding_dim == 320 and meta.gsd_m == 10.0 and meta.nodata == 0
    assert meta.dn_offset_baseline_04 == 1000.0 and set(meta.normalisation) == {"l1c", "l2a"}
    seg = OnnxModel(models["seg_path"], device="cpu").metadata
    assert seg.kind == "segmenter" and seg.task == "esa_worldcover" and seg.class_names[0] == "tree cover"
    assert len(seg.class_colours) == 11 and seg.output_stride == 1


def test_pretext_segmenter_takes_each_cell_from_the_pass_where_it_was_hidden(models):
    from mpmae_core.export import checkerboard

    mp, seg = models["mp"], OnnxModel(models["seg_path"], device="cpu")
    x = torch.randn(1, 12, 64, 64)
    with torch.no_grad():
        preds = []
        for hidden in (checkerboard(1, 4, 4), ~checkerboard(1, 4, 4)):
            out = mp.decode(mp.encoder(x, hidden), hidden)["esa_worldcover"]
            preds.append((hidden, out))
        (h1, p1), (_, p2) = preds
        merged = torch.where(h1.flatten(1).unsqueeze(-1), p1, p2)
        from mpmae_core.models.losses import unpatchify

        expected = unpatchify(merged, 16, 4, 4).numpy()
    np.testing.assert_allclose(seg.run(x.numpy()), expected, atol=1e-4)


def test_untiled_embedding_equals_torch_with_name_matched_bands(models, scene, tmp_path):
    path, arr = scene
    out = tmp_path / "emb.tif"
    res = embed(path, models["enc_path"], out, tile=640, overlap=0, device="cpu")
    assert res["run"] == 1 and res["level"] == "l1c"  # B10 present: Level-1C statistics
    got = gdal.Open(str(out)).ReadAsArray()
    np.testing.assert_allclose(got, _torch_embedding(models["enc"], arr), atol=2e-4)


def test_tiled_equals_untiled_within_tolerance_and_without_seams(models, scene, tmp_path):
    path, _ = scene
    embed(path, models["enc_path"], tmp_path / "untiled.tif", tile=640, overlap=0, device="cpu")
    res = embed(path, models["enc_path"], tmp_path / "tiled.tif", tile=256, overlap=128, device="cpu")
    assert res["run"] > 4
    a = gdal.Open(str(tmp_path / "untiled.tif")).ReadAsArray()
    b = gdal.Open(str(tmp_path / "tiled.tif")).ReadAsArray()
    scale = np.abs(a).mean()
    assert np.abs(a - b).mean() / scale < 0.05  # GRN makes windows matter a little; see predict.py
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.995
    # no seams: across every tile boundary the tiled map steps no more than the untiled one does
    step = 256 - 128
    for col in range(step // 16, a.shape[2] - 1, step // 16):
        jump_tiled = np.abs(b[:, :, col] - b[:, :, col - 1]).mean()
        jump_untiled = np.abs(a[:, :, col] - a[:, :, col - 1]).mean()
        assert jump_tiled < 1.5 * jump_untiled + 0.02 * scale


def test_nodata_hole_gives_nodata_and_empty_tiles_are_skipped(models, scene, tmp_path):
    _, arr = scene
    holed = arr.copy()
    holed[:, 100:164, 200:264] = 0  # a 4x4-cell hole
    holed[:, :, 384:] = 0  # the whole right part: tiles there are empty
    path = write_geotiff(tmp_path / "holed.tif", holed, PRODUCT, nodata=0)
    res = embed(path, models["enc_path"], tmp_path / "emb.tif", tile=256, overlap=128, device="cpu")
    assert res["skipped"] >= 1
    out = gdal.Open(str(tmp_path / "emb.tif")).ReadAsArray()
    assert np.isnan(out[:, 7:10, 13:16]).all()  # cells wholly inside the hole
    assert np.isnan(out[:, :, 24:]).all()
    assert not np.isnan(out[:, :6, :12]).any()


def test_band_order_by_name_any_stack_order(models, scene, tmp_path):
    path, arr = scene
    perm = np.random.default_rng(3).permutation(13)
    shuffled = write_geotiff(tmp_path / "shuffled.tif", arr[perm], [PRODUCT[i] for i in perm], nodata=0)
    embed(path, models["enc_path"], tmp_path / "a.tif", tile=640, overlap=0, device="cpu")
    embed(shuffled, models["enc_path"], tmp_path / "b.tif", tile=640, overlap=0, device="cpu")
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "a.tif")).ReadAsArray(),
                                  gdal.Open(str(tmp_path / "b.tif")).ReadAsArray())


def test_class_map_with_head_keeps_georeferencing_and_carries_classes(models, scene, tmp_path):
    path, _ = scene
    res = segment(path, models["enc_path"], tmp_path / "classes.tif", head_path=models["head_path"],
                  probabilities_path=tmp_path / "probs.tif", tile=256, overlap=128, device="cpu")
    ds, src = gdal.Open(str(tmp_path / "classes.tif")), gdal.Open(str(path))
    assert ds.GetGeoTransform() == src.GetGeoTransform() and ds.GetProjection() == src.GetProjection()
    assert (ds.RasterXSize, ds.RasterYSize) == (src.RasterXSize, src.RasterYSize)
    band = ds.GetRasterBand(1)
    assert band.GetNoDataValue() == 255  # (also makes GDAL 3.6 load the .aux.xml)
    classes = band.ReadAsArray()
    assert set(np.unique(classes)) <= {0, 1, 2, 3}
    assert band.GetCategoryNames()[:4] == ["water", "forest", "field", "town"]
    assert band.GetRasterColorTable().GetColorEntry(1)[:3] == (0, 128, 0)
    probs = gdal.Open(str(tmp_path / "probs.tif")).ReadAsArray()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), classes)
    assert res["classes"] == ["water", "forest", "field", "town"]


def test_pretext_segmenter_class_map(models, scene, tmp_path):
    path, _ = scene
    segment(path, models["seg_path"], tmp_path / "wc.tif", tile=256, overlap=64, device="cpu")
    ds = gdal.Open(str(tmp_path / "wc.tif"))  # keep: a band dies with its dataset
    band = ds.GetRasterBand(1)
    # GDAL 3.6 loads the .aux.xml (category names) lazily: any earlier call on the band triggers it
    assert band.GetNoDataValue() == 255 and band.GetCategoryNames()[0] == "tree cover"
    assert band.ReadAsArray().max() <= 10


def test_outputs_cog_float16_and_upsampled(models, scene, tmp_path):
    path, _ = scene
    embed(path, models["enc_path"], tmp_path / "cog.tif", tile=640, overlap=0, cog=True, dtype="float16",
          device="cpu")
    info = gdal.Info(str(tmp_path / "cog.tif"), format="json")
    assert info["metadata"]["IMAGE_STRUCTURE"].get("LAYOUT") == "COG"
    assert info["bands"][0]["metadata"]["IMAGE_STRUCTURE"].get("NBITS") == "16"
    assert sorted(p.name for p in tmp_path.iterdir() if "cog" in p.name) == ["cog.qml", "cog.tif"]  # + its style
    embed(path, models["enc_path"], tmp_path / "up.tif", tile=640, overlap=0, upsample=True, device="cpu")
    up = gdal.Open(str(tmp_path / "up.tif"))
    assert (up.RasterXSize, up.RasterYSize) == (640, 400) and up.GetGeoTransform()[1] == 10.0


def test_cancel_and_failure_leave_no_file(models, scene, tmp_path):
    path, _ = scene
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        embed(path, models["enc_path"], tmp_path / "out.tif", tile=256, overlap=128, batch=1, cancelled=cancel,
              device="cpu")
    assert list(tmp_path.iterdir()) == []
    fractions = []
    embed(path, models["enc_path"], tmp_path / "out.tif", tile=256, overlap=128, progress=fractions.append, device="cpu")
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_clear_errors(models, scene, tmp_path):
    path, arr = scene
    missing = write_geotiff(tmp_path / "no_b11.tif", np.delete(arr, 11, axis=0), [b for b in PRODUCT if b != "B11"], nodata=0)
    with pytest.raises(RasterError, match="missing band\\(s\\) B11"):
        embed(missing, models["enc_path"], tmp_path / "x.tif", device="cpu")
    tiny = write_geotiff(tmp_path / "tiny.tif", arr[:, :10, :10], PRODUCT, nodata=0)
    with pytest.raises(RasterError, match="smaller than one patch"):
        embed(tiny, models["enc_path"], tmp_path / "x.tif", device="cpu")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(Path(models["enc_path"]).read_bytes()[:5000])
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        OnnxModel(corrupt, device="cpu")
    import onnx

    proto = onnx.load(str(models["enc_path"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelError, match="no MMEarth metadata"):
        OnnxModel(bare, device="cpu")
    with pytest.raises(RasterError, match="band map gives 3 bands"):
        embed(path, models["enc_path"], tmp_path / "x.tif", band_map=[1, 2, 3], device="cpu")
    assert not (tmp_path / "x.tif").exists()


def test_band_map_by_hand_for_unnamed_bands(models, scene, tmp_path):
    path, arr = scene
    unnamed = write_geotiff(tmp_path / "unnamed.tif", arr, [""] * 13, nodata=0)
    with pytest.raises(RasterError, match="no Sentinel-2 band names"):
        embed(unnamed, models["enc_path"], tmp_path / "x.tif", device="cpu")
    order = [1, 2, 3, 4, 5, 6, 7, 9, 8, 10, 12, 13]  # MMEarth order from a product-order stack
    embed(unnamed, models["enc_path"], tmp_path / "byhand.tif", band_map=order, level="l1c", tile=640, overlap=0,
          device="cpu")
    embed(path, models["enc_path"], tmp_path / "byname.tif", tile=640, overlap=0, device="cpu")
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "byhand.tif")).ReadAsArray(),
                                  gdal.Open(str(tmp_path / "byname.tif")).ReadAsArray())


def test_pure_tiling_and_upsampling():
    # worked by hand: 3 windows are needed ((2048 - 96) / (1024 - 96) -> 3), each (2048 + 2 * 96) / 3
    # = 746.7 -> 752 px (patch 16), the middle one at (2048 - 752) / 2 = 648 -> 640
    assert tiling.axis_layout(2048, 1024, 96, 16) == (752, [0, 640, 1296])
    assert tiling.axis_layout(300, 512, 128)[1] == [0]
    rows = tiling.tile_windows(1000, 300, 512, 128)
    assert len(rows) == 3 and all(len(r) == 1 for r in rows) and rows[0][0].w == 300 and rows[0][0].h == 419
    rng = np.random.default_rng(0)
    for _ in range(3000):  # properties of every layout of an axis longer than the tile
        align = int(rng.choice([1, 8, 16, 32]))
        overlap = align * int(rng.integers(0, 12))
        tile = max(overlap + align, align * int(rng.integers(1, 70)))
        length = align * int(rng.integers(tile // align + 1, 40 * tile // align + 2))
        size, starts = tiling.axis_layout(length, tile, overlap, align)
        n = -(-(length - overlap) // (tile - overlap))
        assert len(starts) == n and starts[0] == 0 and starts[-1] + size == length  # the fewest, edge to edge
        assert size <= tile and size % align == 0 and all(s % align == 0 for s in starts)
        assert size >= min(tile, tiling.round_up(tiling.MIN_CONTEXT, align)) or size == tile
        assert all(size - (b - a) >= overlap for a, b in zip(starts, starts[1:]))  # at least the overlap
    w = tiling.ramp(8, 4, True, False)
    assert w[0] > 0 and w[-1] == 1 and np.all(np.diff(w) >= 0)
    x = np.random.default_rng(0).normal(size=(3, 5, 7)).astype(np.float32)
    for factor in (2, 16):
        expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=factor, mode="bilinear",
                                                   align_corners=False)[0].numpy()
        np.testing.assert_allclose(upsample_bilinear(x, factor), expected, atol=1e-5)


def test_runtime_never_imports_torch(models, scene, tmp_path):
    path, _ = scene
    code = (
        "import sys, json\n"
        "from mpmae_core.runtime.inference.predict import embed, segment\n"
        "import mpmae_core.runtime.__main__\n"
        f"embed({str(path)!r}, {str(models['enc_path'])!r}, {str(tmp_path / 'e.tif')!r}, device='cpu')\n"
        f"segment({str(path)!r}, {str(models['enc_path'])!r}, {str(tmp_path / 's.tif')!r}, "
        f"head_path={str(models['head_path'])!r}, device='cpu')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'qgis'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "e.tif").is_file() and (tmp_path / "s.tif").is_file()


def test_command_line(models, scene, tmp_path):
    path, _ = scene
    out = tmp_path / "cli.tif"
    proc = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "embed", str(path), str(models["enc_path"]),
                           str(out), "--tile", "256", "--overlap", "128", "--device", "cpu"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "100.0%" in proc.stderr and out.is_file()
    bad = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "embed", str(tmp_path / "nope.tif"),
                          str(models["enc_path"]), str(tmp_path / "y.tif")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_reference_pretraining_checkpoint_exports_in_the_sparse_convention(tmp_path):
    from mpmae_core.checkpoints import export_reference_layout

    model = _nontrivial(build_mpmae("atto", "all_mod", share_decoder=True), seed=2)
    ref = tmp_path / "checkpoint-199.pth"
    torch.save({"model": export_reference_layout(model)}, ref)
    out = tmp_path / "ref.onnx"
    proc = subprocess.run([sys.executable, "-m", "training.export", str(ref), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = OnnxModel(out, device="cpu").metadata
    # the semantics the pretraining model was trained in; every stage map is the input over its stride
    assert meta.convention == "sparse" and meta.source.startswith("reference checkpoint")
    wc = tmp_path / "ref_wc.onnx"
    proc = subprocess.run([sys.executable, "-m", "training.export", str(ref), "--head", "esa_worldcover", "--out", str(wc)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert OnnxModel(wc, device="cpu").metadata.class_names[9] == "mangroves"


def test_cuda_request_falls_back_to_cpu_with_a_message(models):
    from mpmae_core.runtime.models.model import cuda_driver_present

    if cuda_driver_present():
        pytest.skip("a CUDA driver is present: no fallback to observe")
    messages = []
    model = OnnxModel(models["enc_path"], device="cuda", log=messages.append)
    assert model.device == "cpu"
    assert messages and "CUDAExecutionProvider is not available" in messages[0]
    assert OnnxModel(models["enc_path"], device="auto", log=messages.append).device == "cpu"


def test_grn_norms_are_exported_as_a_matrix_product_equal_to_torch(tmp_path):
    """GRN's spatial L2 norm is written as sqrt(ones @ x*x) (ONNX Runtime reduces non-trailing axes
    slowly); with GRN weights that are not zero (a fresh model's gamma is) it still equals torch."""
    import onnx

    torch.manual_seed(3)
    enc = build_encoder("atto", patch_size=16).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if ".grn." in name:
                p.add_(torch.randn(p.shape) * 0.5)
    path, _ = export_encoder(enc, tmp_path / "e.onnx", registry.S2_MMEARTH_BANDS,
                             default_normalisation(registry.S2_MMEARTH_BANDS))
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "ReduceL2" not in ops and "ReduceSumSquare" not in ops
    assert ops.count("MatMul") >= 2 * sum(enc.depths) + sum(enc.depths)  # two linears and one norm per block
    x = np.random.default_rng(0).normal(size=(2, 12, 80, 112)).astype(np.float32)
    got = OnnxModel(path, device="cpu").run_outputs(x, ["stage1", "embedding"])
    with torch.no_grad():
        s1, _, _, s4 = enc.forward_stages(torch.from_numpy(x))
    for a, b in zip(got, (s1, s4)):
        assert np.abs(a - b.numpy()).max() / np.abs(b.numpy()).max() < 1e-5
