"""MMEarth data pipeline on generated files in the reference layout: every nodata case, errors,
both storage formats, crops, and a loader that resumes exactly."""

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from mpmae_core import registry
from mpmae_core.data import synthetic
from mpmae_core.data.convert import convert
from mpmae_core.data.layout import side_file_paths
from mpmae_core.data.loader import EpochSampler, make_loader
from mpmae_core.data.mmearth import DataError, MMEarthDataset, class_lut, invalid_mask, onehot_label, tile_nodata

CASES = synthetic.CASES


@pytest.fixture(scope="module")
def h5(tmp_path_factory):
    return synthetic.write_synthetic(tmp_path_factory.mktemp("mmearth"), n_tiles=16, size=64, seed=0)


@pytest.fixture(scope="module")
def npy(h5, tmp_path_factory):
    return convert(h5, tmp_path_factory.mktemp("fast") / "data_synthetic_npy")


def _full(path, **kw):
    kw.setdefault("tasks", "all_mod")
    return MMEarthDataset(path, split=None, crop=None, **kw)


def _raw(h5, name, index):
    with h5py.File(h5, "r") as f:
        return f[name][index]


def test_layout_is_the_reference_layout(h5):
    with h5py.File(h5, "r") as f:
        assert "SYNTHETIC" in f.attrs["SYNTHETIC"]
        for name, spec in registry.STORAGE.items():
            ds = f[name]
            assert ds.dtype == np.dtype(spec.dtype), name
            assert ds.compression == "gzip" and ds.chunks == (1,) + ds.shape[1:], name
        assert f["sentinel2"].shape == (16, 13, 64, 64)
        assert f["eco_region"].shape == (16, 846)
        meta = f["metadata"][()]
        # the v001 release's compound (torchgeo's description of the files agrees)
        assert meta.dtype == np.dtype([("meta_id", "S10"), ("S2_type", "S3")])
        assert [m["meta_id"] for m in meta] == [str(i).encode() for i in range(16)]
        assert {m["S2_type"] for m in meta} == {b"l1c", b"l2a"}
    side = side_file_paths(h5)
    assert set(json.loads(side["splits"].read_text())) == {"train", "val", "test"}
    info = json.loads(side["tile_info"].read_text())
    assert all(v["SYNTHETIC"] for v in info.values())
    assert len(json.loads(side["band_stats"].read_text())["sentinel2_l1c"]["mean"]) == 13


def test_s2_normalised_with_the_tiles_own_level_statistics(h5):
    ds = _full(h5)
    stats = json.loads(side_file_paths(h5)["band_stats"].read_text())
    for index in (0, 1):  # tile 0 is L1C, tile 1 is L2A (with a nodata corner)
        level = "l2a" if index % 2 else "l1c"
        raw = _raw(h5, "sentinel2", index).astype(np.float64)
        keep = [registry.S2_STORAGE_ORDER.index(b) for b in registry.S2_MMEARTH_BANDS]
        mean = np.array(stats[f"sentinel2_{level}"]["mean"])[keep, None, None]
        std = np.array(stats[f"sentinel2_{level}"]["std"])[keep, None, None]
        expected = (raw[keep] - mean) / std
        expected[raw[keep] == 0] = np.nan
        got = ds[index]["sentinel2"].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    corner = ds[CASES["s2_nodata_corner"]]["sentinel2"]
    assert torch.isnan(corner[:, :16, :16]).all() and not torch.isnan(corner[:, 16:, 16:]).any()


def test_band_selection_by_name(h5):
    ds = _full(h5, tasks="S2", s2_bands=("B4", "B3", "B2", "B8A", "B8"))
    full = _full(h5, tasks="S2")[0]["sentinel2"]
    got = ds[0]["sentinel2"]
    order = list(registry.S2_MMEARTH_BANDS)
    for i, band in enumerate(("B4", "B3", "B2", "B8A", "B8")):
        torch.testing.assert_close(got[i], full[order.index(band)])


