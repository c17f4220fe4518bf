#!/usr/bin/env python3
"""Build the QGIS plugin zip: ``python3 scripts/build_plugin.py [--out dist/...zip]``.

The zip holds one folder, ``mmearth_qgis/``, as QGIS's "Install from ZIP" expects: the plugin,
its metadata.txt (the repository's top-level file; the symlink in the plugin folder is
dereferenced) and, under ``vendor/``, the torch-free part of ``mpmae_core`` it runs on
(registry, statistics, ONNX runtime). The plugin puts ``vendor/`` on sys.path only when no
``mpmae_core`` is installed. Standard library only; paths inside the zip are relative.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "mmearth_qgis"
#: The torch-free part of mpmae_core the plugin needs (a test checks the plugin runs on exactly this).
VENDORED = ["mpmae_core/__init__.py", "mpmae_core/registry.py", "mpmae_core/resources", "mpmae_core/runtime"]
SKIP_DIRS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def _files(base: Path):
    if base.is_file():
        yield base
        return
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix not in SKIP_SUFFIXES:
                yield path


def plugin_version() -> str:
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def build(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    entries = []
    for path in _files(ROOT / PLUGIN):
        rel = path.relative_to(ROOT / PLUGIN)
        if rel.parts[0] == "vendor":
            continue
        entries.append((path.resolve(), f"{PLUGIN}/{rel.as_posix()}"))  # resolve(): metadata.txt is a symlink
    for item in VENDORED:
        for path in _files(ROOT / item):
            entries.append((path, f"{PLUGIN}/vendor/{path.relative_to(ROOT).as_posix()}"))
    names = [name for _, name in entries]
    if f"{PLUGIN}/metadata.txt" not in names or f"{PLUGIN}/__init__.py" not in names:
        raise SystemExit("build_plugin: metadata.txt or __init__.py missing from the plugin folder")
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for path, name in entries:
                zf.write(path, name)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="zip to write (default dist/mmearth_qgis-VERSION.zip)")
    args = p.parse_args(argv)
    out = args.out or ROOT / "dist" / f"{PLUGIN}-{plugin_version()}.zip"
    build(out)
    with zipfile.ZipFile(out) as zf:
        count = len(zf.namelist())
    print(f"wrote {out} ({count} files, {out.stat().st_size / 1e3:.0f} kB): install it in QGIS with Plugins > "
          "Manage and Install Plugins > Install from ZIP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
