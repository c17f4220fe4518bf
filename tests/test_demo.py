"""The README's main command, end to end, as a newcomer runs it."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_and_writes_its_outputs(tmp_path):
    # every step, with shorter pretraining (6 epochs, not 30) and 3 evaluation seeds (not 20), so CI keeps time
    env = dict(os.environ, MMEARTH_RUNS=str(tmp_path), MMEARTH_VENV=str(Path(sys.executable).parents[1]),
               MMEARTH_DEMO_EPOCHS="6", MMEARTH_DEMO_SEEDS="3")
    env.pop("QGIS_CUSTOM_CONFIG_PATH", None)  # the demo uses the project's own profile, as for a user
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo")], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp_path / "demo"
    assert "Can feed a 12-band MMEarth Sentinel-2 model: YES" in proc.stdout
    assert "inspect on the product as it comes" in proc.stdout  # the band files, not a hand stack
    rows = (out / "scene_bands.csv").read_text().splitlines()
    assert len(rows) == 14 and rows[0].startswith("band,description")
    assert "can be fed" in (out / "scene_inspect.html").read_text()
    described = (out / "mmearth_sample.txt").read_text()
    assert "72 tiles of 128 px" in described and "train 60, val 6, test 6" in described
    log = (out / "pretrain.log").read_text()
    first, last = map(float, re.search(r"\[pretrain\]\s+sentinel2\s+([-\d.]+) -> ([-\d.]+)", log).groups())
    assert last < first  # the masked reconstruction of the real scene improves
    assert list((out / "pretrain").glob("checkpoint-*.pt"))
    assert (out / "pretrain" / "previews" / "epoch_0006.png").is_file()
    assert (out / "pretrain" / "metrics.csv").read_text().count("\n") > 5
    from osgeo import gdal

    from mpmae_core.data import sample

    emb, scene = gdal.Open(str(out / "scene_embeddings.tif")), gdal.Open(str(sample.stack_path()))
    assert (emb.RasterXSize, emb.RasterYSize, emb.RasterCount) == (96, 48, 320)
    gt, sgt = emb.GetGeoTransform(), scene.GetGeoTransform()
    assert (gt[0], gt[3], gt[1], gt[5]) == (sgt[0], sgt[3], 16 * sgt[1], 16 * sgt[5])
    # the evaluation: both pretrainings, a random encoder and raw spectra, 3 seeds here, report and plots
    report = (out / "evaluation" / "report.md").read_text()
    for rep in ("multi-pretext", "S2-only", "random atto", "raw spectra"):
        assert f"| {rep} |" in report
    assert "paired over 3 seeds" in report
    assert "## Per-pixel few-shot mapping" in report and "| multi-pretext: chosen head |" in report
    assert "| spectra RF |" in report and "paired over 2 seeds" in report
    assert (out / "evaluation" / "classification_shots.png").is_file()
    assert "[evaluate] report" in proc.stdout
    # the few-shot landcover map through qgis_process, its report, its picture, the plugin zip
    classes = gdal.Open(str(out / "scene_landcover.tif"))
    assert classes.GetGeoTransform() == sgt and classes.GetSpatialRef().IsSame(scene.GetSpatialRef())
    band = classes.GetRasterBand(1)
    band.GetNoDataValue()
    assert band.GetCategoryNames()[:5] == ["farm", "forest", "meadow", "residential", "water"]
    assert set(np.unique(band.ReadAsArray())) <= {0, 1, 2, 3, 4, 255}
    assert "Confusion matrix" in (out / "fewshot_head.html").read_text()
    assert "chosen: " in proc.stdout and "random forest" in proc.stdout
    m = band.ReadAsArray()  # a 10 m map: classes change inside 16 px cells, not only on a 160 m grid
    assert (m[:, 1:] != m[:, :-1])[:, np.arange(m.shape[1] - 1) % 16 != 15].mean() > 0.01
    assert (out / "scene_landcover.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "scene_landcover.qml").is_file()
    assert zipfile.is_zipfile(out / "mmearth_qgis.zip")
    # the released-model path: the demo's MP-MAE as a released .pth, served on 127.0.0.1, fetched and converted
    # without torch, used by name in QGIS: the same embeddings as the torch export of the same weights
    assert (out / "models" / "atto_demo_release.onnx").is_file()
    a = gdal.Open(str(out / "scene_embeddings.tif")).ReadAsArray()
    b = gdal.Open(str(out / "scene_embeddings_release.tif")).ReadAsArray()
    assert a.shape == b.shape and np.nanmax(np.abs(a - b)) <= 1e-4 * np.nanmax(np.abs(a))
