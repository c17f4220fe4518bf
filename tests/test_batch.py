"""The batch command on a real Dask LocalCluster of 2 worker processes: copies of the embedded
scene and a corrupt one; outputs equal the single-process runtime's, a corrupt scene is reported
and the others complete, a worker killed mid-run is recovered from, a re-run does nothing, a
changed scene is redone, the mosaic opens with the right extent; STAC items and huge scenes split
into row blocks."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal

pytest.importorskip("distributed")

from mpmae_core.runtime import batch as B  # noqa: E402
from mpmae_core.runtime.inference.predict import embed, segment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    from distributed import Client, LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40)
    client = Client(c)
    yield client
    client.close()
    c.close()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Four scenes cut from the embedded scene (different places), and a corrupt one."""
    from mpmae_core.data import sample

    d = tmp_path_factory.mktemp("scenes")
    stack = str(sample.build(verbose=False)["stack"])
    for i, (x, y) in enumerate([(0, 0), (512, 0), (0, 384), (1024, 384)]):
        gdal.Translate(str(d / f"scene{i}.tif"), stack, srcWin=[x, y, 512, 384])
    bad = d / "scene_corrupt.tif"  # a tiled, compressed copy with one damaged block, as a broken download has
    gdal.Translate(str(bad), str(d / "scene0.tif"), creationOptions=["TILED=YES", "COMPRESS=DEFLATE"])
    ds = gdal.Open(str(bad))
    offset = int(ds.GetRasterBand(2).GetMetadataItem("BLOCK_OFFSET_1_1", "TIFF"))
    size = int(ds.GetRasterBand(2).GetMetadataItem("BLOCK_SIZE_1_1", "TIFF"))
    ds = None
    with open(bad, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))
    return d


def _job_kw():
    return dict(options={"tile": 256, "overlap": 64}, device="cpu")


def test_every_good_scene_equals_the_single_process_runtime_and_a_corrupt_one_is_reported(
        cluster, scenes, models_dir, tmp_path):
    model = str(models_dir / "atto_test.onnx")
    out = tmp_path / "out"
    report = B.run_batch("embed", str(scenes / "scene*.tif"), model, out, client=cluster, rows_per_block=1,
                         **_job_kw())
    assert sorted(d["scene"] for d in report.done) == ["scene0", "scene1", "scene2", "scene3"]
    assert [f["scene"] for f in report.failed] == ["scene_corrupt"]
    assert "could not read" in report.failed[0]["reason"] or "damaged" in report.failed[0]["reason"]
    for i in range(4):
        single = tmp_path / f"single{i}.tif"
        embed(scenes / f"scene{i}.tif", model, single, device="cpu", tile=256, overlap=64)
        a = gdal.Open(str(out / f"scene{i}_embeddings.tif")).ReadAsArray()
        b = gdal.Open(str(single)).ReadAsArray()
        np.testing.assert_array_equal(np.nan_to_num(a, nan=-9), np.nan_to_num(b, nan=-9))
        manifest = json.loads((out / f"scene{i}_embeddings.tif.json").read_text())
        assert manifest["model"]["sha256"] and manifest["inputs"][0]["bytes"] > 0
    data = json.loads((out / "batch_report.json").read_text())
    assert len(data["done"]) == 4 and data["failed"][0]["scene"] == "scene_corrupt"
    # the mosaic: every scene, the right extent
    mosaic = gdal.Open(report.mosaics[0])
    src = gdal.Open(str(scenes / "scene0.tif")).GetGeoTransform()
    gt = mosaic.GetGeoTransform()
    assert (gt[0], gt[3]) == (src[0], src[3]) and mosaic.RasterXSize * gt[1] == 1536 * 10
    assert mosaic.RasterYSize * -gt[5] == 768 * 10 and mosaic.RasterCount == 320
    assert not (out / "_blocks").exists()  # no block file left behind
    # a re-run does nothing; a changed scene is redone
    again = B.run_batch("embed", str(scenes / "scene[0-3].tif"), model, out, client=cluster, rows_per_block=1,
                        **_job_kw())
    assert again.done == [] and len(again.skipped) == 4
    before = (out / "scene2_embeddings.tif").stat().st_mtime_ns
    time.sleep(0.01)
    ds = gdal.Open(str(scenes / "scene2.tif"), gdal.GA_Update)
    arr = ds.GetRasterBand(3).ReadAsArray()
    arr[:50, :50] = arr[:50, :50] // 2 + 1
    ds.GetRasterBand(3).WriteArray(arr)
    ds = None
    third = B.run_batch("embed", str(scenes / "scene[0-3].tif"), model, out, client=cluster, rows_per_block=1,
                        **_job_kw())
    assert [d["scene"] for d in third.done] == ["scene2"] and len(third.skipped) == 3
    assert (out / "scene2_embeddings.tif").stat().st_mtime_ns > before


