"""Sentinel-2 as analysts download it, read as one virtual 10 m stack.

Accepted, besides a stacked raster (GeoTIFF, VRT), which is used as it is:

- a SAFE product: its ``.zip``, its ``.SAFE`` folder, or its ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``;
- a STAC item (a JSON file, or an http(s) URL) whose assets are the band files;
- a folder of per-band files named by band (``..._B04.jp2``, ``B8A.tif``, ``red.tif``).

Each becomes a VRT: the band files stacked **by name** in product order, on the grid of a 10 m
band. The 20 m and 60 m bands are resampled by **nearest neighbour**: every 10 m pixel takes the
value of the coarser pixel it lies in. That is how the MMEarth training data were made (Earth
Engine exports at 10 m, whose default resampling is nearest), so the model sees what it was
trained on, and no value is invented. The VRT is a few kilobytes that point at the product's own
files (inside the zip through ``/vsizip/``, remote COGs through ``/vsicurl/``, so only the blocks
an area needs travel); nothing is copied. It carries the product's level, processing baseline and
offsets as metadata, which ``inspect`` and the runtime read through the registry's source spec.

Every file here comes from a stranger: the XML and JSON are read with size limits, XML with a
DTD or entities is refused, and every href must name a file of the product.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from xml.etree import ElementTree

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.gdal_io import RasterError

#: The most bytes of a product's metadata XML or a STAC item JSON we read.
MAX_METADATA_BYTES = 16 * 1024 * 1024
#: The most members of a product zip we list.
MAX_ZIP_MEMBERS = 100_000
#: Raster files a band may be in.
BAND_SUFFIXES = (".jp2", ".tif", ".tiff", ".vrt")
#: Metadata items of a stack that name its product's quality mask: the file, and the registry's MaskSpec.
MASK_FILE_KEY, MASK_KIND_KEY = "MMEARTH_MASK", "MMEARTH_MASK_KIND"
#: Which of a product's masks is applied, by preference, for each level.
MASK_PREFERENCE = {"l2a": ("scl", "cldprb"), "l1c": ("classi",)}
#: Bumped when a stack's VRT gains content, so that stacks cached by an older version are rebuilt.
STACK_VERSION = 2


class ProductError(RasterError):
    """A product, STAC item or band folder that cannot give a stack; the message says why and what to do."""


@dataclass
class Product:
    """What a downloaded product holds: band files by band name, masks, and its metadata."""

    source: str  # what the user gave
    kind: str  # "safe", "stac" or "folder"
    bands: dict  # band name -> GDAL path
    metadata: dict = field(default_factory=dict)  # PRODUCT_TYPE, PROCESSING_BASELINE, BOA_ADD_OFFSET, ...
    masks: dict = field(default_factory=dict)  # mask name (registry MaskSpec.name) -> GDAL path
    spec: registry.SourceSpec = registry.SENTINEL2
    label: str = ""  # how messages name it ("the STAC item 'x'"); the quoted source when empty

    @property
    def name(self) -> str:
        return self.label or f"'{self.source}'"

    @property
    def level(self) -> Optional[str]:
        return self.spec.detect_level(list(self.bands), self.metadata)[0]

    def quality_mask(self) -> tuple[str, str]:
        """(mask name, GDAL path) of the mask this product's level is read with, or ("", "")."""
        for name in MASK_PREFERENCE.get(self.level or "", ()):
            if name in self.masks:
                return name, self.masks[name]
        return "", ""

    def order(self) -> list:
        """The product's bands in product order (the runtime matches them by name anyway)."""
        return [b for b in self.spec.product_order if b in self.bands]


# ------------------------------------------------------------------------------------------ what is it


_GDAL_S2_NAME = re.compile(r"^SENTINEL2_L(?:1B|1C|2A)(?:_TILE)?:(?P<path>.+):(?:10m|20m|60m|TCI|PREVIEW|[A-Z0-9_]+)"
                           r":[A-Z]+_\d+$", re.I)


def product_of_gdal_name(name: str) -> Optional[str]:
    """The product behind a name of GDAL's SENTINEL2 driver (what QGIS gives a SAFE product dragged
    onto the map: ``SENTINEL2_L2A:/vsizip/x.zip/x.SAFE/MTD_MSIL2A.xml:10m:EPSG_32633``, one
    resolution's bands only): the zip, or the MTD xml of a folder; None for any other name."""
    m = _GDAL_S2_NAME.match(str(name).strip())
    if not m:
        return None
    path = m.group("path").strip('"')
    if path.startswith("/vsizip/"):
        inner = path[len("/vsizip/"):]
        cut = inner.lower().find(".zip")
        return inner[:cut + 4] if cut >= 0 else None
    return path


