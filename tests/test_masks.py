"""The user's masks: the product's quality layer with snow or without, the cloud probability, a
mask raster or polygon layer of the user's, and a dilation, on real products built from the
embedded scene; the CLI's `segment ... --aoi field.gpkg` on an L2A zip end to end."""

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from scipy import ndimage

from helpers import field_gpkg, write_polygons
from mpmae_core.data import sample
from mpmae_core.runtime.io import masks as M
from mpmae_core.runtime.io import products as P
from test_products import hand_stack, make_safe, write_scl, zip_folder


@pytest.fixture(scope="module")
def bands_dir():
    sample.build(verbose=False)
    return sample.scene_dir() / "IMG_DATA"


def l2a_product(root, bands_dir, cldprb=True):
    """An L2A SAFE folder with the scene's bright clouds in its SCL (snow in a corner) and, in
    QI_DATA, a cloud probability rising from 0 % at the left edge to 100 % at the right."""
    safe = make_safe(root, bands_dir, level="2A", baseline="02.04")
    img = next(safe.rglob("IMG_DATA"))
    (img / f"{sample.SCENE_ID}_B10.jp2").unlink()
    hand = hand_stack()
    scl = write_scl(img / f"{sample.SCENE_ID}_SCL_20m.jp2", hand)
    prob = None
    if cldprb:
        h, w = scl.shape[0] // 2, scl.shape[1] // 2
        prob20 = np.tile(np.linspace(0, 100, w).round().astype(np.uint8), (h, 1))
        gt = hand[2]
        mem = gdal.GetDriverByName("MEM").Create("", w, h, 1, gdal.GDT_Byte)
        mem.SetGeoTransform([gt[0], 20.0, 0.0, gt[3], 0.0, -20.0])
        mem.SetProjection(gdal.Open(str(sample.build(verbose=False)["stack"])).GetProjection())
        mem.GetRasterBand(1).WriteArray(prob20)
        qi = img.parent / "QI_DATA"
        qi.mkdir()
        gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(str(qi / "MSK_CLDPRB_20m.jp2"), mem,
                                                       options=["QUALITY=100", "REVERSIBLE=YES"])
        prob = np.repeat(np.repeat(prob20, 2, axis=0), 2, axis=1)
    return safe, scl, prob


def test_dilation_equals_an_independent_one_and_windows_equal_the_whole():
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 5):
        mask = rng.random((61, 47)) > 0.985
        want = ndimage.binary_dilation(mask, structure=np.ones((2 * n + 1, 2 * n + 1), bool)) if n else mask
        np.testing.assert_array_equal(M.dilate(mask, n), want)
    big = rng.random((200, 150)) > 0.99

    class Whole:
        def masked(self, x, y, w, h):
            return big[y:y + h, x:x + w]

    d = M.Dilated(Whole(), 3, 150, 200)
    full = M.dilate(big, 3)
    for x, y, w, h in ((0, 0, 150, 200), (10, 20, 33, 17), (140, 190, 10, 10), (0, 100, 64, 64)):
        np.testing.assert_array_equal(d.masked(x, y, w, h), full[y:y + h, x:x + w])
    with pytest.raises(M.MaskError, match="whole number of pixels from 0 to"):
        M.MaskOptions(dilate=-1)
    with pytest.raises(M.MaskError, match="percentage"):
        M.MaskOptions(cloud_probability=150)


def test_snow_cloud_probability_dilation_and_no_product_mask(bands_dir, tmp_path, models_dir):
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.models.model import read_metadata

    safe, scl, prob = l2a_product(tmp_path, bands_dir)
    meta = read_metadata(models_dir / "atto_test.onnx")

    def mask_of(options):
        prep = prepare_input(safe, meta, masks=options)
        h, w = prep.height, prep.width
        return None if prep.mask is None else prep.mask.masked(0, 0, w, h), (h, w), prep.notes

    got, (h, w), notes = mask_of(None)
    default = np.isin(scl[:h, :w], [0, 1, 3, 8, 9, 10])
    assert default.mean() > 0.01
    np.testing.assert_array_equal(got, default)
    got, _, notes = mask_of(M.MaskOptions(snow=True))
    np.testing.assert_array_equal(got, default | (scl[:h, :w] == 11))
    assert any("and snow" in n for n in notes)
    got, _, notes = mask_of(M.MaskOptions(cloud_probability=60))
    np.testing.assert_array_equal(got, default | (prob[:h, :w] >= 60))
    got, _, _ = mask_of(M.MaskOptions(dilate=2))
    np.testing.assert_array_equal(got, ndimage.binary_dilation(default, structure=np.ones((5, 5), bool)))
    got, _, notes = mask_of(M.MaskOptions(product=False))
    assert got is None and any("not applied" in n for n in notes)
    l1c = make_safe(tmp_path / "l1c", bands_dir)
    with pytest.raises(M.MaskError, match="no cloud probability layer"):
        prepare_input(l1c, meta, masks=M.MaskOptions(cloud_probability=50))


