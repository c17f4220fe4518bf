"""MMEarthDataset: the real MMEarth files (or their fast memory-mapped copy) as normalised tensors.

Per sample (``dataset[i]``) a dict in the MP-MAE batch contract (mpmae_core/models/mpmae.py):
- ``sentinel2``: (C, crop, crop) float32, z-scored with the tile's own L1C or L2A statistics,
  the bands chosen by name; NaN where the raw value is nodata (0, or the tile's NO_DATA);
- pixel values (sentinel1, aster, canopy_height_eth): (C, crop, crop) float32, NaN invalid;
- pixel classes (dynamic_world, esa_worldcover): (crop, crop) int64, 0-based, -1 invalid;
- image values (era5, lat, lon, month): (C,) float32, NaN invalid;
- image classes (biome, eco_region): () int64 from the one-hot, -1 invalid;
- ``present``: (n_tasks,) bool, whether each task has any valid target in this sample;
- ``index`` (position in the file) and ``tile_id``.

Rules (and the reference's bugs they avoid):
- nodata is detected on raw values, before normalisation (the old reference loader normalised
  first and never masked S2 nodata);
- class maps are remapped through a lookup table in which every value that is not a real class
  is invalid, so WorldCover tree cover (10 -> 0) is kept (the current reference drops it);
- a modality a tile lacks becomes all-NaN / -1, never zeros that look like data;
- one random crop per sample, shared by every pixel modality, drawn from (seed, epoch, index)
  so it is the same whatever the worker or the resume point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from mpmae_core import registry
from mpmae_core.data.layout import read_metadata, side_file_paths


class DataError(ValueError):
    """An MMEarth file or its side files cannot be used as given; the message says why and what to do."""


# ------------------------------------------------------------------------------------------
# Sources: where raw tiles come from
# ------------------------------------------------------------------------------------------

class H5Source:
    """The MMEarth HDF5 file, opened lazily in each process (h5py handles do not survive fork)."""

    kind = "h5"

    def __init__(self, path: Path):
        import h5py

        self.path = Path(path)
        self._file, self._pid = None, None
        try:
            with h5py.File(self.path, "r") as f:
                self.shapes = {k: tuple(f[k].shape) for k in f.keys()}
                meta = f["metadata"][()] if "metadata" in f else None
        except OSError as exc:
            raise DataError(f"'{self.path}' is not a readable HDF5 file: {exc}") from None
        if meta is None:
            raise DataError(f"'{self.path}' has no 'metadata' dataset (meta_id, S2_type): not an MMEarth file")
        try:
            self.tile_ids, self.s2_types = read_metadata(meta)
        except ValueError as exc:
            raise DataError(f"'{self.path}': {exc}") from None

    def _f(self):
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def read(self, name: str, index: int, window: Optional[tuple[int, int, int]] = None) -> np.ndarray:
        ds = self._f()[name]
        if window is None or len(ds.shape) != 4:
            return ds[index]
        y, x, s = window
        return ds[index, :, y:y + s, x:x + s]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state


class NpySource:
    """The fast format: one uncompressed, memory-mapped ``<modality>.npy`` per modality."""

    kind = "npy"

    def __init__(self, directory: Path):
        self.path = Path(directory)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"'{self.path}' has no meta.json: not a converted MMEarth folder "
                            "(make one with `python -m mpmae_core.data.convert FILE.h5 OUT_DIR`)")
        meta = json.loads(meta_path.read_text())
        self.tile_ids, self.s2_types = meta["tile_ids"], [t.lower() for t in meta["s2_types"]]
        self._arrays: dict[str, np.ndarray] = {}
        self.shapes = {}
        for file in self.path.glob("*.npy"):
            arr = np.load(file, mmap_mode="r")
            self.shapes[file.stem] = tuple(arr.shape)
        self.side = {k: self.path / f"{k}.json" for k in ("splits", "band_stats", "tile_info")}

    def _arr(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / f"{name}.npy", mmap_mode="r")
        return self._arrays[name]

    def read(self, name: str, index: int, window: Optional[tuple[int, int, int]] = None) -> np.ndarray:
        arr = self._arr(name)
        if window is None or arr.ndim != 4:
            return np.asarray(arr[index])
        y, x, s = window
        return np.asarray(arr[index, :, y:y + s, x:x + s])

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


def open_source(path: str | os.PathLike):
    path = Path(path)
    if path.is_dir():
        return NpySource(path)
    if not path.is_file():
        raise DataError(f"'{path}' does not exist: give an MMEarth data_<name>.h5 file or a converted folder")
    return H5Source(path)


def _side_files(source) -> dict[str, Path]:
    return source.side if isinstance(source, NpySource) else side_file_paths(source.path)


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise DataError(f"side file '{path.name}' is missing next to the data ({what}); MMEarth downloads ship "
                        f"it beside data_<name>.h5: put it in {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"side file '{path}' is not valid JSON: {exc}") from None


# ------------------------------------------------------------------------------------------
# Pure conversion rules (each tested on its own)
# ------------------------------------------------------------------------------------------

def class_lut(classes: Sequence[int], size: int = 256) -> np.ndarray:
    """Lookup table raw value -> 0-based label; every value that is not a class maps to -1."""
    lut = np.full(size, -1, dtype=np.int64)
    lut[np.asarray(classes)] = np.arange(len(classes))
    return lut


def tile_nodata(info: dict, modality: str) -> tuple:
    """Extra nodata values from a tile_info entry's ``NO_DATA`` (a number, a list, or per modality)."""
    entry = info.get("NO_DATA") if info else None
    if isinstance(entry, dict):
        entry = entry.get(modality)
    if entry is None:
        return ()
    values = entry if isinstance(entry, (list, tuple)) else [entry]
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            continue
    return tuple(out)