def test_a_worker_killed_mid_run_loses_no_scene_and_writes_none_twice(scenes, models_dir, tmp_path):
    from distributed import Client, LocalCluster

    model = str(models_dir / "atto_test.onnx")
    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50)
    client = Client(c)
    try:
        pids = client.run(os.getpid)  # worker address -> pid
        victim = next(iter(pids.values()))

        import threading

        def kill_soon():
            time.sleep(3.0)
            os.kill(victim, 9)

        threading.Thread(target=kill_soon, daemon=True).start()
        out = tmp_path / "out"
        report = B.run_batch("embed", str(scenes / "scene[0-3].tif"), model, out, client=client, rows_per_block=1,
                             **_job_kw())
    finally:
        client.close()
        c.close()
    assert sorted(d["scene"] for d in report.done) == ["scene0", "scene1", "scene2", "scene3"], report.failed
    assert all(d["written"] for d in report.done)  # each scene committed exactly once
    with pytest.raises(ProcessLookupError):
        os.kill(victim, 0)  # the worker really died
    for i in range(4):
        single = tmp_path / f"single{i}.tif"
        embed(scenes / f"scene{i}.tif", model, single, device="cpu", tile=256, overlap=64)
        np.testing.assert_array_equal(
            np.nan_to_num(gdal.Open(str(out / f"scene{i}_embeddings.tif")).ReadAsArray(), nan=-9),
            np.nan_to_num(gdal.Open(str(single)).ReadAsArray(), nan=-9))
    assert not list(out.glob("*.partial*"))


def test_segment_batch_from_a_list_and_stac_items(cluster, scenes, models_dir, tmp_path):
    model, head = str(models_dir / "atto_test.onnx"), str(models_dir / "head3.onnx")
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"{scenes / 'scene1.tif'}\n# a comment\n{scenes / 'scene3.tif'}\n")
    report = B.run_batch("segment", str(listing), model, tmp_path / "seg", head=head, client=cluster, **_job_kw())
    assert sorted(d["scene"] for d in report.done) == ["scene1", "scene3"]
    single = tmp_path / "single.tif"
    segment(scenes / "scene1.tif", model, single, head_path=head, device="cpu", tile=256, overlap=64)
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "seg" / "scene1_classes.tif")).ReadAsArray(),
                                  gdal.Open(str(single)).ReadAsArray())
    assert (tmp_path / "seg" / "scene1_classes.qml").is_file()
    # a STAC ItemCollection whose assets are single-band files, 20 m bands at 20 m
    items = []
    src = gdal.Open(str(scenes / "scene1.tif"))
    names = [src.GetRasterBand(i + 1).GetDescription() for i in range(src.RasterCount)]
    assets_dir = tmp_path / "assets"
    assets_dir.mkdir()
    assets = {}
    for i, name in enumerate(names):
        f = assets_dir / f"{name}.tif"
        res = 20 if name in ("B05", "B06", "B07", "B8A", "B11", "B12") else 10
        gdal.Translate(str(f), src, bandList=[i + 1], xRes=res, yRes=res, resampleAlg="nearest")
        assets[name] = {"href": f"assets/{name}.tif", "eo:bands": [{"name": name}]}
    items.append({"type": "Feature", "stac_version": "1.0.0", "id": "S2_item_1", "assets": assets,
                  "geometry": None, "properties": {}})
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    report = B.run_batch("segment", str(coll), model, tmp_path / "stac", head=head, client=cluster, **_job_kw())
    assert [d["scene"] for d in report.done] == ["S2_item_1"], report.failed
    out = gdal.Open(str(tmp_path / "stac" / "S2_item_1_classes.tif"))
    assert (out.RasterXSize, out.RasterYSize) == (512, 384) and out.GetGeoTransform() == src.GetGeoTransform()


