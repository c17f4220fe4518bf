"""What per-pixel few-shot mapping costs, against the spectra-only head's map.

On the embedded scene (1536 x 768 px) with the demo's labels (10 points per class, 5 classes)
and an atto encoder, in one process, rounds interleaved:

- the encoder alone: embed the scene (patch-stride embeddings);
- per-pixel: train_head (features under the labels from their owner tiles, 13 candidates
  cross-validated, the chosen one fitted), then the whole-scene map with the chosen head and
  with fixed heads (spectra-only forest: no encoder run; both + logistic; both + forest), and the
  optional per-pixel feature raster.

The last column is each step's time over the spectra-only forest head's map (no encoder run).
(The 160 m cell pipeline this bench once compared against was retired; see docs/design.md.)

    python bench/bench_pixel.py [--model runs/demo/models/atto_demo.onnx] [--rounds 3]

Without --model a random-weight atto encoder is exported first (the speed does not depend on the
weights).
"""

from __future__ import annotations

import argparse
import os
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
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--features-raster", action="store_true", help="also time the per-pixel feature raster")
    args = p.parse_args()
    from mpmae_core.data import sample
    from mpmae_core.runtime.heads import pixelhead
    from mpmae_core.runtime.inference import pixel_features
    from mpmae_core.runtime.io.gdal_io import open_raster
    from mpmae_core.runtime.inference.predict import embed, features, segment

    work = Path(tempfile.mkdtemp(prefix="bench-pixel-"))
    scene = str(sample.build(verbose=False)["stack"])
    model = encoder_or_random(args.model, work)
    feats, names = demo_labels(scene, work, per_class=10)
    ds = open_raster(scene)
    mpx = ds.RasterXSize * ds.RasterYSize / 1e6
    kw = dict(device="cpu")
    times: dict = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def full_input(fitted, path, label, r):
        """The baseline in the same run: a head with forests as written before issue 26 (every column)."""
        if fitted.forest is None and not any(h.forest is not None for h, _ in fitted.members):
            return
        path.write_bytes(fitted.onnx_bytes(16, full_input=True))
        timed(f"pixel: map scene, {label} head, forests on every column (before issue 26)",
              lambda: segment(scene, model, work / f"mf{r}.tif", head_path=path, style=False, **kw))

    fixed = {"spectra RF": ("spectra", "forest"), "both LR": ("both", "logistic"), "both RF": ("both", "forest")}
    for r in range(args.rounds):
        emb = work / f"emb{r}.tif"
        timed("encoder: embed scene", lambda: embed(scene, model, emb, style=False, **kw))
        res = timed("pixel: train_head (features, 13 candidates, fit)",
                    lambda: pixelhead.train_pixel_head(scene, model, feats, names, work / f"pix{r}.onnx", **kw))
        timed("pixel: map scene, chosen head", lambda: segment(scene, model, work / f"pixmap{r}.tif",
                                                               head_path=work / f"pix{r}.onnx", style=False, **kw))
        full_input(res["head"], work / f"pix{r}_full.onnx", "chosen", r)
        for label, (fs, clf) in fixed.items():
            head = work / f"{label.replace(' ', '_')}{r}.onnx"
            fitted = pixelhead.train_pixel_head(scene, model, feats, names, head, feature_sets=[fs],
                                                classifiers=[clf], **kw)
            timed(f"pixel: map scene, {label} head",
                  lambda: segment(scene, model, work / f"m{r}.tif", head_path=head, style=False, **kw))
            if clf == "forest":
                full_input(fitted["head"], work / f"{label.replace(' ', '_')}{r}_full.onnx", label, r)
            if clf == "logistic":  # the baseline in the same run: the head on the full hypercolumns
                real = pixel_features.linear_weights
                pixel_features.linear_weights = lambda *a, **k: None
                try:
                    timed(f"pixel: map scene, {label} head on full hypercolumns (before issue 26)",
                          lambda: segment(scene, model, work / f"m{r}.tif", head_path=head, style=False, **kw))
                finally:
                    pixel_features.linear_weights = real
        if args.features_raster:
            timed("pixel: feature raster (612 bands, float16)",
                  lambda: features(scene, model, work / f"f{r}.tif", dtype="float16", **kw))
        for f in work.glob("*.tif"):
            f.unlink()
    chosen = res["chosen"]
    base = statistics.median(times["pixel: map scene, spectra RF head"])
    print(f"scene {mpx:.2f} Mpx; {len(feats)} labelled points, {len(names)} classes; chosen head: {chosen}")
    print("| step | median s | Mpx/s | x spectra RF map |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        rate = f"{mpx / m:.2f}" if "map" in name or "embed" in name or "raster" in name else ""
        print(f"| {name} | {m:.2f} | {rate} | x{m / base:.2f} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
