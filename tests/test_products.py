"""Sentinel-2 as it is downloaded: SAFE products (folder, zip, MTD xml), band folders and STAC
items read as one virtual 10 m stack, built from the embedded real scene's own JP2 band files."""

import json
import random
import shutil
import zipfile

import numpy as np
import pytest
from osgeo import gdal

from mpmae_core import registry
from mpmae_core.data import sample
from mpmae_core.runtime.io import products as P
from mpmae_core.runtime.io.inspect import inspect_raster

SAFE_L1C = "S2A_MSIL1C_20170216T102101_N0204_R065_T33UUU_20170216T102204.SAFE"
GRANULE = "GRANULE/L1C_T33UUU_A008642_20170216T102204/IMG_DATA"


BAND_NAMES = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]


def mtd(level: str = "1C", baseline: str = "02.04", offset: bool = False, files=()) -> str:
    """A product's MTD_MSIL1C.xml / MTD_MSIL2A.xml with what GDAL's SENTINEL2 driver reads too (its
    band list and granule files), so QGIS opens the product as ESA's are opened."""
    offsets = ""
    if offset:
        tag = "RADIO_ADD_OFFSET" if level == "1C" else "BOA_ADD_OFFSET"
        offsets = "".join(f'<{tag} band_id="{i}">-1000</{tag}>' for i in range(13))
    xsd = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level}.xsd"
    names = "".join(f"<BAND_NAME>{b}</BAND_NAME>" for b in BAND_NAMES)
    images = "".join(f"<IMAGE_FILE>{f}</IMAGE_FILE>" for f in files)
    granule = GRANULE.split("/")[1]
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-{level}_User_Product xmlns:n1="{xsd}" '
            f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{xsd}">'
            f"<n1:General_Info><Product_Info><PRODUCT_START_TIME>2017-02-16T10:21:01.026Z</PRODUCT_START_TIME>"
            f"<PROCESSING_LEVEL>Level-{level}</PROCESSING_LEVEL><PRODUCT_TYPE>S2MSI{level}</PRODUCT_TYPE>"
            f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE><SPACECRAFT_NAME>Sentinel-2A</SPACECRAFT_NAME>"
            f'<Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>'
            f"<Band_List>{names}</Band_List></Query_Options><Product_Organisation><Granule_List>"
            f'<Granule granuleIdentifier="{granule}" imageFormat="JPEG2000">{images}</Granule></Granule_List>'
            f"</Product_Organisation></Product_Info><Product_Image_Characteristics><QUANTIFICATION_VALUE "
            f'unit="none">10000</QUANTIFICATION_VALUE>{offsets}</Product_Image_Characteristics></n1:General_Info>'
            f"</n1:Level-{level}_User_Product>")


def tile_mtd(level: str, band_file) -> str:
    """The granule's MTD_TL.xml: its CRS and, per resolution, its size and corner (GDAL's driver reads it)."""
    ref = gdal.Open(str(band_file))
    gt, w, h, ref = ref.GetGeoTransform(), ref.RasterXSize, ref.RasterYSize, None
    sizes = "".join(f'<Size resolution="{r}"><NROWS>{h * 10 // r}</NROWS><NCOLS>{w * 10 // r}</NCOLS></Size>'
                    for r in (10, 20, 60))
    corners = "".join(f'<Geoposition resolution="{r}"><ULX>{gt[0]:.0f}</ULX><ULY>{gt[3]:.0f}</ULY><XDIM>{r}</XDIM>'
                      f"<YDIM>-{r}</YDIM></Geoposition>" for r in (10, 20, 60))
    return (f'<?xml version="1.0" encoding="UTF-8"?><n1:Level-{level}_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.'
            f'esa.int/PSD/S2_PDI_Level-{level}_Tile_Metadata.xsd"><n1:Geometric_Info><Tile_Geocoding metadataLevel='
            f'"Brief"><HORIZONTAL_CS_NAME>WGS84 / UTM zone 33N</HORIZONTAL_CS_NAME><HORIZONTAL_CS_CODE>EPSG:32633'
            f"</HORIZONTAL_CS_CODE>{sizes}{corners}</Tile_Geocoding></n1:Geometric_Info></n1:Level-{level}_Tile_ID>")


