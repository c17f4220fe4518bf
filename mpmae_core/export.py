"""ONNX export of encoders and heads, with the metadata the runtime needs inside the file.

Graphs (all with dynamic batch, and dynamic height and width in multiples of the patch size):
- encoder: ``image`` (N, C, H, W) normalised -> ``embedding`` (N, D, H/p, W/p);
- pretext segmenter (the MP-MAE's own Dynamic World / ESA WorldCover head): ``image`` -> ``logits``
  (N, K, H, W). MP-MAE trains its pixel heads on hidden cells only, so the graph runs the masked
  encoder twice with complementary checkerboard masks and takes each cell's prediction from the
  pass in which it was hidden (the dense masked path, which exports without data-dependent ops);
- head: ``embedding`` (N, D, h, w) -> ``logits`` (N, K, h, w), a linear map per cell (few-shot heads),
  written without torch by ``runtime.onnx_writer``.

Every file is checked against torch on a random input before it is renamed into place.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from mpmae_core import registry
from mpmae_core.models.convnextv2 import ConvNeXtV2Encoder
from mpmae_core.models.losses import unpatchify
from mpmae_core.models.mpmae import MPMAE
from mpmae_core.runtime.io.files import atomic_output
from mpmae_core.runtime.models import metadata as md
from mpmae_core.runtime.models.metadata import ENCODER_OUTPUTS, METADATA_KEY, ModelMetadata, head_metadata



class EncoderGraph(nn.Module):
    def __init__(self, encoder: ConvNeXtV2Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        s1, s2, s3, s4 = self.encoder.forward_stages(image)
        return s4, s1, s2, s3


def checkerboard(n: int, h: int, w: int, device=None) -> Tensor:
    """Bool (n, h, w), True on cells where (row + column) is even."""
    rows = torch.arange(h, device=device).unsqueeze(1)
    cols = torch.arange(w, device=device).unsqueeze(0)
    return ((rows + cols) % 2 == 0).unsqueeze(0).expand(n, h, w)


class PretextSegmenter(nn.Module):
    """Image -> per-pixel logits of one pixel-level classification task of an MP-MAE."""

    def __init__(self, model: MPMAE, task: str):
        super().__init__()
        spec = model.specs.get(task)
        if spec is None or not (spec.is_pixel and spec.is_classification):
            pixel_classes = [t for t, s in model.specs.items() if s.is_pixel and s.is_classification]
            raise ValueError(f"the model has no pixel classification head '{task}'; it has {pixel_classes or 'none'}")
        self.model, self.task, self.p = model, task, model.patch_size
        self.model.encoder.gather_visible = False  # data-dependent gathers do not export

    def forward(self, image: Tensor) -> Tensor:
        n, _, hh, ww = image.shape
        h, w = hh // self.p, ww // self.p
        first = checkerboard(n, h, w, image.device)
        out = None
        for hidden in (first, ~first):
            latent = self.model.encoder(image, hidden)
            pred = self.model.heads[self.task](self.model.decoders[self.task](self.model.tokens(latent, hidden)))
            out = pred if out is None else torch.where(hidden.flatten(1).unsqueeze(-1), pred, out)
        return unpatchify(out, self.p, h, w)


def faster_spatial_norms(proto) -> int:
    """Rewrite every ``ReduceL2`` over axes (1, 2) with keepdims (GRN's per-channel spatial norm of
    an (N, H, W, C) tensor) in an ``onnx`` ModelProto as sqrt(ones(1, 1, H*W) @ (x*x as (N, H*W, C))),
    in place; returns how many. The same numbers within float rounding, but ONNX Runtime's CPU
    kernels reduce non-trailing axes slowly: the norm took 29 % of the atto encoder's time on 512 px
    tiles and the matrix product is 4-10x faster (``bench/RESULTS.md``). The torch-free writer emits
    the same form (``onnx_writer._Graph.grn``)."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    new_nodes, count = [], 0
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        axes = attrs.get("axes")
        if axes is None and len(n.input) > 1:
            axes = consts.get(n.input[1])
        if (n.op_type != "ReduceL2" or attrs.get("keepdims", 1) != 1 or axes is None
                or sorted(np.asarray(axes).reshape(-1).tolist()) != [1, 2]):
            new_nodes.append(n)
            continue
        count += 1
        x, y, k = n.input[0], n.output[0], f"_fastnorm{count}"
        graph.initializer.extend([numpy_helper.from_array(np.array([-1], np.int64), k + "_m1"),
                                  numpy_helper.from_array(np.array([1, 1], np.int64), k + "_11"),
                                  numpy_helper.from_array(np.array([1.0], np.float32), k + "_one"),
                                  numpy_helper.from_array(np.array([1], np.int64), k + "_axis")])
        new_nodes += [helper.make_node("Mul", [x, x], [k + "_sq"]),
                      helper.make_node("Shape", [x], [k + "_n"], start=0, end=1),
                      helper.make_node("Shape", [x], [k + "_c"], start=3, end=4),
                      helper.make_node("Concat", [k + "_n", k + "_m1", k + "_c"], [k + "_shape"], axis=0),
                      helper.make_node("Reshape", [k + "_sq", k + "_shape"], [k + "_flat"]),
                      helper.make_node("Shape", [k + "_flat"], [k + "_hw"], start=1, end=2),
                      helper.make_node("Concat", [k + "_11", k + "_hw"], [k + "_os"], axis=0),
                      helper.make_node("Expand", [k + "_one", k + "_os"], [k + "_ones"]),
                      helper.make_node("MatMul", [k + "_ones", k + "_flat"], [k + "_sum"]),
                      helper.make_node("Sqrt", [k + "_sum"], [k + "_norm"]),
                      helper.make_node("Unsqueeze", [k + "_norm", k + "_axis"], [y])]
    del graph.node[:]
    graph.node.extend(new_nodes)
    return count


