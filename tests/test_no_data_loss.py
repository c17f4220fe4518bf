"""Nothing is lost: a full disk, a killed run's leftovers, huge empty rasters."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

from helpers import write_geotiff

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs the test mounts itself (needs root); skipped with the reason otherwise."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", f"mmearth-{uuid.uuid4().hex[:8]}", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _scene(tmp_path, rows=512, cols=512):
    arr = np.random.default_rng(0).integers(500, 4000, (13, rows, cols)).astype("uint16")
    return write_geotiff(tmp_path / "scene.tif", arr, NAMES, nodata=0)


def test_disk_full_keeps_the_previous_file_and_says_so(small_disk, tmp_path, models_dir):
    scene = _scene(tmp_path)
    target = small_disk / "o.tif"
    previous = b"the previous, complete output" * 100
    target.write_bytes(previous)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "embed", str(scene),
                           str(models_dir / "atto_test.onnx"), str(target), "--tile", "256", "--overlap", "0"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "no space left" in proc.stderr and "Traceback" not in proc.stderr
    assert "wrote" not in proc.stderr
    assert target.read_bytes() == previous
    assert sorted(p.name for p in small_disk.iterdir()) == ["o.tif"]
    # the same through the real qgis_process
    profile = tmp_path / "profile"
    qp = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "run", "mmearth:embed", "--",
                         f"INPUT={scene}", f"MODEL={models_dir / 'atto_test.onnx'}", f"OUTPUT={target}"],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, QGIS_CUSTOM_CONFIG_PATH=str(profile), MMEARTH_VENV=sys.prefix))
    assert qp.returncode != 0 and "no space left" in qp.stderr and "Traceback" not in qp.stderr
    assert target.read_bytes() == previous
    assert sorted(p.name for p in small_disk.iterdir()) == ["o.tif"]


def test_a_python_write_on_a_full_disk_leaves_nothing(small_disk):
    from mpmae_core.runtime.io.files import atomic_write_text

    (small_disk / "report.html").write_text("old report")
    with pytest.raises(OSError):
        atomic_write_text(small_disk / "report.html", "x" * 400_000)
    assert (small_disk / "report.html").read_text() == "old report"
    assert sorted(p.name for p in small_disk.iterdir()) == ["report.html"]


def test_orphaned_partial_of_a_killed_run_is_removed(tmp_path, models_dir):
    from mpmae_core.runtime.inference.predict import embed

    scene = _scene(tmp_path, 128, 128)
    out = tmp_path / "out"
    out.mkdir()
    dead = out / ".o.tif.999999999-abc123.partial.tif"  # no process has this pid
    dead.write_bytes(b"half a file")
    (out / ".o.tif.999999999-abc123.partial.tif.aux.xml").write_text("<PAMDataset/>")
    alive = out / f".o.tif.{os.getpid()}-zzz.partial.tif"  # a run in progress: left alone
    alive.write_bytes(b"someone is writing")
    embed(scene, models_dir / "atto_test.onnx", out / "o.tif", device="cpu")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["o.tif", "o.qml", alive.name])


def test_huge_mostly_empty_vrt_runs_only_where_data_is(tmp_path, models_dir):
    """A 40,000 x 40,000 px VRT with data in one 256 px corner: the tiles run follow the data."""
    from mpmae_core.runtime.inference.predict import embed

    corner = _scene(tmp_path, 256, 256)
    src = gdal.Open(str(corner))
    vrt = tmp_path / "huge.vrt"
    drv = gdal.GetDriverByName("VRT")
    ds = drv.Create(str(vrt), 40000, 40000, 0)
    ds.SetGeoTransform(src.GetGeoTransform())
    ds.SetProjection(src.GetProjection())
    for i in range(1, 14):
        ds.AddBand(gdal.GDT_UInt16)
        band = ds.GetRasterBand(i)
        band.SetDescription(NAMES[i - 1])
        band.SetNoDataValue(0)
        band.SetMetadataItem("source_0", f"""<SimpleSource><SourceFilename relativeToVRT="0">{corner}</SourceFilename>
<SourceBand>{i}</SourceBand><SrcRect xOff="0" yOff="0" xSize="256" ySize="256"/>
<DstRect xOff="0" yOff="0" xSize="256" ySize="256"/></SimpleSource>""", "new_vrt_sources")
    ds = None
    res = embed(vrt, models_dir / "atto_test.onnx", tmp_path / "emb.tif", device="cpu")
    from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, raster_windows

    n = sum(len(r) for r in raster_windows(40000, 40000, DEFAULT_TILE, DEFAULT_OVERLAP, 16))
    assert res["tiles"] == n > 1000 and res["run"] <= 4 and res["skipped"] == res["tiles"] - res["run"]
    out = gdal.Open(str(tmp_path / "emb.tif"))
    assert (out.RasterXSize, out.RasterYSize) == (2500, 2500)
    corner_emb = out.GetRasterBand(1).ReadAsArray(0, 0, 16, 16)
    assert np.isfinite(corner_emb).all()
    assert np.isnan(out.GetRasterBand(1).ReadAsArray(1000, 1000, 16, 16)).all()
    # empty blocks are not written: the file is small although it is 2500 x 2500 x 320
    assert (tmp_path / "emb.tif").stat().st_size < 20_000_000


def test_a_streaming_writer_writes_the_same_file_and_keeps_gdals_cache_flat(tmp_path):
    """Issue 26: a writer with ``stream_rows`` stages rows until a block row is complete, writes it
    and flushes it, so GDAL's cache does not fill with unfinished blocks as the raster grows; the
    file is the same as one written directly, also when rows come out of order."""
    from mpmae_core.runtime.inference.raster import RasterWriter

    rng = np.random.default_rng(0)
    h, w, bands = 203, 300, 40
    data = rng.normal(size=(bands, h, w)).astype(np.float32)
    valid = rng.random((h, w)) > 0.1
    data[:, ~valid] = np.nan
    data[:, 64:96] = np.nan  # a block row without data: not written at all
    valid[64:96] = False
    gt = (0, 10, 0, 0, 0, -10)
    cuts = np.sort(rng.choice(np.arange(1, h), 14, replace=False))
    spans = list(zip(np.r_[0, cuts], np.r_[cuts, h]))
    order = {"in order": spans, "out of order": spans[:5] + spans[7:9] + spans[5:7] + spans[9:]}
    direct = RasterWriter(tmp_path / "direct.tif", w, h, bands, "float32", gt, "", nodata=float("nan"), block_rows=32)
    for y0, y1 in spans:
        direct.write_rows(int(y0), data[:, y0:y1], valid[y0:y1])
    direct.close()
    want = gdal.Open(str(tmp_path / "direct.tif")).ReadAsArray()
    old = gdal.GetCacheMax()
    try:
        gdal.SetCacheMax(256 * 2 ** 20)
        for name, seq in order.items():
            out = tmp_path / f"{name.replace(' ', '_')}.tif"
            writer = RasterWriter(out, w, h, bands, "float32", gt, "", nodata=float("nan"), stream_rows=32)
            used = []
            for y0, y1 in seq:
                writer.write_rows(int(y0), data[:, y0:y1], valid[y0:y1])
                used.append(gdal.GetCacheUsed())
            writer.close()
            np.testing.assert_array_equal(gdal.Open(str(out)).ReadAsArray(), want)
            if name == "in order":  # written blocks leave the cache band by band: far below one block row
                assert max(used) <= 2 * 256 * 32 * 4 + 2 ** 20 < bands * 2 * 256 * 32 * 4, max(used)
    finally:
        gdal.SetCacheMax(old)
