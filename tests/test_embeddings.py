"""Other models' embeddings as files come from them: an AlphaEarth int8 COG-like GeoTIFF and a
GeoTessera tile (.npy, _scales.npy and its landmask GeoTIFF), written here in their documented
formats with a class structure in them; the de-quantisation checked against the documented
formulas computed by hand, no data included; hostile .npy bytes fail in words."""

import math
import random

import numpy as np
import pytest
from osgeo import gdal, osr

from mpmae_core import registry
from mpmae_core.runtime.inference.embedding_sources import EmbeddingRaster
from mpmae_core.runtime.io import embeddings as E


def _utm():
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    return srs.ExportToWkt()


def _classes(h, w, dims, seed=0):
    """Unit vectors of two classes (left and right half) with noise: (h, w, dims) float."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=dims), rng.normal(size=dims)
    v = np.where((np.arange(w) < w // 2)[None, :, None], a, b) + 0.3 * rng.normal(size=(h, w, dims))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_alphaearth_dequantisation_is_the_documented_formula():
    stored = np.array([-128, -127, -64, -1, 0, 1, 64, 127], np.int8)
    want = [math.nan] + [math.copysign((abs(v) / 127.5) ** 2, v) if v else 0.0 for v in (-127, -64, -1, 0, 1, 64, 127)]
    got = E.dequantise_alphaearth(stored)
    assert math.isnan(got[0])
    np.testing.assert_allclose(got[1:], want[1:], rtol=1e-6)
    assert got[-1] == pytest.approx(0.9921722414, rel=1e-6)  # (127 / 127.5) ** 2 = (254 / 255) ** 2


def test_scaled_dequantisation_and_its_no_data():
    q = np.array([[[1, -2], [3, 4]]], np.int8)  # 1 x 2 pixels x 2 bands
    s = np.array([[0.5, 0.0]], np.float32)
    got = E.dequantise_scaled(q, s)
    np.testing.assert_array_equal(got[0, 0], [0.5, -1.0])
    assert np.isnan(got[0, 1]).all()  # a scale of 0: no data
    with pytest.raises(E.EmbeddingError, match="one per pixel"):
        E.dequantise_scaled(q, np.ones((3, 3), np.float32))


@pytest.fixture(scope="module")
def alphaearth(tmp_path_factory):
    """A 64-band int8 GeoTIFF as the AlphaEarth COGs are (A00..A63, -128 no data), two classes."""
    d = tmp_path_factory.mktemp("aef")
    h, w = 40, 60
    v = _classes(h, w, 64)
    stored = np.clip(np.round(np.sign(v) * np.sqrt(np.abs(v)) * 127.5), -127, 127).astype(np.int8)
    stored[:5, :5] = -128
    path = d / "xojgayo1cxc1vo6gf-0000000000-0000000000.tiff"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), w, h, 64, gdal.GDT_Byte, ["PIXELTYPE=SIGNEDBYTE",
                                                                                   "COMPRESS=DEFLATE"])
    ds.SetGeoTransform([384420.0, 10, 0, 3952180.0, 0, -10])
    ds.SetProjection(_utm())
    for i in range(64):
        band = ds.GetRasterBand(i + 1)
        band.SetDescription(f"A{i:02d}")
        band.SetNoDataValue(-128)
        band.WriteArray(stored[:, :, i].view(np.uint8))
    ds = None
    return path, stored


def test_an_alphaearth_file_is_recognised_and_read_as_unit_vectors(alphaearth):
    path, stored = alphaearth
    r = EmbeddingRaster(path)
    assert r.spec is registry.ALPHAEARTH and r.quantised and r.dims == 64
    emb = r.read(0, 0, 60, 40)
    assert np.isnan(emb[:, :5, :5]).all() and np.isfinite(emb[:, 5:, 5:]).all()
    np.testing.assert_allclose(emb[:, 10, 10], E.dequantise_alphaearth(stored[10, 10]), rtol=1e-6)
    norms = np.linalg.norm(emb[:, 5:, 5:], axis=0)
    assert np.abs(norms - 1).max() < 0.05  # the documented unit length, up to the int8 steps
    left, right = emb[:, 20, 10], emb[:, 20, 50]
    assert float(left @ emb[:, 25, 12]) > float(left @ right)  # the class structure survives


def test_a_tessera_tile_with_its_scales_and_landmask(tmp_path, monkeypatch):
    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    h, w = 30, 50
    v = _classes(h, w, 128, seed=1).astype(np.float32)
    scales = (np.abs(v).max(-1) / 127).astype(np.float32)
    q = np.round(v / scales[..., None]).astype(np.int8)
    scales[0, :3] = 0  # no data
    np.save(tmp_path / "grid_0.15_52.05.npy", q)
    np.save(tmp_path / "grid_0.15_52.05_scales.npy", scales)
    (tmp_path / "landmasks").mkdir()
    ds = gdal.GetDriverByName("GTiff").Create(str(tmp_path / "landmasks" / "grid_0.15_52.05.tiff"), w, h, 1,
                                              gdal.GDT_Byte)
    ds.SetGeoTransform([300000.0, 10, 0, 5800000.0, 0, -10])
    ds.SetProjection(_utm())
    ds.GetRasterBand(1).Fill(1)
    ds = None
    r = EmbeddingRaster(tmp_path / "grid_0.15_52.05.npy")
    assert r.spec is registry.TESSERA and r.dims == 128 and (r.width, r.height) == (w, h)
    emb = r.read(0, 0, w, h)
    assert np.isnan(emb[:, 0, :3]).all()
    np.testing.assert_allclose(emb[:, 5, 7], q[5, 7].astype(np.float32) * scales[5, 7], rtol=1e-6)
    assert r.geotransform == (300000.0, 10, 0, 5800000.0, 0, -10)
    again = EmbeddingRaster(tmp_path / "grid_0.15_52.05_scales.npy")  # named by its sidecar: the same tile, cached
    assert again.path == r.path
    lines = E.inspect_embedding(tmp_path / "grid_0.15_52.05.npy")
    assert "TESSERA" in lines[0] and "int8 (30, 50, 128)" in lines[1] and "times its scale" in lines[3]
    (tmp_path / "landmasks" / "grid_0.15_52.05.tiff").unlink()
    (tmp_path / "grid_0.15_52.05.npy").touch()  # another identity: looked up again, and the grid is missing
    with pytest.raises(E.EmbeddingError, match="landmask GeoTIFF"):
        EmbeddingRaster(tmp_path / "grid_0.15_52.05.npy")


def test_a_declared_embedding_must_be_float(tmp_path):
    path = tmp_path / "emb.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 8, 8, 10, gdal.GDT_Float32)
    ds.SetGeoTransform([0, 10, 0, 0, 0, -10])
    ds.SetProjection(_utm())
    ds = None
    with pytest.raises(E.EmbeddingError, match="declare it as an embedding"):
        EmbeddingRaster(path)
    assert EmbeddingRaster(path, registry.ANY_EMBEDDING).dims == 10
    gdal.Translate(str(tmp_path / "int.tif"), str(path), outputType=gdal.GDT_Int16)
    with pytest.raises(E.EmbeddingError, match="float raster"):
        EmbeddingRaster(tmp_path / "int.tif", registry.ANY_EMBEDDING)


def test_inspect_says_what_an_embedding_is(alphaearth, capsys):
    from mmearth.cli import main

    assert main(["inspect", str(alphaearth[0])]) == 0
    out = capsys.readouterr().out
    assert "AlphaEarth Foundations annual embedding" in out and "sign(v) (|v|/127.5)^2" in out


def test_tessera_tile_parsing_survives_any_bytes(tmp_path):
    """A fuzz run: mutated .npy tiles and scales give embeddings or an EmbeddingError, never a crash,
    a hang or a huge allocation (shapes are checked before any data is read)."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 5, 128), np.int8))
    seed_q = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.ones((4, 5), np.float32))
    seed_s = buf.getvalue()
    rng = random.Random(0)
    for i in range(400):
        which = i % 2
        data = bytearray(seed_q if which == 0 else seed_s)
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(min(len(data), 200))  # the header and the first values: where parsing happens
            op = rng.random()
            if op < 0.5:
                data[pos] = rng.randrange(256)
            elif op < 0.75:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
            else:
                del data[pos:pos + rng.randint(1, 12)]
        q, s = tmp_path / f"t{i}.npy", tmp_path / f"t{i}_scales.npy"
        q.write_bytes(bytes(data) if which == 0 else seed_q)
        s.write_bytes(bytes(data) if which == 1 else seed_s)
        try:
            out = E.tessera_tile_array(q, s)
        except E.EmbeddingError:
            continue
        assert out.dtype == np.float32 and out.shape[0] == 128


