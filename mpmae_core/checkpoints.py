"""Checkpoints: our own format, and safe import of the reference MMEarth-train checkpoints.

Nothing here unpickles a file freely: every load uses ``torch.load(..., weights_only=True)``; the
reference's pickled ``argparse.Namespace`` (and the ``pathlib`` paths it may hold) are the only
types allowlisted, and only while reading a reference checkpoint.

Reference layouts understood (``checkpoint["model"]``, optionally with a DDP ``module.`` prefix):
- ``sparse``: MMEarth-train pretraining (MinkowskiEngine): ``encoder.*.kernel`` tensors,
  ``.ln`` / ``.linear`` submodules, GRN [1, C], biases [1, C]; no final norm.
- ``dense_pretrain``: the same model built with dense modules (``encoder.*.weight``).
- ``dense_finetune``: the dense ConvNeXt V2 (fine-tuning / inference): root keys, final ``norm``
  and a classification ``head`` (dropped).
Decoders and heads (``proj``, ``mask_token``, ``decoder_dict.<task>``, ``pred_dict.<task>``,
``layer_norm_tmp``, ``loss_fn.log_vars``) are mapped onto an MP-MAE when present.

Kernel mapping (reference notes, section 6): a MinkowskiEngine conv kernel [k*k, in, out] becomes
(out, in, k, k) by permuting to (out, in, k*k), reshaping, then transposing the last two axes;
a depthwise kernel [k*k, C] becomes (C, 1, k, k) the same way.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from mpmae_core import registry
from mpmae_core.models.convnextv2 import ENCODER_SIZES, ConvNeXtV2Encoder, build_encoder, size_from_dims
from mpmae_core.models.mpmae import MPMAE
from mpmae_core.runtime.files import atomic_output

FORMAT = "mpmae-checkpoint"
FORMAT_VERSION = 1
#: The only non-tensor types a reference checkpoint needs (its pickled training arguments).
REFERENCE_SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath,
                          pathlib.WindowsPath, pathlib.PureWindowsPath]


class CheckpointError(ValueError):
    """A checkpoint cannot be used as given; the message names the problem and the fix."""


# ------------------------------------------------------------------------------------------
# Safe loading
# ------------------------------------------------------------------------------------------

def safe_load(path: str | os.PathLike, allow: Optional[list] = None) -> Any:
    """``torch.load(weights_only=True)`` with clear errors; ``allow`` lists extra safe types."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        with torch.serialization.safe_globals(list(allow or [])):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if not found:  # not a pickle at all (random bytes, another file type): not a refused object
            raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (corrupt, truncated or another "
                                  "file type)") from None
        what = f" of type {found.group(1)}"
        raise CheckpointError(
            f"'{path}' holds an object{what} that is not allowed: checkpoints are read with "
            "torch.load(weights_only=True) and arbitrary Python objects are never unpickled. If this is "
            "a checkpoint from another tool, re-save its state_dict alone (torch.save(model.state_dict(), ...))."
        ) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(f"'{path}' is not a readable PyTorch checkpoint (corrupt or truncated?): {exc}") from None


# ------------------------------------------------------------------------------------------
# Our own format
# ------------------------------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, model: MPMAE | ConvNeXtV2Encoder, extra: Optional[dict] = None) -> Path:
    """Write model config and weights (plus ``extra`` training state) atomically."""
    kind = "mpmae" if isinstance(model, MPMAE) else "encoder"
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "config": model.config(),
               "model": model.state_dict()}
    payload.update(extra or {})
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    obj = safe_load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(
            f"'{path}' is not an {FORMAT} file; reference MMEarth checkpoints are imported with "
            "`python -m training.import_reference CKPT --out model.pt` first"
        )
    if obj.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"'{path}' has format version {obj['format_version']}; this code reads up to "
                              f"{FORMAT_VERSION}: update mpmae_core")
    return obj


def encoder_from_config(cfg: dict) -> ConvNeXtV2Encoder:
    return ConvNeXtV2Encoder(cfg["depths"], cfg["dims"], in_chans=cfg["in_chans"], patch_size=cfg["patch_size"],
                             convention=cfg.get("convention", "sparse"))


