"""The validation sample design and the accuracy and area report on a real-sized class map: the
embedded scene's OpenStreetMap landuse, with known errors painted in, so the truth is known."""

import json

import numpy as np
import pytest
from osgeo import gdal, ogr

from mpmae_core.data import sample
from mpmae_core.runtime.heads import validation as V

CLASSES = ["water", "forest", "farm", "meadow", "residential"]


@pytest.fixture(scope="module")
def truth_and_map(tmp_path_factory):
    """(truth, class map path): the OSM landuse (its 5 classes, 255 where unlabelled) and a map of it
    that errs: 12 % of farm becomes meadow, 30 % of meadow farm, 20 % of residential farm (in 8 px
    blocks, as a map errs in patches); the other OSM classes are no data."""
    d = tmp_path_factory.mktemp("val")
    lab = gdal.Open(str(sample.labels_path()))
    arr = lab.ReadAsArray().astype(int)
    truth = np.full(arr.shape, 255, np.uint8)  # the OSM landuse ids of these classes -> 0..4, the rest unlabelled
    for k, name in enumerate(CLASSES):
        truth[arr == sample.OSM_CLASSES.index(name) + 1] = k
    rng = np.random.default_rng(0)
    blocks = rng.random((truth.shape[0] // 8 + 1, truth.shape[1] // 8 + 1))
    noise = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[: truth.shape[0], : truth.shape[1]]
    mapped = truth.copy()
    mapped[(truth == 2) & (noise < 0.12)] = 3  # farm -> meadow
    mapped[(truth == 3) & (noise < 0.30)] = 2  # meadow -> farm
    mapped[(truth == 4) & (noise < 0.20)] = 2  # residential -> farm
    path = d / "map.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(path), truth.shape[1], truth.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform(lab.GetGeoTransform())
    ds.SetProjection(lab.GetProjection())
    band = ds.GetRasterBand(1)
    band.WriteArray(mapped)
    band.SetNoDataValue(255)
    band.SetCategoryNames(CLASSES)
    ds = None
    return truth, mapped, path


def _points(path, layer):
    ds = ogr.Open(str(path))  # OGR: the dataset must outlive its layer
    return [f.GetGeometryRef().Clone() for f in ds.GetLayer(layer)]


def _wkts(path):
    return [g.ExportToWkt() for g in _points(path, "validation")]


def _label(points, truth, gt, field="reference"):
    """Fill the reference field from the truth, as an analyst would from better imagery."""
    ds = ogr.Open(str(points), 1)
    layer = ds.GetLayer("validation")
    for feat in layer:
        p = feat.GetGeometryRef()
        c, r = int((p.GetX() - gt[0]) / gt[1]), int((p.GetY() - gt[3]) / gt[5])
        feat.SetField(field, CLASSES[truth[r, c]] if truth[r, c] != 255 else None)
        layer.SetFeature(feat)
    ds = None


def test_a_design_labelled_from_the_truth_estimates_the_true_accuracy_and_areas(truth_and_map, tmp_path):
    truth, mapped, path = truth_and_map
    out = tmp_path / "val.gpkg"
    design = V.sample_design(path, out, target_se=0.02, min_per_class=40, seed=1)
    counts = np.bincount(mapped[mapped != 255], minlength=5)
    assert [s["pixels"] for s in design["strata"]] == counts.tolist()
    assert all(s["sample"] >= 40 for s in design["strata"]) and design["size"] >= design["size_eq13"]
    ds = ogr.Open(str(out))
    layer = ds.GetLayer("validation")
    assert layer.GetFeatureCount() == design["size"]
    gt = gdal.Open(str(path)).GetGeoTransform()
    per, where = {}, {}
    for feat in layer:
        assert not feat.IsFieldSetAndNotNull("reference")  # empty, for the analyst
        p = feat.GetGeometryRef()
        c, r = int((p.GetX() - gt[0]) / gt[1]), int((p.GetY() - gt[3]) / gt[5])
        assert CLASSES[mapped[r, c]] == feat.GetField("stratum")  # each point lies in its stratum
        per[feat.GetField("stratum")] = per.get(feat.GetField("stratum"), 0) + 1
        where.setdefault(mapped[r, c], []).append((r, c))
    assert per == {s["stratum"]: s["sample"] for s in design["strata"]}
    for k, rc in where.items():  # uniform within each stratum: the points' mean place is the stratum's
        rows, cols = np.nonzero(mapped == k)
        got = np.array(rc, float).mean(0)
        for g, pop in zip(got, (rows, cols)):
            assert abs(g - pop.mean()) < 4 * pop.std() / np.sqrt(len(rc)), (CLASSES[k], g, pop.mean())
    assert ds.GetLayer("design").GetFeatureCount() == 5
    ds = None
    _label(out, truth, gt)
    report = tmp_path / "acc.html"
    res = V.assess_map(path, out, report=report, table=tmp_path / "acc.csv", figures=tmp_path / "acc.json")
    valid = mapped != 255
    true_oa = (mapped[valid] == truth[valid]).mean()
    oa = res["overall_accuracy"]
    assert abs(oa["estimate"] - true_oa) < 3 * oa["se"] and oa["se"] < 0.03
    covered = 0
    for k, c in enumerate(CLASSES):
        est = res["per_class"][k]["area_proportion"]
        true_p = (truth[valid] == k).mean()
        covered += est["low"] <= true_p <= est["high"]
        assert res["per_class"][k]["mapped_area"] == pytest.approx(counts[k] * 0.01)  # 10 m pixels: 0.01 ha
    assert covered >= 3  # one sample (below: twelve; test_accuracy repeats a thousand times)
    # the file pipeline equals the estimator on the points' own map and reference classes
    from mpmae_core.runtime.heads.accuracy import assess

    m, r = [], []
    vds = ogr.Open(str(out))  # OGR: the dataset must outlive its layer
    for feat in vds.GetLayer("validation"):
        p = feat.GetGeometryRef()
        c, rr = int((p.GetX() - gt[0]) / gt[1]), int((p.GetY() - gt[3]) / gt[5])
        m.append(int(mapped[rr, c]))
        r.append(CLASSES.index(feat.GetField("reference")))
    direct = assess(m, r, m, dict(enumerate(counts.tolist())), CLASSES)
    assert oa["estimate"] == pytest.approx(direct.overall.value) and oa["se"] == pytest.approx(direct.overall.se)
    assert res["estimator"] == "stratified" and res["area_unit"] == "ha"
    assert json.loads((tmp_path / "acc.json").read_text())["overall_accuracy"] == oa
    text = report.read_text()
    assert "stratified estimator" in text and "Overall accuracy" in text and "not a map accuracy" in text
    assert (tmp_path / "acc.csv").read_text().splitlines()[0].startswith("class,users_accuracy")
    # the same seed, the same points; another seed, others
    again = V.sample_design(path, tmp_path / "again.gpkg", target_se=0.02, min_per_class=40, seed=1)
    assert again["strata"] == design["strata"]
    a, b = (_wkts(p) for p in (out, tmp_path / "again.gpkg"))
    assert sorted(a) == sorted(b)


def test_points_stay_away_from_the_training_labels(truth_and_map, tmp_path):
    _, mapped, path = truth_and_map
    labels = tmp_path / "labels.gpkg"
    sample.label_points(labels, per_class=6, seed=0)
    out = tmp_path / "val.gpkg"
    V.sample_design(path, out, size=400, min_per_class=20, exclude_labels=labels, buffer_m=150, seed=2)
    lab_pts, val_pts = _points(labels, 0), _points(out, "validation")
    nearest = min(v.Distance(p) for v in val_pts for p in lab_pts)
    assert nearest > 150 and len(val_pts) >= 400


def test_the_command_line_and_bad_input(truth_and_map, tmp_path, capsys):
    from mmearth.cli import main

    truth, _, path = truth_and_map
    out = tmp_path / "v.gpkg"
    assert main(["sample-design", str(path), str(out), "--size", "300", "--min-per-class", "30",
                 "--users-accuracy", "water=0.95,forest=0.9,farm=0.9,meadow=0.6,residential=0.7"]) == 0
    _label(out, truth, gdal.Open(str(path)).GetGeoTransform())
    assert main(["assess", str(path), str(out), str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert "overall accuracy" in err and (tmp_path / "r.json").is_file() and (tmp_path / "r.csv").is_file()
    assert main(["assess", str(path), str(out), str(tmp_path / "s.html"), "--design", "simple"]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["estimator"] == "simple random"
    # bad input: a message, no traceback, nothing written
    ds = ogr.Open(str(out), 1)
    layer = ds.GetLayer("validation")
    feat = layer.GetNextFeature()
    feat.SetField("reference", "wetland")
    layer.SetFeature(feat)
    ds = None
    capsys.readouterr()
    assert main(["assess", str(path), str(out), str(tmp_path / "bad.html")]) != 0
    err = capsys.readouterr().err
    assert "wetland" in err and "not classes of the map" in err and "Traceback" not in err
    assert not (tmp_path / "bad.html").exists() and not (tmp_path / "bad.json").exists()
    assert main(["assess", str(path), str(out), str(tmp_path / "bad.html"), "--reference-field", "truth"]) != 0
    assert "no field 'truth'" in capsys.readouterr().err
    assert main(["sample-design", str(path), str(tmp_path / "x.gpkg"), "--users-accuracy", "1.5"]) != 0
    assert "strictly between 0 and 1" in capsys.readouterr().err and not (tmp_path / "x.gpkg").exists()
    assert main(["sample-design", str(path), str(path)]) != 0  # never overwrite an input
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_repeated_designs_cover_the_true_areas(truth_and_map, tmp_path):
    """Twelve designs (seeds), each labelled from the truth and assessed through the files: the 95 %
    intervals of the overall accuracy and of the areas of the classes the map confuses (farm, meadow,
    residential) hold the truth in most of them."""
    truth, mapped, path = truth_and_map
    gt = gdal.Open(str(path)).GetGeoTransform()
    valid = mapped != 255
    hits = []
    for seed in range(2, 14):
        out = tmp_path / f"v{seed}.gpkg"
        V.sample_design(path, out, target_se=0.02, min_per_class=40, seed=seed)
        _label(out, truth, gt)
        res = V.assess_map(path, out)
        oa = res["overall_accuracy"]
        hits.append(oa["low"] <= (mapped[valid] == truth[valid]).mean() <= oa["high"])
        for k in (2, 3, 4):
            e = res["per_class"][k]["area_proportion"]
            hits.append(e["low"] <= (truth[valid] == k).mean() <= e["high"])
    assert np.mean(hits) >= 0.85, np.mean(hits)