def test_a_similarity_map_from_an_alphaearth_file(alphaearth, tmp_path):
    """Query points in the left class: the map is high over the left half, low over the right, and
    no data where the file has none (no model needed: the file is the embedding)."""
    from osgeo import ogr

    from mpmae_core.runtime.inference.similarity import similarity

    path, _ = alphaearth
    gt = gdal.Open(str(path)).GetGeoTransform()
    queries = []
    for r, c in ((20, 10), (30, 15), (12, 20)):
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
        queries.append(bytes(g.ExportToWkb()))
    res = similarity(None, None, queries, tmp_path / "sim.tif", embeddings=str(path))
    sim = gdal.Open(res["output"]).ReadAsArray()
    assert res["queries"] == 3 and np.isnan(sim[:5, :5]).all()
    assert np.nanmean(sim[5:, 8:28]) > 0.5 > np.nanmean(sim[5:, 32:])


def test_qgis_inspect_names_the_embedding(alphaearth, run_alg):
    result, feedback = run_alg("mmearth:inspect", {"INPUT": str(alphaearth[0])})
    assert result["EMBEDDING"] == "AlphaEarth Foundations annual embedding" and not result["S2_COMPATIBLE"]
    assert any("sign(v) (|v|/127.5)^2" in line for line in feedback.infos)


@pytest.fixture(scope="module")
def scene_with_embedding(tmp_path_factory):
    """A crop of the embedded scene, and an AlphaEarth-format file of the same place whose vectors
    follow the scene's OpenStreetMap landuse (one direction per class, noise on top)."""
    from helpers import point_labels, quantise_alphaearth, write_alphaearth

    from mpmae_core.data import sample

    d = tmp_path_factory.mktemp("ext")
    x0, y0, w, h = 600, 200, 256, 192
    crop = d / "crop.tif"
    gdal.Translate(str(crop), str(sample.build(verbose=False)["stack"]), srcWin=[x0, y0, w, h])
    census = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()[y0:y0 + h, x0:x0 + w]
    rng = np.random.default_rng(5)
    dirs = rng.normal(size=(9, 64))
    v = dirs[census] + 0.4 * rng.normal(size=(h, w, 64))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    ref = gdal.Open(str(crop))
    aef = write_alphaearth(d / "aef.tif", quantise_alphaearth(v), ref.GetGeoTransform(), ref.GetProjection())
    points = []
    for name in ("forest", "farm", "meadow", "residential"):
        rows, cols = np.nonzero(census == sample.OSM_CLASSES.index(name) + 1)
        for i in rng.choice(len(rows), 6, replace=False):
            points.append((int(rows[i]), int(cols[i]), name))
    labels = point_labels(d / "labels.gpkg", points, ref.GetProjection(), ref.GetGeoTransform())
    return crop, aef, labels, census


