"""What several benchmarks set up alike: an encoder to time, and the demo's labels on the scene."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def encoder_or_random(model: Optional[str], work: Path) -> str:
    """``model``, or a random-weight atto encoder exported into ``work`` (speed does not depend on
    the weights)."""
    if model:
        return str(model)
    import torch

    from mpmae_core import registry
    from mpmae_core.export import export_encoder
    from mpmae_core.models import build_encoder
    from mpmae_core.runtime.models.metadata import default_normalisation

    torch.manual_seed(0)
    path = str(Path(work) / "atto.onnx")
    export_encoder(build_encoder("atto").eval(), path, registry.S2_MMEARTH_BANDS,
                   default_normalisation(registry.S2_MMEARTH_BANDS))
    return path


def demo_labels(scene: str, work: Path, per_class: int) -> tuple:
    """(features, class names) of ``per_class`` OSM-derived points per class of the demo's five classes."""
    from mpmae_core.data import sample
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.io.labels import read_label_file

    pts = Path(work) / "points.gpkg"
    sample.label_points(pts, per_class=per_class, seed=0, classes=["water", "forest", "farm", "meadow", "residential"])
    feats, names, _, _ = read_label_file(pts, "landuse", open_raster(scene).GetProjection())
    return feats, names
