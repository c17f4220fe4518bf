"""A series of dates as the input of train-head, segment and features, and change between two dates.

The dates come from the embedded real scene with its own clouds shifted (helpers.series_dates);
labels come from the scene's OpenStreetMap landuse; changes are painted into a date by copying
real pixels of another class (a field into a forest, water onto a meadow)."""

import numpy as np
import pytest
from osgeo import gdal

from mpmae_core.data import sample
from mpmae_core.runtime.inference import series as S

CLASSES = ["forest", "farm", "meadow", "residential"]
WINDOW = (600, 200, 256, 192)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from helpers import series_dates

    d = tmp_path_factory.mktemp("series_heads")
    paths, clouds, clear = series_dates(d, window=WINDOW)
    osm = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()
    x0, y0, w, h = WINDOW
    census = osm[y0:y0 + h, x0:x0 + w]
    return paths, clouds, clear, census, d


def _labels(scene, path, per_class=8, extra=()):
    """Points on census pixels of each class, clear on every date; ``extra`` (row, col, class) added."""
    from helpers import point_labels

    paths, clouds, _, census, _ = scene
    rng = np.random.default_rng(1)
    seen = ~clouds.any(0)
    points = list(extra)
    for name in CLASSES:
        rows, cols = np.nonzero((census == sample.OSM_CLASSES.index(name) + 1) & seen)
        for i in rng.choice(len(rows), per_class, replace=False):
            points.append((int(rows[i]), int(cols[i]), name))
    ds = gdal.Open(str(paths[0]))
    return point_labels(path, points, ds.GetProjection(), ds.GetGeoTransform())


def _read_labels(path, raster):
    from mpmae_core.runtime.io.labels import read_label_file

    feats, names, ids, _ = read_label_file(path, "landuse", gdal.Open(str(raster)).GetProjection())
    return feats, names, ids


