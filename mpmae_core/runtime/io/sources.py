"""What an input is made of: the files GDAL reads for a raster, and the members of a series.

Below the inference code: outputs are checked against every file of every input
(``input_files``), and ``inference.series`` reads a series' members (``expand_series``).
"""

from __future__ import annotations

import glob as _glob
from pathlib import Path

from mpmae_core.runtime.io.gdal_io import RasterError


class SeriesError(RasterError):
    """A series that cannot be read; the message says why and what to do."""


def expand_series(spec) -> list[str]:
    """The member sources of a series: a list, or one text naming a glob, a folder (its products
    and rasters, one level deep), a .txt list of paths, a STAC ItemCollection (.json: each item
    one member), or paths separated by commas."""
    if isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    else:
        text = str(spec)
        path = Path(text)
        if path.is_file() and path.suffix.lower() == ".json" and is_item_collection(path):
            items = collection_items(path)
        elif path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            items = [ln.strip() for ln in path.read_text(errors="replace").splitlines()
                     if ln.strip() and not ln.strip().startswith("#")]
            items = [str(path.parent / i) if not Path(i).is_absolute() and "://" not in i else i for i in items]
        elif path.is_dir() and not list(path.glob("MTD_MSIL*.xml")):
            items = sorted(str(p) for p in path.iterdir()
                           if p.suffix.lower() in (".tif", ".tiff", ".vrt", ".zip") or p.is_dir()
                           or p.name.upper().startswith("MTD_MSIL"))
        elif "," in text and not path.exists():  # a,b,c
            items = [t.strip() for t in text.split(",") if t.strip()]
        else:
            items = sorted(_glob.glob(text)) if any(ch in text for ch in "*?[") else [text]
    if not items:
        raise SeriesError(f"the series {spec!r} names no raster or product: give a list, a glob (quoted), a folder "
                          "or a text file of paths")
    return items


MAX_COLLECTION_BYTES = 64 * 1024 * 1024  # a STAC ItemCollection larger than this is refused, not parsed
MAX_ITEMS = 10_000


def _read_json(path: Path):
    import json

    size = path.stat().st_size
    if size > MAX_COLLECTION_BYTES:
        raise SeriesError(f"'{path}' is {size / 2**20:.0f} MiB, more than a STAC ItemCollection of one place needs "
                          f"(at most {MAX_COLLECTION_BYTES // 2**20} MiB): search for fewer items")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SeriesError(f"'{path}' is not a readable JSON file ({type(exc).__name__}): download it again") from None


def is_item_collection(path) -> bool:
    """Whether a .json file is a STAC ItemCollection (a FeatureCollection); False for anything
    else, a single item included (that is one product)."""
    try:
        doc = _read_json(Path(path))
    except (SeriesError, OSError):
        return False
    return isinstance(doc, dict) and doc.get("type") == "FeatureCollection"


def collection_items(path, cache_dir=None) -> list[str]:
    """The items of a STAC ItemCollection, each written as an item file of its own (its relative
    asset hrefs made absolute, its date in its name) into ``cache_dir`` (default the runtime's
    cache), so each is a product like any downloaded item."""
    import hashlib
    import json
    import re

    from mpmae_core.runtime.io.files import user_cache_dir

    path = Path(path)
    doc = _read_json(path)
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list) or not features:
        raise SeriesError(f"'{path}' is a STAC ItemCollection without items: search again, or give the items' files")
    if len(features) > MAX_ITEMS:
        raise SeriesError(f"'{path}' holds {len(features)} items, more than {MAX_ITEMS}: search for fewer")
    folder = Path(cache_dir) if cache_dir else user_cache_dir() / "stac-items"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, item in enumerate(features):
        if not isinstance(item, dict) or item.get("type") != "Feature":
            raise SeriesError(f"item {i} of '{path}' is not a STAC item (an object with \"type\": \"Feature\"): fix "
                              "or remove it")
        item = dict(item)
        assets = item.get("assets") if isinstance(item.get("assets"), dict) else {}
        fixed = {}
        for key, asset in assets.items():
            if isinstance(asset, dict) and isinstance(asset.get("href"), str):
                href = asset["href"]
                if not re.match(r"[a-z][a-z0-9+.-]*://", href) and not Path(href).is_absolute():
                    asset = dict(asset, href=str((path.parent / href).resolve()))
            fixed[str(key)] = asset
        item["assets"] = fixed
        props = item.get("properties") if isinstance(item.get("properties"), dict) else {}
        when = re.sub(r"[^0-9T-]", "", str(props.get("datetime") or ""))[:19]
        ident = re.sub(r"[^\w.-]", "_", str(item.get("id") or f"item{i}"))[:80]
        text = json.dumps(item)
        name = f"{ident}_{when}_{hashlib.sha256(text.encode()).hexdigest()[:10]}.json"
        target = folder / name
        if not target.is_file():
            tmp = target.with_suffix(".json.part")
            tmp.write_text(text)
            tmp.replace(target)
        out.append(str(target))
    return out


def looks_like_series(source) -> bool:
    """Whether a source names several rasters rather than one: a list, a glob, a text file of paths,
    or paths separated by commas. A folder is one raster (a product or its band files) unless the
    caller says it is a series."""
    if isinstance(source, (list, tuple)):
        return len(source) > 1
    text = str(source)
    path = Path(text)
    if path.exists():
        return path.is_file() and (path.suffix.lower() in (".txt", ".lst", ".list") or
                                   path.suffix.lower() == ".json" and is_item_collection(path))
    return any(ch in text for ch in "*?[") or "," in text


def series_files(source) -> list[str]:
    """The member sources of a series source (for checking outputs against inputs); [] when the
    source is not a series or cannot be listed yet (the read then says why)."""
    try:
        return expand_series(source)
    except (SeriesError, OSError):
        return []


def input_files(source) -> list[str]:
    """Every file GDAL reads for ``source`` (a VRT's sources too; every member's of a series);
    [source] when it cannot tell."""
    from mpmae_core.runtime.io.gdal_io import gdal_errors, gdal

    if hasattr(source, "files"):  # an input prepared already (a change pair)
        return list(source.files)
    if isinstance(source, (list, tuple)) or looks_like_series(source):
        given = [] if isinstance(source, (list, tuple)) else [str(source)]
        return given + [f for m in series_files(source) for f in input_files(m)]
    g = gdal()
    with gdal_errors():
        ds = g.OpenEx(str(source), g.OF_RASTER | g.OF_READONLY)
        files = list(ds.GetFileList() or []) if ds is not None else []
        ds = None
    return [str(source)] + files