@pytest.fixture(scope="module")
def bands_dir():
    sample.build(verbose=False)
    return sample.scene_dir() / "IMG_DATA"


def make_safe(root, bands_dir, level="1C", baseline="02.04", offset=False, drop=()):
    safe = root / SAFE_L1C.replace("MSIL1C", f"MSIL{level}")
    img = safe / GRANULE
    img.mkdir(parents=True)
    files = []
    for f in sorted(bands_dir.glob("*.jp2")):
        if not any(f.stem.endswith(d) for d in drop):
            shutil.copy(f, img / f.name)
            files.append(f"{GRANULE}/{f.stem}")
    (safe / f"MTD_MSIL{level}.xml").write_text(mtd(level, baseline, offset, files))
    (img.parent / "MTD_TL.xml").write_text(tile_mtd(level, next(bands_dir.glob("*_B02.jp2"))))
    return safe


def zip_folder(folder, out):
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            z.write(p, str(p.relative_to(folder.parent)))
    return out


def read_stack(path) -> tuple:
    ds = gdal.Open(str(path))
    names = [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)]
    return names, ds.ReadAsArray(), ds.GetGeoTransform(), ds.GetMetadata()


_HAND = {}


def hand_stack() -> tuple:
    """The scene's band files stacked by hand, independently of io.products: each band read whole
    and its pixels replicated onto the 10 m grid (nearest neighbour on an aligned grid)."""
    if not _HAND:
        files = {registry.canonical_s2_band(f.stem.rsplit("_", 1)[1]): f
                 for f in (sample.scene_dir() / "IMG_DATA").glob("*.jp2")}
        names = [b for b in registry.S2_PRODUCT_ORDER if b in files]
        ref = gdal.Open(str(files["B2"]))
        h, w, gt = ref.RasterYSize, ref.RasterXSize, ref.GetGeoTransform()
        bands = []
        for b in names:
            arr = gdal.Open(str(files[b])).ReadAsArray()
            fy, fx = h // arr.shape[0], w // arr.shape[1]
            assert arr.shape[0] * fy == h and arr.shape[1] * fx == w
            bands.append(np.repeat(np.repeat(arr, fy, axis=0), fx, axis=1))
        _HAND["stack"] = (names, np.stack(bands), gt)
    return _HAND["stack"]


@pytest.mark.parametrize("form", ["folder", "zip", "mtd"])
def test_a_safe_product_stacks_like_the_hand_stack(form, bands_dir, tmp_path):
    safe = make_safe(tmp_path, bands_dir)
    source = {"folder": safe, "zip": zip_folder(safe, tmp_path / "product.zip"),
              "mtd": safe / "MTD_MSIL1C.xml"}[form]
    assert P.is_product(source)
    vrt = P.stack_path(source, tmp_path / "stacks")
    names, arr, gt, meta = read_stack(vrt)
    want_names, want, want_gt = hand_stack()
    assert names == want_names  # product order, named by band
    assert gt == want_gt
    np.testing.assert_array_equal(arr, want)  # nearest onto 10 m: pixel for pixel the hand stack
    assert meta["PRODUCT_TYPE"] == "S2MSI1C" and meta["PROCESSING_LEVEL"] == "L1C"
    assert P.stack_path(source, tmp_path / "stacks") == vrt  # built once, reused
    if form == "zip":
        assert "/vsizip/" in gdal.Open(str(vrt)).GetFileList()[1]  # nothing was unpacked