def test_another_models_embedding_is_a_feature_set_of_the_head(scene_with_embedding, models_dir, tmp_path,
                                                                monkeypatch):
    from mpmae_core.data import sample
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    model = models_dir / "atto_test.onnx"
    feats, names, ids, _ = read_label_file(labels, "landuse", gdal.Open(str(crop)).GetProjection())
    res = train_pixel_head(str(crop), model, feats, names, tmp_path / "h.onnx", feature_ids=ids, device="cpu",
                           embedding=str(aef), classifiers=["logistic"])
    sets = {s["candidate"].feature_set for s in res["scores"]}
    assert {"spectra", "encoder", "both", "embedding", "embedding+spectra", "embedding+encoder"} <= sets
    assert "embedding" in res["chosen"]  # the embedding follows the landuse: the head finds it
    out = segment(str(crop), model, tmp_path / "map.tif", head_path=tmp_path / "h.onnx", device="cpu",
                  embedding=str(aef))
    got = gdal.Open(out["output"]).ReadAsArray()
    for k, name in enumerate(names):
        where = census == sample.OSM_CLASSES.index(name) + 1
        assert (got[where] == k).mean() > 0.9, name
    with pytest.raises(ValueError, match="give it the embedding"):
        segment(str(crop), model, tmp_path / "no.tif", head_path=tmp_path / "h.onnx", device="cpu")
    # the same embedding in another CRS is brought onto the raster's grid, and said
    other = tmp_path / "aef_32632.tif"
    warped = gdal.Warp(str(other), str(aef), dstSRS="EPSG:32632", xRes=10, yRes=10, resampleAlg="near")
    for i in range(64):
        warped.GetRasterBand(i + 1).SetDescription(f"A{i:02d}")
    warped = None
    logs = []
    again = segment(str(crop), model, tmp_path / "map2.tif", head_path=tmp_path / "h.onnx", device="cpu",
                    embedding=str(other), log=logs.append)
    assert any("another grid" in m for m in logs), logs
    got2 = gdal.Open(again["output"]).ReadAsArray()
    assert ((got2 == got) | (got2 == 255)).mean() > 0.9


def test_another_models_embedding_through_qgis_processing(scene_with_embedding, models_dir, tmp_path, run_alg,
                                                          monkeypatch):
    """mmearth:train_head and mmearth:segment with 'Another model's embedding of the place'."""
    from mpmae_core.data import sample

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    result, feedback = run_alg("mmearth:train_head", {
        "INPUT": str(crop), "MODEL": str(models_dir / "atto_test.onnx"), "LABELS": str(labels),
        "CLASS_FIELD": "landuse", "OUTPUT": str(tmp_path / "h.onnx"), "OTHER_EMBEDDING": str(aef),
        "FEATURE_SETS": [0, 6], "CLASSIFIERS": [0]})
    assert "embedding" in result["CHOSEN"]
    assert any("AlphaEarth" in line for line in feedback.infos)
    result, _ = run_alg("mmearth:segment", {
        "INPUT": str(crop), "MODEL": str(models_dir / "atto_test.onnx"), "HEAD": str(tmp_path / "h.onnx"),
        "OTHER_EMBEDDING": str(aef), "OUTPUT": str(tmp_path / "map.tif")})
    got = gdal.Open(result["OUTPUT"]).ReadAsArray()
    forest = census == sample.OSM_CLASSES.index("forest") + 1
    assert (got[forest] == ["farm", "forest", "meadow", "residential"].index("forest")).mean() > 0.9


