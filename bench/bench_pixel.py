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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import demo_labels, encoder_or_random  # noqa: E402


def with_fast_norms(model: str, work: Path) -> str:
    """``model``, or when it still computes GRN's norm as a reduction (exported before issue 26) a
    copy with the norm as a matrix product, as ``export`` writes it today."""
    import onnx

    from mpmae_core.export import faster_spatial_norms

    proto = onnx.load(model)
    if not faster_spatial_norms(proto):
        return model
    out = work / "encoder_now.onnx"
    onnx.save(proto, str(out))
    return str(out)


def without_fast_norms(model: str, work: Path) -> str:
    """The encoder as exported before issue 26, GRN's norm as a reduction over H and W: ``model``
    itself when it has that already, else a copy with ``export.faster_spatial_norms`` undone."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(model)
    if any(n.op_type == "ReduceL2" for n in proto.graph.node):
        return model
    out = work / "encoder_before.onnx"
    if out.exists():
        return str(out)
    graph, nodes = proto.graph, []
    x_of = {n.output[0][:-3]: n.input[0] for n in graph.node if n.output[0].startswith("_fastnorm")
            and n.output[0].endswith("_sq")}  # "_fastnormK" -> the norm's input
    for n in graph.node:
        if n.output[0].startswith("_fastnorm"):
            continue  # the matrix product's parts
        if n.input and n.input[0].startswith("_fastnorm"):  # its last node (Unsqueeze): the norm's output
            k = n.input[0].rsplit("_", 1)[0]
            graph.initializer.append(numpy_helper.from_array(np.array([1, 2], np.int64), k + "_axes"))
            n = helper.make_node("ReduceL2", [x_of[k], k + "_axes"], [n.output[0]], keepdims=1)
        nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(proto, str(out))
    return str(out)


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
    given = encoder_or_random(args.model, work)
    model = with_fast_norms(given, work)  # the encoder as exported today
    feats, names = demo_labels(scene, work, per_class=10)
    ds = open_raster(scene)
    mpx = ds.RasterXSize * ds.RasterYSize / 1e6
    kw = dict(device="cpu")
    # before issue 26, in the same run: 512 px tiles with 128 px overlap, the norm as a reduction,
    # linear heads on the full hypercolumns, forests on every column
    before_kw = dict(device="cpu", tile=512, overlap=128)
    times: dict = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    def before(fitted, path, label, r):
        """The same fitted head mapped as before issue 26."""
        path.write_bytes(fitted.onnx_bytes(16, full_input=True))
        real = pixel_features.linear_weights
        pixel_features.linear_weights = lambda *a, **k: None
        try:
            timed(f"(before) {label}", lambda: segment(scene, without_fast_norms(model, work), work / f"mb{r}.tif",
                                                        head_path=path, style=False, **before_kw))
        finally:
            pixel_features.linear_weights = real

    fixed = {"spectra RF": ("spectra", "forest"), "both LR": ("both", "logistic"), "both RF": ("both", "forest")}
    for r in range(args.rounds):
        emb = work / f"emb{r}.tif"
        timed("encoder: embed scene", lambda: embed(scene, model, emb, style=False, **kw))
        timed("(before) encoder: embed scene", lambda: embed(scene, without_fast_norms(model, work), emb, style=False,
                                                               **before_kw))
        res = timed("pixel: train_head (features, 13 candidates, fit)",
                    lambda: pixelhead.train_pixel_head(scene, model, feats, names, work / f"pix{r}.onnx", **kw))
        timed("pixel: map scene, chosen head", lambda: segment(scene, model, work / f"pixmap{r}.tif",
                                                               head_path=work / f"pix{r}.onnx", style=False, **kw))
        before(res["head"], work / f"pix{r}_before.onnx", "chosen head", r)
        for label, (fs, clf) in fixed.items():
            head = work / f"{label.replace(' ', '_')}{r}.onnx"
            fitted = pixelhead.train_pixel_head(scene, model, feats, names, head, feature_sets=[fs],
                                                classifiers=[clf], **kw)
            timed(f"pixel: map scene, {label} head",
                  lambda: segment(scene, model, work / f"m{r}.tif", head_path=head, style=False, **kw))
            before(fitted["head"], work / f"{label.replace(' ', '_')}{r}_before.onnx", f"{label} head", r)
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