def test_absent_and_nodata_cases(h5):
    ds = _full(h5)
    tasks = list(ds.tasks)
    s1 = ds[CASES["sentinel1_absent"]]
    assert torch.isnan(s1["sentinel1"]).all() and not s1["present"][tasks.index("sentinel1")]
    normal = ds[0]
    assert torch.isnan(normal["sentinel1"][[2, 3, 6, 7]]).all()  # HH / HV never acquired
    assert not torch.isnan(normal["sentinel1"][[0, 1, 4, 5]]).any()
    ch = ds[CASES["canopy_nodata_half"]]["canopy_height_eth"]
    assert torch.isnan(ch[:, :, 32:]).all() and not torch.isnan(ch[:, :, :32]).any()
    aster = ds[CASES["aster_nodata"]]["aster"]
    assert torch.isnan(aster[:, -6:]).all() and not torch.isnan(aster[:, :-6]).any()
    era = ds[CASES["era5_absent"]]
    assert torch.isnan(era["era5"]).all() and not era["present"][tasks.index("era5")]
    bio = ds[CASES["biome_absent"]]
    assert bio["biome"].item() == -1 and bio["eco_region"].item() == -1
    assert normal["biome"].item() == int(np.argmax(_raw(h5, "biome", 0)))


def test_class_maps_keep_every_real_class(h5):
    ds = _full(h5)
    i = CASES["classes_nodata"]
    dw, esa = ds[i]["dynamic_world"], ds[i]["esa_worldcover"]
    raw_dw, raw_esa = _raw(h5, "dynamic_world", i)[0], _raw(h5, "esa_worldcover", i)[0]
    assert (dw[:8] == -1).all()
    np.testing.assert_array_equal(dw.numpy()[raw_dw > 0], raw_dw[raw_dw > 0].astype(int) - 1)
    assert (esa[:8, :8] == -1).all() and (esa[-8:, -8:] == -1).all()  # 0 and 255 are both nodata
    trees = raw_esa == 10
    assert trees.any() and (esa.numpy()[trees] == 0).all()  # tree cover is class 0, kept
    assert set(np.unique(esa.numpy())) <= set(range(-1, 11))


def test_pure_rules():
    lut = class_lut(registry.ESA_WORLDCOVER_CLASSES)
    assert lut[10] == 0 and lut[95] == 9 and lut[100] == 10 and lut[0] == -1 and lut[255] == -1 and lut[15] == -1
    raw = np.array([5, -1, 7], dtype=np.int8)
    assert invalid_mask(raw, (255,), raw.dtype).tolist() == [False, True, False]  # 255 written to int8 is -1
    f = np.array([1.0, np.nan, -np.inf, 3.0], dtype=np.float32)
    assert invalid_mask(f, (3.0,), f.dtype).tolist() == [False, True, True, True]
    assert tile_nodata({"NO_DATA": {"aster": -9999}}, "aster") == (-9999.0,)
    assert tile_nodata({"NO_DATA": [0, "x", 7]}, "aster") == (0.0, 7.0)
    assert tile_nodata({}, "aster") == ()
    assert onehot_label(np.array([0, 0, 1, 0]), ()) == 2
    assert onehot_label(np.array([0, 1, 1, 0]), ()) == -1
    assert onehot_label(np.zeros(4), ()) == -1


def test_tile_nodata_entry_is_honoured(h5, tmp_path):
    copy = tmp_path / h5.name
    shutil.copy(h5, copy)
    for kind, path in side_file_paths(h5).items():
        shutil.copy(path, side_file_paths(copy)[kind])
    elevation = int(_raw(h5, "aster", 0)[0, 10, 10])
    info_path = side_file_paths(copy)["tile_info"]
    info = json.loads(info_path.read_text())
    info["0"]["NO_DATA"] = {"aster": elevation}
    info_path.write_text(json.dumps(info))
    aster = _full(copy, tasks=["sentinel2", "aster"])[0]["aster"]
    raw = _raw(h5, "aster", 0)
    assert torch.isnan(aster[0]).numpy()[raw[0] == elevation].all()
    assert not torch.isnan(aster[0]).numpy()[raw[0] != elevation].any()