def test_a_series_of_one_date_gives_exactly_that_dates_blocks(scene, models_dir):
    """The temporal blocks of one date are its own blocks (the median of one value is the value), and
    the series' reference blocks are the raster's."""
    from mpmae_core.runtime.inference.pixel_features import EncoderMaps, encoder_blocks
    from mpmae_core.runtime.inference.raster import prepare_input, read_block
    from mpmae_core.runtime.models.model import OnnxModel

    paths, clouds, _, _, _ = scene
    model = OnnxModel(models_dir / "atto_test.onnx", device="cpu")
    meta = model.metadata
    prep = prepare_input(str(paths[0]), meta)
    one = S.SeriesInput(S.dated_members([str(paths[0])]), [prep], 0, 1, meta)
    y0, x0 = [(y, x) for y in (0, 64) for x in (0, 64, 128) if clouds[0][y:y + 128, x:x + 128].any()][0]
    x, valid = one.read_block(y0, x0, 128, 128)
    maps = one.maps_runner(model, one.blocks)(x[None])[0]
    x1, v1 = read_block(prep, y0, x0, 128, 128)
    single = EncoderMaps(model, encoder_blocks(meta))(x1[None])[0]
    np.testing.assert_array_equal(valid, v1)
    assert (~v1).any() and v1.any()  # the tile holds clouds and ground
    np.testing.assert_array_equal(maps["spectra"], x1)
    np.testing.assert_array_equal(maps["spectra:median"][:, v1], x1[:, v1])
    assert np.isnan(maps["spectra:median"][:, ~v1]).all()
    assert (maps["spectra:std"][:, v1] == 0).all()
    for b in encoder_blocks(meta)[1:]:
        np.testing.assert_allclose(maps[f"{b.name}:median"], single[b.name], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(maps[b.name], single[b.name])


def test_encoder_medians_are_taken_per_cell_over_the_dates_that_see_it():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    valid = rng.random((4, 20, 24)) > 0.4
    cells = S.cell_validity(valid, 4)
    for t in range(4):
        for i in range(5):
            for j in range(6):
                assert cells[t, i, j] == (valid[t, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean() >= 0.5)
    cells[:, 0, 0] = False  # a cell no date sees
    got = S.reduce_maps(maps, cells)
    for i in range(5):
        for j in range(6):
            use = cells[:, i, j] if cells[:, i, j].any() else np.ones(4, bool)
            np.testing.assert_allclose(got[:, i, j], np.median(maps[use, :, i, j], axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_a_series_trains_a_head_that_maps_the_series_and_not_one_date(scene, models_dir, tmp_path):
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.models.model import read_metadata

    paths, clouds, _, census, _ = scene
    model = models_dir / "atto_test.onnx"
    series = [str(p) for p in paths]
    # one point under the reference date's clouds, seen by the others
    r, c = np.argwhere(clouds[0] & ~clouds[1:].any(0) & (census == sample.OSM_CLASSES.index("forest") + 1))[0]
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "l.gpkg", extra=[(int(r), int(c), "forest")]), paths[0])
    logs = []
    res = train_pixel_head(series, model, feats, names, tmp_path / "h.onnx", feature_ids=ids, device="cpu",
                           log=logs.append)
    assert any("masked at 1 of" in m and "only the temporal feature sets" in m for m in logs), logs
    assert all(s["candidate"].feature_set.startswith("t-") for s in res["scores"])
    assert res["samples"]["forest"]["features"] == 9  # the point under the reference's clouds is kept
    head_meta = read_metadata(tmp_path / "h.onnx")
    assert all(":" in f for f in head_meta.features)
    out = segment(series, model, tmp_path / "map.tif", head_path=tmp_path / "h.onnx", device="cpu", log=logs.append)
    classes = gdal.Open(out["output"]).ReadAsArray()
    np.testing.assert_array_equal(classes == 255, clouds.all(0))  # no data only where no date sees the ground
    with pytest.raises(ValueError, match="trained on a series"):
        segment(str(paths[0]), model, tmp_path / "one.tif", head_path=tmp_path / "h.onnx", device="cpu")
    logs = []  # the reference date's features alone: the label under its clouds is skipped, as on one raster
    only = train_pixel_head(series, model, feats, names, tmp_path / "s.onnx", feature_ids=ids, device="cpu",
                            feature_sets=["spectra"], classifiers=["logistic"], log=logs.append)
    assert only["samples"]["forest"]["features"] == 8
    assert any("skipped 1 labelled feature(s) over pixels without data" in m for m in logs), logs
    # the reference date clear at every label: its own feature sets compete too, and its head maps
    # only where it is clear
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "m.gpkg"), paths[0])
    clear_ref = [p for p in feats]
    res = train_pixel_head(series, model, clear_ref, names, tmp_path / "h2.onnx", feature_ids=ids, device="cpu",
                           feature_sets=["spectra", "t-spectra"], classifiers=["logistic"])
    sets = {s["candidate"].feature_set for s in res["scores"]}
    assert {"spectra", "t-spectra"} <= sets
    one = train_pixel_head(series, model, clear_ref, names, tmp_path / "h3.onnx", feature_ids=ids, device="cpu",
                           feature_sets=["spectra"], classifiers=["logistic"])
    out = segment(series, model, tmp_path / "map3.tif", head_path=tmp_path / "h3.onnx", device="cpu")
    np.testing.assert_array_equal(gdal.Open(out["output"]).ReadAsArray() == 255, clouds[0])
    assert one["chosen"].startswith("spectra")


@pytest.mark.slow
def test_a_series_of_one_date_maps_exactly_as_that_raster(scene, models_dir, tmp_path):
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment

    paths, _, _, _, _ = scene
    model = models_dir / "atto_test.onnx"
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "l.gpkg", per_class=4), paths[0])
    kw = dict(feature_ids=ids, device="cpu", classifiers=["logistic"])
    a = train_pixel_head([str(paths[0])], model, feats, names, tmp_path / "a.onnx", series=True, **kw)
    b = train_pixel_head(str(paths[0]), model, feats, names, tmp_path / "b.onnx", **kw)
    assert a["chosen"] == b["chosen"] and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    ma = segment([str(paths[0])], model, tmp_path / "a.tif", head_path=tmp_path / "a.onnx", series=True)
    mb = segment(str(paths[0]), model, tmp_path / "b.tif", head_path=tmp_path / "b.onnx")
    np.testing.assert_array_equal(gdal.Open(ma["output"]).ReadAsArray(), gdal.Open(mb["output"]).ReadAsArray())