def test_command_line_batch(scenes, models_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "batch", "embed", str(scenes / "scene[01].tif"),
                           str(models_dir / "atto_test.onnx"), str(tmp_path / "out"), "--workers", "2", "--tile", "256",
                           "--overlap", "64", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 done, 0 skipped" in proc.stdout and "100.0%" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "batch", "embed", str(tmp_path / "none*.tif"),
                          str(models_dir / "atto_test.onnx"), str(tmp_path / "out2")], capture_output=True, text=True,
                         cwd=ROOT)
    assert bad.returncode != 0 and "matches no file" in bad.stderr and "Traceback" not in bad.stderr
    mixed = subprocess.run([sys.executable, "-m", "mpmae_core.runtime", "batch", "embed", str(scenes / "scene*.tif"),
                            str(models_dir / "atto_test.onnx"), str(tmp_path / "out"), "--tile", "256", "--overlap",
                            "64", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert mixed.returncode == 3 and "failed: scene_corrupt" in mixed.stdout


def test_row_blocks_of_a_scene_put_together_equal_the_whole(models_dir, scenes, tmp_path):
    model = str(models_dir / "atto_test.onnx")
    whole = tmp_path / "whole.tif"
    res = segment(scenes / "scene0.tif", model, whole, head_path=str(models_dir / "head3.onnx"), device="cpu",
                  tile=128, overlap=32)
    n = res["tile_rows"]
    parts = []
    for a in range(0, n, 2):
        p = tmp_path / f"part{a}.tif"
        segment(scenes / "scene0.tif", model, p, head_path=str(models_dir / "head3.onnx"), device="cpu", tile=128,
                overlap=32, block=(a, min(a + 2, n)))
        parts.append(gdal.Open(str(p)).ReadAsArray())
    np.testing.assert_array_equal(np.concatenate(parts, axis=0), gdal.Open(str(whole)).ReadAsArray())


def test_hostile_inputs_each_fail_alone_in_one_line(scenes, models_dir, tmp_path):
    """The output folder inside the input glob, a scene listed three times (also with an inline
    comment), a scene without band names, a STAC collection with one item whose files are missing and
    one that is not an object: each gets one line (scene, reason, fix), no traceback, no retry, and
    the good scenes are done once."""
    from helpers import write_geotiff

    work = tmp_path / "w"
    work.mkdir()
    for i in (0, 1):
        shutil.copy(scenes / f"scene{i}.tif", work / f"scene{i}.tif")
    arr = gdal.Open(str(scenes / "scene0.tif")).ReadAsArray()
    write_geotiff(work / "unnamed.tif", arr[:, :128, :128], None, nodata=0)
    model = str(models_dir / "atto_test.onnx")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "mpmae_core.runtime", "batch", "embed", str(work / "**" / "*.tif"), model,
           str(work / "out"), "--workers", "1", "--tile", "256", "--overlap", "64", "--device", "cpu"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    text = first.stdout + first.stderr
    assert first.returncode == 3 and "Traceback" not in text and "Compute Failed" not in text, text[-3000:]
    assert "2 done, 0 skipped" in first.stdout and "failed: unnamed: " in first.stdout and "--band-map" in first.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)  # outputs now inside the glob
    assert again.returncode == 3 and "0 done, 2 skipped" in again.stdout, again.stdout + again.stderr[-2000:]
    assert "left out" in again.stderr and "inside the output folder" in again.stderr
    # one scene listed three times: run once, with a note
    listing = tmp_path / "list.txt"
    listing.write_text(f"{work / 'scene0.tif'}   # the first\n{work / 'scene0.tif'}\n# only a comment\n"
                       f"{work / '.' / 'scene0.tif'}\n")
    logs = []
    report = B.run_batch("embed", str(listing), model, tmp_path / "dup", workers=1, log=logs.append, **_job_kw())
    assert [d["scene"] for d in report.done] == ["scene0"] and not report.failed
    assert any("listed more than once" in m and "scene0.tif (3 times)" in m for m in logs), logs
    mosaic = gdal.Open(report.mosaics[0])
    assert (mosaic.RasterXSize, mosaic.RasterYSize) == (32, 24)  # one scene, once (patch stride)
    # STAC: a good item, an item whose files are missing, and an entry that is not an object
    src = gdal.Open(str(work / "scene1.tif"))
    names = [src.GetRasterBand(i + 1).GetDescription() for i in range(src.RasterCount)]
    assets_dir = tmp_path / "assets"
    assets_dir.mkdir()
    good = {}
    for i, name in enumerate(names):
        gdal.Translate(str(assets_dir / f"{name}.tif"), src, bandList=[i + 1])
        good[name] = {"href": f"assets/{name}.tif"}
    missing = {n: {"href": f"gone/{n}.tif"} for n in names}
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "ok", "assets": good}, {"type": "Feature", "id": "nofiles", "assets": missing},
        ["not", "an", "item"]]}))
    report = B.run_batch("embed", str(coll), model, tmp_path / "stac", workers=1, **_job_kw())
    assert [d["scene"] for d in report.done] == ["ok"]
    reasons = {f["scene"]: f["reason"] for f in report.failed}
    assert set(reasons) == {"nofiles", "item2"} and "does not exist" in reasons["nofiles"]
    assert "not a JSON object" in reasons["item2"]
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    with pytest.raises(B.BatchError, match="holds a JSON list, not a STAC"):
        B.expand_inputs(str(tmp_path / "list.json"), tmp_path / "x")


