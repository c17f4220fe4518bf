"""A checkpoint to the runtime's ONNX models, without torch: the released MMEarth ``.pth``
(any reference layout) or our own ``.pt``.

The checkpoint is read by ``pth`` (an allowlisting pickle interpreter, nothing executed), mapped
onto our keys by ``reference_layout`` (the same mapping the torch import uses), and written by
``onnx_writer`` as the same graphs ``training.export`` writes: the encoder (final map and every
stage) and, for checkpoints that carry them, the Dynamic World and ESA WorldCover pretext heads
as segmenters (landcover maps with no labels). Every graph is opened with ONNX Runtime, run on a
probe and checked against its metadata before it is written; the files of one conversion appear
together or not at all.

Border convention: checkpoints of the pretraining model (sparse or dense pretraining layout) are
written in the "sparse" convention, the semantics they were trained in (every stage map is the
input divided by its stride, as tiles and hypercolumns need); a dense fine-tuning checkpoint at
patch 16 keeps the reference's dense convention (at patch 8 that convention shrinks the maps, so
the sparse one is used and the log says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from mpmae_core import registry

from mpmae_core.runtime.releases import reference_layout
from mpmae_core.runtime.models import onnx_writer
from mpmae_core.runtime.models.metadata import (METADATA_KEY, default_normalisation, encoder_metadata,
                                         segmenter_metadata)
from mpmae_core.runtime.releases.pth import CheckpointReadError, read_pth

OUR_FORMAT = "mpmae-checkpoint"  # checkpoints.FORMAT (that module needs torch)


class ConvertError(ValueError):
    """A checkpoint that cannot become a model; the message names the problem and the fix."""


@dataclass
class CheckpointArrays:
    """What a checkpoint holds, as numpy arrays on our keys."""

    kind: str  # "reference" or "ours"
    layout: str
    depths: tuple
    dims: tuple
    patch_size: int
    in_chans: int
    convention: str
    encoder_state: dict
    mpmae_state: dict = field(default_factory=dict)  # proj, mask_token, decoders.*, heads.*
    tasks: tuple = ()
    decoder_dim: int = 512
    decoder_depth: int = 1
    input_bands: list = field(default_factory=list)
    normalisation: Optional[dict] = None
    notes: list = field(default_factory=list)

    @property
    def size(self) -> str:
        return next((n for n, (dp, dm) in registry.ENCODER_SIZES.items()
                     if tuple(dm) == tuple(self.dims) and tuple(dp) == tuple(self.depths)), "?")

    def describe(self) -> str:
        heads = [t for t in self.tasks if t in registry.PRETEXT_CLASSES]
        return (f"ConvNeXt V2 {self.size}, patch {self.patch_size}, {self.in_chans} bands, {self.layout} layout"
                + (f", tasks {', '.join(self.tasks)}" if self.tasks else "")
                + (f"; landcover heads {', '.join(heads)}" if heads else ""))


def _our_state(obj: dict) -> CheckpointArrays:
    cfg, sd = obj.get("config") or {}, obj.get("model") or {}
    if obj.get("kind") == "mpmae":
        enc_cfg = cfg["encoder"]
        enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
        rest = {k: v for k, v in sd.items() if not k.startswith("encoder.")}
        tasks = tuple(cfg.get("tasks") or ())
        dec_dim, dec_depth = int(cfg.get("decoder_dim", 512)), int(cfg.get("decoder_depth", 1))
        bands = list(cfg.get("input_bands") or [])
    else:
        enc_cfg, enc, rest, tasks, dec_dim, dec_depth, bands = cfg, dict(sd), {}, (), 512, 1, []
    try:
        depths, dims = tuple(enc_cfg["depths"]), tuple(enc_cfg["dims"])
        patch, in_chans = int(enc_cfg["patch_size"]), int(enc_cfg["in_chans"])
        convention = enc_cfg.get("convention", "sparse")
    except (KeyError, TypeError) as exc:
        raise ConvertError(f"the checkpoint's model configuration lacks {exc}: it is not a complete checkpoint of "
                           "this toolkit") from None
    notes = []
    if convention != "sparse" and patch == 8:
        notes.append("patch 8 in the reference's dense convention shrinks the maps: written in the sparse convention")
        convention = "sparse"
    return CheckpointArrays("ours", "ours", depths, dims, patch, in_chans, convention,
                            {k: np.asarray(v) for k, v in enc.items()}, {k: np.asarray(v) for k, v in rest.items()},
                            tasks, dec_dim, dec_depth, bands, obj.get("normalisation"), notes)


def checkpoint_arrays(path) -> CheckpointArrays:
    """Read any checkpoint this toolkit understands into arrays on our keys (no torch)."""
    try:
        obj = read_pth(path)
    except CheckpointReadError as exc:
        raise ConvertError(str(exc)) from None
    if isinstance(obj, dict) and obj.get("format") == OUR_FORMAT:
        out = _our_state(obj)
    else:
        if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            sd, args = obj["model"], obj.get("args")
        elif isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values()):
            sd, args = obj, None
        else:
            raise ConvertError(f"'{path}' holds neither a checkpoint of this toolkit, a state dict, nor a "
                               "{'model': state_dict} checkpoint: it is not a model checkpoint this toolkit reads")
        sd = {k: v for k, v in sd.items() if isinstance(v, np.ndarray)}
        try:
            m = reference_layout.map_reference_state(sd, args)
        except reference_layout.LayoutError as exc:
            raise ConvertError(f"'{path}': {exc}") from None
        convention, note = reference_layout.runtime_convention(m.layout, m.patch_size)
        dec_dim = int(m.mpmae_state["proj.weight"].shape[0]) if "proj.weight" in m.mpmae_state else 512
        depth = len({k.split(".")[2] for k in m.mpmae_state if m.tasks and k.startswith(f"decoders.{m.tasks[0]}.")})
        notes = list(m.notes) + ([note] if note else [])
        if m.unexpected:
            notes.append(f"{len(m.unexpected)} key(s) not used: {', '.join(m.unexpected[:5])}"
                         + (" ..." if len(m.unexpected) > 5 else ""))
        out = CheckpointArrays("reference", m.layout, m.depths, m.dims, m.patch_size, m.in_chans, convention,
                               m.encoder_state, m.mpmae_state, m.tasks, dec_dim, max(depth, 1), [], None, notes)
    missing = [k for k in reference_layout.encoder_keys(out.depths)[:-2] if k not in out.encoder_state]
    if missing:
        raise ConvertError(f"'{path}' lacks encoder weights ({', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}): "
                           "the checkpoint is incomplete or of an unknown layout")
    try:
        expected = reference_layout.expected_encoder_shapes(out.depths, out.dims, out.patch_size, out.in_chans)
    except (TypeError, ValueError, IndexError) as exc:
        raise ConvertError(f"'{path}': the checkpoint's encoder configuration is not usable ({exc}): it is corrupt "
                           "or of another architecture") from None
    wrong = reference_layout.shape_problems(out.encoder_state, expected)
    if wrong:
        raise ConvertError(f"'{path}': {len(wrong)} encoder weight(s) have the wrong shape for a ConvNeXt V2 "
                           f"{out.size} of patch {out.patch_size} ({'; '.join(wrong[:3])}"
                           f"{' ...' if len(wrong) > 3 else ''}): the checkpoint is corrupt, or of another "
                           "architecture. Download it again, or use the model it was made for")
    if not out.input_bands:
        out.input_bands = list(registry.default_input_bands(out.in_chans) or [])
        if not out.input_bands:
            raise ConvertError(f"the checkpoint's encoder takes {out.in_chans} bands, which matches neither the "
                               "12-band nor the RGB configuration of MMEarth")
    if not out.normalisation:
        out.normalisation = default_normalisation(out.input_bands)
    return out


FP16_TOLERANCE = 1e-2  # max |fp16 - fp32| relative to max |fp32|, per output, on a probe


def fp16_encoder(arrays: CheckpointArrays, source: str = "") -> tuple[bytes, float]:
    """The encoder in half precision (weights and arithmetic; float32 in and out), for GPUs, and its
    largest relative difference from the float32 graph on a probe (refused beyond FP16_TOLERANCE)."""
    from mpmae_core.runtime.models.model import onnxruntime

    meta = encoder_metadata(arrays.depths, arrays.dims, arrays.patch_size, arrays.convention, arrays.input_bands,
                            arrays.normalisation, source=source)
    meta.precision = "float16"
    args = (arrays.encoder_state, arrays.depths, arrays.dims, arrays.in_chans, arrays.patch_size)
    data16 = onnx_writer.convnext_encoder(*args, convention=arrays.convention, float16=True,
                                          metadata={METADATA_KEY: meta.to_json()})
    data32 = onnx_writer.convnext_encoder(*args, convention=arrays.convention)
    ort = onnxruntime()
    probe = np.random.default_rng(0).normal(size=(1, arrays.in_chans, 4 * arrays.patch_size,
                                                  4 * arrays.patch_size)).astype(np.float32)
    ref = ort.InferenceSession(data32, providers=["CPUExecutionProvider"]).run(None, {"image": probe})
    got = ort.InferenceSession(data16, providers=["CPUExecutionProvider"]).run(None, {"image": probe})
    diff = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) for a, b in zip(got, ref))
    if not diff <= FP16_TOLERANCE:
        raise ConvertError(f"the float16 encoder differs from float32 by {diff:.2%} of the largest value (more than "
                           f"{FP16_TOLERANCE:.0%}): these weights do not fit half precision; use the float32 model")
    return data16, diff


def check_graph(data: bytes, in_chans: int, patch: int, what: str) -> None:
    """Open the graph with ONNX Runtime and run it on a probe: finite outputs of the right shape."""
    from mpmae_core.runtime.models.model import onnxruntime

    ort = onnxruntime()
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        probe = np.random.default_rng(0).normal(size=(1, in_chans, 2 * patch, 3 * patch)).astype(np.float32)
        outs = session.run(None, {session.get_inputs()[0].name: probe})
    except Exception as exc:  # onnxruntime's own exception types
        raise ConvertError(f"the converted {what} does not run: {str(exc).splitlines()[0][:300]}") from None
    if not all(np.isfinite(o).all() for o in outs):
        raise ConvertError(f"the converted {what} gives non-finite values: the checkpoint's weights are damaged")


def model_graphs(arrays: CheckpointArrays, heads: bool = True, source: str = "",
                 cancelled: Callable[[], bool] = lambda: False, licence: str = "") -> dict:
    """name suffix ('' for the encoder, '-<task>' for pretext segmenters) -> ONNX bytes; ``licence``:
    of the weights, written into every graph's metadata."""
    from mpmae_core.runtime.io.files import Cancelled

    meta = encoder_metadata(arrays.depths, arrays.dims, arrays.patch_size, arrays.convention, arrays.input_bands,
                            arrays.normalisation, source=source)
    meta.licence = licence
    out = {"": onnx_writer.convnext_encoder(arrays.encoder_state, arrays.depths, arrays.dims, arrays.in_chans,
                                            arrays.patch_size, convention=arrays.convention,
                                            metadata={METADATA_KEY: meta.to_json()})}
    if heads:
        full = {f"encoder.{k}": v for k, v in arrays.encoder_state.items()}
        full.update(arrays.mpmae_state)
        for task in arrays.tasks:
            if task not in registry.PRETEXT_CLASSES or f"heads.{task}.pred.weight" not in full:
                continue
            if cancelled():
                raise Cancelled("cancelled by the user; no model was installed")
            names, colours = registry.PRETEXT_CLASSES[task]
            smeta = segmenter_metadata(arrays.depths, arrays.dims, arrays.patch_size, arrays.input_bands,
                                       arrays.normalisation, task, names, colours, source=source)
            smeta.licence = licence
            out[f"-{task}"] = onnx_writer.pretext_segmenter(
                full, task, arrays.depths, arrays.dims, arrays.in_chans, arrays.patch_size, len(names),
                arrays.decoder_dim, arrays.decoder_depth, metadata={METADATA_KEY: smeta.to_json()})
    return out