def test_mixed_levels_are_each_normalised_by_their_own_rules_and_said(scene, models_dir, tmp_path):
    """An L2A date (no B10, the +1000 offset of baseline 04.00) beside L1C dates."""
    from mpmae_core.runtime.inference.raster import prepare_input, read_block
    from mpmae_core.runtime.models.model import read_metadata

    paths, _, _, _, d = scene
    src = gdal.Open(str(paths[1]))
    keep = [i + 1 for i in range(src.RasterCount) if src.GetRasterBand(i + 1).GetDescription() != "B10"]
    l2a = tmp_path / "S2A_MSIL2A_20170318T102101_T33UUU.tif"
    ds = gdal.Translate(str(l2a), src, bandList=keep, outputType=gdal.GDT_UInt16)
    for i in range(ds.RasterCount):
        band = ds.GetRasterBand(i + 1)
        arr = band.ReadAsArray().astype(np.int32)
        band.WriteArray(np.where(arr > 0, arr + 1000, 0))
    ds.SetMetadata({"ACQUISITION_DATE": "2017-03-18", "PRODUCT_TYPE": "S2MSI2A", "BOA_ADD_OFFSET": "-1000"})
    ds = None
    meta = read_metadata(models_dir / "atto_test.onnx")
    logs = []
    prep = S.prepare_series([str(paths[0]), str(l2a)], meta, log=logs.append)
    assert any("mixes processing levels (L1C, L2A)" in m for m in logs), logs
    assert any("2017-03-18: 1000" in m for m in logs), logs
    values, valid = prep.read_series(0, 0, 64, 64)
    for t, path in enumerate((paths[0], l2a)):
        want, ok = read_block(prepare_input(str(path), meta), 0, 0, 64, 64)
        np.testing.assert_array_equal(valid[t], ok)
        np.testing.assert_allclose(values[t], want, rtol=1e-6)
    assert prep.preps[1].level == "l2a" and prep.preps[1].dn_offset == 1000


def _painted(scene, folder):
    """The after date: the clear crop (a little brighter, with sensor noise) with the clouds of the
    third date, a farm field pasted into a forest and water onto a meadow (real pixels of the scene);
    returns its path and the painted masks."""
    paths, clouds, clear, census, _ = scene
    full = gdal.Open(str(sample.build(verbose=False)["stack"])).ReadAsArray()
    osm = gdal.Open(str(sample.build(verbose=False)["labels"])).ReadAsArray()
    rng = np.random.default_rng(3)
    after = np.clip(clear * 1.02 + rng.normal(0, 15, clear.shape), 1, 65535).astype(clear.dtype)

    def place(cls, within, size=28):
        k = sample.OSM_CLASSES.index(cls) + 1
        for r in range(0, within.shape[0] - size, 4):
            for c in range(0, within.shape[1] - size, 4):
                if (within[r:r + size, c:c + size] == k).mean() > 0.9:
                    return r, c
        raise AssertionError(f"no {cls} place")

    masks = {}
    for into, what in (("forest", "farm"), ("meadow", "water")):
        r, c = place(into, census)
        sr, sc = place(what, osm)
        after[:, r:r + 28, c:c + 28] = full[:, sr:sr + 28, sc:sc + 28]
        m = np.zeros(census.shape, bool)
        m[r:r + 28, c:c + 28] = True
        masks[f"{into} to {what}"] = m
    after[:, clouds[2]] = 0
    path = folder / "S2A_MSIL1C_20170610T102101_T33UUU.tif"
    ds = gdal.GetDriverByName("GTiff").CreateCopy(str(path), gdal.Open(str(paths[2])))
    ds.SetMetadataItem("ACQUISITION_DATE", "2017-06-10")
    for b in range(after.shape[0]):
        ds.GetRasterBand(b + 1).WriteArray(after[b])
    ds = None
    return path, masks