def _raster(path, arr, gt, wkt):
    ds = gdal.GetDriverByName("GTiff").Create(str(path), arr.shape[1], arr.shape[0], 1, gdal.GDT_Byte)
    ds.SetGeoTransform(gt)
    ds.SetProjection(wkt)
    ds.GetRasterBand(1).WriteArray(arr)
    ds = None
    return path


def test_a_user_mask_raster_on_the_grid_polygons_in_any_crs_and_a_mask_on_another_grid(tmp_path, models_dir):
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.models.model import read_metadata

    stack = sample.build(verbose=False)["stack"]
    src = gdal.Open(str(stack))
    gt, wkt = src.GetGeoTransform(), src.GetProjection()
    W, H = src.RasterXSize, src.RasterYSize
    meta = read_metadata(models_dir / "atto_test.onnx")
    # a mask raster covering part of the scene, on its grid, starting 200 px right and 100 px down
    arr = np.zeros((300, 400), np.uint8)
    arr[50:120, 30:90] = 1
    sub = _raster(tmp_path / "sub.tif", arr, (gt[0] + 200 * gt[1], gt[1], 0, gt[3] + 100 * gt[5], 0, gt[5]), wkt)
    prep = prepare_input(stack, meta, masks=M.MaskOptions(user=str(sub)))
    got = prep.mask.masked(0, 0, W, H)
    want = np.zeros((H, W), bool)
    want[150:220, 230:290] = True
    np.testing.assert_array_equal(got, want)
    # the same mask as a polygon in EPSG:4326
    utm, wgs = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromWkt(wkt)
    wgs.ImportFromEPSG(4326)
    for s in (utm, wgs):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    tr = osr.CoordinateTransformation(utm, wgs)
    ring = ogr.Geometry(ogr.wkbLinearRing)
    for c, r in ((230, 150), (290, 150), (290, 220), (230, 220), (230, 150)):
        lon, lat, _ = tr.TransformPoint(gt[0] + c * gt[1], gt[3] + r * gt[5])
        ring.AddPoint_2D(lon, lat)
    poly = ogr.Geometry(ogr.wkbPolygon)
    poly.AddGeometry(ring)
    path = write_polygons(tmp_path / "clouds.gpkg", [poly], wgs, "clouds")
    got = prepare_input(stack, meta, masks=M.MaskOptions(user=str(path))).mask.masked(0, 0, W, H)
    assert (got != want).mean() < 0.002  # a reprojected rectangle: its edges bend by under a pixel
    assert got[160:210, 240:280].all() and not got[:140].any()
    # masks on other grids are refused, with the command that aligns them
    half = _raster(tmp_path / "half.tif", arr, (gt[0] + 205, gt[1], 0, gt[3], 0, gt[5]), wkt)
    with pytest.raises(M.MaskError, match="shifted by a fraction of a pixel.*gdalwarp .*-tr 10 10"):
        prepare_input(stack, meta, masks=M.MaskOptions(user=str(half)))
    coarse = _raster(tmp_path / "coarse.tif", arr, (gt[0], 20.0, 0, gt[3], 0, -20.0), wkt)
    with pytest.raises(M.MaskError, match="20 x 20 pixels, the input 10 x 10"):
        prepare_input(stack, meta, masks=M.MaskOptions(user=str(coarse)))
    zone32 = osr.SpatialReference()
    zone32.ImportFromEPSG(32632)
    other = _raster(tmp_path / "other.tif", arr, gt, zone32.ExportToWkt())
    with pytest.raises(M.MaskError, match="another CRS|does not overlap"):
        prepare_input(stack, meta, masks=M.MaskOptions(user=str(other)))
    with pytest.raises(M.MaskError, match="does not exist"):
        prepare_input(stack, meta, masks=M.MaskOptions(user=str(tmp_path / "none.tif")))