def mpmae_from_config(cfg: dict) -> MPMAE:
    return MPMAE(encoder_from_config(cfg["encoder"]), cfg["tasks"], cfg["input_bands"],
                 decoder_dim=cfg["decoder_dim"], decoder_depth=cfg["decoder_depth"],
                 share_decoder=cfg["share_decoder"], mask_ratio=cfg["mask_ratio"],
                 norm_pix_loss=cfg["norm_pix_loss"], loss_weighting=cfg["loss_weighting"])


def is_our_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


@dataclass
class LoadedModel:
    """A model from any checkpoint we read: ``kind`` is 'ours' or 'reference'."""

    model: "MPMAE | ConvNeXtV2Encoder"
    kind: str
    normalisation: Optional[dict]  # how its inputs were normalised, when the checkpoint says
    description: str


def load_any(path: str | os.PathLike, convention: str = "reference_dense") -> LoadedModel:
    """Our checkpoint or a reference MMEarth one, decided by what the file holds (never by error
    text). Reference checkpoints are imported (``convention`` for their encoder)."""
    path = Path(path)
    obj = safe_load(path, REFERENCE_SAFE_GLOBALS)
    if is_our_checkpoint(obj):
        obj = load_checkpoint(path)
        model = mpmae_from_config(obj["config"]) if obj["kind"] == "mpmae" else encoder_from_config(obj["config"])
        model.load_state_dict(obj["model"])
        return LoadedModel(model, "ours", obj.get("normalisation"), f"checkpoint {path} (step {obj.get('step', '?')})")
    imported = import_reference_state(*_reference_parts(obj, path))
    model = imported.build_mpmae(convention) if imported.report.tasks else imported.build_encoder(convention)
    return LoadedModel(model, "reference", None, f"reference checkpoint {path}")


def build_from_checkpoint(path: str | os.PathLike) -> MPMAE | ConvNeXtV2Encoder:
    obj = load_checkpoint(path)
    model = mpmae_from_config(obj["config"]) if obj["kind"] == "mpmae" else encoder_from_config(obj["config"])
    model.load_state_dict(obj["model"])
    return model


# ------------------------------------------------------------------------------------------
# Reference import
# ------------------------------------------------------------------------------------------

