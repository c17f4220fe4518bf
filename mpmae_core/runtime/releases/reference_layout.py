"""The reference MMEarth-train checkpoint layouts mapped onto our keys, in numpy (no torch).

One mapping serves both routes to a released checkpoint: ``checkpoints`` (torch: import into an
MP-MAE, export with torch) and ``runtime.convert`` (torch-free: straight to an ONNX encoder for
QGIS). Values are numpy arrays; the torch route converts its tensors at the border.

Layouts (``checkpoint["model"]``, optionally with a DDP ``module.`` prefix):
- ``sparse``: MMEarth-train pretraining (MinkowskiEngine): ``encoder.*.kernel`` tensors,
  ``.ln`` / ``.linear`` submodules, GRN [1, C], biases [1, C]; no final norm.
- ``dense_pretrain``: the same model built with dense modules (``encoder.*.weight``).
- ``dense_finetune``: the dense ConvNeXt V2 (fine-tuning / inference): root keys, final ``norm``
  and a classification ``head`` (dropped).
Decoders and heads (``proj``, ``mask_token``, ``decoder_dict.<task>``, ``pred_dict.<task>``,
``layer_norm_tmp``, ``loss_fn.log_vars``) are mapped onto an MP-MAE when present.

Kernel mapping (reference notes, section 6): a MinkowskiEngine conv kernel [k*k, in, out] becomes
(out, in, k, k) by permuting to (out, in, k*k), reshaping, then transposing the last two axes;
a depthwise kernel [k*k, C] becomes (C, 1, k, k) the same way. The sparse key table is written
once (:func:`sparse_encoder_table`) and read in both directions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from mpmae_core import registry


class LayoutError(ValueError):
    """A state dict that is not a supported MMEarth layout; the message says why."""


# ----------------------------------------------------------------------------- kernels (pure)

def conv_kernel(kernel: np.ndarray, k: int) -> np.ndarray:
    """MinkowskiEngine [k*k, in, out] -> (out, in, k, k)."""
    out = np.transpose(kernel, (2, 1, 0)).reshape(kernel.shape[2], kernel.shape[1], k, k)
    return np.ascontiguousarray(np.swapaxes(out, -1, -2))


def dw_kernel(kernel: np.ndarray, k: int) -> np.ndarray:
    """MinkowskiEngine depthwise [k*k, C] -> (C, 1, k, k)."""
    out = np.transpose(kernel, (1, 0)).reshape(kernel.shape[1], 1, k, k)
    return np.ascontiguousarray(np.swapaxes(out, -1, -2))


def conv_kernel_to_me(weight: np.ndarray) -> np.ndarray:
    """Inverse of :func:`conv_kernel`: (out, in, k, k) -> [k*k, in, out]."""
    out_c, in_c, k, _ = weight.shape
    return np.ascontiguousarray(np.transpose(np.swapaxes(weight, -1, -2).reshape(out_c, in_c, k * k), (2, 1, 0)))


def dw_kernel_to_me(weight: np.ndarray) -> np.ndarray:
    c, _, k, _ = weight.shape
    return np.ascontiguousarray(np.transpose(np.swapaxes(weight, -1, -2).reshape(c, k * k), (1, 0)))


# ----------------------------------------------------------------------------- the key table

@dataclass(frozen=True)
class KeyRule:
    ref: str  # key in the sparse reference encoder (without "encoder.")
    ours: str  # key in our encoder
    kind: str  # "same", "bias" ([1, C] <-> [C]), "grn" ([1, C] <-> (1, 1, 1, C)), "conv", "dw"
    k: int = 0  # kernel size of "conv" and "dw"


def sparse_encoder_table(depths: Sequence[int], patch: int) -> list[KeyRule]:
    """Every sparse-layout encoder key with its counterpart and conversion, in one list."""
    k = patch // 8
    rules = [KeyRule("initial_conv.0.kernel", "initial_conv.0.weight", "conv", 3),
             KeyRule("initial_conv.0.bias", "initial_conv.0.bias", "bias"),
             KeyRule("stem.0.kernel", "stem.0.weight", "dw", k),
             KeyRule("stem.0.bias", "stem.0.bias", "bias")]
    norms = ["initial_conv.1", "stem.1"] + [f"downsample_layers.{i}.0" for i in range(3)]
    rules += [KeyRule(f"{n}.ln.{p}", f"{n}.{p}", "same") for n in norms for p in ("weight", "bias")]
    for i in range(3):
        rules += [KeyRule(f"downsample_layers.{i}.1.kernel", f"downsample_layers.{i}.1.weight", "conv", 2),
                  KeyRule(f"downsample_layers.{i}.1.bias", f"downsample_layers.{i}.1.bias", "bias")]
    for i, depth in enumerate(depths):
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            rules += [KeyRule(pre + "dwconv.kernel", pre + "dwconv.weight", "dw", 7),
                      KeyRule(pre + "dwconv.bias", pre + "dwconv.bias", "bias")]
            for p in ("weight", "bias"):
                rules += [KeyRule(f"{pre}norm.ln.{p}", f"{pre}norm.{p}", "same"),
                          KeyRule(f"{pre}pwconv1.linear.{p}", f"{pre}pwconv1.{p}", "same"),
                          KeyRule(f"{pre}pwconv2.linear.{p}", f"{pre}pwconv2.{p}", "same")]
            rules += [KeyRule(f"{pre}grn.{p}", f"{pre}grn.{p}", "grn") for p in ("gamma", "beta")]
    return rules


_TO_OURS: dict[str, Callable] = {
    "same": lambda a, k: a, "bias": lambda a, k: a.reshape(-1), "grn": lambda a, k: a.reshape(1, 1, 1, -1),
    "conv": lambda a, k: conv_kernel(a, k), "dw": lambda a, k: dw_kernel(a, k)}
_TO_REF: dict[str, Callable] = {
    "same": lambda a: a, "bias": lambda a: a.reshape(1, -1), "grn": lambda a: a.reshape(1, -1),
    "conv": conv_kernel_to_me, "dw": dw_kernel_to_me}


def encoder_from_sparse(enc_sd: dict, depths, patch: int) -> tuple[dict, list[str]]:
    """Map the sparse encoder's arrays onto our encoder keys. Returns (state, used reference keys)."""
    out, used = {}, []
    for rule in sparse_encoder_table(depths, patch):
        if rule.ref in enc_sd:
            out[rule.ours] = _TO_OURS[rule.kind](np.asarray(enc_sd[rule.ref]), rule.k)
            used.append(rule.ref)
    return out, used