def test_one_crop_shared_by_every_pixel_modality(h5):
    ds = MMEarthDataset(h5, split="train", crop=40, seed=3)
    pos, epoch = 2, 5
    sample = ds[(pos, epoch)]
    index = int(ds.indices[pos])
    y, x, s = ds.crop_window(index, epoch)
    assert s == 40 and sample["sentinel2"].shape[-1] == 40
    raw_dw = _raw(h5, "dynamic_world", index)[0, y:y + s, x:x + s]
    np.testing.assert_array_equal(sample["dynamic_world"].numpy(), raw_dw.astype(int) - 1)
    raw_aster = _raw(h5, "aster", index)[:, y:y + s, x:x + s]
    stats = json.loads(side_file_paths(h5)["band_stats"].read_text())["aster"]
    np.testing.assert_allclose(sample["aster"][0].numpy(), (raw_aster[0] - stats["mean"][0]) / stats["std"][0], rtol=1e-5, atol=1e-6)
    assert ds.crop_window(index, epoch) == ds.crop_window(index, epoch)
    assert len({ds.crop_window(index, e) for e in range(20)}) > 5


def test_fast_format_gives_identical_samples(h5, npy):
    a, b = _full(h5), _full(npy)
    assert len(a) == len(b) == 16
    for i in range(16):
        sa, sb = a[i], b[i]
        for key in sa:
            if key == "tile_id":
                assert sa[key] == sb[key]
            else:
                torch.testing.assert_close(sa[key], sb[key], equal_nan=True)


def _copy_with_side_files(h5, tmp_path):
    copy = tmp_path / h5.name
    shutil.copy(h5, copy)
    for kind, path in side_file_paths(h5).items():
        shutil.copy(path, side_file_paths(copy)[kind])
    return copy


def test_missing_side_file(h5, tmp_path):
    copy = _copy_with_side_files(h5, tmp_path)
    side_file_paths(copy)["tile_info"].unlink()
    with pytest.raises(DataError, match="data_synthetic_tile_info.json' is missing"):
        MMEarthDataset(copy, crop=32)


def test_missing_and_misshapen_datasets(h5, tmp_path):
    copy = _copy_with_side_files(h5, tmp_path)
    with h5py.File(copy, "a") as f:
        del f["aster"]
        data = f["sentinel1"][:, :5]
        del f["sentinel1"]
        f.create_dataset("sentinel1", data=data)
    with pytest.raises(DataError, match="dataset 'sentinel1'.*shape \\(16, 5, 64, 64\\), expected \\(16, 8, H, H\\)"):
        MMEarthDataset(copy, tasks=["sentinel2", "sentinel1"], crop=32)
    with pytest.raises(DataError, match="dataset 'aster' is missing"):
        MMEarthDataset(copy, tasks=["sentinel2", "aster"], crop=32)
    MMEarthDataset(copy, tasks="S2", crop=32)  # what is not asked for is not needed


def test_band_stats_that_do_not_fit(h5):
    stats = json.loads(side_file_paths(h5)["band_stats"].read_text())
    bad = dict(stats, sentinel2_l1c={"mean": [1.0] * 5, "std": [1.0] * 5})
    with pytest.raises(DataError, match="sentinel2_l1c' have 5 means.*does not fit"):
        MMEarthDataset(h5, band_stats=bad, crop=32)
    bad = dict(stats, sentinel1={"mean": [0.0] * 3, "std": [1.0] * 3})
    with pytest.raises(DataError, match="'sentinel1' have 3 means.*8 channels"):
        MMEarthDataset(h5, band_stats=bad, crop=32)
    no_s1 = {k: v for k, v in stats.items() if k != "sentinel1"}
    ds = MMEarthDataset(h5, split=None, crop=32, tasks=["sentinel2", "sentinel1"], band_stats=no_s1)
    ds[CASES["sentinel1_absent"]]  # absent there: nothing to normalise
    with pytest.raises(DataError, match="no 'sentinel1' entry, but tile 0 has sentinel1 data"):
        ds[0]
    twelve = {k: v for k, v in stats.items()}
    twelve["sentinel2_l1c"] = {"mean": [1.0] * 12, "std": [2.0] * 12}  # the 12-band MMEarth order is accepted
    ds = MMEarthDataset(h5, split=None, crop=None, tasks="S2", band_stats=twelve)
    raw = _raw(h5, "sentinel2", 0)
    np.testing.assert_allclose(ds[0]["sentinel2"][7].numpy(), (raw[7] - 1.0) / 2.0, rtol=1e-6)  # B8A is storage band 7