def _grow(mask, n):
    """``mask`` grown by ``n`` pixels (a 3 x 3 square each step)."""
    from scipy import ndimage

    return ndimage.binary_dilation(mask, np.ones((3, 3), bool), iterations=n)


@pytest.mark.slow
def test_change_finds_the_painted_changes_and_not_the_cloud_edges(scene, models_dir, tmp_path):
    from mpmae_core.runtime.heads.change import change_map
    from mpmae_core.runtime.inference.change import THRESHOLD_KEYS, change_magnitude

    paths, clouds, _, _, _ = scene
    after, masks = _painted(scene, tmp_path)
    logs = []
    res = change_magnitude(str(paths[0]), str(after), models_dir / "atto_test.onnx", tmp_path / "c.tif",
                           device="cpu", log=logs.append)
    ds = gdal.Open(res["output"])
    cos, spec = ds.ReadAsArray()
    t = float(ds.GetMetadataItem(THRESHOLD_KEYS["cosine_distance"]))
    assert t == pytest.approx(res["thresholds"]["cosine_distance"], rel=1e-5)
    assert any("suggested threshold on cosine distance (Otsu)" in m and "suggestion" in m for m in logs)
    both = clouds[0] | clouds[2]
    assert np.isnan(cos[both]).all() and np.isfinite(cos[~both]).all()
    painted = masks["forest to farm"] | masks["meadow to water"]
    inner = painted & ~_grow(~painted, 3) & ~both
    edges = _grow(both, 3) & ~both & ~_grow(painted, 4)
    assert edges.sum() > 500 and inner.sum() > 500
    for values in (cos, spec):
        level = np.nanpercentile(values[edges], 95)
        assert np.nanmedian(values[inner]) > 3 * level  # a painted change stands far above a cloud's edge
    assert (cos[inner] > t).mean() > 0.9 and (cos[edges] > t).mean() < 0.02

    # a few labelled examples of each change type, and of no change, map them
    from helpers import point_labels
    from mpmae_core.runtime.io.labels import read_label_file

    rng = np.random.default_rng(0)
    points = []
    for name, m in masks.items():
        rows, cols = np.nonzero(m & ~_grow(~m, 4) & ~both)
        for i in rng.choice(len(rows), 4, replace=False):
            points.append((int(rows[i]), int(cols[i]), name))
    rows, cols = np.nonzero(~_grow(painted, 6) & ~both)
    for i in rng.choice(len(rows), 8, replace=False):
        points.append((int(rows[i]), int(cols[i]), "no change"))
    ref = gdal.Open(str(paths[0]))
    point_labels(tmp_path / "change.gpkg", points, ref.GetProjection(), ref.GetGeoTransform(), field="change")
    feats, names, ids, _ = read_label_file(tmp_path / "change.gpkg", "change", ref.GetProjection())
    out = change_map(str(paths[0]), str(after), models_dir / "atto_test.onnx", tmp_path / "types.tif",
                     features=feats, class_names=names, feature_ids=ids, device="cpu")
    got = gdal.Open(out["output"]).ReadAsArray()
    assert (tmp_path / "types_head.onnx").is_file()
    for name, m in masks.items():
        k = names.index(name)
        assert (got[m & ~_grow(~m, 2) & ~both] == k).mean() > 0.9, name
    still = ~_grow(painted, 3) & ~both
    assert (got[still] == names.index("no change")).mean() > 0.95
    assert (got[both] == 255).all()


def test_otsu_splits_two_modes_where_the_between_class_variance_peaks():
    from mpmae_core.runtime.inference.change import otsu_threshold

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.8, 0.05, 300)])
    edges = np.linspace(0, 2, 401)
    counts = np.histogram(values, edges)[0]
    t = otsu_threshold(counts, edges)
    assert 0.15 < t < 0.65  # between the modes (nearer the larger one, as Otsu is known to be)
    centres = (edges[:-1] + edges[1:]) / 2

    def between(k):  # the definition: the split below edge k
        lo, hi = counts[:k], counts[k:]
        if lo.sum() == 0 or hi.sum() == 0:
            return -1.0
        return lo.sum() * hi.sum() * ((lo * centres[:k]).sum() / lo.sum() - (hi * centres[k:]).sum() / hi.sum()) ** 2

    best = max(between(k) for k in range(1, len(edges) - 1))
    assert between(int(np.argmin(np.abs(edges - t)))) == pytest.approx(best, rel=1e-9)
    assert np.isnan(otsu_threshold(np.zeros(10), np.linspace(0, 1, 11)))


