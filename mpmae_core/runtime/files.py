"""Outputs that appear whole or not at all: write under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


#: Files GDAL writes beside a raster (PAM metadata, overviews, masks): they follow the raster.
SIDECARS = (".aux.xml", ".ovr", ".msk")


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the destination folder (so the rename is atomic on one file
    system) and keeps the destination's extension (so drivers that pick a format by extension
    still work). GDAL sidecars written under the temporary name move with it. The result gets
    the permissions of a normally created file. On any exception, cancellation included, the
    temporary file and its sidecars are removed and ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else "".join(dest.suffixes[-1:])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{ext}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, dest)
        for side in SIDECARS:
            if Path(f"{tmp}{side}").exists():
                os.replace(f"{tmp}{side}", f"{dest}{side}")
    except BaseException:
        for leftover in [tmp] + [Path(f"{tmp}{side}") for side in SIDECARS]:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
