"""QGIS layer styles (.qml) written next to our rasters, so they look right when loaded anywhere.

QGIS loads ``<name>.qml`` beside ``<name>.tif`` as the layer's default style. Pure functions that
return the XML text, plus ``write_style``; no QGIS import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import quoteattr

import numpy as np

from mpmae_core.runtime.io.files import atomic_write_text

_HEAD = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n<qgis version=\"3.22\" styleCategories=\"Symbology\">\n<pipe>\n"
_TAIL = "</pipe>\n</qgis>\n"

#: Stops of a perceptually ordered ramp (dark purple -> yellow) for continuous maps.
RAMP = [(0.0, (13, 8, 135)), (0.25, (126, 3, 168)), (0.5, (204, 71, 120)), (0.75, (248, 149, 64)),
        (1.0, (240, 249, 33))]


def _hex(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def paletted_qml(class_names: Sequence[str], class_colours: Sequence[Sequence[int]]) -> str:
    """Class map: one palette entry per class with its name as the legend label."""
    entries = "".join(f"<paletteEntry value=\"{i}\" color=\"{_hex(c)}\" alpha=\"255\" label={quoteattr(str(n))}/>\n"
                      for i, (n, c) in enumerate(zip(class_names, class_colours)))
    return (_HEAD + "<rasterrenderer type=\"paletted\" band=\"1\" opacity=\"1\" alphaBand=\"-1\" nodataColor=\"\">\n"
            f"<rasterTransparency/>\n<colorPalette>\n{entries}</colorPalette>\n</rasterrenderer>\n" + _TAIL)


def multiband_qml(bands: Sequence[int], minimum: Sequence[float], maximum: Sequence[float]) -> str:
    """Three bands (1-based) as red, green, blue, each stretched from ``minimum`` to ``maximum``."""
    def enhancement(colour, lo, hi):
        return (f"<{colour}ContrastEnhancement><minValue>{lo:.6g}</minValue><maxValue>{hi:.6g}</maxValue>"
                f"<algorithm>StretchToMinimumMaximum</algorithm></{colour}ContrastEnhancement>\n")

    r, g, b = (int(v) for v in bands)
    body = "".join(enhancement(c, lo, hi) for c, lo, hi in zip(("red", "green", "blue"), minimum, maximum))
    return (_HEAD + f"<rasterrenderer type=\"multibandcolor\" redBand=\"{r}\" greenBand=\"{g}\" blueBand=\"{b}\" "
            "opacity=\"1\" alphaBand=\"-1\" nodataColor=\"\">\n<rasterTransparency/>\n"
            "<minMaxOrigin><limits>None</limits><extent>WholeRaster</extent><statAccuracy>Exact</statAccuracy>"
            "<cumulativeCutLower>0.02</cumulativeCutLower><cumulativeCutUpper>0.98</cumulativeCutUpper>"
            f"<stdDevFactor>2</stdDevFactor></minMaxOrigin>\n{body}</rasterrenderer>\n" + _TAIL)


def pseudocolor_qml(minimum: float, maximum: float) -> str:
    """One continuous band through ``RAMP`` from ``minimum`` to ``maximum``."""
    items = "".join(f"<item value=\"{minimum + f * (maximum - minimum):.6g}\" color=\"{_hex(c)}\" alpha=\"255\" "
                    f"label=\"{minimum + f * (maximum - minimum):.3g}\"/>\n" for f, c in RAMP)
    return (_HEAD + f"<rasterrenderer type=\"singlebandpseudocolor\" band=\"1\" opacity=\"1\" alphaBand=\"-1\" "
            f"classificationMin=\"{minimum:.6g}\" classificationMax=\"{maximum:.6g}\" nodataColor=\"\">\n"
            "<rasterTransparency/>\n<rastershader><colorrampshader colorRampType=\"INTERPOLATED\" "
            f"classificationMode=\"1\" clip=\"0\" minimumValue=\"{minimum:.6g}\" maximumValue=\"{maximum:.6g}\">\n"
            f"{items}</colorrampshader></rastershader>\n</rasterrenderer>\n" + _TAIL)


class BandMoments:
    """Streaming per-band mean and variance over valid cells (to pick and stretch display bands)."""

    def __init__(self, bands: int):
        self.n = 0
        self.s = np.zeros(bands)
        self.ss = np.zeros(bands)

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """``values`` (bands, rows, width), ``valid`` (rows, width): a row at a time, so the float64
        copies stay one row of the raster whatever the block's size."""
        for r in range(values.shape[1]):
            keep = valid[r]
            if not keep.any():
                continue
            v = values[:, r, keep].astype(np.float64)
            self.n += v.shape[1]
            self.s += v.sum(1)
            self.ss += np.einsum("ij,ij->i", v, v)

    def mean_std(self):
        n = max(self.n, 1)
        mean = self.s / n
        return mean, np.sqrt(np.maximum(self.ss / n - mean * mean, 0.0))

    def three_component_qml(self) -> str:
        """The three bands of largest spread as RGB, each stretched over mean +- 2 standard deviations."""
        mean, std = self.mean_std()
        top = np.argsort(-std, kind="stable")[:3]
        if len(top) < 3:
            top = np.resize(top, 3)
        return multiband_qml(top + 1, mean[top] - 2 * std[top], mean[top] + 2 * std[top])


def style_path(raster_path) -> Path:
    return Path(raster_path).with_suffix(".qml")


def write_style(raster_path, qml: str) -> Path:
    path = style_path(raster_path)
    atomic_write_text(path, qml)
    return path


#: The reflectance a natural-colour view stretches to white: bright land, not clouds.
NATURAL_COLOUR_MAX_REFLECTANCE = 0.3


def natural_colour_qml(rgb: Sequence[int], dn_offset: float = 0.0, quantification: float = 10000.0) -> str:
    """Red, green and blue bands (1-based) stretched from reflectance 0 to
    ``NATURAL_COLOUR_MAX_REFLECTANCE`` in digital numbers (``dn_offset`` + reflectance x
    ``quantification``): the same look on every scene, unlike a per-scene min-max stretch."""
    lo = float(dn_offset)
    hi = lo + NATURAL_COLOUR_MAX_REFLECTANCE * float(quantification)
    return multiband_qml(rgb, [lo] * 3, [hi] * 3)


def write_natural_colour_style(raster_path, band_names: Sequence[str], spec, dn_offset: float = 0.0):
    """The .qml showing a stack in natural colour (the source's display bands), or None when the
    stack lacks one of them."""
    from mpmae_core import registry

    match = registry.match_bands(list(band_names), list(spec.display_bands), spec)
    if not match.complete:
        return None
    return write_style(raster_path, natural_colour_qml([i + 1 for i in match.source_index], dn_offset))