def test_the_change_command_refuses_half_given_options(scene, models_dir, tmp_path, capsys):
    from mmearth.cli import main

    paths = scene[0]
    args = ["change", str(paths[0]), str(paths[1]), str(models_dir / "atto_test.onnx"), str(tmp_path / "c.tif")]
    for extra, says in ((["--map", str(tmp_path / "m.tif")], "--map needs labelled change types"),
                        (["--labels", str(tmp_path / "x.gpkg")], "--labels needs --class-field"),
                        (["--head", str(tmp_path / "h.onnx")], "give the map's file with --map")):
        assert main(args + extra) != 0
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "c.tif").exists()
    series = ",".join(str(p) for p in paths)  # a series where one raster is expected
    assert main(["embed", series, str(models_dir / "atto_test.onnx"), str(tmp_path / "e.tif")]) != 0
    err = capsys.readouterr().err
    assert "names several rasters" in err and "Traceback" not in err
    labels = _labels(scene, tmp_path / "x.gpkg", per_class=2)
    assert main(["train-head", str(paths[0]), str(models_dir / "atto_test.onnx"), str(labels),
                 str(tmp_path / "h.onnx"), "--class-field", "landuse", "--feature-sets", "t-spectra"]) != 0
    err = capsys.readouterr().err
    assert "need a series of dates" in err and "Traceback" not in err and not (tmp_path / "h.onnx").exists()


@pytest.mark.slow
def test_the_panel_session_maps_a_series_as_segment_does(scene, models_dir, tmp_path):
    """The mapping session on a series (the panel's engine): the encoder's temporal medians cached
    once, a preview, the full head, and a map that agrees with segment's for the same head."""
    from mpmae_core.runtime.heads.session import MappingSession
    from mpmae_core.runtime.inference.predict import segment

    paths, clouds, _, _, _ = scene
    model = models_dir / "atto_test.onnx"
    r, c = np.argwhere(clouds[0] & ~clouds[1:].any(0) & (scene[3] == sample.OSM_CLASSES.index("farm") + 1))[0]
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "l.gpkg", extra=[(int(r), int(c), "farm")]), paths[0])
    session = MappingSession(str(paths[0]), model, other_dates=[str(p) for p in paths[1:]], device="cpu",
                             cache_dir=tmp_path / "cache")
    assert session.is_series and any(b.name == "stage1:median" for b in session.cache.blocks)
    session.ensure_cache()
    again = MappingSession(str(paths[0]), model, other_dates=[str(paths[2])], device="cpu", cache_dir=tmp_path / "cache")
    assert not again.ready  # other dates, another cache
    head, cv = session.quick_head(feats, names)
    assert all(":" in b.name for b in head.blocks)  # the reference date is masked at a label
    pv = session.preview(head)
    assert pv["valid"].mean() > 0.9
    logs = []
    res = session.train_full_head(feats, names, tmp_path / "h.onnx", log=logs.append)
    assert any("only the temporal feature sets" in m for m in logs)
    mine = session.map_to_file(res["head"], tmp_path / "panel.tif")
    theirs = segment([str(p) for p in paths], model, tmp_path / "seg.tif", head_path=tmp_path / "h.onnx", device="cpu")
    a, b = gdal.Open(mine["output"]).ReadAsArray(), gdal.Open(theirs["output"]).ReadAsArray()
    np.testing.assert_array_equal(a == 255, b == 255)
    assert (a == b).mean() > 0.98  # the cache stores the maps as float16