def test_the_offset_follows_the_processing_baseline(bands_dir, tmp_path, models_dir):
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.models.model import OnnxModel

    meta = OnnxModel(models_dir / "atto_test.onnx", device="cpu").metadata
    old = make_safe(tmp_path / "old", bands_dir, baseline="02.04")
    new = make_safe(tmp_path / "new", bands_dir, baseline="04.00", offset=True)
    bare = make_safe(tmp_path / "bare", bands_dir, baseline="04.00")  # the baseline alone says +1000 too
    assert prepare_input(old, meta).dn_offset == 0.0
    assert prepare_input(new, meta).dn_offset == 1000.0
    assert prepare_input(bare, meta).dn_offset == 1000.0
    assert prepare_input(new, meta).level == "l1c"


def test_an_l2a_product_takes_each_band_at_its_finest_and_knows_its_level(bands_dir, tmp_path):
    safe = tmp_path / SAFE_L1C.replace("MSIL1C", "MSIL2A")
    res = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20,
           "B12": 20, "B01": 60, "B09": 60}
    for band, r in res.items():
        for rr in (10, 20, 60):
            if rr < r:
                continue
            folder = safe / "GRANULE/L2A_T33UUU_A008642_20170216T102204/IMG_DATA" / f"R{rr}m"
            folder.mkdir(parents=True, exist_ok=True)
            src = bands_dir / f"{sample.SCENE_ID}_{band}.jp2"
            if rr == r:
                shutil.copy(src, folder / f"{sample.SCENE_ID}_{band}_{rr}m.jp2")
            else:  # the coarser copies a real L2A product also has: never chosen
                ds = gdal.Open(str(src))
                gdal.Translate(str(folder / f"{sample.SCENE_ID}_{band}_{rr}m.jp2"), ds, format="JP2OpenJPEG",
                               xRes=rr, yRes=rr, resampleAlg="average", creationOptions=["QUALITY=100", "REVERSIBLE=YES"])
    (safe / "MTD_MSIL2A.xml").write_text(mtd("2A", "05.09", offset=True))
    product = P.open_product(safe)
    assert product.level == "l2a" and "B10" not in product.bands
    assert [product.bands[b].rsplit("_", 1)[1] for b in ("B2", "B5", "B8A", "B1")] == ["10m.jp2", "20m.jp2", "20m.jp2",
                                                                                      "60m.jp2"]
    names, arr, _, meta = read_stack(P.stack_path(safe, tmp_path / "stacks"))
    want_names, want, _ = hand_stack()
    keep = [i for i, n in enumerate(want_names) if n != "B10"]
    assert names == [want_names[i] for i in keep]
    np.testing.assert_array_equal(arr, want[keep])
    assert P.registry.SENTINEL2.detect_offset(meta) == 1000.0
    a = inspect_raster(safe)
    assert a.compatible and a.level_guess == "l2a" and a.facts.source == str(safe)


def write_scl(path, hand, snow=True):
    """A 20 m SCL from the scene's own bright clouds: 9 (cloud, high probability) where blue is in
    its top 3 %, 11 (snow) in one corner block, 4 (vegetation) elsewhere."""
    names, arr, gt = hand
    blue = arr[names.index("B2")][::2, ::2].astype(float)
    scl = np.where(blue > np.percentile(blue, 97), 9, 4).astype(np.uint8)
    if snow:
        scl[-40:, -40:] = 11
    mem = gdal.GetDriverByName("MEM").Create("", scl.shape[1], scl.shape[0], 1, gdal.GDT_Byte)
    mem.SetGeoTransform([gt[0], 20.0, 0.0, gt[3], 0.0, -20.0])
    mem.SetProjection(gdal.Open(str(sample.build(verbose=False)["stack"])).GetProjection())
    mem.GetRasterBand(1).WriteArray(scl)
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(str(path), mem, options=["QUALITY=100", "REVERSIBLE=YES"])
    return np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)  # on the 10 m grid (nearest)