def test_a_tessera_tiles_scales_file_is_part_of_its_tile_not_a_scene(tmp_path):
    """'tiles/*.npy' names each tile's values and scales files: one scene per tile, said."""
    d = tmp_path / "tiles"
    d.mkdir()
    for stem in ("grid_0.05_51.05", "grid_0.15_51.05"):
        np.save(d / f"{stem}.npy", np.zeros((4, 4, 128), np.int8))
        np.save(d / f"{stem}_scales.npy", np.ones((4, 4), np.float32))
    notes = []
    scenes = B.expand_inputs(str(d / "*.npy"), tmp_path / "w", log=notes.append)
    assert [(s.id, Path(s.source).name) for s in scenes] == [("grid_0.05_51.05", "grid_0.05_51.05.npy"),
                                                           ("grid_0.15_51.05", "grid_0.15_51.05.npy")]
    assert any("2 TESSERA scales file(s) taken as part of their tile" in n for n in notes), notes
    only = B.expand_inputs(str(d / "grid_0.15_51.05_scales.npy"), tmp_path / "w")  # alone: it names its tile
    assert [Path(s.source).name for s in only] == ["grid_0.15_51.05.npy"]


def test_a_replaced_scene_with_the_same_size_and_time_is_redone(cluster, scenes, models_dir, tmp_path):
    model = str(models_dir / "atto_test.onnx")
    work = tmp_path / "w"
    work.mkdir()
    shutil.copy(scenes / "scene0.tif", work / "a.tif")
    out = tmp_path / "out"
    B.run_batch("embed", str(work / "a.tif"), model, out, client=cluster, **_job_kw())
    st = os.stat(work / "a.tif")
    other = gdal.Translate(str(tmp_path / "other.tif"), str(scenes / "scene1.tif"))
    other = None
    data = (tmp_path / "other.tif").read_bytes()
    assert len(data) == st.st_size  # same layout, other pixels
    (work / "a.tif").write_bytes(data)
    os.utime(work / "a.tif", ns=(st.st_atime_ns, st.st_mtime_ns))
    again = B.run_batch("embed", str(work / "a.tif"), model, out, client=cluster, **_job_kw())
    assert [d["scene"] for d in again.done] == ["a"] and not again.skipped
    single = tmp_path / "single.tif"
    embed(tmp_path / "other.tif", model, single, device="cpu", tile=256, overlap=64)
    np.testing.assert_array_equal(np.nan_to_num(gdal.Open(str(out / "a_embeddings.tif")).ReadAsArray(), nan=-9),
                                  np.nan_to_num(gdal.Open(str(single)).ReadAsArray(), nan=-9))


def test_list_lines_take_comments():
    assert B.list_line("  a/b.tif   # note") == "a/b.tif"
    assert B.list_line("# whole line") == ""
    assert B.list_line("c#d.tif") == "c#d.tif"  # a '#' inside a name is kept