def drop_exporter_traces(proto) -> int:
    """Remove what torch's exporter writes on every node beside the computation: the Python stack at
    the call (with the absolute paths of this machine's files: the user's home, the project's
    folder), fx and module names, doc strings. A model is shared with others; it carries its weights,
    graph and metadata, not a map of the exporting machine. Returns how many entries were removed."""
    count = 0
    for g in [proto.graph, *proto.functions]:
        for node in g.node:
            count += len(node.metadata_props) + bool(node.doc_string)
            del node.metadata_props[:]
            node.doc_string = ""
    count += bool(proto.graph.doc_string)
    proto.graph.doc_string = ""
    return count


@contextlib.contextmanager
def _removed(path: Path):
    """Delete ``path`` when the block ends, however it ends."""
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _export(module: nn.Module, example: Tensor, path: Path, input_name: str, output_names, metadata: ModelMetadata,
            multiple: int, tolerance: float = 1e-4) -> float:
    """Export with dynamic batch/height/width, add the metadata, check parity of every output,
    write atomically."""
    import onnx
    import onnxruntime as ort

    output_names = [output_names] if isinstance(output_names, str) else list(output_names)
    module = module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    h = torch.export.Dim("h", min=1, max=4096)
    w = torch.export.Dim("w", min=1, max=4096)
    if example.shape[0] < 2 or min(example.shape[2:]) < 2 * multiple:
        raise ValueError("export examples need batch >= 2 and at least 2 cells per side (size-1 dims become static)")
    dims = {0: batch, 2: multiple * h, 3: multiple * w} if multiple > 1 else {0: batch, 2: h, 3: w}
    path = Path(path)
    with atomic_output(path) as tmp, _removed(Path(f"{tmp}.data")):
        with torch.no_grad():
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, input_names=[input_name],
                              output_names=output_names, dynamic_shapes={input_name: dims}, optimize=True,
                              verbose=False)
        proto = onnx.load(str(tmp))  # also reads weights the exporter put in an external .data file
        faster_spatial_norms(proto)  # checked with the rest by the parity test below
        drop_exporter_traces(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata.to_json()
        onnx.save(proto, str(tmp))  # one self-contained file (models here are far below 2 GB)
        # parity on an input of another size than the example: the dynamic axes really work
        probe = torch.randn(example.shape[0] + 1, example.shape[1], example.shape[2] + multiple, example.shape[3])
        with torch.no_grad():
            expected = module(probe)
        expected = [e.float().numpy() for e in (expected if isinstance(expected, (tuple, list)) else [expected])]
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(None, {input_name: probe.numpy()})
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))
        if len(got) != len(expected) or not diff <= tolerance:
            raise RuntimeError(f"exported model differs from torch by {diff:g} (> {tolerance:g}); not written")
    return diff


def encoder_metadata(encoder: ConvNeXtV2Encoder, input_bands: Sequence[str], normalisation: dict, **kw) -> ModelMetadata:
    return md.encoder_metadata(encoder.depths, encoder.dims, encoder.patch_size, encoder.convention, input_bands,
                               normalisation, **kw)


def export_encoder(encoder: ConvNeXtV2Encoder, path: str | os.PathLike, input_bands: Sequence[str],
                   normalisation: dict, source: str = "") -> tuple[Path, float]:
    if len(input_bands) != encoder.in_chans:
        raise ValueError(f"{len(input_bands)} band names for an encoder with {encoder.in_chans} inputs")
    meta = encoder_metadata(encoder, input_bands, normalisation, source=source)
    # batch 2 and no dimension of 1: torch.export treats size-1 example dimensions as static
    example = torch.randn(2, encoder.in_chans, 2 * encoder.patch_size, 3 * encoder.patch_size)
    graph = EncoderGraph(copy.deepcopy(encoder).eval())
    diff = _export(graph, example, Path(path), "image", ENCODER_OUTPUTS, meta, multiple=encoder.patch_size)
    return Path(path), diff


