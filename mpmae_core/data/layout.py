"""Write files in the MMEarth layout: ``data_<name>.h5`` plus its three JSON side files.

Used by the synthetic generator (tests, CI) and by the embedded real sample. numpy and h5py only.

Layout (reference notes, section 5): one gzip dataset per modality, chunked one tile per chunk;
a compound ``metadata`` dataset (``tile_id``, ``S2_type``); ``data_<name>_splits.json``,
``data_<name>_band_stats.json`` and ``data_<name>_tile_info.json`` beside it. Modalities a tile
lacks are written as that modality's nodata ("absent"), as the reference does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.files import atomic_output, atomic_write_text

#: Extra per-tile datasets of the reference files (not pretext tasks; written for layout fidelity).
AUXILIARY = {"sentinel2_cloudmask": ("uint16", 65535), "sentinel2_cloudprod": ("uint16", 65535),
             "sentinel2_scl": ("uint8", 255)}
METADATA_DTYPE = np.dtype([("tile_id", "S100"), ("S2_type", "S10")])


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
            meta = np.array([(t.encode(), s.encode()) for t, s in zip(tile_ids, s2_types)], dtype=METADATA_DTYPE)
            f.create_dataset("metadata", data=meta, compression="gzip", chunks=(1,))
    side = side_file_paths(h5_path)
    atomic_write_text(side["splits"], json.dumps({k: [int(i) for i in v] for k, v in splits.items()}))
    atomic_write_text(side["band_stats"], json.dumps(band_stats, indent=1))
    atomic_write_text(side["tile_info"], json.dumps(tile_info, indent=1))
    return h5_path