@pytest.mark.slow
def test_clouds_in_the_scl_are_no_data_in_the_map_and_snow_is_kept(bands_dir, tmp_path, models_dir):
    from mpmae_core.runtime.inference.predict import segment

    safe = make_safe(tmp_path, bands_dir, level="2A", baseline="02.04")
    img = next(safe.rglob("IMG_DATA"))
    (img / f"{sample.SCENE_ID}_B10.jp2").unlink()  # L2A has no B10
    scl = write_scl(img / f"{sample.SCENE_ID}_SCL_20m.jp2", hand_stack())
    product = P.open_product(safe)
    assert product.level == "l2a" and product.quality_mask()[0] == "scl"
    logs = []
    res = segment(safe, models_dir / "atto_test.onnx", tmp_path / "map.tif", head_path=models_dir / "head3.onnx",
                  device="cpu", log=logs.append)
    classes = gdal.Open(res["output"]).ReadAsArray()
    cloud = scl[: classes.shape[0], : classes.shape[1]] == 9
    assert cloud.mean() > 0.01
    assert (classes[cloud] == 255).all()  # every cloud pixel is no data
    # the head maps 16 px cells: a cell without a cloud pixel is mapped whole, snow (11) included
    h, w = classes.shape
    cells = cloud[: h // 16 * 16, : w // 16 * 16].reshape(h // 16, 16, w // 16, 16).any(axis=(1, 3))
    clear = np.repeat(np.repeat(~cells, 16, axis=0), 16, axis=1)
    assert clear.mean() > 0.5 and (classes[: clear.shape[0], : clear.shape[1]][clear] != 255).all()
    assert (classes[-40:, -40:] != 255).mean() > 0.9
    assert any("Scene classification (SCL) masks clouds" in m for m in logs)


def test_a_folder_of_band_files_and_a_stac_item_with_relative_hrefs(bands_dir, tmp_path):
    folder_vrt = P.stack_path(bands_dir, tmp_path / "stacks")
    names, arr, _, _ = read_stack(folder_vrt)
    want_names, want, _ = hand_stack()
    assert names == want_names
    np.testing.assert_array_equal(arr, want)

    common = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1", "B06": "rededge2",
              "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09", "B10": "cirrus", "B11": "swir16",
              "B12": "swir22"}
    (tmp_path / "item").mkdir()
    assets = {c: {"href": f"../{bands_dir.name}/{sample.SCENE_ID}_{b}.jp2"} for b, c in common.items()}
    shutil.copytree(bands_dir, tmp_path / bands_dir.name)
    item = {"type": "Feature", "id": "S2A_33UUU_20170216_0_L1C", "properties": {"s2:processing_baseline": "02.04",
                                                                               "s2:product_type": "S2MSI1C"},
            "assets": assets, "links": []}
    path = tmp_path / "item" / "item.json"
    path.write_text(json.dumps(item))
    names, arr, _, meta = read_stack(P.stack_path(path, tmp_path / "stacks"))
    assert names == want_names
    np.testing.assert_array_equal(arr, want)
    assert meta["S2_PRODUCT_TYPE"] == "S2MSI1C"


@pytest.mark.slow
def test_the_same_map_from_the_zip_as_from_the_hand_stack(bands_dir, tmp_path, models_dir):
    from mpmae_core.runtime.inference.predict import segment

    z = zip_folder(make_safe(tmp_path, bands_dir), tmp_path / "product.zip")
    a = segment(z, models_dir / "atto_test.onnx", tmp_path / "a.tif", head_path=models_dir / "head3.onnx",
                device="cpu")
    b = segment(sample.build(verbose=False)["stack"], models_dir / "atto_test.onnx", tmp_path / "b.tif",
                head_path=models_dir / "head3.onnx", device="cpu")
    np.testing.assert_array_equal(gdal.Open(a["output"]).ReadAsArray(), gdal.Open(b["output"]).ReadAsArray())


# ------------------------------------------------------------------------------------------ bad input