def _tessera_tile(folder, v, gt, wkt, name="grid_0.05_51.95"):
    """A GeoTessera tile as it is downloaded: int8 values (h, w, 128), float32 per-pixel scales
    (h, w) and the landmask GeoTIFF that carries the tile's UTM grid, in landmasks/."""
    scales = (np.abs(v).max(-1) / 127).astype(np.float32)
    np.save(folder / f"{name}.npy", np.round(v / scales[..., None]).astype(np.int8))
    np.save(folder / f"{name}_scales.npy", scales)
    (folder / "landmasks").mkdir(exist_ok=True)
    h, w = scales.shape
    ds = gdal.GetDriverByName("GTiff").Create(str(folder / "landmasks" / f"{name}.tiff"), w, h, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    ds.SetProjection(wkt)
    ds.GetRasterBand(1).Fill(1)
    ds = None
    return folder / f"{name}.npy"


def _class_tessera_tile(folder, crop, census, rng):
    """A GeoTessera tile over ``crop`` whose vectors separate the census classes (one random vector
    per class plus noise, drawn from ``rng``): (the tile's .npy path, the float vectors it quantises)."""
    ref = gdal.Open(str(crop))
    v = rng.normal(size=(9, 128))[census] + 0.5 * rng.normal(size=census.shape + (128,))
    return _tessera_tile(folder, v.astype(np.float32), ref.GetGeoTransform(), ref.GetProjection()), v


def _agreement(got, census, names):
    from mpmae_core.data import sample

    return {n: float((got[census == sample.OSM_CLASSES.index(n) + 1] == k).mean()) for k, n in enumerate(names)}


def test_an_embedding_alone_maps_without_sentinel2_or_an_encoder(scene_with_embedding, tmp_path, monkeypatch):
    """AlphaEarth and TESSERA files read alone (the model 'none'): the head finds the classes the
    files carry and maps them; the head records its embedding, and refuses another."""
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file
    from mpmae_core.runtime.models.model import read_metadata

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    ref = gdal.Open(str(crop))
    tile, _ = _class_tessera_tile(tmp_path, crop, census, np.random.default_rng(11))
    feats, names, ids, _ = read_label_file(labels, "landuse", ref.GetProjection())
    heads = {}
    for what, path in (("alphaearth", aef), ("tessera", tile)):
        head = tmp_path / f"{what}.onnx"
        res = train_pixel_head(str(path), "none", feats, names, head, feature_ids=ids)
        assert {s["candidate"].feature_set for s in res["scores"]} == {"embedding"}
        meta = read_metadata(head)
        assert meta.features == [f"ext-{what}"] and meta.encoder["embedding_source"] == what
        out = segment(str(path), None, tmp_path / f"{what}.tif", head_path=head)
        got = gdal.Open(out["output"]).ReadAsArray()
        assert got.shape == census.shape
        agree = _agreement(got, census, names)
        assert min(agree.values()) > 0.9, (what, agree)
        heads[what] = head
    with pytest.raises(ValueError, match="trained on TESSERA.*not on the AlphaEarth"):
        segment(str(aef), "none", tmp_path / "wrong.tif", head_path=heads["tessera"])
    with pytest.raises(ValueError, match="head trained on it"):
        segment(str(aef), "none", tmp_path / "nohead.tif")
    assert not (tmp_path / "wrong.tif").exists() and not (tmp_path / "nohead.tif").exists()


def test_an_embedding_given_as_sentinel2_is_refused_in_words(scene_with_embedding, models_dir, tmp_path):
    from mpmae_core.runtime.inference.predict import embed

    _, aef, _, _ = scene_with_embedding
    with pytest.raises(E.RasterError, match="another model's embedding \\(AlphaEarth.*not Sentinel-2.*model 'none'"):
        embed(str(aef), models_dir / "atto_test.onnx", tmp_path / "e.tif")


def test_an_embedding_alone_through_qgis_processing(scene_with_embedding, models_dir, tmp_path, run_alg,
                                                     monkeypatch):
    """In QGIS: a TESSERA tile opened as a GeoTIFF layer, then train_head, segment and similarity
    on it without a model; an AlphaEarth file with a model chosen (it is not used, and said)."""
    from osgeo import ogr

    from mpmae_core.runtime.io.labels import read_label_file

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    ref = gdal.Open(str(crop))
    rng = np.random.default_rng(12)
    tile, v = _class_tessera_tile(tmp_path, crop, census, rng)
    result, feedback = run_alg("mmearth:tessera_tile", {"INPUT": str(tile), "OUTPUT": str(tmp_path / "tessera.tif")})
    layer = gdal.Open(result["OUTPUT"])
    assert layer.RasterCount == 128 and layer.GetGeoTransform() == ref.GetGeoTransform()
    np.testing.assert_allclose(layer.GetRasterBand(3).ReadAsArray()[7, 9],
                               np.round(v[7, 9, 2] / (np.abs(v[7, 9]).max() / 127)) * (np.abs(v[7, 9]).max() / 127),
                               rtol=1e-5)
    _, names, _, _ = read_label_file(labels, "landuse", ref.GetProjection())
    for what, path, model in (("tessera", result["OUTPUT"], ""), ("alphaearth", str(aef), "atto_test")):
        params = {"INPUT": path, "LABELS": str(labels), "CLASS_FIELD": "landuse",
                  "OUTPUT": str(tmp_path / f"{what}.onnx"), "REPORT": str(tmp_path / f"{what}.html")}
        if model:
            params["MODEL"] = str(models_dir / f"{model}.onnx")
        res, fb = run_alg("mmearth:train_head", params)
        assert res["CHOSEN"].startswith(("embedding", "mean of")), res["CHOSEN"]
        assert any("read alone" in line for line in fb.infos)
        assert bool(model) == any("is not used" in line for line in fb.infos)
        res, _ = run_alg("mmearth:segment", {"INPUT": path, "HEAD": str(tmp_path / f"{what}.onnx"),
                                             "OUTPUT": str(tmp_path / f"{what}_map.tif")})
        agree = _agreement(gdal.Open(res["OUTPUT"]).ReadAsArray(), census, names)
        assert min(agree.values()) > 0.9, (what, agree)
    # similarity to a few forest points, on the TESSERA layer without a model
    from mpmae_core.data import sample

    forest = census == sample.OSM_CLASSES.index("forest") + 1
    gt = ref.GetGeoTransform()
    rows, cols = np.nonzero(forest)
    pts = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "q.gpkg"))
    from osgeo import osr

    lyr = pts.CreateLayer("q", osr.SpatialReference(wkt=ref.GetProjection()), ogr.wkbPoint)
    for i in rng.choice(len(rows), 3, replace=False):
        f = ogr.Feature(lyr.GetLayerDefn())
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint(gt[0] + (cols[i] + 0.5) * gt[1], gt[3] + (rows[i] + 0.5) * gt[5])
        f.SetGeometry(g)
        lyr.CreateFeature(f)
    pts = None
    res, _ = run_alg("mmearth:similarity", {"INPUT": result["OUTPUT"], "QUERY": str(tmp_path / "q.gpkg"),
                                            "OUTPUT": str(tmp_path / "sim.tif")})
    sim = gdal.Open(res["OUTPUT"]).ReadAsArray()
    assert sim.shape == census.shape
    assert np.nanmean(sim[forest]) > 0.5 > np.nanmean(sim[~forest])
    # no model and a Sentinel-2 input: the message names the fix
    with pytest.raises(Exception, match="Choose a model"):
        run_alg("mmearth:segment", {"INPUT": str(crop), "HEAD": str(tmp_path / "tessera.onnx"),
                                    "OUTPUT": str(tmp_path / "no.tif")})


def test_the_mapping_session_on_an_embedding_alone_and_beside(scene_with_embedding, validation_sample, models_dir,
                                                              tmp_path, monkeypatch):
    """The panel's session: an AlphaEarth file alone (no model, nothing to cache) previews and maps
    the classes it carries; beside the raster, its feature sets join the candidates, and the
    preview reads the same features as the final head."""
    from mpmae_core.runtime.heads.session import MappingSession
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file
    from mpmae_core.runtime.models.model import read_metadata

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    feats, names, _, _ = read_label_file(labels, "landuse", gdal.Open(str(crop)).GetProjection())
    alone = MappingSession(str(aef), None)
    assert alone.ready and alone.ensure_cache() == 0.0 and [b.name for b in alone.blocks] == ["ext-alphaearth"]
    head, cv = alone.quick_head(feats, names)
    assert cv["balanced_accuracy"] > 0.9
    pv = alone.preview(head)
    got = alone.map_to_file(head, tmp_path / "alone.tif")
    classes = gdal.Open(got["output"]).ReadAsArray()
    assert min(_agreement(classes, census, names).values()) > 0.9
    assert (pv["probs"].argmax(0) == classes[::pv["step"], ::pv["step"]])[pv["valid"]].mean() > 0.99
    res = alone.train_full_head(feats, names, tmp_path / "alone.onnx")
    assert read_metadata(tmp_path / "alone.onnx").features == ["ext-alphaearth"]
    full = alone.map_to_file(res["head"], tmp_path / "alone_full.tif")  # the session's features = segment's
    again = segment(str(aef), None, tmp_path / "alone_seg.tif", head_path=tmp_path / "alone.onnx")
    np.testing.assert_array_equal(gdal.Open(again["output"]).ReadAsArray(), gdal.Open(full["output"]).ReadAsArray())

    cmp = alone.compare(feats, names, validation=str(validation_sample), report=tmp_path / "cmp.html")
    assert [r["feature_set"] for r in cmp["rows"]] == ["embedding"] and cmp["rows"][0]["validation"]["overall"] > 0.9

    beside = MappingSession(str(crop), models_dir / "atto_test.onnx", embedding=str(aef))
    beside.ensure_cache()
    assert {"spectra", "ext-alphaearth"} <= {b.name for b in beside.blocks}
    res = beside.train_full_head(feats, names, tmp_path / "beside.onnx")
    sets = {s["candidate"].feature_set for s in res["scores"]}
    assert {"spectra", "both", "embedding", "embedding+spectra", "embedding+encoder"} <= sets
    assert "ext-alphaearth" in read_metadata(tmp_path / "beside.onnx").features or \
        "embedding" not in res["chosen"]
    out = segment(str(crop), models_dir / "atto_test.onnx", tmp_path / "beside.tif",
                  head_path=tmp_path / "beside.onnx", embedding=str(aef))
    assert min(_agreement(gdal.Open(out["output"]).ReadAsArray(), census, names).values()) > 0.8