@dataclass
class ImportReport:
    layout: str
    size: str
    patch_size: int
    in_chans: int
    tasks: tuple[str, ...]
    shared_decoder: bool
    mapped: list[str] = field(default_factory=list)  # reference keys used
    unexpected: list[str] = field(default_factory=list)  # reference keys not used
    missing: list[str] = field(default_factory=list)  # our keys the checkpoint did not provide
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"reference layout {self.layout}: ConvNeXt V2 {self.size}, patch {self.patch_size}, "
                 f"{self.in_chans} input bands, tasks {', '.join(self.tasks) or '-'}"
                 + (" (shared decoder)" if self.shared_decoder else ""),
                 f"{len(self.mapped)} tensors mapped"]
        if self.missing:
            lines.append(f"missing (left as initialised): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (ignored): {', '.join(self.unexpected)}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _conv_kernel(kernel: Tensor, k: int) -> Tensor:
    """MinkowskiEngine [k*k, in, out] -> torch (out, in, k, k)."""
    out = kernel.permute(2, 1, 0).reshape(kernel.shape[2], kernel.shape[1], k, k)
    return out.transpose(-1, -2).contiguous()


def _dw_kernel(kernel: Tensor, k: int) -> Tensor:
    """MinkowskiEngine depthwise [k*k, C] -> torch (C, 1, k, k)."""
    out = kernel.permute(1, 0).reshape(kernel.shape[1], 1, k, k)
    return out.transpose(-1, -2).contiguous()


def _conv_kernel_to_me(weight: Tensor) -> Tensor:
    """Inverse of :func:`_conv_kernel`: torch (out, in, k, k) -> [k*k, in, out]."""
    out_c, in_c, k, _ = weight.shape
    return weight.transpose(-1, -2).reshape(out_c, in_c, k * k).permute(2, 1, 0).contiguous()


def _dw_kernel_to_me(weight: Tensor) -> Tensor:
    c, _, k, _ = weight.shape
    return weight.transpose(-1, -2).reshape(c, k * k).permute(1, 0).contiguous()


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def detect_layout(sd: dict) -> str:
    if any(k.startswith("encoder.") and k.endswith(".kernel") for k in sd):
        return "sparse"
    if "encoder.initial_conv.0.weight" in sd:
        return "dense_pretrain"
    if "initial_conv.0.weight" in sd:
        return "dense_finetune"
    if "stem_orig.0.weight" in sd or "encoder.stem_orig.0.kernel" in sd:
        raise CheckpointError("this checkpoint uses the original ConvNeXt stem (use_orig_stem, the ImageNet "
                              "baseline); only the MMEarth stem (initial_conv + stem) is supported")
    raise CheckpointError("not an MMEarth ConvNeXt V2 checkpoint: no initial_conv weights found "
                          f"(first keys: {', '.join(list(sd)[:5])})")


def _encoder_from_sparse(enc_sd: dict, depths, dims, patch: int) -> tuple[dict, list[str]]:
    """Map the sparse encoder's tensors onto our encoder keys. Returns (state, used reference keys)."""
    out, used = {}, []
    k = patch // 8

    def take(ref_key, our_key, fn=lambda t: t):
        if ref_key in enc_sd:
            out[our_key] = fn(enc_sd[ref_key])
            used.append(ref_key)

    flat = lambda t: t.reshape(-1)  # noqa: E731 - biases [1, C] -> [C]
    take("initial_conv.0.kernel", "initial_conv.0.weight", lambda t: _conv_kernel(t, 3))
    take("initial_conv.0.bias", "initial_conv.0.bias", flat)
    take("stem.0.kernel", "stem.0.weight", lambda t: _dw_kernel(t, k))
    take("stem.0.bias", "stem.0.bias", flat)
    for name in ("initial_conv.1", "stem.1"):
        for p in ("weight", "bias"):
            take(f"{name}.ln.{p}", f"{name}.{p}")
    for i in range(3):
        for p in ("weight", "bias"):
            take(f"downsample_layers.{i}.0.ln.{p}", f"downsample_layers.{i}.0.{p}")
        take(f"downsample_layers.{i}.1.kernel", f"downsample_layers.{i}.1.weight", lambda t: _conv_kernel(t, 2))
        take(f"downsample_layers.{i}.1.bias", f"downsample_layers.{i}.1.bias", flat)
    for i, depth in enumerate(depths):
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            take(pre + "dwconv.kernel", pre + "dwconv.weight", lambda t: _dw_kernel(t, 7))
            take(pre + "dwconv.bias", pre + "dwconv.bias", flat)
            for p in ("weight", "bias"):
                take(f"{pre}norm.ln.{p}", f"{pre}norm.{p}")
                take(f"{pre}pwconv1.linear.{p}", f"{pre}pwconv1.{p}")
                take(f"{pre}pwconv2.linear.{p}", f"{pre}pwconv2.{p}")
            for p in ("gamma", "beta"):
                take(f"{pre}grn.{p}", f"{pre}grn.{p}", lambda t: t.reshape(1, 1, 1, -1))
    return out, used


def _encoder_geometry(sd: dict, layout: str) -> tuple[str, tuple, tuple, int, int]:
    pre = "" if layout == "dense_finetune" else "encoder."
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
    depths = []
    for i in range(4):
        idx = {int(m.group(1)) for key in sd for m in [re.match(rf"{re.escape(pre)}stages\.{i}\.(\d+)\.", key)] if m}
        depths.append(max(idx) + 1 if idx else 0)
    size = size_from_dims(dims, depths)
    if size is None:
        raise CheckpointError(f"encoder dims {dims} / depths {depths} match no known ConvNeXt V2 size "
                              f"({', '.join(ENCODER_SIZES)})")
    return size, tuple(depths), tuple(dims), 8 * k, in_chans


def _reference_task_order(args: Any, tasks: list[str]) -> list[str]:
    """Order of ``loss_fn.log_vars``: the checkpoint's own args.out_modalities if readable."""
    out_mods = getattr(args, "out_modalities", None) if args is not None else None
    if isinstance(out_mods, dict) and set(tasks) <= set(out_mods):
        return [t for t in out_mods if t in tasks]
    return [t for t in registry.REFERENCE_TASK_ORDER if t in tasks]


@dataclass
class ImportedCheckpoint:
    report: ImportReport
    encoder_state: dict
    mpmae_state: dict  # decoder/head/weighting tensors under our MPMAE keys (encoder keys excluded)
    args: Any = None

    def build_encoder(self, convention: str = "reference_dense") -> ConvNeXtV2Encoder:
        r = self.report
        enc = build_encoder(r.size, in_chans=r.in_chans, patch_size=r.patch_size, convention=convention)
        result = enc.load_state_dict(self.encoder_state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"internal mapping error, unexpected keys {result.unexpected_keys}")
        return enc

    def load_into(self, model: "MPMAE | ConvNeXtV2Encoder") -> ImportReport:
        """Load the imported weights into an existing encoder or MP-MAE of the same size and patch
        size (refused otherwise, naming both); decoders and heads are loaded where both have them."""
        encoder = model.encoder if isinstance(model, MPMAE) else model
        size = size_from_dims(encoder.dims, encoder.depths) or f"dims {list(encoder.dims)}"
        check_compatible(self.report, size, encoder.patch_size)
        if encoder.in_chans != self.report.in_chans:
            raise CheckpointError(f"checkpoint takes {self.report.in_chans} input bands, the model {encoder.in_chans}")
        encoder.load_state_dict(self.encoder_state, strict=False)
        if isinstance(model, MPMAE):
            own = model.state_dict()
            model.load_state_dict({k: v for k, v in self.mpmae_state.items() if k in own and own[k].shape == v.shape},
                                  strict=False)
        return self.report

    def build_mpmae(self, convention: str = "reference_dense") -> MPMAE:
        r = self.report
        if not r.tasks:
            raise CheckpointError("this checkpoint has no decoders or heads (a fine-tuning checkpoint?): "
                                  "build the encoder only")
        bands = registry.default_input_bands(r.in_chans)
        if bands is None:
            raise CheckpointError(f"{r.in_chans} input bands match neither the 12-band nor the RGB configuration")
        weighting = "uncertainty" if "weighting.log_vars" in self.mpmae_state else "equal"
        model = MPMAE(self.build_encoder(convention), r.tasks, bands, share_decoder=r.shared_decoder,
                      loss_weighting=weighting)
        state = {f"encoder.{k}": v for k, v in self.encoder_state.items()}
        state.update(self.mpmae_state)
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"internal mapping error, unexpected keys {result.unexpected_keys}")
        return model