def test_a_glob_of_products_and_rasters_cut_to_an_area_of_interest(cluster, scenes, models_dir, tmp_path):
    """A SAFE zip beside cut scenes: the zip is read as its stack, a scene the area does not reach is
    listed apart (not failed, not run), a truncated zip fails alone, and each output equals the
    single-process runtime's with the same area."""

    from mpmae_core.data import sample
    from test_products import make_safe, zip_folder

    work = tmp_path / "in"
    work.mkdir()
    for i in (0, 1):
        shutil.copy(scenes / f"scene{i}.tif", work / f"scene{i}.tif")
    safe = make_safe(tmp_path / "p", sample.scene_dir() / "IMG_DATA")
    z = zip_folder(safe, work / (safe.stem + ".zip"))
    (work / "broken.zip").write_bytes(z.read_bytes()[:5000])
    gt = gdal.Open(str(scenes / "scene0.tif")).GetGeoTransform()
    aoi = f"{gt[0] + 1000},{gt[3] - 2000},{gt[0] + 3000},{gt[3] - 1000}"  # pixels 100..300 x 100..200 of scene 0
    model = str(models_dir / "atto_test.onnx")
    logs = []
    report = B.run_batch("embed", str(work / "*"), model, tmp_path / "out", client=cluster, log=logs.append,
                         options={"tile": 256, "overlap": 64, "aoi": aoi}, device="cpu")
    assert sorted(d["scene"] for d in report.done) == sorted(["scene0", safe.stem])
    assert [o["scene"] for o in report.outside] == ["scene1"] and "1 outside the area of interest" in report.text()
    assert len(report.failed) == 1 and "not a readable zip" in report.failed[0]["reason"]
    for d in report.done:
        src = z if d["scene"] == safe.stem else work / "scene0.tif"
        want = embed(src, model, tmp_path / f"{d['scene']}_single.tif", tile=256, overlap=64, device="cpu", aoi=aoi)
        a, b = gdal.Open(d["output"]), gdal.Open(want["output"])
        assert a.GetGeoTransform() == b.GetGeoTransform() and (a.RasterXSize, a.RasterYSize) == (13, 7)
        np.testing.assert_allclose(a.ReadAsArray(), b.ReadAsArray(), atol=1e-5)


@pytest.mark.slow
def test_a_series_is_mapped_in_row_blocks_across_the_workers_as_in_one_process(cluster, models_dir, tmp_path):
    """batch segment --series: the dates of one place are one scene, its tile rows shared among the
    workers; the map equals segment's on the series, and a re-run skips it."""
    from helpers import series_dates

    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.io.labels import read_label_file

    paths, clouds, _ = series_dates(tmp_path / "dates", window=(0, 0, 512, 384))
    model = str(models_dir / "atto_test.onnx")
    from mpmae_core.data import sample

    from helpers import point_labels

    osm = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()[:384, :512]
    common = [int(v) for v in np.argsort(np.bincount(osm.ravel(), minlength=9)[1:])[::-1][:2] + 1]
    rng = np.random.default_rng(0)
    points = []
    for k in common:
        rows, cols = np.nonzero((osm == k) & ~clouds.any(0))
        points += [(int(rows[i]), int(cols[i]), sample.OSM_CLASSES[k - 1]) for i in rng.choice(len(rows), 5, False)]
    ref = gdal.Open(str(paths[0]))
    point_labels(tmp_path / "l.gpkg", points, ref.GetProjection(), ref.GetGeoTransform())
    feats, names, _, _ = read_label_file(tmp_path / "l.gpkg", "landuse", ref.GetProjection())
    series = [str(p) for p in paths]
    head = str(tmp_path / "h.onnx")
    train_pixel_head(series, model, feats, names, head, device="cpu", classifiers=["logistic"],
                     feature_sets=["t-spectra"], tile=256, overlap=64)
    glob = str(tmp_path / "dates" / "S2A_*.tif")
    opts = {"tile": 256, "overlap": 64, "series": True, "reference": 0, "min_valid": 1, "dates": None}
    report = B.run_batch("segment", glob, model, tmp_path / "out", head=head, client=cluster, options=dict(opts),
                         device="cpu", rows_per_block=1)
    assert len(report.done) == 1, report.failed
    out = tmp_path / "out" / report.done[0]["output"].split("/")[-1]
    single = segment(series, model, tmp_path / "one.tif", head_path=head, device="cpu", tile=256, overlap=64)
    np.testing.assert_array_equal(gdal.Open(str(out)).ReadAsArray(), gdal.Open(single["output"]).ReadAsArray())
    again = B.run_batch("segment", glob, model, tmp_path / "out", head=head, client=cluster, options=dict(opts),
                        device="cpu", rows_per_block=1)
    assert len(again.skipped) == 1 and not again.done
    with pytest.raises(B.BatchError, match="batch segment --series"):
        B.run_batch("embed", glob, model, tmp_path / "emb", client=cluster, options=dict(opts), device="cpu")
