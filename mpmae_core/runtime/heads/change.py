"""A few-shot map of change types between two dates or periods (``inference.change``): the
self-choosing per-pixel head on the pair's features, then the map.

Labelled examples of change types ("forest to field", "no change") train the head on both sides'
features and their differences (``spectra@before``, ``stage1@change``, ...); the candidates
include the differences alone (d-spectra, d-encoder, d-both), which a few "no change" examples
teach across every kind of ground. A head trained before maps a pair again.
"""

from __future__ import annotations

from pathlib import Path

from mpmae_core.runtime.inference.tiling import DEFAULT_OVERLAP, DEFAULT_TILE


def change_map(before, after, model_path, output, *, head_path=None, features=None, class_names=None,
               head_output=None, report_path=None, probabilities_path=None, feature_ids=None, class_colours=None,
               buffer_m: float = 0.0, before_dates=None, after_dates=None, min_valid: int = 1,
               tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, device: str = "auto",
               progress=lambda f: None, cancelled=lambda: False, log=lambda m: None, **prep_kw) -> dict:
    """A map of change classes: with labelled examples (``features``, ``class_names``), the
    self-choosing head is trained on the pair's features (saved to ``head_output``, with its
    report) and maps it; with ``head_path``, that head maps it."""
    from mpmae_core.runtime.heads.pixelhead import train_pixel_head
    from mpmae_core.runtime.inference.change import prepare_pair
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.models.model import read_metadata

    if (head_path is None) == (features is None):
        raise ValueError("give either labelled examples of the change types (labels and a class field) or a change "
                         "head trained on such examples")
    from mpmae_core.runtime.inference.embedding_sources import without_model

    meta = None if without_model(model_path) else read_metadata(model_path)  # None: two embeddings read alone
    pair = prepare_pair(before, after, meta, before_dates=before_dates, after_dates=after_dates, min_valid=min_valid,
                        log=log, **prep_kw)
    trained = None
    if features is not None:
        head_path = head_output or str(Path(output).with_name(Path(output).stem + "_head.onnx"))
        trained = train_pixel_head(pair, model_path, features, class_names, head_path, report_path=report_path,
                                   feature_ids=feature_ids, class_colours=class_colours, buffer_m=buffer_m, tile=tile,
                                   overlap=overlap, device=device, progress=lambda f: progress(0.5 * f),
                                   cancelled=cancelled, log=log)
    res = segment(pair, model_path, output, head_path=head_path, probabilities_path=probabilities_path, tile=tile,
                  overlap=overlap, device=device, progress=lambda f: progress(0.5 + 0.5 * f if trained else f),
                  cancelled=cancelled, log=log)
    pair.close()
    res["head"] = str(head_path)
    if trained is not None:
        res["training"] = trained
    return res