def encoder_to_sparse(enc_sd: dict, depths, patch: int) -> dict:
    """Our encoder's arrays as the sparse reference layout (keys with "encoder."): the inverse."""
    return {f"encoder.{r.ref}": _TO_REF[r.kind](np.asarray(enc_sd[r.ours])) for r in sparse_encoder_table(depths, patch)}


# ----------------------------------------------------------------------------- layouts

def strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_layout(sd: dict) -> str:
    if any(k.startswith("encoder.") and k.endswith(".kernel") for k in sd):
        return "sparse"
    if "encoder.initial_conv.0.weight" in sd:
        return "dense_pretrain"
    if "initial_conv.0.weight" in sd:
        return "dense_finetune"
    if "stem_orig.0.weight" in sd or "encoder.stem_orig.0.kernel" in sd:
        raise LayoutError("this checkpoint uses the original ConvNeXt stem (use_orig_stem, the ImageNet "
                          "baseline); only the MMEarth stem (initial_conv + stem) is supported")
    raise LayoutError("not an MMEarth ConvNeXt V2 checkpoint: no initial_conv weights found "
                      f"(first keys: {', '.join(list(sd)[:5])})")


def encoder_geometry(sd: dict, layout: str) -> tuple[str, tuple, tuple, int, int]:
    """(size name, depths, dims, patch size, input bands) of the checkpoint's encoder."""
    pre = "" if layout == "dense_finetune" else "encoder."
    try:
        if layout == "sparse":
            init = sd[pre + "initial_conv.0.kernel"]  # [9, in, d0]
            in_chans, d0 = init.shape[1], init.shape[2]
            k = int(round(sd[pre + "stem.0.kernel"].shape[0] ** 0.5))
            dims = [d0] + [sd[f"{pre}downsample_layers.{i}.1.kernel"].shape[2] for i in range(3)]
        else:
            init = sd[pre + "initial_conv.0.weight"]  # (d0, in, 3, 3)
            in_chans, d0 = init.shape[1], init.shape[0]
            k = sd[pre + "stem.0.weight"].shape[-1]
            dims = [d0] + [sd[f"{pre}downsample_layers.{i}.1.weight"].shape[0] for i in range(3)]
    except (KeyError, IndexError, AttributeError) as exc:
        raise LayoutError(f"the {layout} layout is incomplete: {exc} is missing or malformed") from None
    depths = []
    for i in range(4):
        idx = {int(m.group(1)) for key in sd for m in [re.match(rf"{re.escape(pre)}stages\.{i}\.(\d+)\.", key)] if m}
        depths.append(max(idx) + 1 if idx else 0)
    dims = [int(d) for d in dims]
    size = next((n for n, (dp, dm) in registry.ENCODER_SIZES.items() if tuple(dm) == tuple(dims)
                 and tuple(dp) == tuple(depths)), None)
    if size is None:
        raise LayoutError(f"encoder dims {dims} / depths {depths} match no known ConvNeXt V2 size "
                          f"({', '.join(registry.ENCODER_SIZES)})")
    return size, tuple(depths), tuple(dims), 8 * int(k), int(in_chans)