def test_the_few_shot_panel_on_an_embedding_layer(scene_with_embedding, models_dir, qgis_app, qtbot, tmp_path,
                                                  monkeypatch):
    """The panel as an analyst uses it: an AlphaEarth layer as the raster (no model chosen), labels
    clicked by class, the whole map; then the Sentinel-2 raster with the encoder and the AlphaEarth
    layer in 'Embedding beside', which comes back with the project."""
    from helpers import reopened_panel
    from qgis.core import QgsPointXY, QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    from mmearth_qgis.panel import FewShotPanel

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    QgsProject.instance().clear()
    s2, emb = QgsRasterLayer(str(crop), "scene", "gdal"), QgsRasterLayer(str(aef), "alphaearth", "gdal")
    QgsProject.instance().addMapLayers([s2, emb])
    canvas = QgsMapCanvas()
    qtbot.addWidget(canvas)
    panel = FewShotPanel(canvas)
    qtbot.addWidget(panel)
    panel.auto.setChecked(False)
    panel.model.setEditText("")
    panel.raster.setLayer(emb)
    assert panel.session is not None and panel.session.alone, panel.findings.text()
    assert "AlphaEarth" in panel.findings.text() and "no model" in panel.findings.text()
    gt = gdal.Open(str(aef)).GetGeoTransform()
    from mpmae_core.data import sample

    rng = np.random.default_rng(8)
    names = ["farm", "forest", "meadow", "residential"]
    for name in names:
        panel.add_class(name)
        rows, cols = np.nonzero(census == sample.OSM_CLASSES.index(name) + 1)
        for i in rng.choice(len(rows), 4, replace=False):
            panel.add_point(QgsPointXY(gt[0] + (cols[i] + 0.5) * gt[1], gt[3] + (rows[i] + 0.5) * gt[5]))
    out = tmp_path / "panel_map.tif"
    with qtbot.waitSignal(panel.map_finished, timeout=120_000) as done:
        panel.map_raster(out)
    assert done.args[0] is True, done.args[1]
    assert "MODEL" not in done.args[1]
    mapped = gdal.Open(str(out)).ReadAsArray()
    agree = _agreement(mapped, census, panel.class_names())
    assert min(agree.values()) > 0.9, agree
    # the Sentinel-2 raster with the encoder, the embedding beside it
    with qtbot.waitSignal(panel.cache_ready, timeout=240_000) as ready:
        panel.raster.setLayer(s2)
        panel.embedding.setLayer(emb)
        panel.model.setEditText("atto_test")
    assert ready.args[0] is True, ready.args[1]
    assert not panel.session.alone and "ext-alphaearth" in {b.name for b in panel.session.blocks}
    with qtbot.waitSignal(panel.compare_finished, timeout=240_000) as compared:
        qtbot.mouseClick(panel.compare_button, 1)
    assert compared.args[0] is True, compared.args[1]
    assert "best: AlphaEarth" in panel.comparison.text() and "Sentinel-2 spectra" in panel.comparison.text()
    assert (panel.workdir / "feature_comparison.html").is_file()
    again = reopened_panel(panel, canvas, qtbot, tmp_path / "emb.qgz")
    assert again.embedding.currentLayer() is not None and again.embedding.currentLayer().name() == "alphaearth"
    assert again.session is not None and "ext-alphaearth" in {b.name for b in again.session.blocks}
    again.shutdown()
    QgsProject.instance().clear()


@pytest.fixture(scope="module")
def validation_sample(scene_with_embedding, tmp_path_factory):
    """A validation sample as sample-design draws it, on a noisy map of the four classes, its
    reference classes filled in from the scene's landuse (points of other classes left empty)."""
    from osgeo import ogr

    from mpmae_core.data import sample
    from mpmae_core.runtime.heads.validation import sample_design
    from mpmae_core.runtime.inference.raster import RasterWriter

    crop, _, _, census = scene_with_embedding
    d = tmp_path_factory.mktemp("validation")
    names = ["farm", "forest", "meadow", "residential"]
    rng = np.random.default_rng(21)
    truth = np.full(census.shape, -1)
    for k, n in enumerate(names):
        truth[census == sample.OSM_CLASSES.index(n) + 1] = k
    noisy = np.where(truth >= 0, truth, rng.integers(0, 4, census.shape))
    flip = rng.random(census.shape) < 0.2
    noisy[flip] = rng.integers(0, 4, int(flip.sum()))
    ref = gdal.Open(str(crop))
    w = RasterWriter(d / "map.tif", census.shape[1], census.shape[0], 1, "uint8", ref.GetGeoTransform(),
                     ref.GetProjection(), nodata=255, class_names=names)
    w.write_rows(0, noisy[None].astype(np.uint8))
    w.close()
    points = d / "validation.gpkg"
    sample_design(d / "map.tif", points, size=160, min_per_class=30)
    ds = ogr.Open(str(points), 1)
    layer = ds.GetLayer("validation")
    gt = ref.GetGeoTransform()
    for f in layer:
        x, y = f.GetGeometryRef().GetX(), f.GetGeometryRef().GetY()
        t = truth[int((y - gt[3]) / gt[5]), int((x - gt[0]) / gt[1])]
        if t >= 0:
            f.SetField("reference", names[t])
            layer.SetFeature(f)
    ds = None
    return points