def test_bad_products_get_clear_messages(bands_dir, tmp_path):
    safe = make_safe(tmp_path / "missing", bands_dir, drop=("_B11", "_B12"))
    with pytest.raises(P.ProductError, match="lacks band file\\(s\\) B11, B12.*download the product again"):
        P.open_product(safe)
    good = zip_folder(make_safe(tmp_path / "good", bands_dir), tmp_path / "good.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(P.ProductError, match="not a readable zip.*download it again"):
        P.open_product(cut)
    with pytest.raises(P.ProductError, match="DTD or entities"):
        P.product_metadata(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    with pytest.raises(P.ProductError, match="not a STAC item.*'FeatureCollection'.*mmearth batch"):
        P.stac_item({"type": "FeatureCollection"}, tmp_path, "c.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(P.ProductError, match="holds no Sentinel-2 band files"):
        P.open_product(tmp_path / "empty")


def test_metadata_and_stac_parsers_survive_any_bytes():
    """A fuzz run: mutated product metadata and STAC items fail only with ProductError."""
    rng = random.Random(0)
    seed_xml = mtd("2A", "05.09", offset=True).encode()
    seed_json = json.dumps({"type": "Feature", "id": "x", "properties": {"s2:processing_baseline": "05.09"},
                            "assets": {"red": {"href": "B04.jp2"}, "scl": {"href": "SCL.jp2"}}}).encode()
    for i in range(1500):
        data = bytearray(seed_xml if i % 2 else seed_json)
        for _ in range(rng.randint(1, 12)):
            op = rng.randrange(4)
            pos = rng.randrange(len(data))
            if op == 0:
                data[pos] = rng.randrange(256)
            elif op == 1:
                del data[pos:pos + rng.randint(1, 40)]
            elif op == 2:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
            else:
                data[pos:pos] = data[rng.randrange(len(data)):][: rng.randint(1, 200)]
        try:
            if i % 2:
                P.product_metadata(bytes(data))
            else:
                try:
                    doc = json.loads(bytes(data))
                except (ValueError, RecursionError):
                    continue
                P.stac_item(doc, "/nowhere", "fuzz.json")
        except P.ProductError:
            pass


def test_mmearth_stack_writes_what_the_model_sees(bands_dir, tmp_path, capsys):
    from mmearth.cli import main

    safe = make_safe(tmp_path, bands_dir, level="2A", baseline="05.09", offset=True)
    img = next(safe.rglob("IMG_DATA"))
    (img / f"{sample.SCENE_ID}_B10.jp2").unlink()
    scl = write_scl(img / f"{sample.SCENE_ID}_SCL_20m.jp2", hand_stack())
    assert main(["stack", str(safe), str(tmp_path / "s.vrt")]) == 0
    names, arr, _, meta = read_stack(tmp_path / "s.vrt")
    want_names, want, _ = hand_stack()
    keep = [i for i, n in enumerate(want_names) if n != "B10"]
    np.testing.assert_array_equal(arr, want[keep])
    assert meta["PROCESSING_LEVEL"] == "L2A" and meta["BOA_ADD_OFFSET"] == "-1000"
    assert main(["stack", str(safe), str(tmp_path / "s.tif"), "--cog"]) == 0
    names, arr, _, meta = read_stack(tmp_path / "s.tif")
    assert names[-1] == "MASK" and names[:-1] == [want_names[i] for i in keep]
    np.testing.assert_array_equal(arr[:-1], want[keep])
    np.testing.assert_array_equal(arr[-1], np.isin(scl[: arr.shape[1], : arr.shape[2]], [0, 1, 3, 8, 9, 10]))
    assert gdal.Info(str(tmp_path / "s.tif"), format="json")["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    capsys.readouterr()
    assert main(["stack", str(safe), str(tmp_path / "s.png")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and ".vrt" in err
    assert main(["stack", str(tmp_path / "nowhere.zip"), str(tmp_path / "n.vrt")]) != 0
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "n.vrt").exists()


def test_an_area_of_interest_cuts_the_work_and_masks_outside_its_polygon(tmp_path, models_dir):
    """A triangle given in EPSG:4326 over a corner of the scene (UTM 33N): the map covers only its
    window, its pixels outside the triangle are no data, inside equal the whole-scene map's
    (away from the window's edge, where tiles see less context), and an AOI elsewhere is refused."""
    from osgeo import ogr, osr

    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.io.aoi import AoiError

    stack = sample.build(verbose=False)["stack"]
    ds = gdal.Open(str(stack))
    gt = ds.GetGeoTransform()
    utm = osr.SpatialReference()
    utm.ImportFromWkt(ds.GetProjection())
    wgs = osr.SpatialReference()
    wgs.ImportFromEPSG(4326)
    for s in (utm, wgs):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_wgs = osr.CoordinateTransformation(utm, wgs)
    corners = [(gt[0] + c * gt[1], gt[3] + r * gt[5]) for c, r in ((100, 100), (612, 100), (100, 484))]
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for x, y in corners + corners[:1]:
        lon, lat, _ = to_wgs.TransformPoint(x, y)
        ring.AddPoint_2D(lon, lat)
    tri = ogr.Geometry(ogr.wkbPolygon)
    tri.AddGeometry(ring)
    from helpers import write_polygons

    path = write_polygons(tmp_path / "aoi.gpkg", [tri], wgs, "aoi")
    model, head = models_dir / "atto_test.onnx", models_dir / "head3.onnx"
    logs = []
    part = segment(stack, model, tmp_path / "part.tif", head_path=head, device="cpu", aoi=str(path), log=logs.append)
    whole = segment(stack, model, tmp_path / "whole.tif", head_path=head, device="cpu")
    p, w = gdal.Open(part["output"]), gdal.Open(whole["output"])
    assert any("area of interest: a window of" in m for m in logs)
    assert p.RasterXSize * p.RasterYSize < 0.3 * w.RasterXSize * w.RasterYSize
    pgt = p.GetGeoTransform()
    c0, r0 = round((pgt[0] - gt[0]) / gt[1]), round((pgt[3] - gt[3]) / gt[5])
    assert (c0, r0) == (96, 96)  # at the triangle (bent a little by the CRS), on the model's 16 px patch grid
    pa = p.ReadAsArray()
    wa = w.ReadAsArray()[r0:r0 + pa.shape[0], c0:c0 + pa.shape[1]]
    rows, cols = np.mgrid[0:pa.shape[0], 0:pa.shape[1]]
    x, y = c0 + cols + 0.5 - 100, r0 + rows + 0.5 - 100  # pixel centres, from the triangle's right angle
    inside_far = (x > 40) & (y > 40) & (x / 512 + y / 384 < 0.8)
    outside = x / 512 + y / 384 > 1.05
    assert (pa[outside] == 255).all() and (pa[inside_far] != 255).all()
    assert (pa[inside_far] == wa[inside_far]).mean() > 0.9
    with pytest.raises(AoiError, match="outside the raster"):
        segment(stack, model, tmp_path / "nowhere.tif", head_path=head, device="cpu", aoi="0,0,10,10,EPSG:4326")
    assert not (tmp_path / "nowhere.tif").exists()


def test_a_stac_item_served_over_http_is_read_through_range_requests(bands_dir, tmp_path, monkeypatch):
    from helpers import RangeServer

    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    root = tmp_path / "srv"
    shutil.copytree(bands_dir, root / "bands")
    assets = {f.stem.rsplit("_", 1)[1]: {"href": f"bands/{f.name}"} for f in sorted(bands_dir.glob("*.jp2"))}
    (root / "item.json").write_text(json.dumps({"type": "Feature", "id": "remote", "assets": assets,
                                                "properties": {"s2:processing_baseline": "02.04"}}))
    server = RangeServer(root)
    try:
        vrt = P.stack_path(f"{server.url}/item.json", tmp_path / "stacks")
        ds = gdal.Open(str(vrt))
        assert all("/vsicurl/http://127.0.0.1" in f for f in ds.GetFileList()[1:])
        window = ds.ReadAsArray(512, 256, 256, 128)
        _, want, _ = hand_stack()
        np.testing.assert_array_equal(window, want[:, 256:384, 512:768])
        assert any(rng for _, p, rng in server.requests if p.endswith(".jp2"))  # ranges, not whole files
    finally:
        server.close()
    with pytest.raises(P.ProductError, match="could not be fetched"):
        P.open_product(f"{server.url}/item.json")  # the server is gone


def test_labels_under_clouds_are_left_out_and_inspect_reports_the_masked_share(bands_dir, tmp_path, models_dir):
    from osgeo import ogr

    from mpmae_core.runtime.heads.pixelhead import train_pixel_head

    safe = make_safe(tmp_path, bands_dir, level="2A", baseline="02.04")
    img = next(safe.rglob("IMG_DATA"))
    (img / f"{sample.SCENE_ID}_B10.jp2").unlink()
    scl = write_scl(img / f"{sample.SCENE_ID}_SCL_20m.jp2", hand_stack(), snow=False)
    a = inspect_raster(safe)
    found = [f.message for f in a.findings if "masked as no data by the product's Scene classification" in f.message]
    assert found and abs(float(found[0].split("%")[0]) / 100 - (scl == 9).mean()) < 0.01
    _, _, gt = hand_stack()
    lab = gdal.Open(str(sample.labels_path())).ReadAsArray()
    feats = []
    for cls, value in enumerate((2, 3)):  # forest, farm: four clear points each
        rows, cols = np.nonzero((lab == value) & (scl[: lab.shape[0], : lab.shape[1]] == 4))
        for i in np.linspace(0, len(rows) - 1, 4).astype(int):
            feats.append((rows[i], cols[i], cls))
    cr, cc = np.nonzero(scl == 9)
    feats += [(cr[0], cc[0], 0), (cr[-1], cc[-1], 1)]  # two labels on clouds
    wkb = []
    for r, c, cls in feats:
        g = ogr.Geometry(ogr.wkbPoint)
        g.AddPoint_2D(gt[0] + (c + 0.5) * gt[1], gt[3] + (r + 0.5) * gt[5])
        wkb.append((bytes(g.ExportToWkb()), cls))
    logs = []
    res = train_pixel_head(safe, models_dir / "atto_test.onnx", wkb, ["forest", "farm"], tmp_path / "h.onnx",
                           feature_sets=["spectra"], classifiers=["forest"], device="cpu", log=logs.append)
    assert any("skipped 2 labelled feature(s)" in m and "masked as clouds" in m for m in logs), logs
    assert res["samples"]["forest"]["features"] == 4 and res["samples"]["farm"]["features"] == 4


def test_a_stac_item_whose_files_are_unreachable_says_so(bands_dir, tmp_path, monkeypatch):
    from helpers import RangeServer

    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    root = tmp_path / "srv"
    root.mkdir()
    assets = {f.stem.rsplit("_", 1)[1]: {"href": f"gone/{f.name}"} for f in sorted(bands_dir.glob("*.jp2"))}
    (root / "item.json").write_text(json.dumps({"type": "Feature", "id": "gone", "assets": assets}))
    server = RangeServer(root)
    try:
        with pytest.raises(P.ProductError, match="could not be opened.*damaged or incomplete"):
            P.stack_path(f"{server.url}/item.json", tmp_path / "stacks")
    finally:
        server.close()
    assert not list((tmp_path / "stacks").glob("*.vrt"))  # no half stack is left


@pytest.mark.slow
def test_a_stac_item_collection_is_a_series_of_its_items(bands_dir, tmp_path, models_dir, monkeypatch):
    """An ItemCollection (as a STAC search returns it): each item a member, dated by its datetime,
    its relative hrefs resolved against the collection's folder."""
    from mpmae_core.runtime.inference import series as S
    from mpmae_core.runtime.io import sources

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    shutil.copytree(bands_dir, tmp_path / bands_dir.name)
    assets = {b: {"href": f"{bands_dir.name}/{sample.SCENE_ID}_{b}.jp2"} for b in
              ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")}
    items = [{"type": "Feature", "id": f"S2A_33UUU_{day}_0_L1C", "assets": assets, "links": [],
              "properties": {"datetime": f"{day[:4]}-{day[4:6]}-{day[6:]}T10:21:01Z", "s2:product_type": "S2MSI1C"}}
             for day in ("20170318", "20170216")]
    coll = tmp_path / "search.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    assert sources.looks_like_series(str(coll)) and not sources.looks_like_series(str(tmp_path / "item.json"))
    members = S.dated_members(S.expand_series(str(coll)))
    assert [m.date.isoformat() for m in members] == ["2017-02-16", "2017-03-18"]
    res = S.series_features(str(coll), models_dir / "atto_test.onnx", tmp_path / "f.tif")
    ds = gdal.Open(res["output"])
    assert res["dates"] == ["2017-02-16", "2017-03-18"] and ds.RasterCount == 4 * 12 + 1
    count = ds.GetRasterBand(ds.RasterCount).ReadAsArray()
    assert set(np.unique(count)) <= {0, 2} and (count == 2).mean() > 0.9  # the same scene twice: both valid


def test_item_collection_parsing_survives_any_bytes(tmp_path, monkeypatch):
    """A fuzz run: mutated ItemCollections are members or a SeriesError, never a crash or a hang."""
    import random

    from mpmae_core.runtime.io import sources

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    seed = json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "id": "a", "properties": {"datetime": "2020-01-02T00:00:00Z"},
         "assets": {"B02": {"href": "x/B02.tif"}}}]}).encode()
    rng = random.Random(0)
    for i in range(300):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(data) + 1)
            if op < 0.4 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op < 0.7:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
            else:
                del data[pos:pos + rng.randint(1, 20)]
        if i % 50 == 0:
            data = b"[" * 100_000  # deep nesting
        path = tmp_path / f"f{i}.json"
        path.write_bytes(bytes(data))
        try:
            out = sources.expand_series(str(path))
        except sources.SeriesError:
            continue
        assert all(isinstance(m, str) for m in out)


@pytest.mark.slow
def test_a_series_of_downloaded_products_l1c_and_l2a(bands_dir, tmp_path, models_dir, monkeypatch):
    """Two SAFE products of one tile as downloaded (a zip and a folder), an L1C and a later L2A of
    baseline 04.00: dated from their metadata, each normalised by its own level and offset, said."""
    from mpmae_core.runtime.inference import series as S

    monkeypatch.setenv("MMEARTH_CACHE", str(tmp_path / "cache"))
    l1c = zip_folder(make_safe(tmp_path / "a", bands_dir), tmp_path / "l1c.zip")
    l2a = make_safe(tmp_path / "b", bands_dir, level="2A", baseline="04.00", offset=True, drop=("B10",))
    mtd_file = l2a / "MTD_MSIL2A.xml"
    mtd_file.write_text(mtd_file.read_text().replace("2017-02-16T10:21:01", "2017-05-20T10:21:01"))
    logs = []
    res = S.series_features([str(l2a), str(l1c)], models_dir / "atto_test.onnx", tmp_path / "f.tif",
                            log=logs.append)
    assert res["dates"] == ["2017-02-16", "2017-05-20"]
    assert any("mixes processing levels (L1C, L2A)" in m for m in logs), logs
    assert any("2017-05-20: 1000" in m for m in logs), logs