def runtime_convention(layout: str, patch_size: int) -> tuple[str, str]:
    """(border convention, note) in which a reference checkpoint runs in the runtime: the sparse
    one for the pretraining model (the semantics it was trained in; every stage map is then the
    input divided by its stride, as tiles and hypercolumns need); the reference's dense one for a
    dense fine-tuning checkpoint at patch 16 (at patch 8 that convention shrinks every map by a
    pixel, so the sparse one is used and the note says so)."""
    if layout == "dense_finetune":
        if patch_size == 16:
            return "reference_dense", ""
        return "sparse", ("a dense fine-tuning checkpoint at patch 8 is run in the sparse convention: the "
                          "reference's dense one shrinks every map by a pixel, which tiles cannot use")
    return "sparse", ""


def reference_task_order(args: Any, tasks: list[str]) -> list[str]:
    """Order of ``loss_fn.log_vars``: the checkpoint's own args.out_modalities if readable."""
    out_mods = getattr(args, "out_modalities", None) if args is not None else None
    if isinstance(out_mods, dict) and set(tasks) <= set(out_mods):
        return [t for t in out_mods if t in tasks]
    return [t for t in registry.REFERENCE_TASK_ORDER if t in tasks]


@dataclass
class MappedCheckpoint:
    """A reference state dict on our keys, and what happened to every key."""

    layout: str
    size: str
    patch_size: int
    in_chans: int
    depths: tuple
    dims: tuple
    tasks: tuple
    shared_decoder: bool
    encoder_state: dict  # our encoder keys -> arrays
    mpmae_state: dict  # decoders, heads, weighting under our MP-MAE keys
    mapped: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    notes: list = field(default_factory=list)


ENCODER_ROOTS = ("initial_conv", "stem", "downsample_layers", "stages", "norm")


