"""A PNG of a class map next to its scene in natural colour, with the class legend.

Natural colour comes from the bands named B4, B3, B2 (matched by name like model inputs),
stretched between the 2nd and 98th percentiles of valid pixels. Class colours and names come from
the class map itself (colour table and category names, as ``segment`` writes them). Needs
matplotlib (part of QGIS's Python and of most scientific Pythons), not torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mpmae_core import registry
from mpmae_core.runtime.io.files import atomic_output
from mpmae_core.runtime.io.gdal_io import RasterError, open_raster


def _read(band, window, step):
    x, y, w, h = window or (0, 0, band.XSize, band.YSize)
    return band.ReadAsArray(x, y, w, h, buf_xsize=max(1, w // step), buf_ysize=max(1, h // step))


def _step(ds, window, max_side):
    w, h = (window[2], window[3]) if window else (ds.RasterXSize, ds.RasterYSize)
    return max(1, int(np.ceil(max(w, h) / max_side)))


def natural_colour(path, max_side: int = 2048, window=None) -> np.ndarray:
    """(rows, cols, 3) float in [0, 1] from the raster's B4, B3, B2 bands; NaN where no data.
    ``window`` (x, y, w, h) in pixels shows a part only. A product is read as its 10 m stack."""
    from mpmae_core.runtime.io.products import stack_path

    ds = open_raster(stack_path(path))
    names = [registry.canonical_s2_band(ds.GetRasterBand(i + 1).GetDescription()) for i in range(ds.RasterCount)]
    try:
        idx = [names.index(b) + 1 for b in ("B4", "B3", "B2")]
    except ValueError:
        if ds.RasterCount < 3:
            raise RasterError(f"'{path}' has no B4, B3, B2 bands by name and fewer than 3 bands") from None
        idx = [1, 2, 3]
    step = _step(ds, window, max_side)
    out = []
    for b in idx:
        band = ds.GetRasterBand(b)
        arr = _read(band, window, step).astype(np.float64)
        nd = band.GetNoDataValue()
        invalid = arr == nd if nd is not None else np.zeros(arr.shape, bool)
        valid = arr[~invalid]
        lo, hi = np.percentile(valid, [2, 98]) if valid.size else (0.0, 1.0)
        arr = np.clip((arr - lo) / max(hi - lo, 1e-9), 0, 1)
        arr[invalid] = np.nan
        out.append(arr)
    return np.stack(out, -1)


def class_map_rgb(path, max_side: int = 2048, window=None):
    """(rows, cols, 4) RGBA from a class map's colour table (no data transparent), and the legend
    [(name, (r, g, b)), ...] of the classes that occur."""
    ds = open_raster(path)
    band = ds.GetRasterBand(1)
    arr = _read(band, window, _step(ds, window, max_side))
    band.GetNoDataValue()  # GDAL 3.6 reads .aux.xml lazily: touch the band before the category names
    names = band.GetCategoryNames() or []
    table = band.GetRasterColorTable()
    nd = band.GetNoDataValue()
    rgba = np.zeros(arr.shape + (4,), np.float64)
    legend = []
    for value in np.unique(arr):
        if nd is not None and value == nd:
            continue
        colour = table.GetColorEntry(int(value))[:3] if table is not None and value < table.GetCount() else (128, 128, 128)
        rgba[arr == value] = [c / 255 for c in colour] + [1.0]
        legend.append((names[value] if value < len(names) else str(value), tuple(colour)))
    return rgba, legend


def side_by_side(scene, class_maps, out, title: str = "", panel_titles=None, window=None) -> Path:
    """Write ``out`` (PNG): the scene in natural colour left, then each class map (one path or a
    list, on the scene's grid), a legend of every class shown below; ``window`` (x, y, w, h) in
    pixels zooms in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    maps = [class_maps] if isinstance(class_maps, (str, Path)) else list(class_maps)
    titles = list(panel_titles or []) + [f"class map {i + 1}" if len(maps) > 1 else "class map"
                                         for i in range(len(panel_titles or []), len(maps))]
    rgb = natural_colour(scene, window=window)
    panels, legend = [], {}
    for m in maps:
        classes, entries = class_map_rgb(m, window=window)
        panels.append(classes)
        legend.update(entries)
    height, width = rgb.shape[:2]
    n = 1 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 6 * height / width + 1.4), dpi=120)
    axes[0].imshow(np.nan_to_num(rgb, nan=1.0))
    axes[0].set_title("Sentinel-2 (B4, B3, B2)")
    for ax, classes, t in zip(axes[1:], panels, titles):
        ax.imshow(classes, interpolation="nearest")
        ax.set_title(t, fontsize=10)
    for ax in axes:
        ax.set_axis_off()
    fig.legend(handles=[Patch(color=[c / 255 for c in rgb_], label=name) for name, rgb_ in legend.items()],
               loc="lower center", ncol=min(len(legend), 8), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95 if title else 1))
    out = Path(out)
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
