"""training.finetune: an encoder and a per-pixel head fine-tuned on labelled pixels, resumed
exactly after an interruption, exported as an ONNX segmenter that the torch-free runtime runs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal, ogr, osr

from mpmae_core import registry
from mpmae_core.checkpoints import save_checkpoint
from mpmae_core.data import sample
from mpmae_core.finetune import FinetuneConfig, PixelSegmenter, augment, class_weights, draw_crops, finetune
from mpmae_core.models import build_encoder
from mpmae_core.runtime.models.metadata import ModelMetadata, default_normalisation
from mpmae_core.runtime.inference.raster import prepare_input

ROOT = Path(__file__).resolve().parents[1]
BANDS = list(registry.S2_MMEARTH_BANDS)


@pytest.fixture(scope="module")
def crop(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    stack = gdal.Open(str(sample.build(verbose=False)["stack"]))
    path = d / "crop.tif"
    gdal.Translate(str(path), stack, srcWin=[256, 128, 384, 256])
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()[128:384, 256:640]
    return path, lab


def _labelled(lab, per_class=6, classes=(1, 2, 3)):
    rng = np.random.default_rng(0)
    rows, cols, y = [], [], []
    for i, v in enumerate(classes):
        r, c = np.nonzero(lab == v)
        pick = rng.choice(len(r), per_class, replace=False)
        rows += r[pick].tolist()
        cols += c[pick].tolist()
        y += [i] * per_class
    return np.array(rows), np.array(cols), np.array(y)


def _prep(path):
    meta = ModelMetadata(kind="encoder", input_bands=BANDS, normalisation=default_normalisation(BANDS))
    return prepare_input(str(path), meta)


def test_the_head_is_one_linear_layer_on_the_upsampled_hypercolumn():
    torch.manual_seed(0)
    seg = PixelSegmenter(build_encoder("atto", patch_size=16).eval(), 4, hidden=8).eval()
    x = torch.randn(1, 12, 64, 48)
    with torch.no_grad():
        maps = seg.encoder.forward_stages(x)
        ups = [torch.nn.functional.interpolate(n(m), size=(64, 48), mode="bilinear", align_corners=False)
               for m, n in zip(maps, seg.norms)]
        joined = torch.cat([x] + ups, 1)  # the hypercolumn, built explicitly
        weight = torch.cat([seg.spectra.weight] + [lat.weight for lat in seg.lateral], 1)
        z = torch.nn.functional.conv2d(joined, weight, seg.spectra.bias)
        expected = seg.classifier(torch.nn.functional.gelu(z))
        np.testing.assert_allclose(seg(x).numpy(), expected.numpy(), atol=1e-5)


def test_pure_pieces():
    assert class_weights(np.array([10, 30, 0])).tolist() == [2.0, 2.0 / 3.0, 0.0]
    rng = np.random.default_rng(0)
    rows, cols, y = np.array([5, 50, 90]), np.array([7, 60, 99]), np.array([0, 1, 1])
    for y0, x0 in draw_crops(rng, rows, cols, y, 50, 32, 100, 100):
        assert any(y0 <= r < y0 + 32 and x0 <= c < x0 + 32 for r, c in zip(rows, cols))
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    lab = x[0].astype(int)
    for k in range(4):
        for flip in (False, True):
            xa, la = augment(x, lab, k, flip)
            np.testing.assert_array_equal(xa[0].astype(int), la)  # image and labels move together


def test_interrupted_finetuning_resumes_to_the_same_weights(crop, tmp_path):
    path, lab = crop
    prep = _prep(path)
    rows, cols, y = _labelled(lab)
    cfg = FinetuneConfig(steps=8, batch_size=2, crop=64, save_every=4, seed=3)

    def run(out, stop_at=None):
        torch.manual_seed(0)
        enc = build_encoder("atto", patch_size=16)

        def progress(f):
            if stop_at is not None and round(f * cfg.steps) == stop_at:
                raise KeyboardInterrupt

        return finetune(enc, prep, rows, cols, y, ["a", "b", "c"], cfg, out, log=lambda m: None, progress=progress)

    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", stop_at=6)
    logs = []
    torch.manual_seed(0)
    resumed = finetune(build_encoder("atto", patch_size=16), prep, rows, cols, y, ["a", "b", "c"], cfg,
                       tmp_path / "cut", log=logs.append)
    assert any("resuming" in m and "step 4" in m for m in logs)
    for (name, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="another model or other labels"):
        finetune(build_encoder("atto", patch_size=16), prep, rows, cols, y[::-1].copy(), ["a", "b", "c"], cfg,
                 tmp_path / "cut", log=lambda m: None)


def test_finetune_command_exports_a_segmenter_the_runtime_runs(crop, tmp_path):
    path, lab = crop
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "enc.pt", build_encoder("atto", patch_size=16))
    gt = gdal.Open(str(path)).GetGeoTransform()
    gpkg = tmp_path / "pts.gpkg"
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    layer = ds.CreateLayer("labels", srs=osr.SpatialReference(wkt=gdal.Open(str(path)).GetProjection()),
                           geom_type=ogr.wkbPoint)
    layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
    rows, cols, y = _labelled(lab)
    for r, c, k in zip(rows, cols, y):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetField("landuse", ["water", "forest", "farm"][k])
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
        f.SetGeometry(g)
        layer.CreateFeature(f)
    ds = None
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "training.finetune", "--image", str(path), "--labels", str(gpkg),
                           "--class-field", "landuse", "--encoder", str(ckpt), "--steps", "6", "--batch-size", "2",
                           "--crop", "64", "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "finetune.json").read_text())
    assert info["classes"] == ["farm", "forest", "water"] and info["steps"] == 6
    code = (
        "import sys, json\n"
        "from mpmae_core.runtime.inference.predict import segment\n"
        f"r = segment({str(path)!r}, {str(out / 'segmenter.onnx')!r}, {str(tmp_path / 'map.tif')!r}, device='cpu')\n"
        "print(json.dumps([r['classes'], sorted(m for m in sys.modules if m.split('.')[0] == 'torch')]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    classes, torch_modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert classes == ["farm", "forest", "water"] and torch_modules == []
    m = gdal.Open(str(tmp_path / "map.tif")).ReadAsArray()
    assert m.shape == lab.shape and set(np.unique(m)) <= {0, 1, 2, 255}
    bad = subprocess.run([sys.executable, "-m", "training.finetune", "--image", str(path), "--labels", str(gpkg),
                          "--encoder", str(ckpt), "--out", str(tmp_path / "bad")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and "--class-field" in bad.stderr and "Traceback" not in bad.stderr
