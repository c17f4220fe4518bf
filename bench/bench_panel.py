"""The loop an analyst feels in the few-shot mapping panel, on the embedded scene (1536 x 768 px).

- the first embedding: the encoder's stage maps of the whole scene, cached once per raster and
  model (``session.build_stage_cache``);
- a new label to the updated preview: the quick head on every label (with its 5-fold CV) and the
  class probabilities of a view of 768 x 512 px (the panel's preview grid), timed after each of
  the labels 10..20 (the median is quoted);
- the whole scene: the self-choosing head (13 candidates cross-validated), then the map two ways,
  side by side: from the cached features (``session.map_to_file``, what *Map whole raster* does
  now) and with ``segment`` (the encoder run again, what it did before); their ratio.

    python bench/bench_panel.py [--model runs/demo/models/atto_demo.onnx]

Without --model a random-weight atto encoder is exported first (speed does not depend on weights).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import demo_labels, encoder_or_random  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    args = p.parse_args()
    import numpy as np

    from mpmae_core.data import sample
    from mpmae_core.runtime.inference.predict import segment
    from mpmae_core.runtime.heads.session import MappingSession

    work = Path(tempfile.mkdtemp(prefix="bench-panel-"))
    scene = str(sample.build(verbose=False)["stack"])
    model = encoder_or_random(args.model, work)
    feats, names = demo_labels(scene, work, per_class=4)
    session = MappingSession(scene, model, device="cpu", cache_dir=work / "cache")
    t = time.perf_counter()
    session.ensure_cache()
    first = time.perf_counter() - t
    loop = []
    view = (384, 128, 768, 512)
    order = np.random.default_rng(0).permutation(len(feats))
    for n in range(10, len(feats) + 1):
        labelled = [feats[i] for i in order[:n]]
        t = time.perf_counter()
        head, _ = session.quick_head(labelled, names)
        session.preview(head, view, max_pixels=200_000)
        loop.append(time.perf_counter() - t)
    t = time.perf_counter()
    trained = session.train_full_head(feats, names, work / "head.onnx")
    head_s = time.perf_counter() - t
    t = time.perf_counter()
    session.map_to_file(trained["head"], work / "map_cache.tif")
    cached = time.perf_counter() - t
    t = time.perf_counter()
    segment(scene, model, work / "map.tif", head_path=work / "head.onnx", device="cpu", style=False)
    encoder_again = time.perf_counter() - t
    # the same two ways for a head on the encoder's features too (the preview's: both sets, logistic),
    # whatever the self-choosing head picked
    from mpmae_core.runtime.models.fingerprint import encoder_fingerprint

    quick, _ = session.quick_head(feats, names)
    (work / "quick.onnx").write_bytes(quick.onnx_bytes(session.model.metadata.patch_size,
                                                       encoder=encoder_fingerprint(session.model)))
    t = time.perf_counter()
    session.map_to_file(quick, work / "quick_cache.tif")
    quick_cached = time.perf_counter() - t
    t = time.perf_counter()
    segment(scene, model, work / "quick_map.tif", head_path=work / "quick.onnx", device="cpu", style=False)
    quick_again = time.perf_counter() - t
    mpx = session.prep.width * session.prep.height / 1e6
    print(f"scene {mpx:.2f} Mpx; view {view[2]} x {view[3]} px; labels 10..{len(feats)} (5 classes)")
    print("| step | seconds |")
    print("|---|---|")
    print(f"| first embedding (stage-map cache of the scene) | {first:.1f} |")
    print(f"| new label -> updated preview, median (min-max) | {statistics.median(loop):.2f} "
          f"({min(loop):.2f}-{max(loop):.2f}) |")
    print(f"| whole scene: self-choosing head ({trained['chosen']}) | {head_s:.1f} |")
    print(f"| whole scene: map from the cached features (Map whole raster) | {cached:.1f} |")
    print(f"| whole scene: map with segment (encoder run again) | {encoder_again:.1f} |")
    print(f"| ratio cached / segment | {cached / encoder_again:.2f} |")
    print(f"| whole scene, head on both feature sets (logistic): map from the cached features | {quick_cached:.1f} |")
    print(f"| whole scene, head on both feature sets (logistic): map with segment | {quick_again:.1f} |")
    print(f"| ratio cached / segment | {quick_cached / quick_again:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