def test_compare_features_with_cross_validation_and_a_validation_sample(scene_with_embedding, validation_sample,
                                                                         models_dir, tmp_path, monkeypatch, capsys):
    """Spectra, MMEarth's features and a toy embedding that follows the landuse, compared on the
    same labels: one row per source; the validation figure is the design's stratified estimate,
    recomputed here by hand from the points; the toy embedding wins on the validation sample."""
    import json

    from osgeo import ogr

    from mpmae_core.runtime.__main__ import main

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    code = main(["compare-features", str(crop), str(models_dir / "atto_test.onnx"), str(labels), "--class-field",
                 "landuse", "--embedding", str(aef), "--validation", str(validation_sample), "--classifiers",
                 "logistic", "--report", str(tmp_path / "cmp.html"), "--table", str(tmp_path / "cmp.csv")])
    assert code == 0
    out = capsys.readouterr().out
    assert "best by validation overall accuracy: AlphaEarth" in out, out
    rows = (tmp_path / "cmp.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["spectra", "encoder", "both", "embedding", "embedding+spectra",
                                                   "embedding+encoder"]
    # the stratified estimate by hand, from the points and the design the file carries
    from mpmae_core.runtime.heads.compare import compare_features
    from mpmae_core.runtime.io.labels import read_label_file

    feats, names, ids, _ = read_label_file(labels, "landuse", gdal.Open(str(crop)).GetProjection())
    res = compare_features(str(crop), models_dir / "atto_test.onnx", feats, names, embedding=str(aef),
                           validation=str(validation_sample), feature_sets=["spectra", "embedding"],
                           classifiers=["logistic"])
    ds = ogr.Open(str(validation_sample))
    design = json.loads(ds.GetMetadataItem("MMEARTH_SAMPLE_DESIGN"))
    sizes = {s["stratum"]: s["pixels"] for s in design["strata"]}
    pts = [(f.GetField("stratum"), f.GetField("reference")) for f in ds.GetLayer("validation")
           if f.GetField("reference")]
    for row in res["rows"]:
        v = row["validation"]
        strata = [pts[i][0] for i in v["used"]]
        correct = [names[p] == pts[i][1] for p, i in zip(v["predicted"], v["used"])]
        by_hand = sum(sizes[h] / sum(sizes.values()) *
                      np.mean([c for c, s in zip(correct, strata) if s == h]) for h in sizes)
        assert v["overall"] == pytest.approx(by_hand, abs=1e-9), row["feature_set"]
    emb, spec = res["rows"][1]["validation"], res["rows"][0]["validation"]
    assert emb["overall"] > 0.9 and emb["overall"] - emb["ci95"] > spec["overall"]
    with pytest.raises(ValueError, match="not classes of the labels"):
        compare_features(str(crop), models_dir / "atto_test.onnx", feats[:12], names[:2], embedding=str(aef),
                         validation=str(validation_sample), feature_sets=["embedding"])


from test_qgis_process import qgis_process  # noqa: E402,F401 (fixture)