def test_crop_larger_than_tiles(h5):
    with pytest.raises(DataError, match="crop 112 is larger than the tiles \\(64 px\\)"):
        MMEarthDataset(h5, crop=112)


def test_split_index_out_of_range(h5, tmp_path):
    copy = _copy_with_side_files(h5, tmp_path)
    path = side_file_paths(copy)["splits"]
    splits = json.loads(path.read_text())
    splits["train"].append(999)
    path.write_text(json.dumps(splits))
    with pytest.raises(DataError, match="split 'train' holds tile index 999.*16 tiles"):
        MMEarthDataset(copy, crop=32)
    with pytest.raises(DataError, match="split 'holdout' is not in"):
        MMEarthDataset(h5, split="holdout", crop=32)


def test_sampler_resumes_mid_epoch_and_shards_ranks():
    s = EpochSampler(50, batch_size=4, seed=7)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=5)
    assert list(s) == full[20:]
    s.set_epoch(4)
    assert [i for i, _ in list(s)] != [i for i, _ in full]
    ranks = [EpochSampler(50, 4, seed=7, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(3)
    a, b = ({i for i, _ in r} for r in ranks)
    assert not a & b and len(a) == len(b) == 24


def test_loader_batches_are_identical_with_workers_and_after_resume(npy):
    ds = MMEarthDataset(npy, split=None, crop=32, tasks="all_mod", seed=1)

    def batches(workers, start=0):
        loader = make_loader(ds, batch_size=4, workers=workers, seed=2)
        loader.sampler.set_epoch(1, start_batch=start)
        return [b for b in loader]

    plain, parallel, resumed = batches(0), batches(2), batches(0, start=2)
    assert len(plain) == 4 and len(resumed) == 2
    for x, y in zip(plain, parallel):
        torch.testing.assert_close(x["sentinel2"], y["sentinel2"], equal_nan=True)
    for x, y in zip(plain[2:], resumed):
        assert torch.equal(x["index"], y["index"])
        torch.testing.assert_close(x["esa_worldcover"], y["esa_worldcover"])


def test_batches_feed_the_model(npy):
    from mpmae_core.models import build_mpmae

    ds = MMEarthDataset(npy, split=None, crop=32, tasks="all_mod")
    batch = next(iter(make_loader(ds, batch_size=4, workers=0)))
    model = build_mpmae("atto", "all_mod", patch_size=16)
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def test_masks_are_drawn_per_sample_like_crops(h5):
    ds = MMEarthDataset(h5, split=None, crop=48, tasks="S2", mask_ratio=0.6, patch_size=16, seed=4)
    a, b = ds[(3, 1)], ds[(3, 1)]
    assert a["mask"].dtype == torch.bool and a["mask"].shape == (3, 3)
    assert torch.equal(a["mask"], b["mask"])
    assert int((~a["mask"]).sum()) == int(9 * 0.4)
    assert len({tuple(ds[(3, e)]["mask"].flatten().tolist()) for e in range(30)}) > 5
    with pytest.raises(DataError, match="multiple of the patch size 16"):
        MMEarthDataset(h5, split=None, crop=40, tasks="S2", mask_ratio=0.6, patch_size=16)


# The v001 release's layout, written down here independently of mpmae_core.data.layout (from the
# reference notes and torchgeo's description of the same files): a drift in our writer fails here.
RELEASE_DATASETS = {
    "sentinel2": ("uint16", 13), "sentinel2_cloudmask": ("uint16", 1), "sentinel2_cloudprod": ("uint16", 1),
    "sentinel2_scl": ("uint8", 1), "sentinel1": ("float32", 8), "aster": ("int16", 2),
    "canopy_height_eth": ("int8", 2), "dynamic_world": ("uint8", 1), "esa_worldcover": ("uint8", 1),
    "era5": ("float32", 12), "lat": ("float32", 2), "lon": ("float32", 2), "month": ("float32", 2),
    "biome": ("uint8", 14), "eco_region": ("uint16", 846),
}
RELEASE_BAND_NAMES = {
    "aster": ["b1", "slope"], "dynamic_world": ["label"], "esa_worldcover": ["Map"],
    "canopy_height_eth": ["height", "std"], "sentinel2_cloudmask": ["QA60"], "sentinel2_scl": ["SCL"],
    "lat": ["sin", "cos"], "month": ["sin_month", "cos_month"],
}


def test_synthetic_file_is_exactly_the_release_layout(h5):
    with h5py.File(h5, "r") as f:
        assert set(f.keys()) == set(RELEASE_DATASETS) | {"metadata"}
        for name, (dtype, channels) in RELEASE_DATASETS.items():
            assert f[name].dtype == np.dtype(dtype), name
            assert f[name].shape[:2] == (16, channels), name
            assert f[name].ndim == (2 if name in ("era5", "lat", "lon", "month", "biome", "eco_region") else 4)
        meta = f["metadata"][()]
    info = json.loads(side_file_paths(h5)["tile_info"].read_text())
    ids = [m[0].decode() for m in meta]
    assert set(info) == set(ids)  # tile_info is keyed by the metadata id
    for tid, entry in info.items():
        assert {"S2_DATE", "S2_type", "CRS", "lat", "lon", "NO_DATA", "BANDS"} <= set(entry)
        bands = entry["BANDS"]
        for modality, names in RELEASE_BAND_NAMES.items():
            assert bands[modality] == names, (tid, modality)
        s2 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12"]
        assert bands["sentinel2"] == (s2 if entry["S2_type"] == "l1c" else [b for b in s2 if b != "B10"])
        if bands["era5"] is not None:  # YYYYMM of the previous and current month, then the year
            y, m = int(entry["S2_DATE"][:4]), int(entry["S2_DATE"][5:7])
            assert bands["era5"][4] == f"{y}{m:02d}_temperature_2m" and len(bands["era5"]) == 12
    stats = json.loads(side_file_paths(h5)["band_stats"].read_text())
    assert {"sentinel2_l1c", "sentinel2_l2a", "sentinel1", "aster", "canopy_height_eth", "era5"} <= set(stats)


def test_reader_opens_a_file_written_as_the_release_writes_it(tmp_path):
    """A v001-style file built here with h5py alone (not our writer): meta_id S10, S2_type S3."""
    rng = np.random.default_rng(3)
    n, size = 4, 32
    path = tmp_path / "data_100k_v001.h5"
    with h5py.File(path, "w") as f:
        for name, (dtype, channels) in RELEASE_DATASETS.items():
            shape = (n, channels) if name in ("era5", "lat", "lon", "month", "biome", "eco_region") else \
                (n, channels, size, size)
            data = rng.integers(1, 3000, shape) if np.dtype(dtype).kind in "iu" else rng.normal(size=shape)
            f.create_dataset(name, data=data.astype(dtype))
        meta = np.array([(str(i).encode(), t) for i, t in enumerate([b"l1c", b"l2a", b"l2a", b"l1c"])],
                        dtype=[("meta_id", "S10"), ("S2_type", "S3")])
        f.create_dataset("metadata", data=meta)
    side = side_file_paths(path)
    side["splits"].write_text(json.dumps({"train": [0, 1, 2, 3], "val": [], "test": []}))
    stats = {k: {"mean": [1000.0] * 13, "std": [500.0] * 13} for k in ("sentinel2_l1c", "sentinel2_l2a")}
    side["band_stats"].write_text(json.dumps(stats))
    side["tile_info"].write_text(json.dumps({str(i): {"S2_DATE": "2018-07-16", "S2_type": t, "CRS": "EPSG:32721",
                                                      "lat": 1.0, "lon": 2.0}
                                             for i, t in enumerate(["l1c", "l2a", "l2a", "l1c"])}))
    ds = MMEarthDataset(path, split="train", tasks=["sentinel2"], crop=None)
    assert [ds[i]["tile_id"] for i in range(4)] == ["0", "1", "2", "3"]
    with h5py.File(path, "r") as f:
        raw = f["sentinel2"][1].astype(np.float64)
    got = ds[1]["sentinel2"].numpy()
    b8 = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12"].index("B8")
    np.testing.assert_allclose(got[8], (raw[b8] - 1000.0) / 500.0, rtol=1e-5)  # model band 9 is B8
    # an older file whose field 0 is called tile_id reads the same way
    from mpmae_core.data.layout import read_metadata

    old = np.array([(b"7", b"L2A")], dtype=[("tile_id", "S100"), ("S2_type", "S10")])
    assert read_metadata(old) == (["7"], ["l2a"])
