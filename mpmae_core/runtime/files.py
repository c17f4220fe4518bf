"""Outputs that appear whole or not at all: write under a temporary name, rename when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the destination folder (so the rename is atomic on one file
    system) and keeps the destination's extension (so drivers that pick a format by extension
    still work). On any exception, cancellation included, the temporary file is removed and
    ``path`` is left untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ext = suffix if suffix is not None else "".join(dest.suffixes[-1:])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{ext}", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding=encoding)
