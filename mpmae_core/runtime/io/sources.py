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
    and rasters, one level deep), a .txt list of paths, or paths separated by commas."""
    if isinstance(spec, (list, tuple)):
        items = [str(s) for s in spec]
    else:
        text = str(spec)
        path = Path(text)
        if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
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


def looks_like_series(source) -> bool:
    """Whether a source names several rasters rather than one: a list, a glob, a text file of paths,
    or paths separated by commas. A folder is one raster (a product or its band files) unless the
    caller says it is a series."""
    if isinstance(source, (list, tuple)):
        return len(source) > 1
    text = str(source)
    path = Path(text)
    if path.exists():
        return path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list")
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
    if looks_like_series(source):
        given = [] if isinstance(source, (list, tuple)) else [str(source)]
        return given + [f for m in series_files(source) for f in input_files(m)]
    g = gdal()
    with gdal_errors():
        ds = g.OpenEx(str(source), g.OF_RASTER | g.OF_READONLY)
        files = list(ds.GetFileList() or []) if ds is not None else []
        ds = None
    return [str(source)] + files
