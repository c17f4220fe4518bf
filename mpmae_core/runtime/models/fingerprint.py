"""Which encoder a head belongs to: a fingerprint recorded in the head, checked before a map is made.

A head is trained on one encoder's features. Run on another encoder (another pretraining, or
patch 8 instead of 16) it still writes a map, and a wrong one. So every head records the encoder
it was trained on, and ``segment`` (hence ``batch`` and the panel) refuses a mismatch, naming both
models.

The fingerprint is the encoder's name, size, patch size and feature layout (its outputs, their
channels and strides) plus a *functional hash of its weights*: the encoder's mean embedding of a
fixed pseudo-random probe image (``PROBE_DIMS`` numbers). Two files with the same weights give the
same probe whatever their metadata or export path (the torch export, the torch-free conversion,
the float16 GPU variant within its rounding); different weights give a different one. Unlike a
byte hash of the file it needs no ONNX parser, and a re-exported or float16 encoder still matches.
"""

from __future__ import annotations

import numpy as np

PROBE_SIDE = 64  # pixels: a multiple of every patch size and stage stride
PROBE_SEED = 20240701
PROBE_DIMS = 32
#: relative L2 distance between two probes above which they are different encoders. The float16
#: variant differs from float32 by about 1e-3; differently trained encoders by order 1.
TOLERANCE = 0.05


def probe_image(n_bands: int, side: int = PROBE_SIDE) -> np.ndarray:
    """The fixed probe: standard-normal values (the scale of normalised bands), seeded."""
    return np.random.default_rng(PROBE_SEED).standard_normal((1, n_bands, side, side)).astype(np.float32)


def probe_vector(model) -> list:
    """The encoder's mean embedding of the probe, first ``PROBE_DIMS`` channels (cached on the model)."""
    cached = getattr(model, "_mmearth_probe", None)
    if cached is not None:
        return cached
    meta = model.metadata
    side = PROBE_SIDE if PROBE_SIDE % meta.patch_size == 0 else 4 * meta.patch_size
    out = model.run(probe_image(len(meta.input_bands), side))
    vec = [float(f"{v:.6g}") for v in np.asarray(out, np.float64).mean(axis=(0, 2, 3))[:PROBE_DIMS]]
    model._mmearth_probe = vec
    return vec


def encoder_fingerprint(model) -> dict:
    """What a head records about the encoder (an ``OnnxModel`` of kind encoder) it was trained on."""
    meta = model.metadata
    return {"name": model.path.stem, "model_size": meta.model_size, "patch_size": int(meta.patch_size),
            "convention": meta.convention, "embedding_dim": int(meta.embedding_dim),
            "stages": [list(s) for s in meta.encoder_outputs()], "probe": probe_vector(model)}


def probe_distance(a, b) -> float:
    """Relative L2 distance of two probe vectors (inf when they cannot be compared)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size == 0 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def mismatch(recorded: dict, current: dict) -> str:
    """'' when ``current`` is the encoder ``recorded`` describes; otherwise how they differ."""
    for key, what in (("patch_size", "patch size"), ("embedding_dim", "embedding size"), ("stages", "outputs")):
        if key in recorded and recorded[key] != current.get(key):
            return f"{what} {recorded[key]} against {current.get(key)}"
    if "probe" in recorded:
        d = probe_distance(current.get("probe"), recorded["probe"])
        if d > TOLERANCE:
            return ("other weights: its response to a fixed probe image differs by "
                    f"{d:.0%}" if np.isfinite(d) else "other weights")
    return ""


def describe(fp: dict) -> str:
    size = f"{fp.get('model_size')} " if fp.get("model_size") else ""
    return f"'{fp.get('name', '?')}' ({size}patch {fp.get('patch_size', '?')})"


def check_head_encoder(head_meta, head_path, encoder) -> str:
    """Refuse (ValueError naming both models) a head trained on another encoder than ``encoder``.
    Returns a warning for a head that records no encoder ('' otherwise). Heads on spectra alone do
    not depend on the encoder and pass, as do heads on another model's embedding alone."""
    if head_meta.per_pixel and all(f == "spectra" or f.startswith("ext-") for f in head_meta.features):
        return ""  # spectra, or another model's embedding (checked by its name and size), need no encoder
    recorded = head_meta.encoder or {}
    if not recorded:
        return (f"warning: the head '{head_path}' does not record which encoder it was trained on (written by an "
                "older version): it cannot be checked against this encoder. Train it again to make it checkable")
    current = encoder_fingerprint(encoder)
    why = mismatch(recorded, current)
    if why:
        raise ValueError(f"the head '{head_path}' was trained on the encoder {describe(recorded)}, not on "
                         f"{describe(current)} given here ({why}): its map would be wrong. Use it with "
                         f"{describe(recorded)}, or train a head on this encoder")
    return ""
