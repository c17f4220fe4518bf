"""Checkpoints: our own format, and safe import of the reference MMEarth-train checkpoints.

Nothing here unpickles a file freely: every load uses ``torch.load(..., weights_only=True)``; the
reference's pickled ``argparse.Namespace`` (and the ``pathlib`` paths it may hold) are the only
types allowlisted, and only while reading a reference checkpoint.

The reference layouts (sparse, dense pretraining, dense fine-tuning) and their key mapping live in
``reference_layout`` (numpy), shared with the torch-free converter of ``runtime.convert``; here
the tensors are converted at the border and built into our modules.
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

import numpy as np
import torch
from torch import Tensor

from mpmae_core import registry

from mpmae_core.runtime.releases import reference_layout
from mpmae_core.models.convnextv2 import ConvNeXtV2Encoder, build_encoder, size_from_dims
from mpmae_core.models.mpmae import MPMAE
from mpmae_core.runtime.io.files import atomic_output

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
    text). Reference checkpoints are imported (``convention`` for their encoder; "auto": the one
    the runtime runs them in, ``reference_layout.runtime_convention``)."""
    path = Path(path)
    obj = safe_load(path, REFERENCE_SAFE_GLOBALS)
    if is_our_checkpoint(obj):
        obj = load_checkpoint(path)
        model = mpmae_from_config(obj["config"]) if obj["kind"] == "mpmae" else encoder_from_config(obj["config"])
        model.load_state_dict(obj["model"])
        return LoadedModel(model, "ours", obj.get("normalisation"), f"checkpoint {path} (step {obj.get('step', '?')})")
    imported = import_reference_state(*_reference_parts(obj, path))
    if convention == "auto":
        convention = reference_layout.runtime_convention(imported.report.layout, imported.report.patch_size)[0]
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


def _np(t) -> "np.ndarray":
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _conv_kernel(kernel: Tensor, k: int) -> Tensor:
    """MinkowskiEngine [k*k, in, out] -> torch (out, in, k, k) (``reference_layout.conv_kernel``)."""
    return torch.from_numpy(reference_layout.conv_kernel(_np(kernel), k))


def _dw_kernel(kernel: Tensor, k: int) -> Tensor:
    return torch.from_numpy(reference_layout.dw_kernel(_np(kernel), k))


def _conv_kernel_to_me(weight: Tensor) -> Tensor:
    return torch.from_numpy(reference_layout.conv_kernel_to_me(_np(weight)))


def _dw_kernel_to_me(weight: Tensor) -> Tensor:
    return torch.from_numpy(reference_layout.dw_kernel_to_me(_np(weight)))


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
    """Map a reference state dict (any supported layout) onto our keys, with a precise report
    (the mapping itself is ``reference_layout``'s, shared with the torch-free converter)."""
    try:
        m = reference_layout.map_reference_state({k: _np(v) for k, v in sd.items()}, args)
    except reference_layout.LayoutError as exc:
        raise CheckpointError(str(exc)) from None
    back = lambda d: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}  # noqa: E731
    report = ImportReport(m.layout, m.size, m.patch_size, m.in_chans, m.tasks, m.shared_decoder, mapped=m.mapped,
                          unexpected=m.unexpected)
    reference_enc = build_encoder(m.size, in_chans=m.in_chans, patch_size=m.patch_size)
    report.missing = sorted(k for k in reference_enc.state_dict() if k not in m.encoder_state)
    notes = list(m.notes)
    if m.layout == "sparse" and report.missing == ["norm.bias", "norm.weight"]:
        notes.append("the sparse pretraining encoder has no final norm: norm.* left at identity (weight 1, bias 0)")
    report.notes = notes
    return ImportedCheckpoint(report, back(m.encoder_state), back(m.mpmae_state), args)


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
    sparse = reference_layout.encoder_to_sparse({k: _np(v) for k, v in enc.state_dict().items()}, enc.depths,
                                                enc.patch_size)
    out: dict[str, Tensor] = {k: torch.from_numpy(v) for k, v in sparse.items()}
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


def save_reference_layout(checkpoint, out) -> Path:
    """Our MP-MAE checkpoint written as a released MMEarth-train ``checkpoint-*.pth`` (sparse
    pretraining layout, with its training arguments), for the tools that read that layout."""
    from mpmae_core.runtime.io.files import check_output

    check_output(out, [checkpoint], "checkpoint", (".pth",), "a PyTorch checkpoint")
    model = load_any(checkpoint).model
    if not isinstance(model, MPMAE):
        raise CheckpointError(f"'{checkpoint}' holds an encoder only; the released layout is an MP-MAE with "
                              "decoders: export a pretraining checkpoint")
    args = argparse.Namespace(patch_size=model.patch_size, loss_aggr="uncertainty"
                              if model.weighting.log_vars is not None else "unweighted",
                              out_modalities={t: registry.TASKS[t].channels for t in model.tasks})
    with atomic_output(out) as tmp:
        torch.save({"model": export_reference_layout(model), "args": args, "epoch": -1}, tmp)
    return Path(out)


def import_to_file(checkpoint, out, convention: str = "reference_dense", encoder_only: bool = False) -> tuple:
    """Import a reference checkpoint and write it in our format: (the import report, the model)."""
    from mpmae_core.runtime.io.files import check_output

    check_output(out, [checkpoint], "checkpoint", (".pt", ".pth"), "a PyTorch checkpoint")
    imported = import_reference_checkpoint(checkpoint)
    if imported.report.tasks and not encoder_only:
        model = imported.build_mpmae(convention)
    else:
        model = imported.build_encoder(convention)
    save_checkpoint(out, model, {"imported_from": str(checkpoint), "import_report": imported.report.summary()})
    return imported.report.summary(), model