@pytest.mark.slow
@pytest.mark.qgis_process
def test_compare_features_and_an_embedding_alone_through_qgis_process(scene_with_embedding, validation_sample,
                                                                       qgis_process, models_dir,  # noqa: F811
                                                                       tmp_path):
    """Headless, as a script runs it: mmearth:compare_features with the validation sample, then the
    AlphaEarth file alone through train_head and segment with no model; a Sentinel-2 input
    without a model is refused in words."""
    import json

    crop, aef, labels, census = scene_with_embedding
    proc = qgis_process("--json", "run", "mmearth:compare_features", "--", f"INPUT={crop}",
                        f"MODEL={models_dir / 'atto_test.onnx'}", f"LABELS={labels}", "CLASS_FIELD=landuse",
                        f"OTHER_EMBEDDING={aef}", f"VALIDATION={validation_sample}",
                        f"REPORT={tmp_path / 'cmp.html'}", f"TABLE={tmp_path / 'cmp.csv'}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results["BEST"].startswith("AlphaEarth") and (tmp_path / "cmp.csv").is_file()
    assert "validation_overall_accuracy" in (tmp_path / "cmp.csv").read_text()
    proc = qgis_process("--json", "run", "mmearth:train_head", "--", f"INPUT={aef}", f"LABELS={labels}",
                        "CLASS_FIELD=landuse", f"OUTPUT={tmp_path / 'h.onnx'}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = qgis_process("--json", "run", "mmearth:segment", "--", f"INPUT={aef}", f"HEAD={tmp_path / 'h.onnx'}",
                        f"OUTPUT={tmp_path / 'map.tif'}", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = ["farm", "forest", "meadow", "residential"]
    assert min(_agreement(gdal.Open(str(tmp_path / "map.tif")).ReadAsArray(), census, names).values()) > 0.9
    proc = qgis_process("run", "mmearth:segment", "--", f"INPUT={crop}", f"HEAD={tmp_path / 'h.onnx'}",
                        f"OUTPUT={tmp_path / 'no.tif'}", timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Choose a model" in text and "Traceback" not in text


def test_batch_maps_embedding_tiles_alone_on_a_dask_cluster(scene_with_embedding, tmp_path, monkeypatch):
    """Two AlphaEarth tiles, a head trained on one alone, mapped by batch on a real LocalCluster in
    row blocks: each map equals the single-process one; without a head the batch is refused."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    from mpmae_core.runtime import batch as B
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i, x in enumerate((0, 128)):
        gdal.Translate(str(tiles / f"aef_{i}.tif"), str(aef), srcWin=[x, 0, 128, 192])
    feats, names, ids, _ = read_label_file(labels, "landuse", gdal.Open(str(aef)).GetProjection())
    train_pixel_head(str(aef), "none", feats, names, tmp_path / "h.onnx", feature_ids=ids, classifiers=["logistic"])
    with pytest.raises(B.BatchError, match="head trained on them"):
        B.run_batch("segment", str(tiles / "*.tif"), "none", tmp_path / "out0")
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    client = Client(cluster)
    try:
        report = B.run_batch("segment", str(tiles / "*.tif"), "none", tmp_path / "out", head=str(tmp_path / "h.onnx"),
                             client=client, rows_per_block=1, options={"tile": 64})
    finally:
        client.close()
        cluster.close()
    assert len(report.done) == 2 and not report.failed, report.text()
    for i in range(2):
        one = segment(str(tiles / f"aef_{i}.tif"), "none", tmp_path / f"one_{i}.tif", head_path=tmp_path / "h.onnx")
        np.testing.assert_array_equal(gdal.Open(str(tmp_path / "out" / f"aef_{i}_classes.tif")).ReadAsArray(),
                                      gdal.Open(one["output"]).ReadAsArray())


def test_change_between_two_years_of_an_embedding_alone(scene_with_embedding, tmp_path, monkeypatch, run_alg):
    """Two years of AlphaEarth-format embeddings, the second with one rectangle's vectors turned to
    another class: the cosine distance (the only band, no encoder) is high there and low elsewhere,
    Otsu's threshold parts them, and a change head from a few labelled examples maps the change."""
    from helpers import point_labels, quantise_alphaearth, write_alphaearth

    from mpmae_core.runtime.heads.change import change_map
    from mpmae_core.runtime.inference.change import change_magnitude
    from mpmae_core.runtime.io.labels import read_label_file

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, _, census = scene_with_embedding
    ds = gdal.Open(str(aef))
    stored = np.stack([ds.GetRasterBand(i + 1).ReadAsArray().view(np.int8) for i in range(64)])
    changed = np.zeros(census.shape, bool)
    changed[40:100, 60:160] = True
    rng = np.random.default_rng(31)
    new = rng.normal(size=64) + 0.4 * rng.normal(size=(int(changed.sum()), 64))
    new /= np.linalg.norm(new, axis=-1, keepdims=True)
    after = stored.copy()
    after[:, changed] = quantise_alphaearth(new).T
    year2 = write_alphaearth(tmp_path / "aef_2024.tif", after.transpose(1, 2, 0), ds.GetGeoTransform(),
                             ds.GetProjection())
    res = change_magnitude(str(aef), str(year2), "none", tmp_path / "change.tif")
    dist = gdal.Open(res["output"])
    assert dist.RasterCount == 1 and dist.GetRasterBand(1).GetDescription() == "cosine_distance"
    d = dist.ReadAsArray()
    assert np.nanmedian(d[changed]) > 0.5 > 0.05 > np.nanmedian(d[~changed])
    t = res["thresholds"]["cosine_distance"]
    assert ((d > t) == changed).mean() > 0.97
    points = [(int(r), int(c), "cleared") for r, c in zip(rng.integers(45, 95, 8), rng.integers(65, 155, 8))]
    points += [(int(r), int(c), "no change") for r, c in zip(rng.integers(120, 190, 8), rng.integers(0, 250, 8))]
    labels = point_labels(tmp_path / "change.gpkg", points, ds.GetProjection(), ds.GetGeoTransform(), field="kind")
    feats, names, ids, _ = read_label_file(labels, "kind", ds.GetProjection())
    got = change_map(str(aef), str(year2), "none", tmp_path / "types.tif", features=feats, class_names=names,
                     feature_ids=ids)
    types = gdal.Open(got["output"]).ReadAsArray()
    assert ((types == names.index("cleared")) == changed).mean() > 0.97
    # the same in QGIS, without a model; and on the command line with the model 'none'
    result, _ = run_alg("mmearth:change", {"INPUT": str(aef), "AFTER": str(year2), "OUTPUT": str(tmp_path / "q.tif"),
                                           "LABELS": str(labels), "CLASS_FIELD": "kind",
                                           "MAP": str(tmp_path / "q_types.tif")})
    np.testing.assert_array_equal(gdal.Open(result["MAP"]).ReadAsArray(), types)
    assert np.isnan(result["SPECTRAL_THRESHOLD"]) and result["COSINE_THRESHOLD"] == pytest.approx(t)
    from mpmae_core.runtime.__main__ import main

    assert main(["change", str(aef), str(year2), "none", str(tmp_path / "cli.tif"), "--labels", str(labels),
                 "--class-field", "kind", "--map", str(tmp_path / "cli_types.tif")]) == 0
    np.testing.assert_array_equal(gdal.Open(str(tmp_path / "cli_types.tif")).ReadAsArray(), types)


def test_a_tessera_tile_through_the_command_line(scene_with_embedding, tmp_path, monkeypatch, capsys):
    """The walk-through of the docs on a GeoTessera tile as downloaded: inspect, train-head and
    segment with the model 'none', and a similarity map from query points."""
    from mpmae_core.runtime.__main__ import main

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, _, labels, census = scene_with_embedding
    tile, _ = _class_tessera_tile(tmp_path, crop, census, np.random.default_rng(13))
    assert main(["inspect", str(tile)]) == 0
    assert "TESSERA" in capsys.readouterr().out
    assert main(["train-head", str(tile), "none", str(labels), str(tmp_path / "h.onnx"), "--class-field",
                 "landuse", "--report", str(tmp_path / "h.html")]) == 0
    assert main(["segment", str(tile), "none", str(tmp_path / "map.tif"), "--head", str(tmp_path / "h.onnx")]) == 0
    names = ["farm", "forest", "meadow", "residential"]
    assert min(_agreement(gdal.Open(str(tmp_path / "map.tif")).ReadAsArray(), census, names).values()) > 0.9
    assert main(["similarity", str(tile), "none", str(labels), str(tmp_path / "sim.tif")]) == 0
    sim = gdal.Open(str(tmp_path / "sim.tif")).ReadAsArray()
    assert sim.shape == census.shape and np.nanmax(sim) == pytest.approx(1.0, abs=1e-5)
    # a model given for an embedding is refused in words, with the fix
    assert main(["segment", str(tile), str(tmp_path / "h.onnx"), str(tmp_path / "no.tif"), "--head",
                 str(tmp_path / "h.onnx")]) != 0
    assert not (tmp_path / "no.tif").exists()


@pytest.mark.slow
def test_an_embedding_beside_a_series_of_dates(scene_with_embedding, models_dir, tmp_path, monkeypatch):
    """Three cloudy dates and an annual AlphaEarth file of the place: the candidates hold the
    temporal sets and the embedding's, and the map with the series and the embedding follows the
    classes the embedding carries wherever a date sees the ground."""
    from helpers import series_dates

    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.labels import read_label_file

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    _, aef, labels, census = scene_with_embedding
    paths, clouds, _ = series_dates(tmp_path / "dates")
    series = ",".join(str(p) for p in paths)
    feats, names, ids, _ = read_label_file(labels, "landuse", gdal.Open(str(paths[0])).GetProjection())
    logs = []
    res = train_pixel_head(series, models_dir / "atto_test.onnx", feats, names, tmp_path / "h.onnx",
                           feature_ids=ids, embedding=str(aef), classifiers=["logistic"], log=logs.append)
    sets = {s["candidate"].feature_set for s in res["scores"]}
    assert {"t-spectra", "embedding"} <= sets, sets
    assert "embedding" in res["chosen"] or "all" in res["chosen"]
    out = segment(series, models_dir / "atto_test.onnx", tmp_path / "map.tif", head_path=tmp_path / "h.onnx",
                  embedding=str(aef))
    got = gdal.Open(out["output"]).ReadAsArray()
    seen = ~clouds.all(0)
    assert (got[~seen] == 255).all()
    agree = _agreement(np.where(seen, got, 254), census, names)
    assert min(agree.values()) > 0.85, agree
    with pytest.raises(ValueError, match="give it the embedding"):
        segment(series, models_dir / "atto_test.onnx", tmp_path / "no.tif", head_path=tmp_path / "h.onnx")


def test_an_annual_embedding_is_kept_where_the_reference_date_is_cloudy():
    """A label under the reference date's clouds drops that date's own blocks, never the annual
    embedding (nor the temporal blocks)."""
    from mpmae_core.runtime.inference.pixel_features import Block, without_masked_reference

    blocks = [Block("spectra", 2, 1), Block("spectra:median", 2, 1), Block("ext-alphaearth", 3, 1)]
    x = np.arange(14, dtype=np.float32).reshape(2, 7)
    x[0, :2] = np.nan  # the reference date is cloudy at the first label
    got, kept, lost = without_masked_reference(x, blocks)
    assert lost == 1 and [b.name for b in kept] == ["spectra:median", "ext-alphaearth"]
    np.testing.assert_array_equal(got, x[:, 2:])


def test_a_stored_sample_design_survives_any_bytes():
    """The design compare-features reads from a stranger's points file: any text is a clean
    AccuracyError or a valid design, never a crash; a valid one is read exactly."""
    import json

    from mpmae_core.runtime.heads import accuracy as A
    from mpmae_core.runtime.heads.compare import sample_design_strata

    good = {"strata": [{"stratum": "forest", "value": 1, "pixels": 900}, {"stratum": "farm", "value": 2,
                                                                          "pixels": 100.5}]}
    assert sample_design_strata(json.dumps(good)) == ({"forest": 1, "farm": 2}, {1: 900.0, 2: 100.5})
    assert sample_design_strata(json.dumps({"strata": []})) is None
    rng = random.Random(7)
    text = json.dumps(good)
    hostile = ["", "[", "null", "1e999", "[" * 100000, json.dumps({"strata": "x"}), json.dumps({"strata": [1]}),
               json.dumps({"strata": [{"stratum": "a", "value": True, "pixels": 1}]}),
               json.dumps({"strata": [{"stratum": "a", "value": 1, "pixels": float("nan")}]}),
               json.dumps({"strata": [{"stratum": "a", "value": 1, "pixels": 5}] * 2}),
               json.dumps({"strata": [{"stratum": "a", "value": 1, "pixels": -5}]}),
               json.dumps({"strata": [{"stratum": str(i), "value": i, "pixels": 1} for i in range(5000)]})]
    for _ in range(3000):
        b = list(text)
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] = rng.choice(['"', "{", "}", "[", "]", ",", ":", "0", "-", "e", "x", "", "null", "true"])
        hostile.append("".join(b))
    for t in hostile:
        try:
            out = sample_design_strata(t)
        except A.AccuracyError as exc:
            assert "damaged" in str(exc)
            continue
        if out is not None:
            names, sizes = out
            assert all(isinstance(v, int) and sizes[v] > 0 for v in names.values())



from test_plugin_dialogs import _run_check, _set, _wrappers, desktop  # noqa: E402,F401 (fixture)


def test_the_embedding_algorithms_from_their_own_dialogs(scene_with_embedding, validation_sample, desktop,  # noqa: F811
                                                         tmp_path, monkeypatch):
    """QGIS's own Processing dialogs, as a person fills them: 'Open a TESSERA embedding tile' with a
    .npy; 'Train few-shot head' on an AlphaEarth file with the model left empty (QGIS's check and
    the algorithm's accept it); 'Compare feature sources' with the validation sample layer."""
    import processing
    from qgis.core import QgsApplication, QgsProcessingFeedback

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    crop, aef, labels, census = scene_with_embedding
    tile, _ = _class_tessera_tile(tmp_path, crop, census, np.random.default_rng(14))
    runs = [("mmearth:tessera_tile", {"INPUT": str(tile), "OUTPUT": str(tmp_path / "tessera.tif")}),
            ("mmearth:train_head", {"INPUT": str(aef), "LABELS": str(labels), "CLASS_FIELD": "landuse",
                                    "OUTPUT": str(tmp_path / "head.onnx")}),
            ("mmearth:compare_features", {"INPUT": str(aef), "LABELS": str(labels), "CLASS_FIELD": "landuse",
                                          "VALIDATION": str(validation_sample), "REPORT": str(tmp_path / "c.html")})]
    results = {}
    for alg_id, values in runs:
        dialog = processing.createAlgorithmDialog(alg_id, {})
        alg = QgsApplication.processingRegistry().algorithmById(alg_id)
        w = _wrappers(dialog)
        if "MODEL" in w:
            assert not w["MODEL"].value()  # left empty: the embedding needs none
        for name, value in values.items():
            _set(w[name], value)
        params, ok, message, context = _run_check(dialog, alg)
        assert ok, (alg_id, message)
        results[alg_id] = processing.run(alg_id, params, context=context, feedback=QgsProcessingFeedback())
    assert gdal.Open(results["mmearth:tessera_tile"]["OUTPUT"]).RasterCount == 128
    assert results["mmearth:train_head"]["CHOSEN"].startswith(("embedding", "mean of"))
    assert results["mmearth:compare_features"]["BEST"].startswith("AlphaEarth")