def is_product(source) -> bool:
    """Whether ``source`` names a product, STAC item or band folder rather than a stacked raster."""
    text = str(source)
    if product_of_gdal_name(text):
        return True
    if re.match(r"https?://", text):
        return text.lower().split("?")[0].endswith(".json")
    path = Path(text)
    name = path.name.upper()
    if path.is_dir():
        return True
    return (name.endswith(".ZIP") or name.endswith(".JSON") or re.fullmatch(r"MTD_MSIL(1C|2A)\.XML", name) is not None)


def open_product(source) -> Product:
    """The product ``source`` names; ProductError says what is wrong with it."""
    text = product_of_gdal_name(str(source)) or str(source)
    source = text
    if re.match(r"https?://", text):
        return stac_item(_fetch_json(text), base=text.rsplit("/", 1)[0] + "/", source=text)
    path = Path(text)
    if not path.exists():
        raise ProductError(f"'{source}' does not exist: check the path")
    name = path.name.upper()
    if path.is_dir():
        if list(path.glob("MTD_MSIL*.xml")):
            return _safe_folder(path)
        return _band_folder(path)
    if name.endswith(".ZIP"):
        return _safe_zip(path)
    if name.endswith(".JSON"):
        return stac_item(_read_json(path), base=path.parent, source=text)
    if re.fullmatch(r"MTD_MSIL(1C|2A)\.XML", name):
        return _safe_folder(path.parent)
    raise ProductError(f"'{source}' is not a Sentinel-2 product, STAC item or folder of band files")


# ------------------------------------------------------------------------------------------ SAFE

_BAND_IN_NAME = re.compile(r"_(B(?:0[1-9]|1[0-2]|8A))(?:_(\d{2})m)?\.(?:jp2|tif|tiff)$", re.I)
_MASK_NAMES = {"scl": re.compile(r"_SCL_20m\.jp2$", re.I), "cldprb": re.compile(r"MSK_CLDPRB_20m\.jp2$", re.I),
               "classi": re.compile(r"MSK_CLASSI_B00\.jp2$", re.I)}


def _band_files(names, prefix: str) -> tuple[dict, dict]:
    """(band -> path, mask -> path) among ``names`` (paths inside a product), finest resolution first."""
    bands, res = {}, {}
    masks = {}
    for n in names:
        if "/IMG_DATA/" in n.replace("\\", "/"):
            m = _BAND_IN_NAME.search(n)
            if m:
                band = registry.canonical_s2_band(m.group(1))
                r = int(m.group(2) or 0)
                if band and (band not in bands or (r and r < res[band])):
                    bands[band], res[band] = prefix + n, r or 999
        for mask, pattern in _MASK_NAMES.items():
            if pattern.search(n) and mask not in masks:
                masks[mask] = prefix + n
    return bands, masks


def _safe_folder(folder: Path) -> Product:
    mtd = sorted(folder.glob("MTD_MSIL*.xml"))
    if not mtd:
        raise ProductError(f"'{folder}' has no MTD_MSIL1C.xml or MTD_MSIL2A.xml: it is not a SAFE product folder")
    metadata = product_metadata(_read_bounded(mtd[0]), str(mtd[0]))
    names = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()]
    bands, masks = _band_files(names, str(folder.resolve()) + "/")
    return _checked(Product(str(folder), "safe", bands, metadata, masks))


def _safe_zip(path: Path) -> Product:
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise ProductError(f"'{path}' holds {len(infos)} files, more than a Sentinel-2 product has")
            names = [i.filename for i in infos]
            mtd = [i for i in infos if re.search(r"(^|/)MTD_MSIL(1C|2A)\.xml$", i.filename)]
            if not mtd:
                raise ProductError(f"'{path}' holds no MTD_MSIL1C.xml or MTD_MSIL2A.xml: it is not a Sentinel-2 SAFE "
                                   "product (download the product again from the Copernicus Data Space)")
            if mtd[0].file_size > MAX_METADATA_BYTES:
                raise ProductError(f"the product metadata in '{path}' is {mtd[0].file_size} bytes: too large to be one")
            with z.open(mtd[0]) as f:
                text = f.read(MAX_METADATA_BYTES + 1)
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ProductError(f"'{path}' is not a readable zip ({exc}): the download is damaged or incomplete; download "
                           "it again") from None
    metadata = product_metadata(text, f"{path}/{mtd[0].filename}")
    bands, masks = _band_files(names, f"/vsizip/{path.resolve()}/")
    return _checked(Product(str(path), "safe", bands, metadata, masks))


