"""Write files in the MMEarth layout: ``data_<name>.h5`` plus its three JSON side files.

Used by the synthetic generator (tests, CI) and by the embedded real sample. numpy and h5py only.

Layout of the v001 release (reference notes, section 5, checked against torchgeo's independent
description of the same files): one gzip dataset per modality, chunked one tile per chunk; a
compound ``metadata`` dataset (``meta_id`` S10, ``S2_type`` S3) whose ids ("0", "1", ...) key
``data_<name>_tile_info.json``; ``data_<name>_splits.json`` and ``data_<name>_band_stats.json``
beside it. Each tile_info entry lists, under ``BANDS``, the bands present per modality with the
release's band names. Modalities a tile lacks are written as that modality's nodata ("absent"),
as the reference does. :data:`RELEASE_DATASETS` is that description in one place; a test holds
the files we write against it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.files import atomic_output, atomic_write_text

#: Extra per-tile datasets of the reference files (not pretext tasks; written for layout fidelity).
AUXILIARY = {"sentinel2_cloudmask": ("uint16", 65535), "sentinel2_cloudprod": ("uint16", 65535),
             "sentinel2_scl": ("uint8", 255)}
#: The release's metadata compound: the id is read by position (field 0), since an older note and
#: some tools call it ``tile_id``; the release names it ``meta_id``.
METADATA_DTYPE = np.dtype([("meta_id", "S10"), ("S2_type", "S3")])

#: Band names per modality as the release's tile_info ``BANDS`` lists them (sentinel1 is split by orbit;
#: era5's names carry the year and month of the tile, see :func:`era5_band_names`).
RELEASE_BANDS = {
    "sentinel2": list(registry.S2_STORAGE_ORDER),
    "sentinel2_cloudmask": ["QA60"], "sentinel2_cloudprod": ["MSK_CLDPRB"], "sentinel2_scl": ["SCL"],
    "sentinel1_asc": ["VV", "VH", "HH", "HV"], "sentinel1_desc": ["VV", "VH", "HH", "HV"],
    "aster": ["b1", "slope"], "dynamic_world": ["label"], "canopy_height_eth": ["height", "std"],
    "esa_worldcover": ["Map"], "lat": ["sin", "cos"], "lon": ["sin", "cos"], "month": ["sin_month", "cos_month"],
    "biome": ["biome"], "eco_region": ["eco_region"],
}


def era5_band_names(date: str) -> list[str]:
    """The release's era5 band names for a tile sensed on ``date`` (YYYY-MM-DD): previous month,
    current month (named YYYYMM_...), then the year's aggregates."""
    year, month = int(date[:4]), int(date[5:7])
    prev = f"{year - 1}12" if month == 1 else f"{year}{month - 1:02d}"
    cur = f"{year}{month:02d}"
    names = []
    for tag in (prev, cur):
        names += [f"{tag}_temperature_2m", f"{tag}_temperature_2m_min", f"{tag}_temperature_2m_max",
                  f"{tag}_total_precipitation_sum"]
    return names + ["0_temperature_2m_mean", "1_temperature_2m_min_min", "2_temperature_2m_max_max",
                    "3_total_precipitation_sum_sum"]


def read_metadata(meta: np.ndarray) -> tuple[list[str], list[str]]:
    """(ids, S2 types) from a ``metadata`` compound of any release: the id is field 0 whatever its
    name (``meta_id`` in v001, ``tile_id`` in files of older tools), the type is ``S2_type``."""
    names = meta.dtype.names or ()
    if not names:
        raise ValueError("the 'metadata' dataset is not a compound of (id, S2_type)")
    type_field = "S2_type" if "S2_type" in names else (names[1] if len(names) > 1 else None)
    if type_field is None:
        raise ValueError(f"the 'metadata' dataset has fields {names} but no S2_type")

    def text(v) -> str:
        return v.decode("utf-8", "replace").strip("\x00 ") if isinstance(v, bytes) else str(v)

    return [text(m[0]) for m in meta], [text(m[type_field]).lower() for m in meta]