def test_segment_an_l2a_zip_with_an_area_of_interest_and_masks_from_the_command_line(bands_dir, tmp_path, models_dir,
                                                                                    capsys):
    """The issue's 'done when': `mmearth segment S2B_MSIL2A_....zip encoder --head head.onnx out.tif
    --aoi field.gpkg` maps the field's window, with the clouds (dilated) and the outside as no data."""
    from mmearth.cli import main

    safe, scl, _ = l2a_product(tmp_path / "p", bands_dir, cldprb=False)
    z = zip_folder(safe, tmp_path / (safe.stem + ".zip"))
    _, _, gt = hand_stack()
    field = field_gpkg(tmp_path / "field.gpkg", 300, 200, 600, 400)  # pixels 300..900 x 200..600
    out = tmp_path / "out.tif"
    args = ["segment", str(z), str(models_dir / "atto_test.onnx"), "--head", str(models_dir / "head3.onnx"), str(out),
            "--aoi", str(field), "--mask-dilate", "1", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    ds = gdal.Open(str(out))
    ogt = ds.GetGeoTransform()
    c0, r0 = round((ogt[0] - gt[0]) / gt[1]), round((ogt[3] - gt[3]) / gt[5])
    assert (c0, r0, ds.RasterXSize, ds.RasterYSize) == (288, 192, 624, 416)  # on the 16 px patch grid
    classes = ds.ReadAsArray()
    cloud = np.isin(scl, [0, 1, 3, 8, 9, 10])
    cloud = ndimage.binary_dilation(cloud, structure=np.ones((3, 3), bool))[r0:r0 + 416, c0:c0 + 624]
    inside = np.zeros_like(cloud)
    inside[200 - r0:600 - r0, 300 - c0:900 - c0] = True
    assert cloud[inside].mean() > 0.005
    assert (classes[cloud | ~inside] == 255).all()
    assert (classes[inside & ~cloud] != 255).mean() > 0.5  # cells touching a cloud are left out whole
    err = capsys.readouterr().err
    assert "area of interest: a window of 624 x 416" in err and "masks dilated by 1 px" in err
    # bad input: a clear message, no output, no traceback
    for extra, message in ((["--mask", str(tmp_path / "none.gpkg")], "does not exist"),
                           (["--aoi", "0,0,10,10,EPSG:4326"], "outside the raster"),
                           (["--cloud-probability", "50"], "no cloud probability layer")):
        bad = tmp_path / "bad.tif"
        assert main(args[:5] + [str(bad)] + args[6:] + extra) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and not bad.exists(), err


def test_mmearth_stack_cog_cut_to_an_area_with_the_masks_and_a_natural_colour_style(bands_dir, tmp_path, capsys):
    from mmearth.cli import main

    safe, scl, _ = l2a_product(tmp_path / "p", bands_dir, cldprb=False)
    _, want, gt = hand_stack()
    x0, y1 = gt[0] + 100 * gt[1], gt[3] + 50 * gt[5]
    aoi = f"{x0},{y1 - 3000},{x0 + 5000},{y1}"
    out = tmp_path / "s.tif"
    assert main(["stack", str(safe), str(out), "--cog", "--aoi", aoi, "--mask-dilate", "2", "--mask-snow"]) == 0
    ds = gdal.Open(str(out))
    arr = ds.ReadAsArray()
    assert arr.shape[1:] == (300, 500)
    keep = [i for i, n in enumerate(hand_stack()[0]) if n != "B10"]
    np.testing.assert_array_equal(arr[:-1], want[keep][:, 50:350, 100:600])
    cloud = np.isin(scl, [0, 1, 3, 8, 9, 10, 11])
    mask = ndimage.binary_dilation(cloud, structure=np.ones((5, 5), bool))[50:350, 100:600]
    np.testing.assert_array_equal(arr[-1], mask)
    qml = (tmp_path / "s.qml").read_text()
    assert 'redBand="4" greenBand="3" blueBand="2"' in qml and "<maxValue>3000</maxValue>" in qml
    vrt = tmp_path / "s.vrt"
    assert main(["stack", str(safe), str(vrt), "--aoi", aoi]) == 0
    np.testing.assert_array_equal(gdal.Open(str(vrt)).ReadAsArray(), want[keep][:, 50:350, 100:600])
    assert 'redBand="4"' in (tmp_path / "s.qml").read_text()
    capsys.readouterr()
    assert main(["stack", str(safe), str(tmp_path / "m.vrt"), "--mask-dilate", "2"]) == 0  # masks a VRT cannot hold
    assert "mask options are not in it" in capsys.readouterr().err
    assert main(["stack", str(safe), str(tmp_path / "o.tif"), "--cog", "--aoi", "0,0,10,10,EPSG:4326"]) != 0
    assert "outside the raster" in capsys.readouterr().err and not (tmp_path / "o.tif").exists()


def test_a_mask_file_that_is_not_a_raster_is_a_clear_error(tmp_path):
    """A product stack whose metadata names a mask file that is not a raster: a ProductError."""
    vrt = tmp_path / "s.vrt"
    stack = sample.build(verbose=False)["stack"]
    gdal.Translate(str(vrt), str(stack), format="VRT")
    (tmp_path / "junk.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(200))
    ds = gdal.Open(str(vrt), gdal.GA_Update)
    ds.SetMetadataItem(P.MASK_FILE_KEY, str(tmp_path / "junk.jp2"))
    ds.SetMetadataItem(P.MASK_KIND_KEY, "scl")
    ds = None
    with pytest.raises(P.ProductError, match="could not be opened"):
        P.quality_mask(gdal.Open(str(vrt)))


def test_an_l1c_product_of_baseline_04_reads_its_classification_mask(bands_dir, tmp_path, models_dir):
    """MSK_CLASSI_B00 (60 m, one band per flag: opaque clouds, cirrus, snow) in QI_DATA: opaque clouds
    and cirrus are no data, snow only with the snow option, and the +1000 offset is taken off."""
    from mpmae_core.runtime.inference.raster import prepare_input
    from mpmae_core.runtime.models.model import read_metadata

    safe = make_safe(tmp_path, bands_dir, level="1C", baseline="04.00", offset=True)
    names, arr, gt = hand_stack()
    blue = arr[names.index("B2")][::6, ::6].astype(float)
    h, w = blue.shape
    flags = np.zeros((3, h, w), np.uint8)
    flags[0] = blue > np.percentile(blue, 95)  # opaque clouds: the scene's brightest
    flags[1, 10:20, 30:60] = 1  # a cirrus band
    flags[2, -8:, -8:] = 1  # snow in a corner
    mem = gdal.GetDriverByName("MEM").Create("", w, h, 3, gdal.GDT_Byte)
    mem.SetGeoTransform([gt[0], 60.0, 0.0, gt[3], 0.0, -60.0])
    mem.SetProjection(gdal.Open(str(sample.build(verbose=False)["stack"])).GetProjection())
    for i in range(3):
        mem.GetRasterBand(i + 1).WriteArray(flags[i])
    qi = next(safe.rglob("IMG_DATA")).parent / "QI_DATA"
    qi.mkdir()
    gdal.GetDriverByName("JP2OpenJPEG").CreateCopy(str(qi / "MSK_CLASSI_B00.jp2"), mem,
                                                   options=["QUALITY=100", "REVERSIBLE=YES"])
    product = P.open_product(safe)
    assert product.level == "l1c" and product.quality_mask()[0] == "classi"
    meta = read_metadata(models_dir / "atto_test.onnx")
    prep = prepare_input(safe, meta)
    assert prep.dn_offset == 1000
    H, W = prep.height, prep.width
    on10 = np.repeat(np.repeat(flags, 6, axis=1), 6, axis=2)[:, :H, :W].astype(bool)
    np.testing.assert_array_equal(prep.mask.masked(0, 0, W, H), on10[0] | on10[1])
    snow = prepare_input(safe, meta, masks=M.MaskOptions(snow=True))
    np.testing.assert_array_equal(snow.mask.masked(0, 0, W, H), on10[0] | on10[1] | on10[2])