def _read_bounded(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_METADATA_BYTES:
        raise ProductError(f"'{path}' is {size} bytes: too large to be a product's metadata")
    return path.read_bytes()


def product_metadata(xml: bytes, where: str = "the product") -> dict:
    """PRODUCT_TYPE, PROCESSING_LEVEL, PROCESSING_BASELINE, QUANTIFICATION_VALUE and the offsets
    (RADIO_ADD_OFFSET / BOA_ADD_OFFSET, one per band in the file; the first is kept) of a
    MTD_MSIL1C.xml / MTD_MSIL2A.xml. Pure: bytes in, dict out."""
    if len(xml) > MAX_METADATA_BYTES:
        raise ProductError(f"{where} is larger than {MAX_METADATA_BYTES} bytes: not a product's metadata")
    head = xml[:4096].upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in xml.upper():
        raise ProductError(f"{where} declares a DTD or entities, which Sentinel-2 metadata never does: refused")
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, ValueError, LookupError, RecursionError) as exc:  # LookupError: a bogus encoding
        raise ProductError(f"{where} is not well-formed XML ({exc}): the product is damaged; download it again") from None
    out = {}
    wanted = ("PRODUCT_TYPE", "PROCESSING_LEVEL", "PROCESSING_BASELINE", "QUANTIFICATION_VALUE",
              "BOA_QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET", "BOA_ADD_OFFSET", "SPACECRAFT_NAME",
              "PRODUCT_START_TIME", "DATATAKE_SENSING_START")
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1] if isinstance(el.tag, str) else ""
        if tag in wanted and tag not in out and el.text and len(el.text) < 200:
            out[tag] = el.text.strip()
    for key in ("QUANTIFICATION_VALUE", "BOA_QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET", "BOA_ADD_OFFSET",
                "PROCESSING_BASELINE"):
        if key in out:
            try:
                float(out[key])
            except ValueError:
                raise ProductError(f"{where}: {key} is {out[key]!r}, not a number: the metadata is damaged") from None
    return out


# ------------------------------------------------------------------------------------------ folders and STAC


def _band_folder(folder: Path) -> Product:
    bands = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in BAND_SUFFIXES or not p.is_file():
            continue
        band = registry.canonical_s2_band(p.stem)
        if band is None:
            continue
        if band in bands:
            raise ProductError(f"'{folder}' has two files for {band} ({Path(bands[band]).name}, {p.name}): keep one")
        bands[band] = str(p.resolve())
    masks = {m: str(p.resolve()) for p in folder.iterdir() for m, pat in _MASK_NAMES.items() if pat.search(p.name)}
    return _checked(Product(str(folder), "folder", bands, {}, masks))


def _read_json(path: Path):
    try:
        raw = _read_bounded(path)
        return json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProductError(f"'{path}' is not a readable JSON file ({exc})") from None


def _fetch_json(url: str):
    from urllib.error import URLError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=60) as resp:  # noqa: S310 - http(s) only, checked by the caller
            raw = resp.read(MAX_METADATA_BYTES + 1)
    except (URLError, OSError, ValueError) as exc:
        raise ProductError(f"the STAC item '{url}' could not be fetched ({exc}): check the address and the "
                           "network") from None
    if len(raw) > MAX_METADATA_BYTES:
        raise ProductError(f"the STAC item '{url}' is larger than {MAX_METADATA_BYTES} bytes: not an item")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProductError(f"'{url}' is not JSON ({exc}): is it a STAC item's address?") from None


def _asset_band(key: str, asset: dict) -> Optional[str]:
    eo = asset.get("eo:bands")
    eo = [b for b in eo if isinstance(b, dict)] if isinstance(eo, list) else []
    for name in [key] + [b.get("name", "") for b in eo] + [b.get("common_name", "") for b in eo]:
        if isinstance(name, str) and len(name) < 100:
            band = registry.canonical_s2_band(name)
            if band:
                return band
    return None


