"""Is it GRN's per-tile statistics that make tiles need their overlap? An oracle measurement.

ConvNeXt V2's GRN divides each channel by its L2 norm over the whole input. A tile therefore sees
norms of its own area, not the raster's; the overlap (and the blending in it) hides the seams this
and the convolutions' cut context make. This bench runs the tiled embedding twice per tiling:

- **own**: as ``embed`` runs it, each tile with its own GRN norms;
- **shared**: each tile with the untiled run's norms (recorded from it, every GRN layer), the best
  any scheme of statistics shared across tiles could do; what is left is the convolutions' context.

Against the untiled embedding it prints, as ``bench_tiling.py`` does, the mean and 99th percentile
of |tiled - untiled| over the untiled embedding's mean magnitude.

    python bench/bench_grn_shared.py [--model runs/demo/models/atto_demo.onnx]
                                     [--tilings 768/0,768/32,768/64,768/96] [--size 2048]

Needs the ``onnx`` package and a trained encoder (a random one has GRN switched off: gamma = 0);
``--gamma-scale`` multiplies GRN's gamma, for a model whose GRN does more than the demo's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_pixel import without_fast_norms  # noqa: E402
from bench_runtime import mosaic_vrt  # noqa: E402


def scale_grn_gamma(proto, factor: float) -> float:
    """Multiply every GRN's gamma (the (1, 1, 1, C) weights a Mul applies, betas aside) by
    ``factor``; returns their mean magnitude afterwards."""
    from onnx import numpy_helper

    muls = {i for n in proto.graph.node if n.op_type == "Mul" for i in n.input}
    sizes = []
    for init in proto.graph.initializer:
        if init.name in muls and "beta" not in init.name and list(init.dims[:3]) == [1, 1, 1] and len(init.dims) == 4:
            value = numpy_helper.to_array(init) * np.float32(factor)
            init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
            sizes.append(float(np.abs(value).mean()))
    return float(np.mean(sizes)) if sizes else 0.0


def grn_variants(model: str, work: Path, gamma_scale: float = 1.0) -> tuple[str, str, list[str], float]:
    """(a copy whose GRN norms are extra outputs, a copy that takes them as inputs, their names,
    GRN's mean |gamma|)."""
    import onnx
    from onnx import TensorProto, helper

    record = onnx.load(without_fast_norms(model, work))  # GRN's norm as one ReduceL2 node per layer
    gamma = scale_grn_gamma(record, gamma_scale)
    names = [n.output[0] for n in record.graph.node if n.op_type == "ReduceL2"]
    if not names:
        raise SystemExit(f"'{model}' has no GRN norm (ReduceL2) to share")
    shared = onnx.ModelProto()
    shared.CopyFrom(record)
    for name in names:
        record.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    keep = [n for n in shared.graph.node if n.output[0] not in names]
    del shared.graph.node[:]
    shared.graph.node.extend(keep)
    for name in names:
        shared.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, 1, None]))
    paths = work / "grn_record.onnx", work / "grn_shared.onnx"
    onnx.save(record, str(paths[0]))
    onnx.save(shared, str(paths[1]))
    return str(paths[0]), str(paths[1]), names, gamma


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="runs/demo/models/atto_demo.onnx")
    p.add_argument("--tilings", default="768/0,768/32,768/64,768/96")
    p.add_argument("--size", type=int, default=2048, help="side of the square mosaic of the scene")
    p.add_argument("--gamma-scale", type=float, default=1.0,
                   help="multiply GRN's gamma (a stronger GRN than the model's: a sensitivity check)")
    args = p.parse_args()
    import onnxruntime as ort
    from osgeo import gdal

    from mpmae_core.data import sample
    from mpmae_core.runtime.inference.predict import embed
    from mpmae_core.runtime.inference.tiling import raster_windows
    from mpmae_core.runtime.models import model as model_module
    from mpmae_core.runtime.models.model import read_metadata

    work = Path(tempfile.mkdtemp(prefix="bench-grn-"))
    record_path, shared_path, names, gamma = grn_variants(args.model, work, args.gamma_scale)
    patch = read_metadata(args.model).patch_size
    src = mosaic_vrt(Path(sample.build(verbose=False)["stack"]), work / "mosaic.vrt", args.size)
    sessions = {m: ort.InferenceSession(p, providers=["CPUExecutionProvider"])
                for m, p in (("record", record_path), ("shared", shared_path))}
    state: dict = {"mode": None, "norms": None, "largest": 0, "spread": []}
    real = model_module.OnnxModel.run_outputs

    def run_outputs(self, x, wanted):
        """The pipeline's model call, recording the GRN norms (untiled run) or feeding them (shared)."""
        x = np.ascontiguousarray(x, np.float32)
        if state["mode"] in ("record", "own"):
            outs = sessions["record"].run(list(wanted) + names, {self.input_name: x})
            if state["mode"] == "record" and x.shape[2] * x.shape[3] > state["largest"]:  # the raster, not a probe
                state["largest"], state["norms"] = x.shape[2] * x.shape[3], outs[len(wanted):]
            elif state["mode"] == "own" and x.shape[2] > 32:  # how far a tile's GRN factors are from the raster's
                for own, whole in zip(outs[len(wanted):], state["norms"]):
                    f_own = own / own.mean(axis=-1, keepdims=True)
                    f_whole = whole[:1] / whole[:1].mean(axis=-1, keepdims=True)
                    state["spread"].append(float(np.abs(f_own / f_whole - 1).mean()))
            return outs[:len(wanted)]
        if state["mode"] == "shared":
            feeds = {n: np.repeat(v[:1], x.shape[0], axis=0) for n, v in zip(names, state["norms"])}
            return sessions["shared"].run(list(wanted), {self.input_name: x, **feeds})
        return real(self, x, wanted)

    model_module.OnnxModel.run_outputs = run_outputs
    side = -(-args.size // patch) * patch
    state["mode"] = "record"
    embed(src, args.model, work / "untiled.tif", tile=side, overlap=0, device="cpu", style=False)
    a = gdal.Open(str(work / "untiled.tif")).ReadAsArray().astype(np.float64)
    scale = np.abs(a).mean()
    state["mode"] = "shared"  # the check of the oracle itself: untiled with the recorded norms fed back
    embed(src, args.model, work / "check.tif", tile=side, overlap=0, device="cpu", style=False)
    check = np.abs(a - gdal.Open(str(work / "check.tif")).ReadAsArray()).max() / scale
    print(f"{args.size} x {args.size} mosaic of the scene; {len(names)} GRN layers, mean |gamma| {gamma:.4f} "
          f"(x{args.gamma_scale:g}); model {args.model}")
    print(f"untiled, its own norms fed back as inputs: largest difference {100 * check:.5f} %")
    print("| tile / overlap | windows | computed / raster | GRN norms | mean difference | 99th percentile | "
          "tile's GRN factors off the raster's (mean) |")
    print("|---|---|---|---|---|---|---|")
    for tiling in args.tilings.split(","):
        tile, overlap = (int(v) for v in tiling.split("/"))
        wins = raster_windows(args.size, args.size, tile, overlap, patch)
        computed = sum(x.h * x.w for row in wins for x in row) / args.size ** 2
        for mode in ("own", "shared"):
            state["mode"], state["spread"] = mode, []
            embed(src, args.model, work / "tiled.tif", tile=tile, overlap=overlap, device="cpu", style=False)
            d = np.abs(a - gdal.Open(str(work / "tiled.tif")).ReadAsArray().astype(np.float64)) / scale
            spread = f"{100 * np.mean(state['spread']):.1f} %" if state["spread"] else "0 (the raster's)"
            print(f"| {tile}/{overlap} | {wins[0][0].h} x {wins[0][0].w} | x{computed:.2f} | {mode} | "
                  f"{100 * d.mean():.2f} % | {100 * np.percentile(d, 99):.1f} % | {spread} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