def import_reference_state(sd: dict, args: Any = None) -> ImportedCheckpoint:
    """Map a reference state dict (any supported layout) onto our keys, with a precise report."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    layout = detect_layout(sd)
    size, depths, dims, patch, in_chans = _encoder_geometry(sd, layout)
    used: list[str] = []
    if layout == "sparse":
        enc_state, enc_used = _encoder_from_sparse(_strip(sd, "encoder."), depths, dims, patch)
        used += [f"encoder.{k}" for k in enc_used]
    else:
        prefix = "" if layout == "dense_finetune" else "encoder."
        enc_state = {}
        for key, value in _strip(sd, prefix).items():
            if key.split(".")[0] in ("initial_conv", "stem", "downsample_layers", "stages", "norm"):
                enc_state[key] = value
                used.append(prefix + key)

    # decoders and heads
    tasks = [t for t in registry.TASKS if f"pred_dict.{t}.weight" in sd]
    dec_blocks = {t: _strip(sd, f"decoder_dict.{t}.") for t in tasks}
    shared = len(tasks) > 1 and all(
        set(dec_blocks[t]) == set(dec_blocks[tasks[0]]) and all(torch.equal(dec_blocks[t][k], dec_blocks[tasks[0]][k])
                                                                for k in dec_blocks[t])
        for t in tasks[1:])
    mp: dict[str, Tensor] = {}
    for key in ("proj.weight", "proj.bias", "mask_token"):
        if key in sd:
            mp[key] = sd[key]
            used.append(key)
    for t in tasks:
        for k, v in dec_blocks[t].items():
            mp[f"decoders.{t}.{k}"] = v
            used.append(f"decoder_dict.{t}.{k}")
        for p in ("weight", "bias"):
            mp[f"heads.{t}.pred.{p}"] = sd[f"pred_dict.{t}.{p}"]
            used.append(f"pred_dict.{t}.{p}")
            if not registry.TASKS[t].is_pixel and f"layer_norm_tmp.{p}" in sd:
                mp[f"heads.{t}.norm.{p}"] = sd[f"layer_norm_tmp.{p}"]
                used.append(f"layer_norm_tmp.{p}")
    if "loss_fn.log_vars" in sd and tasks:
        ref_order = _reference_task_order(args, tasks)
        log_vars = sd["loss_fn.log_vars"].reshape(-1)
        if log_vars.numel() == len(ref_order):
            by_task = dict(zip(ref_order, log_vars.tolist()))
            ours = [t for t in registry.TASKS if t in tasks]
            mp["weighting.log_vars"] = torch.tensor([by_task[t] for t in ours], dtype=log_vars.dtype)
            used.append("loss_fn.log_vars")

    used_set = set(used)
    head_prefix = {"dense_finetune": "head.", "dense_pretrain": "encoder.head."}.get(layout)
    dropped = [k for k in sd if head_prefix and k.startswith(head_prefix)]
    unexpected = sorted(k for k in sd if k not in used_set and k not in dropped)
    notes = []
    if dropped:
        notes.append(f"classification head ({head_prefix}*) dropped: it belongs to a downstream task")
    report = ImportReport(layout, size, patch, in_chans, tuple(t for t in registry.TASKS if t in tasks), shared,
                          mapped=sorted(used_set), unexpected=unexpected)
    reference_enc = build_encoder(size, in_chans=in_chans, patch_size=patch)
    report.missing = sorted(k for k in reference_enc.state_dict() if k not in enc_state)
    if layout == "sparse" and report.missing == ["norm.bias", "norm.weight"]:
        notes.append("the sparse pretraining encoder has no final norm: norm.* left at identity (weight 1, bias 0)")
    report.notes = notes
    return ImportedCheckpoint(report, enc_state, mp, args)


def import_reference_checkpoint(path: str | os.PathLike) -> ImportedCheckpoint:
    """Load a published MMEarth-train ``checkpoint-*.pth`` safely and map it onto our keys."""
    obj = safe_load(path, allow=REFERENCE_SAFE_GLOBALS)
    if is_our_checkpoint(obj):
        raise CheckpointError(f"'{path}' is already in our format: load it with load_checkpoint()")
    return import_reference_state(*_reference_parts(obj, path))


def _reference_parts(obj: Any, path) -> tuple:
    """(state dict, pickled args) of a reference checkpoint object."""
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], obj.get("args")
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, None
    raise CheckpointError(f"'{path}' holds neither our checkpoint, a state dict, nor a {{'model': state_dict}} "
                          "checkpoint: it is not a model checkpoint this toolkit reads")


def check_compatible(report: ImportReport, size: str, patch_size: int) -> None:
    """Refuse a checkpoint whose size or patch size differs from the model it should fill."""
    if (report.size, report.patch_size) != (size, patch_size):
        raise CheckpointError(
            f"checkpoint is ConvNeXt V2 {report.size} with patch size {report.patch_size}, but the model is "
            f"{size} with patch size {patch_size}: build the model as {report.size}/{report.patch_size} or "
            "choose a matching checkpoint"
        )


def export_reference_layout(model: MPMAE) -> dict:
    """Our MP-MAE as a sparse-layout reference state dict (for round-trip tests and interoperability)."""
    enc = model.encoder
    sd = enc.state_dict()
    out: dict[str, Tensor] = {}
    row = lambda t: t.reshape(1, -1)  # noqa: E731
    out["encoder.initial_conv.0.kernel"] = _conv_kernel_to_me(sd["initial_conv.0.weight"])
    out["encoder.initial_conv.0.bias"] = row(sd["initial_conv.0.bias"])
    out["encoder.stem.0.kernel"] = _dw_kernel_to_me(sd["stem.0.weight"])
    out["encoder.stem.0.bias"] = row(sd["stem.0.bias"])
    for name in ("initial_conv.1", "stem.1") + tuple(f"downsample_layers.{i}.0" for i in range(3)):
        for p in ("weight", "bias"):
            out[f"encoder.{name}.ln.{p}"] = sd[f"{name}.{p}"]
    for i in range(3):
        out[f"encoder.downsample_layers.{i}.1.kernel"] = _conv_kernel_to_me(sd[f"downsample_layers.{i}.1.weight"])
        out[f"encoder.downsample_layers.{i}.1.bias"] = row(sd[f"downsample_layers.{i}.1.bias"])
    for i, depth in enumerate(enc.depths):
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            out[f"encoder.{pre}dwconv.kernel"] = _dw_kernel_to_me(sd[pre + "dwconv.weight"])
            out[f"encoder.{pre}dwconv.bias"] = row(sd[pre + "dwconv.bias"])
            for p in ("weight", "bias"):
                out[f"encoder.{pre}norm.ln.{p}"] = sd[f"{pre}norm.{p}"]
                out[f"encoder.{pre}pwconv1.linear.{p}"] = sd[f"{pre}pwconv1.{p}"]
                out[f"encoder.{pre}pwconv2.linear.{p}"] = sd[f"{pre}pwconv2.{p}"]
            for p in ("gamma", "beta"):
                out[f"encoder.{pre}grn.{p}"] = row(sd[f"{pre}grn.{p}"])
    msd = model.state_dict()
    out["proj.weight"], out["proj.bias"], out["mask_token"] = msd["proj.weight"], msd["proj.bias"], msd["mask_token"]
    for t in model.tasks:
        for k, v in model.decoders[t].state_dict().items():
            out[f"decoder_dict.{t}.{k}"] = v
        out[f"pred_dict.{t}.weight"] = msd[f"heads.{t}.pred.weight"]
        out[f"pred_dict.{t}.bias"] = msd[f"heads.{t}.pred.bias"]
    image_tasks = [t for t in model.tasks if not model.specs[t].is_pixel]
    if image_tasks:
        out["layer_norm_tmp.weight"] = msd[f"heads.{image_tasks[0]}.norm.weight"]
        out["layer_norm_tmp.bias"] = msd[f"heads.{image_tasks[0]}.norm.bias"]
    if model.weighting.log_vars is not None:
        ref_order = [t for t in registry.REFERENCE_TASK_ORDER if t in model.tasks]
        lv = dict(zip(model.tasks, model.weighting.log_vars.detach()))
        out["loss_fn.log_vars"] = torch.stack([lv[t] for t in ref_order])
    return out


def import_to_file(checkpoint, out, convention: str = "reference_dense", encoder_only: bool = False) -> tuple:
    """Import a reference checkpoint and write it in our format: (the import report, the model)."""
    from mpmae_core.runtime.files import check_output

    check_output(out, [checkpoint], "checkpoint", (".pt", ".pth"), "a PyTorch checkpoint")
    imported = import_reference_checkpoint(checkpoint)
    if imported.report.tasks and not encoder_only:
        model = imported.build_mpmae(convention)
    else:
        model = imported.build_encoder(convention)
    save_checkpoint(out, model, {"imported_from": str(checkpoint), "import_report": imported.report.summary()})
    return imported.report.summary(), model