def gdal_href(href: str, base) -> str:
    """A GDAL path for an asset's href: http(s) through /vsicurl/, s3 through /vsis3/, relative
    to ``base`` (a folder, or a URL ending in /) otherwise."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if re.match(r"[a-z][a-z0-9+.-]*://", href):
        raise ProductError(f"the asset address '{href[:80]}' is neither http(s), s3 nor a file path")
    if isinstance(base, str) and re.match(r"https?://", base):
        from urllib.parse import urljoin

        return "/vsicurl/" + urljoin(base, href)
    return href if os.path.isabs(href) else str((Path(base) / href).resolve())


def stac_item(doc, base, source: str, label: str = "") -> Product:
    """The product a STAC item (parsed JSON) describes; hrefs relative to ``base`` (a folder or a URL)."""
    if not isinstance(doc, dict) or doc.get("type") != "Feature":
        kind = doc.get("type") if isinstance(doc, dict) else type(doc).__name__
        raise ProductError(f"'{source}' is not a STAC item (its type is {kind!r}, not 'Feature'); for a collection "
                           "of items use `mmearth batch`")
    assets = doc.get("assets")
    bands, masks = {}, {}
    for key, asset in (assets.items() if isinstance(assets, dict) else []):
        if not isinstance(asset, dict) or not isinstance(asset.get("href"), str) or not asset["href"]:
            continue
        band = _asset_band(str(key), asset)
        if band and band not in bands:
            href = gdal_href(asset["href"], base)
            if not href.startswith("/vsi") and not Path(href).is_file():
                raise ProductError(f"{label or repr(source)} links {band} to '{href}', which does not exist: download "
                                   "the item's files next to the JSON (or fix its hrefs)")
            bands[band] = href
        elif str(key).lower() in ("scl", "cloud", "cldprb"):
            masks["scl" if str(key).lower() == "scl" else "cldprb"] = gdal_href(asset["href"], base)
    props = doc.get("properties") if isinstance(doc.get("properties"), dict) else {}
    metadata = {}
    for k, v in props.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and len(str(k)) < 100:
            key = str(k).upper().replace(":", "_")
            if any(w in key for w in ("PROCESSING_BASELINE", "PRODUCT_TYPE", "BOA_ADD_OFFSET", "RADIO_ADD_OFFSET",
                                      "PROCESSING_LEVEL", "DATETIME")):
                metadata[key] = str(v)[:200]
    return _checked(Product(source, "stac", bands, metadata, masks, label=label))


# ------------------------------------------------------------------------------------------ the stack


def _checked(product: Product) -> Product:
    """At least one band; every band of the models for a SAFE product (whose files all come in one
    download, so a missing one means a damaged download). For a STAC item or a folder, the model's
    own band match names what is missing."""
    if not product.bands:
        raise ProductError(f"{product.name} holds no Sentinel-2 band files (B01 .. B12): it is not a product, "
                           "or its band files are missing; download it again")
    missing = [b for b in product.spec.model_bands if b not in product.bands]
    if missing and product.kind == "safe":
        raise ProductError(f"{product.name} lacks band file(s) {', '.join(missing)}: the download is incomplete; "
                           "download the product again")
    return product


def build_vrt(product: Product, out, bounds=None) -> Path:
    """Write the product's 10 m stack as a VRT at ``out``: bands by name in product order,
    nearest-neighbour onto the grid of its 10 m bands, the product's metadata on the dataset.
    ``bounds`` (xmin, ymin, xmax, ymax on that grid): only that window."""
    from mpmae_core.runtime.io.files import atomic_output
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors

    g = gdal()
    order = product.order()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        with gdal_errors() as errors:
            extra = {"outputBounds": tuple(bounds)} if bounds else {}
            vrt = g.BuildVRT(str(tmp), [product.bands[b] for b in order], separate=True, resolution="highest",
                             resampleAlg="nearest", **extra)
        if vrt is None:
            raise ProductError(f"the band files of {product.name} could not be opened: "
                               f"{errors.text() or g.GetLastErrorMsg()}; the product is damaged or incomplete")
        for i, b in enumerate(order, start=1):
            band = vrt.GetRasterBand(i)
            band.SetDescription(b)
            band.SetNoDataValue(product.spec.nodata)
        meta = {k: v for k, v in product.metadata.items()}
        meta["MMEARTH_PRODUCT"] = product.source
        mask, mask_path = product.quality_mask()
        if mask:
            meta[MASK_FILE_KEY], meta[MASK_KIND_KEY] = mask_path, mask
        for name, path in product.masks.items():  # every layer, for the options that ask for another
            meta[f"{MASK_FILE_KEY}_{name.upper()}"] = path
        level = product.level
        if level:
            meta["PROCESSING_LEVEL"] = level.upper()
        vrt.SetMetadata(meta)
        vrt = None
    return out


def stack_path(source, cache_dir=None) -> str:
    """``source`` itself for a stacked raster; for a product, the path of its VRT stack, written
    once into ``cache_dir`` (default: the runtime's cache) under a name that follows the source's
    path, size and time, and reused while they stay the same."""
    if not is_product(source):
        if str(source).lower().endswith(".npy"):
            from mpmae_core.runtime.io.gdal_io import RasterError

            raise RasterError(f"'{source}' is a TESSERA embedding tile, not Sentinel-2 bands: the encoder cannot read "
                              "it. Read it alone (the model 'none' on the command line; no model in QGIS), or beside "
                              "a Sentinel-2 raster of the place (--embedding)")
        return str(source)
    source = product_of_gdal_name(str(source)) or str(source)  # the whole product, not one resolution's bands
    if not re.match(r"https?://", str(source)) and not Path(str(source)).exists():
        raise ProductError(f"'{source}' does not exist: check the path")
    if cache_dir is None:
        from mpmae_core.runtime.io.files import user_cache_dir

        cache_dir = user_cache_dir() / "stacks"
    key = f"{STACK_VERSION}|{source}"
    if not re.match(r"https?://", str(source)):
        st = Path(str(source)).stat()
        key = f"{STACK_VERSION}|{Path(str(source)).resolve()}|{st.st_size}|{st.st_mtime_ns}"
    name = re.sub(r"[^\w.-]", "_", Path(str(source).rstrip("/")).stem)[:60]
    out = Path(cache_dir) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.vrt"
    if not out.is_file():  # the product is read (zip listing, metadata XML) only to build its stack
        build_vrt(open_product(source), out)
    return str(out)


# ------------------------------------------------------------------------------------------ masks


@dataclass
class QualityMask:
    """A product's quality layer on the stack's grid, and the rule that turns its values into 'masked'."""

    ds: object  # GDAL dataset on the stack's grid (nearest)
    spec: registry.MaskSpec
    path: str

    def masked(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) bool: True where the layer says cloud, shadow, no data... (the spec's rule)."""
        from mpmae_core.runtime.io.gdal_io import gdal_errors

        spec = self.spec
        bands = list(spec.masked) if spec.kind == "flags" else [1]
        out = np.zeros((h, w), bool)
        for b in bands:
            if b > self.ds.RasterCount:
                continue
            with gdal_errors() as errors:
                arr = self.ds.GetRasterBand(b).ReadAsArray(x, y, w, h)
            if arr is None or errors:
                raise ProductError(f"could not read the mask '{self.path}' (window x {x}, y {y}; GDAL says: "
                                   f"{errors.text()}): the product is damaged; download it again")
            if spec.kind == "classes":
                out |= np.isin(arr, spec.masked)
            elif spec.kind == "probability":
                out |= arr >= spec.threshold
            else:
                out |= arr != 0
        return out


def quality_mask(stack_ds) -> Optional[QualityMask]:
    """The quality mask a product stack names (its metadata), warped onto the stack's grid by
    nearest neighbour; None for a raster that names none."""
    meta = stack_ds.GetMetadata() or {}
    path, kind = meta.get(MASK_FILE_KEY), meta.get(MASK_KIND_KEY)
    if not path or not kind:
        return None
    return _mask_on_grid(stack_ds, path, kind)


def product_mask(stack_ds, name: str) -> Optional[QualityMask]:
    """Another of the product's quality layers by name ("cldprb", "scl", "classi"), or None."""
    path = (stack_ds.GetMetadata() or {}).get(f"{MASK_FILE_KEY}_{name.upper()}")
    return _mask_on_grid(stack_ds, path, name) if path else None


def _mask_on_grid(stack_ds, path: str, kind: str) -> QualityMask:
    from mpmae_core.runtime.io.gdal_io import gdal, gdal_errors

    spec = next((m for m in registry.SENTINEL2.masks if m.name == kind), None)
    if spec is None:
        raise ProductError(f"the stack names a mask of unknown kind {kind!r}: build it again with this version")
    g = gdal()
    gt = stack_ds.GetGeoTransform()
    w, h = stack_ds.RasterXSize, stack_ds.RasterYSize
    bounds = (gt[0], gt[3] + h * gt[5], gt[0] + w * gt[1], gt[3])
    with gdal_errors() as errors:
        src = g.OpenEx(path, g.OF_RASTER)  # a file that is not a raster gives None, not a crash in Warp
        ds = None if src is None else g.Warp("", src, format="VRT", outputBounds=bounds, width=w, height=h,
                                              dstSRS=stack_ds.GetProjection(), resampleAlg="near")
    if ds is None:
        raise ProductError(f"the product's mask '{path}' could not be opened ({errors.text()}): the product is "
                           "damaged; download it again")
    return QualityMask(ds, spec, path)