def invalid_mask(raw: np.ndarray, nodata: Sequence[float], dtype: np.dtype) -> np.ndarray:
    """True where a raw value is nodata: non-finite, or equal to a nodata value in the stored dtype."""
    bad = ~np.isfinite(raw) if raw.dtype.kind == "f" else np.zeros(raw.shape, dtype=bool)
    for v in nodata:
        if np.isnan(v) or np.isinf(v):
            continue
        if raw.dtype.kind in "iu":
            info = np.iinfo(raw.dtype)
            if not info.min <= v <= info.max:
                # e.g. 255 written into int8 reads back as -1: compare the same bit pattern
                v = np.array(v).astype(np.int64).astype(raw.dtype)
        bad |= raw == v
    return bad


def normalise(raw: np.ndarray, invalid: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Z-score per channel (axis 0) as float32, NaN where invalid."""
    shape = (-1,) + (1,) * (raw.ndim - 1)
    out = (raw.astype(np.float32) - np.asarray(mean, np.float32).reshape(shape)) / np.asarray(std, np.float32).reshape(shape)
    out[invalid] = np.nan
    return out


def onehot_label(raw: np.ndarray, nodata: Sequence[float]) -> int:
    """The class of a one-hot vector, or -1 when it holds no class (all zero, nodata, several ones)."""
    if any((raw == v).any() for v in nodata) or raw.sum() != 1:
        return -1
    return int(raw.argmax())


def sample_mask(grid: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    """A (grid, grid) bool mask hiding all but ``int(grid*grid*(1-ratio))`` random cells (True = hidden)."""
    length = grid * grid
    keep = int(length * (1 - ratio))
    mask = np.ones(length, dtype=bool)
    mask[rng.permutation(length)[:keep]] = False
    return mask.reshape(grid, grid)


# ------------------------------------------------------------------------------------------
# The dataset
# ------------------------------------------------------------------------------------------

class MMEarthDataset(torch.utils.data.Dataset):
    """An MMEarth subset (``data_1M_v001``, ``data_1M_v001_64``, ``data_100k_v001``, or any file in
    that layout) as MP-MAE samples.

    Args:
        path: ``data_<name>.h5`` (side files beside it) or a folder made by ``mpmae_core.data.convert``.
        split: "train", "val" or "test" (a key of the splits file), or None for every tile.
        tasks: a target set name or task names; which targets each sample carries.
        crop: side of the random crop (the same for every pixel modality), None for whole tiles.
        s2_bands: Sentinel-2 bands by name, in the order the model takes them.
        random_crop: False takes the centre crop (evaluation).
        seed: crops derive from (seed, epoch, index).
        band_stats: a band-stats dict overriding the side file (e.g. other statistics).
        mask_ratio, patch_size: when given, each sample also carries ``mask``, a bool
            (crop/patch, crop/patch) grid with True = hidden, drawn from (seed, epoch, index) like
            the crop, so masks do not depend on workers, ranks or resume points.
    """

    def __init__(self, path: str | os.PathLike, split: Optional[str] = "train", tasks="all_mod",
                 crop: Optional[int] = 112, s2_bands: Sequence[str] = registry.S2_MMEARTH_BANDS,
                 random_crop: bool = True, seed: int = 0, band_stats: Optional[dict] = None,
                 mask_ratio: Optional[float] = None, patch_size: Optional[int] = None):
        self.source = open_source(path)
        self.tasks = registry.resolve_tasks(tasks)
        self.s2_bands = tuple(s2_bands)
        unknown = [b for b in self.s2_bands if b not in registry.S2_STORAGE_ORDER]
        if unknown:
            raise DataError(f"unknown Sentinel-2 band(s) {unknown}; known: {', '.join(registry.S2_STORAGE_ORDER)}")
        self.s2_index = [registry.S2_STORAGE_ORDER.index(b) for b in self.s2_bands]
        self.seed, self.random_crop, self.epoch = seed, random_crop, 0
        side = _side_files(self.source)
        self.tile_info = _read_json(side["tile_info"], "per-tile metadata: dates, levels, nodata")
        self.band_stats = band_stats if band_stats is not None else _read_json(side["band_stats"], "normalisation statistics")
        n = len(self.source.tile_ids)
        if split is None:
            self.indices = np.arange(n)
        else:
            splits = _read_json(side["splits"], "train/val/test tile indices")
            if split not in splits:
                raise DataError(f"split '{split}' is not in {side['splits'].name}; it has {', '.join(splits)}")
            self.indices = np.asarray(splits[split], dtype=np.int64)
            bad = self.indices[(self.indices < 0) | (self.indices >= n)]
            if bad.size:
                raise DataError(f"split '{split}' holds tile index {int(bad[0])} (and {bad.size - 1} more out of range) "
                                f"but the file has {n} tiles (0..{n - 1}): the splits file belongs to another file")
        self._check_datasets(n)
        self.tile_size = self.source.shapes["sentinel2"][-1]
        self.crop = crop or self.tile_size
        if self.crop > self.tile_size:
            raise DataError(f"crop {self.crop} is larger than the tiles ({self.tile_size} px)")
        self.mask_ratio, self.patch_size = mask_ratio, patch_size
        if mask_ratio is not None:
            if not patch_size or self.crop % patch_size:
                raise DataError(f"crop {self.crop} must be a multiple of the patch size {patch_size} to draw masks")
            if not 0 <= mask_ratio < 1:
                raise DataError(f"mask ratio must be in [0, 1), got {mask_ratio}")
        self._stats = self._prepare_stats()
        self._luts = {t: class_lut(registry.STORAGE[t].classes) for t in ("dynamic_world", "esa_worldcover")}

    # -- validation -----------------------------------------------------------------------
    def _check_datasets(self, n: int) -> None:
        shapes = self.source.shapes
        for name in ("sentinel2",) + tuple(t for t in self.tasks if t != "sentinel2"):
            spec = registry.STORAGE[name]
            if name not in shapes:
                raise DataError(f"dataset '{name}' is missing from '{self.source.path}', which has "
                                f"{', '.join(sorted(shapes))}; drop the task or use a file that has it")
            shape = shapes[name]
            if spec.kind == "pixel":
                ok = len(shape) == 4 and shape[0] == n and shape[1] == spec.channels and shape[2] == shape[3]
                want = f"({n}, {spec.channels}, H, H)"
            else:
                ok = shape == (n, spec.channels)
                want = f"({n}, {spec.channels})"
            if not ok:
                raise DataError(f"dataset '{name}' in '{self.source.path}' has shape {shape}, expected {want}")
        tile = shapes["sentinel2"][-1]
        for name in self.tasks:
            if registry.STORAGE[name].kind == "pixel" and shapes[name][-1] != tile:
                raise DataError(f"dataset '{name}' has {shapes[name][-1]} px tiles but sentinel2 has {tile}")

    def _prepare_stats(self) -> dict:
        """Per-modality (mean, std) arrays for the channels we read; validated against the bands."""
        out = {}
        self._missing_stats: set[str] = set()
        levels = sorted(set(self.source.s2_types))
        for level in levels:
            key = registry.S2_STATS_KEYS.get(level)
            if key is None:
                raise DataError(f"unknown S2_type '{level}' in the metadata; expected l1c or l2a")
            out[key] = self._s2_stats(key)
        for name in self.tasks:
            spec = registry.STORAGE[name]
            if name == "sentinel2" or spec.kind == "onehot" or spec.classes:
                continue
            entry = self.band_stats.get(name)
            if entry is None:
                if spec.kind == "pixel":
                    # Fine while the modality is absent from every tile read; an error once one has data.
                    self._missing_stats.add(name)
                continue  # image values without statistics (lat/lon/month sin, cos) stay as they are
            if len(entry["mean"]) != spec.channels or len(entry["std"]) != spec.channels:
                raise DataError(f"band stats for '{name}' have {len(entry['mean'])} means and {len(entry['std'])} "
                                f"stds but '{name}' has {spec.channels} channels: the band-stats file does not fit")
            out[name] = (np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32))
        return out

    def _s2_stats(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        entry = self.band_stats.get(key)
        if entry is None:
            raise DataError(f"the band-stats file has no '{key}' entry, needed for this file's "
                            f"{key[-3:].upper()} tiles")
        n_mean, n_std = len(entry["mean"]), len(entry["std"])
        if n_mean != n_std or n_mean not in (13, 12):
            raise DataError(f"band stats '{key}' have {n_mean} means and {n_std} stds; Sentinel-2 needs 13 "
                            f"(storage order) or 12 (MMEarth order, no B10): the band-stats file does not fit")
        order = registry.S2_STORAGE_ORDER if n_mean == 13 else registry.S2_MMEARTH_BANDS
        missing = [b for b in self.s2_bands if b not in order]
        if missing:
            raise DataError(f"band stats '{key}' have no entry for band(s) {', '.join(missing)}")
        idx = [order.index(b) for b in self.s2_bands]
        return np.asarray(entry["mean"], np.float32)[idx], np.asarray(entry["std"], np.float32)[idx]

    def s2_normalisation(self) -> dict:
        """level -> {"mean", "std"} of the Sentinel-2 input bands, for every level the stats file has."""
        out = {}
        for level, key in registry.S2_STATS_KEYS.items():
            if key in self.band_stats:
                mean, std = self._s2_stats(key)
                out[level] = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        return out

    # -- samples -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def crop_window(self, index: int, epoch: int) -> tuple[int, int, int]:
        span = self.tile_size - self.crop
        if span == 0:
            return 0, 0, self.crop
        if not self.random_crop:
            return span // 2, span // 2, self.crop
        rng = np.random.default_rng([self.seed, epoch, index])
        y, x = rng.integers(0, span + 1, size=2)
        return int(y), int(x), self.crop

    def __getitem__(self, key) -> dict:
        # The loader passes (position, epoch) so crops never depend on worker state.
        pos, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        index = int(self.indices[pos])
        tile_id = self.source.tile_ids[index]
        info = self.tile_info.get(tile_id, {})
        window = self.crop_window(index, epoch)
        sample = {"index": torch.tensor(index), "tile_id": tile_id}
        present = []
        for task in self.tasks:
            value = self._target(task, index, window, info)
            sample[task] = torch.from_numpy(value) if isinstance(value, np.ndarray) else torch.tensor(value)
            present.append(bool(torch.isfinite(sample[task]).any()) if sample[task].is_floating_point()
                           else bool((sample[task] >= 0).any()))
        sample["present"] = torch.tensor(present)
        if self.mask_ratio is not None:
            sample["mask"] = torch.from_numpy(sample_mask(self.crop // self.patch_size, self.mask_ratio,
                                                          np.random.default_rng([self.seed, epoch, index, 1])))
        return sample

    def _target(self, task: str, index: int, window, info: dict):
        spec = registry.STORAGE[task]
        nodata = spec.nodata + tile_nodata(info, task)
        if task == "sentinel2":
            raw = self.source.read("sentinel2", index, window)[self.s2_index]
            level = self.source.s2_types[index]
            mean, std = self._stats[registry.S2_STATS_KEYS[level]]
            return normalise(raw, invalid_mask(raw, nodata, raw.dtype), mean, std)
        raw = self.source.read(task, index, window)
        if spec.classes:
            return self._luts[task][raw[0].astype(np.int64)]
        if spec.kind == "onehot":
            return np.int64(onehot_label(raw, nodata))
        bad = invalid_mask(raw, nodata, raw.dtype)
        if task in self._missing_stats and not bad.all():
            raise DataError(f"the band-stats file has no '{task}' entry, but tile {self.source.tile_ids[index]} has "
                            f"{task} data to normalise: add '{task}' statistics or drop the task")
        if task in self._stats:
            mean, std = self._stats[task]
            return normalise(raw, bad, mean, std)
        out = raw.astype(np.float32)
        out[bad] = np.nan
        return out