def sparse_convention(encoder: ConvNeXtV2Encoder) -> ConvNeXtV2Encoder:
    """The encoder with the same weights in the "sparse" border convention (padded initial conv):
    every stage map is then exactly the input divided by its stride, as the runtime's tiles and
    hypercolumns need, and it is the convention the reference pretrained its weights in."""
    if encoder.convention == "sparse":
        return encoder
    sparse = ConvNeXtV2Encoder(encoder.depths, encoder.dims, encoder.in_chans, encoder.patch_size, convention="sparse")
    sparse.load_state_dict(encoder.state_dict())
    return sparse.eval()


def export_pretext_segmenter(model: MPMAE, task: str, path: str | os.PathLike, normalisation: dict,
                             source: str = "") -> tuple[Path, float]:
    model = copy.deepcopy(model).eval()
    model.encoder = sparse_convention(model.encoder)  # masked encoding needs it; the weights are the same
    if task not in registry.PRETEXT_CLASSES:
        raise ValueError(f"'{task}' is not a pretext landcover task; choose one of {', '.join(registry.PRETEXT_CLASSES)}")
    names, colours = registry.PRETEXT_CLASSES[task]
    enc = model.encoder
    meta = md.segmenter_metadata(enc.depths, enc.dims, enc.patch_size, model.input_bands, normalisation, task, names,
                                 colours, source=source)
    graph = PretextSegmenter(model, task)
    p = model.patch_size
    example = torch.randn(2, model.encoder.in_chans, 4 * p, 4 * p)
    diff = _export(graph, example, Path(path), "image", "logits", meta, multiple=p)
    return Path(path), diff


def export_head(weight, bias, path: str | os.PathLike, class_names: Sequence[str],
                class_colours: Optional[Sequence[Sequence[int]]] = None, task: str = "few-shot",
                patch_size: int = 16, source: str = "") -> tuple[Path, float]:
    """A linear head (K, D) + (K,) as an ONNX graph on embedding maps, written by the torch-free
    ``runtime.onnx_writer`` (the QGIS plugin writes its few-shot heads the same way). Returns the
    path and the largest difference between onnxruntime and numpy on a probe input."""
    import onnxruntime as ort

    from mpmae_core.runtime.models import onnx_writer

    to_np = (lambda t: t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t))
    weight, bias = to_np(weight).astype(np.float32), to_np(bias).astype(np.float32)
    k, d = weight.shape
    meta = head_metadata(class_names, class_colours, d, task=task, patch_size=patch_size, source=source)
    data = onnx_writer.linear_head(weight, bias, metadata={METADATA_KEY: meta.to_json()})
    probe = np.random.default_rng(0).normal(size=(2, d, 3, 5)).astype(np.float32)
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"embedding": probe})[0]
    diff = float(np.abs(got - onnx_writer.head_reference(probe, weight, bias)).max())
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path, diff


def export_fp16(checkpoint, out) -> tuple[Path, float]:
    """The half-precision GPU variant of a checkpoint's encoder (float32 in and out), written by the
    torch-free writer and checked against float32 (``convert.FP16_TOLERANCE``)."""
    from mpmae_core.runtime.releases.pth_to_onnx import checkpoint_arrays, fp16_encoder
    from mpmae_core.runtime.io.files import check_output

    check_output(out, [checkpoint], "model", (".onnx",), "an ONNX model")
    arrays = checkpoint_arrays(checkpoint)
    data, diff = fp16_encoder(arrays, source=f"float16 variant of {Path(checkpoint).name}")
    with atomic_output(Path(out)) as tmp:
        tmp.write_bytes(data)
    return Path(out), diff


def export_checkpoint(checkpoint, out, head: Optional[str] = None) -> tuple[Path, float]:
    """Our checkpoint or a reference one -> ONNX encoder (or, with ``head``, a pretext segmenter)."""
    from mpmae_core.checkpoints import CheckpointError, load_any
    from mpmae_core.runtime.io.files import check_output
    from mpmae_core.runtime.models.metadata import default_normalisation

    check_output(out, [checkpoint], "model", (".onnx",), "an ONNX model")
    loaded = load_any(checkpoint, convention="auto")  # the convention the runtime runs it in
    model = loaded.model
    bands = getattr(model, "input_bands", None) or registry.default_input_bands(model.in_chans) or ()
    norm = loaded.normalisation or default_normalisation(bands)
    if head:
        if not isinstance(model, MPMAE):
            raise CheckpointError(f"{checkpoint} holds an encoder only: it has no '{head}' head")
        if head not in model.tasks:
            raise CheckpointError(f"{checkpoint} has no '{head}' head; its tasks are {', '.join(model.tasks)}")
        return export_pretext_segmenter(model, head, out, norm, source=loaded.description)
    encoder = model.encoder if isinstance(model, MPMAE) else model
    return export_encoder(encoder, out, bands, norm, source=loaded.description)