def map_reference_state(sd: dict, args: Any = None) -> MappedCheckpoint:
    """Map a reference state dict of arrays (any supported layout) onto our keys."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    layout = detect_layout(sd)
    size, depths, dims, patch, in_chans = encoder_geometry(sd, layout)
    used: list[str] = []
    if layout == "sparse":
        enc_state, enc_used = encoder_from_sparse(strip(sd, "encoder."), depths, patch)
        used += [f"encoder.{k}" for k in enc_used]
    else:
        prefix = "" if layout == "dense_finetune" else "encoder."
        enc_state = {}
        for key, value in strip(sd, prefix).items():
            if key.split(".")[0] in ENCODER_ROOTS:
                enc_state[key] = np.asarray(value)
                used.append(prefix + key)
    tasks = [t for t in registry.TASKS if f"pred_dict.{t}.weight" in sd]
    dec_blocks = {t: strip(sd, f"decoder_dict.{t}.") for t in tasks}
    shared = len(tasks) > 1 and all(
        set(dec_blocks[t]) == set(dec_blocks[tasks[0]]) and all(
            np.array_equal(np.asarray(dec_blocks[t][k]), np.asarray(dec_blocks[tasks[0]][k])) for k in dec_blocks[t])
        for t in tasks[1:])
    mp: dict = {}
    for key in ("proj.weight", "proj.bias", "mask_token"):
        if key in sd:
            mp[key] = np.asarray(sd[key])
            used.append(key)
    for t in tasks:
        for k, v in dec_blocks[t].items():
            mp[f"decoders.{t}.{k}"] = np.asarray(v)
            used.append(f"decoder_dict.{t}.{k}")
        for p in ("weight", "bias"):
            mp[f"heads.{t}.pred.{p}"] = np.asarray(sd[f"pred_dict.{t}.{p}"])
            used.append(f"pred_dict.{t}.{p}")
            if not registry.TASKS[t].is_pixel and f"layer_norm_tmp.{p}" in sd:
                mp[f"heads.{t}.norm.{p}"] = np.asarray(sd[f"layer_norm_tmp.{p}"])
                used.append(f"layer_norm_tmp.{p}")
    if "loss_fn.log_vars" in sd and tasks:
        ref_order = reference_task_order(args, tasks)
        log_vars = np.asarray(sd["loss_fn.log_vars"]).reshape(-1)
        if log_vars.size == len(ref_order):
            by_task = dict(zip(ref_order, log_vars.tolist()))
            mp["weighting.log_vars"] = np.array([by_task[t] for t in registry.TASKS if t in tasks], log_vars.dtype)
            used.append("loss_fn.log_vars")
    used_set = set(used)
    head_prefix = {"dense_finetune": "head.", "dense_pretrain": "encoder.head."}.get(layout)
    dropped = [k for k in sd if head_prefix and k.startswith(head_prefix)]
    notes = []
    if dropped:
        notes.append(f"classification head ({head_prefix}*) dropped: it belongs to a downstream task")
    return MappedCheckpoint(layout, size, patch, in_chans, depths, dims, tuple(t for t in registry.TASKS if t in tasks),
                            shared, enc_state, mp, mapped=sorted(used_set),
                            unexpected=sorted(k for k in sd if k not in used_set and k not in dropped), notes=notes)


def expected_encoder_shapes(depths: Sequence[int], dims: Sequence[int], patch_size: int, in_chans: int) -> dict:
    """Key -> shape of every tensor of our encoder (``encoder_keys``) for this configuration: the
    MMEarth stem (3x3 initial conv, depthwise stem of kernel patch / 8), 2x2 downsamplers, blocks of
    7x7 depthwise conv, LayerNorm, 4x MLP with GRN."""
    d0, k = int(dims[0]), int(patch_size) // 8
    shapes = {"initial_conv.0.weight": (d0, int(in_chans), 3, 3), "initial_conv.0.bias": (d0,),
              "initial_conv.1.weight": (d0,), "initial_conv.1.bias": (d0,),
              "stem.0.weight": (d0, 1, k, k), "stem.0.bias": (d0,), "stem.1.weight": (d0,), "stem.1.bias": (d0,)}
    for i in range(3):
        a, b = int(dims[i]), int(dims[i + 1])
        shapes.update({f"downsample_layers.{i}.0.weight": (a,), f"downsample_layers.{i}.0.bias": (a,),
                       f"downsample_layers.{i}.1.weight": (b, a, 2, 2), f"downsample_layers.{i}.1.bias": (b,)})
    for i, depth in enumerate(depths):
        d = int(dims[i])
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            shapes.update({pre + "dwconv.weight": (d, 1, 7, 7), pre + "dwconv.bias": (d,), pre + "norm.weight": (d,),
                           pre + "norm.bias": (d,), pre + "pwconv1.weight": (4 * d, d), pre + "pwconv1.bias": (4 * d,),
                           pre + "grn.gamma": (1, 1, 1, 4 * d), pre + "grn.beta": (1, 1, 1, 4 * d),
                           pre + "pwconv2.weight": (d, 4 * d), pre + "pwconv2.bias": (d,)})
    shapes.update({"norm.weight": (int(dims[-1]),), "norm.bias": (int(dims[-1]),)})
    return shapes


def shape_problems(state: dict, expected: dict) -> list[str]:
    """'key: shape where shape is needed' for every tensor of ``state`` whose shape is not the expected one."""
    out = []
    for key, want in expected.items():
        have = getattr(state.get(key), "shape", None)
        if have is not None and tuple(have) != tuple(want):
            out.append(f"{key} has shape {tuple(have)} where {tuple(want)} is needed")
    return out


def encoder_keys(depths: Sequence[int]) -> list[str]:
    """Every key of our encoder's state dict (the final norm included), in a fixed order."""
    keys = ["initial_conv.0.weight", "initial_conv.0.bias", "initial_conv.1.weight", "initial_conv.1.bias",
            "stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"]
    for i in range(3):
        keys += [f"downsample_layers.{i}.0.weight", f"downsample_layers.{i}.0.bias",
                 f"downsample_layers.{i}.1.weight", f"downsample_layers.{i}.1.bias"]
    for i, depth in enumerate(depths):
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            keys += [pre + n for n in ("dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight",
                                       "pwconv1.bias", "grn.gamma", "grn.beta", "pwconv2.weight", "pwconv2.bias")]
    return keys + ["norm.weight", "norm.bias"]