def convert(checkpoint, out_dir, name: str, *, heads: bool = True, source: str = "",
            cancelled: Callable[[], bool] = lambda: False, log: Callable[[str], None] = lambda m: None,
            input_bands=None, licence: str = "") -> dict:
    """Write NAME.onnx (encoder) and NAME-<task>.onnx (landcover heads) into ``out_dir``, all
    verified, together or not at all. Returns {"encoder": path, "segmenters": {task: path}, ...}.
    ``input_bands``: the encoder's bands in order when the catalogue states them (RGB: B2, B3, B4);
    ``licence``: of the weights (the catalogue's words), kept in the models' metadata."""
    from mpmae_core.runtime.io.files import Cancelled, PendingOutput, check_output
    from mpmae_core.runtime.models.model import OnnxModel

    out_dir = Path(out_dir)
    arrays = checkpoint_arrays(checkpoint)
    if input_bands:
        if len(input_bands) != arrays.in_chans:
            raise ConvertError(f"the catalogue says this model takes {len(input_bands)} bands ({', '.join(input_bands)}) "
                               f"but the checkpoint's encoder takes {arrays.in_chans}: it is another model; check the "
                               "name or URL")
        arrays.input_bands = list(input_bands)
        arrays.normalisation = default_normalisation(arrays.input_bands)
    log(f"checkpoint: {arrays.describe()}")
    for note in arrays.notes:
        log(note)
    if cancelled():
        raise Cancelled("cancelled by the user; no model was installed")
    graphs = model_graphs(arrays, heads, source or f"converted from {Path(checkpoint).name}", cancelled, licence)
    paths = {suffix: out_dir / f"{name}{suffix}.onnx" for suffix in graphs}
    for p in paths.values():
        check_output(p, [checkpoint], "model", (".onnx",), "an ONNX model")
    for suffix, data in graphs.items():
        check_graph(data, arrays.in_chans, arrays.patch_size, f"{'encoder' if not suffix else suffix[1:] + ' head'}")
    if cancelled():
        raise Cancelled("cancelled by the user; no model was installed")
    out_dir.mkdir(parents=True, exist_ok=True)
    pending = PendingOutput(paths[""])
    try:
        pending.tmp.write_bytes(graphs[""])
        temps = {"": pending.tmp}
        for suffix, data in graphs.items():
            if suffix:
                temps[suffix] = pending.companion(paths[suffix])
                temps[suffix].write_bytes(data)
        for suffix, tmp in temps.items():
            OnnxModel(tmp, device="cpu")  # the metadata and the graph agree
        pending.commit()
    except BaseException:
        pending.abort()
        raise
    return {"encoder": str(paths[""]), "segmenters": {s[1:]: str(p) for s, p in paths.items() if s},
            "description": arrays.describe(), "notes": arrays.notes}