def test_a_series_feature_raster_holds_the_reference_and_temporal_blocks(scene, models_dir, tmp_path):
    """``features`` on a series: the reference date's blocks (no data under its clouds) and the
    temporal ones (no data only where no date sees the ground); train-head reuses it."""
    import json

    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import FEATURES_KEY, features

    paths, clouds, _, _, _ = scene
    series = [str(p) for p in paths]
    model = models_dir / "atto_test.onnx"
    wanted = ["spectra", "spectra:median", "spectra:p10", "spectra:p90", "spectra:std", "stage1:median"]
    out = features(series, model, tmp_path / "f.tif", device="cpu", blocks=wanted)
    ds = gdal.Open(out["output"])
    info = json.loads(ds.GetMetadataItem(FEATURES_KEY))
    assert [b[0] for b in info["blocks"]] == wanted
    arr = ds.ReadAsArray()
    assert np.isnan(arr[0][clouds[0]]).all() and np.isfinite(arr[0][~clouds[0]]).all()
    seen = ~clouds.all(0)
    assert np.isfinite(arr[12][seen]).all() and np.isnan(arr[12][~seen]).all()
    want = S.series_features(series, model, tmp_path / "t.tif")
    median = gdal.Open(want["output"]).ReadAsArray()[:12]
    np.testing.assert_allclose(arr[12:24][:, seen], median[:, seen], rtol=1e-6, atol=1e-6)
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "l.gpkg", per_class=3), paths[0])
    res = train_pixel_head(series, model, feats, names, tmp_path / "h.onnx", feature_ids=ids, device="cpu",
                           feature_sets=["spectra", "t-spectra"], classifiers=["logistic"],
                           feature_raster=out["output"])
    assert {s["candidate"].feature_set for s in res["scores"]} >= {"spectra", "t-spectra"}


def test_seasonal_medians_join_the_temporal_features_and_travel_with_the_head(scene, models_dir, tmp_path):
    """--seasons: the median spectra within each window are blocks of the series (one window here
    holds one date: its own spectra, no data under its clouds); a head trained with them names
    their windows, so segment maps with them without being told again."""
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.inference.raster import prepare_input, read_block
    from mpmae_core.runtime.models.model import OnnxModel, read_metadata

    paths, clouds, _, _, _ = scene  # 2017-02-16, 2017-03-18, 2017-04-27
    series = [str(p) for p in paths]
    model = models_dir / "atto_test.onnx"
    meta = read_metadata(model)
    prep = S.prepare_series(series, meta, seasons=["02-01:03-31", "04-01:05-31"])
    names = [b.name for b in prep.blocks]
    assert "spectra:season0201-0331" in names and "spectra:season0401-0531" in names
    x, valid = prep.read_block(0, 0, 192, 256)
    maps = prep.maps_runner(OnnxModel(model, device="cpu"), prep.blocks)(x[None])[0]
    april, ok = read_block(prepare_input(str(paths[2]), meta), 0, 0, 192, 256)
    got = maps["spectra:season0401-0531"]
    np.testing.assert_allclose(got[:, ok], april[:, ok], rtol=1e-6)
    assert np.isnan(got[:, ~ok]).all()
    with pytest.raises(S.SeriesError, match="several dates"):
        S.prepare_source(str(paths[0]), meta, seasons=["02-01:03-31"])
    feats, names, ids = _read_labels(_labels(scene, tmp_path / "l.gpkg", per_class=4), paths[0])
    train_pixel_head(series, model, feats, names, tmp_path / "h.onnx", feature_ids=ids, device="cpu",
                     feature_sets=["t-spectra"], classifiers=["logistic"], seasons=["02-01:03-31", "04-01:05-31"])
    assert "spectra:season0401-0531" in read_metadata(tmp_path / "h.onnx").features
    logs = []
    a = segment(series, model, tmp_path / "a.tif", head_path=tmp_path / "h.onnx", device="cpu", log=logs.append)
    b = segment(series, model, tmp_path / "b.tif", head_path=tmp_path / "h.onnx", device="cpu",
                seasons=["02-01:03-31", "04-01:05-31"])
    assert any("season 0401-0531: 1 of the series' dates" in m for m in logs), logs
    ma, mb = gdal.Open(a["output"]).ReadAsArray(), gdal.Open(b["output"]).ReadAsArray()
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(ma == 255, clouds[2] | clouds[:2].all(0))  # April's clouds: its season is empty