def side_file_paths(h5_path: str | os.PathLike) -> dict[str, Path]:
    """The side files of ``data_<name>.h5``: splits, band_stats, tile_info."""
    h5_path = Path(h5_path)
    stem = h5_path.stem  # data_<name>
    return {kind: h5_path.with_name(f"{stem}_{kind}.json") for kind in ("splits", "band_stats", "tile_info")}


def absent_value(name: str) -> float | int:
    """The raw value a missing modality is filled with."""
    if name in AUXILIARY:
        return AUXILIARY[name][1]
    spec = registry.STORAGE[name]
    if spec.kind == "onehot":
        return 0
    if spec.dtype.startswith("float"):
        return float("-inf") if name == "sentinel1" else float("nan")
    if spec.classes:
        return 0 if name == "dynamic_world" else 255
    return spec.nodata[0]


def _shape(name: str, n: int, size: int) -> tuple:
    if name in AUXILIARY:
        return (n, 1, size, size)
    spec = registry.STORAGE[name]
    return (n, spec.channels, size, size) if spec.kind == "pixel" else (n, spec.channels)


def _dtype(name: str) -> str:
    return AUXILIARY[name][0] if name in AUXILIARY else registry.STORAGE[name].dtype


def band_statistics(values: np.ndarray, valid: np.ndarray) -> dict:
    """Per-channel mean, std, min, max over valid entries; values (N, C, ...) and valid alike."""
    stats = {"mean": [], "std": [], "min": [], "max": []}
    for c in range(values.shape[1]):
        v = values[:, c][valid[:, c]].astype(np.float64)
        if v.size == 0:
            v = np.zeros(1)
        stats["mean"].append(float(v.mean()))
        stats["std"].append(float(v.std()) or 1.0)
        stats["min"].append(float(v.min()))
        stats["max"].append(float(v.max()))
    return stats


def write_mmearth(
    out_dir: str | os.PathLike,
    name: str,
    arrays: Mapping[str, np.ndarray],
    tile_ids: Sequence[str],
    s2_types: Sequence[str],
    tile_info: Mapping[str, dict],
    splits: Mapping[str, Sequence[int]],
    band_stats: Mapping[str, dict],
    attrs: Optional[Mapping[str, str]] = None,
    size: Optional[int] = None,
) -> Path:
    """Write ``data_<name>.h5`` and its side files. Modalities not in ``arrays`` are written absent."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import h5py

    n = len(tile_ids)
    size = size or arrays["sentinel2"].shape[-1]
    h5_path = out_dir / f"data_{name}.h5"
    names = list(registry.STORAGE) + list(AUXILIARY)
    with atomic_output(h5_path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for mod in names:
                shape = _shape(mod, n, size)
                if mod in arrays:
                    data = np.asarray(arrays[mod])
                    if data.shape != shape:
                        raise ValueError(f"{mod}: array of shape {data.shape}, the layout needs {shape}")
                    data = data.astype(_dtype(mod), copy=False)
                else:
                    data = np.full(shape, absent_value(mod), dtype=_dtype(mod))
                f.create_dataset(mod, data=data, compression="gzip", chunks=(1,) + shape[1:])
            too_long = [t for t in tile_ids if len(t.encode()) > METADATA_DTYPE["meta_id"].itemsize]
            if too_long:
                raise ValueError(f"tile id {too_long[0]!r} does not fit the release's meta_id (at most "
                                 f"{METADATA_DTYPE['meta_id'].itemsize} bytes); the release uses '0', '1', ...")
            meta = np.array([(t.encode(), s.encode()) for t, s in zip(tile_ids, s2_types)], dtype=METADATA_DTYPE)
            f.create_dataset("metadata", data=meta, compression="gzip", chunks=(1,))
    side = side_file_paths(h5_path)
    atomic_write_text(side["splits"], json.dumps({k: [int(i) for i in v] for k, v in splits.items()}))
    atomic_write_text(side["band_stats"], json.dumps(band_stats, indent=1))
    atomic_write_text(side["tile_info"], json.dumps(tile_info, indent=1))
    return h5_path
