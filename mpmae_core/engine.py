"""MP-MAE pretraining loop: one file, read top to bottom.

- ``param_groups`` / ``lr_at``: AdamW groups (no weight decay on norms, biases, GRN, uncertainty
  weights, mask token) and the per-iteration linear warmup + half-cycle cosine schedule.
- ``TrainConfig``: everything a run depends on; stored in every checkpoint.
- ``Trainer``: builds data, model and optimizer, trains with gradient accumulation, bf16 autocast
  and channels_last on CUDA (fp32 on CPU), optional torch.compile, DDP when launched by torchrun,
  stops cleanly on a non-finite loss, writes atomic checkpoints (last k kept) and resumes exactly:
  model, optimizer, torch RNG states, epoch and position in the epoch. Masks and crops derive from
  (seed, epoch, index), so the same batches replay on any number of processes; bf16 autocast
  needs no gradient scaler, so there is none to save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from mpmae_core import registry
from mpmae_core.checkpoints import FORMAT, FORMAT_VERSION, load_checkpoint
from mpmae_core.models.mpmae import MPMAE, build_mpmae
from mpmae_core.runtime.io.files import atomic_output


class NonFiniteLossError(RuntimeError):
    """Training stopped before an optimizer step because a loss was NaN or infinite."""


# ------------------------------------------------------------------------------------------
# Optimizer groups and schedule (pure)
# ------------------------------------------------------------------------------------------

def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Norm weights, biases, GRN, the uncertainty weights and the mask token take no weight decay."""
    return param.ndim <= 1 or ".grn." in name or name.endswith("log_vars") or name == "mask_token"


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.removeprefix("module.").removeprefix("_orig_mod.")
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step``: linear warmup, then half-cycle cosine to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    data: str = ""
    output_dir: str = "runs/pretrain"
    size: str = "atto"
    patch_size: int = 16
    img_size: int = 112
    tasks: str = "all_mod"
    s2_bands: tuple = registry.S2_MMEARTH_BANDS
    share_decoder: bool = False
    loss_weighting: str = "uncertainty"
    mask_ratio: float = 0.6
    norm_pix_loss: bool = True
    epochs: int = 200
    warmup_epochs: float = 40
    batch_size: int = 64  # per process and per accumulation step
    accum_steps: int = 1
    blr: float = 1.5e-4  # lr = blr * effective batch / 256
    lr: Optional[float] = None  # absolute lr, overrides blr
    min_lr: float = 0.0
    weight_decay: float = 0.05
    seed: int = 0
    workers: int = 4
    max_steps: Optional[int] = None  # stop after this many optimizer steps (smoke runs)
    compile: bool = False  # torch.compile (CUDA)
    amp: bool = True  # bf16 autocast on CUDA; CPU always fp32
    channels_last: bool = True  # CUDA
    log_every: int = 10  # optimizer steps
    checkpoint_every: int = 0  # optimizer steps; 0 = at the end of each epoch only
    keep_last: int = 3
    preview_every: int = 1  # epochs; 0 = never
    device: str = "auto"
    resume: bool = True

    def effective_batch(self, world_size: int) -> int:
        return self.batch_size * self.accum_steps * world_size

    def base_lr(self, world_size: int) -> float:
        return self.lr if self.lr is not None else self.blr * self.effective_batch(world_size) / 256

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["s2_bands"] = list(self.s2_bands)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        d = dict(d)
        if "s2_bands" in d:
            d["s2_bands"] = tuple(d["s2_bands"])
        return cls(**d)


# ------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    """DDP when launched by torchrun (RANK / WORLD_SIZE set): NCCL on GPU, gloo on CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(d.local_rank)
    return d


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------

_CKPT = re.compile(r"checkpoint-(\d+)\.pt$")


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in Path(output_dir).glob("checkpoint-*.pt") if (m := _CKPT.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def checkpoint_step(path: Path) -> int:
    m = _CKPT.search(Path(path).name)
    return int(m.group(1)) if m else 0


def resume_note(output_dir) -> str:
    """Where a re-run of the same command resumes, for a message after Ctrl-C."""
    ckpt = latest_checkpoint(Path(output_dir))
    if ckpt is None:
        return f"no checkpoint in '{output_dir}' yet: re-running the same command starts from the beginning"
    return (f"re-run the same command to resume from {ckpt.name} (optimizer step {checkpoint_step(ckpt)}) in "
            f"'{output_dir}'; steps after it are redone")


def describe_model_config(cfg: dict) -> str:
    """'atto, patch 16, tasks sentinel2, lat' from a model config (ours: MP-MAE or encoder)."""
    from mpmae_core.models.convnextv2 import size_from_dims

    enc = cfg.get("encoder", cfg)
    try:
        size = size_from_dims(tuple(enc["dims"])) or "unknown size"
    except (KeyError, TypeError, ValueError):
        size = "unknown size"
    tasks = cfg.get("tasks")
    return f"{size}, patch {enc.get('patch_size', '?')}" + (f", tasks {', '.join(tasks)}" if tasks else "")


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------

@dataclass
class StepLog:
    step: int
    epoch: int
    lr: float
    loss: float
    task_losses: dict
    task_weights: dict
    images_per_s: float


@dataclass
class TrainResult:
    steps: int
    epochs_done: int
    output_dir: Path
    last_checkpoint: Optional[Path]
    history: list = field(default_factory=list)


class Trainer:
    def __init__(self, cfg: TrainConfig, dataset=None, model: Optional[MPMAE] = None,
                 on_log: Optional[Callable[[StepLog], None]] = None,
                 on_step: Optional[Callable[["Trainer"], None]] = None,
                 on_epoch_end: Optional[Callable[["Trainer"], None]] = None):
        self.cfg = cfg
        if cfg.device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            device = cfg.device
        self.dist = init_distributed(torch.device(device).type)
        self.device = torch.device(device, self.dist.local_rank) if device == "cuda" else torch.device(device)
        self.cuda = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)  # model initialisation: identical on every rank
        self.dataset = dataset if dataset is not None else self._dataset()
        self.model = (model or build_mpmae(cfg.size, cfg.tasks, cfg.patch_size, cfg.s2_bands,
                                           share_decoder=cfg.share_decoder, mask_ratio=cfg.mask_ratio,
                                           norm_pix_loss=cfg.norm_pix_loss,
                                           loss_weighting=cfg.loss_weighting)).to(self.device)
        if self.cuda and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        from mpmae_core.data.loader import make_loader

        self.loader = make_loader(self.dataset, cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
        self.steps_per_epoch = self.loader.sampler.batches_per_epoch // cfg.accum_steps
        if self.steps_per_epoch == 0:
            raise ValueError(f"an epoch has {self.loader.sampler.batches_per_epoch} batches, fewer than "
                             f"accum_steps={cfg.accum_steps}: lower the batch size or the accumulation")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.warmup_steps = int(round(self.steps_per_epoch * cfg.warmup_epochs))
        self.lr = cfg.base_lr(self.dist.world_size)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=self.lr, betas=(0.9, 0.95))
        self.ddp = None
        if self.dist.world_size > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.dist.local_rank] if self.cuda else None)
        self.forward = self.ddp or self.model
        if cfg.compile and self.cuda:
            self.forward = torch.compile(self.forward)
        self.amp_dtype = torch.bfloat16 if (self.cuda and cfg.amp) else None
        self.out = Path(cfg.output_dir)
        self.on_log, self.on_step, self.on_epoch_end = on_log, on_step, on_epoch_end
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def _dataset(self):
        from mpmae_core.data.mmearth import MMEarthDataset

        cfg = self.cfg
        return MMEarthDataset(cfg.data, split="train", tasks=cfg.tasks, crop=cfg.img_size, s2_bands=cfg.s2_bands,
                              seed=cfg.seed, mask_ratio=cfg.mask_ratio, patch_size=cfg.patch_size)

    # -- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "mpmae",
            "config": self.model.config(), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "train_config": self.cfg.to_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            # how the inputs were normalised: the export writes it into the model's metadata
            "normalisation": getattr(self.dataset, "s2_normalisation", dict)(),
            # masks and crops derive from (seed, epoch, index); the torch RNG still drives drop_path
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.cuda else []},
        }

    def save(self) -> Optional[Path]:
        if not self.dist.main:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"checkpoint-{self.step:08d}.pt"
        with atomic_output(path) as tmp:
            torch.save(self.state(), tmp)
        for old in list_checkpoints(self.out)[:-self.cfg.keep_last]:
            old.unlink()
        return path

    def load(self, path: Path) -> None:
        obj = load_checkpoint(path)  # checks the format and its version
        if obj.get("kind") != "mpmae" or obj.get("config") != self.model.config():
            have = describe_model_config(obj.get("config") or {})
            want = describe_model_config(self.model.config())
            raise ValueError(
                f"the run folder '{self.out}' holds a run of another model ({have}; {Path(path).name}), but this "
                f"command asks for {want}. To continue that run, repeat its settings (they are in "
                f"{self.out / 'train_config.json'}); to start a new run, give another --output-dir")
        self.model.load_state_dict(obj["model"])
        self.optimizer.load_state_dict(obj["optimizer"])
        self.step, self.epoch, self.batch_in_epoch = obj["step"], obj["epoch"], obj["batch_in_epoch"]
        rng = obj.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if self.cuda and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])

    # -- training ---------------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        out = {}
        for k, v in batch.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, non_blocking=True)
                if self.cuda and self.cfg.channels_last and v.ndim == 4 and v.is_floating_point():
                    v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def _check_finite(self, loss: torch.Tensor, task_losses: dict) -> None:
        if torch.isfinite(loss).item():
            return
        bad = [t for t, v in task_losses.items() if not torch.isfinite(v).item()]
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch}); "
            f"tasks with non-finite loss: {', '.join(bad) or 'none (the weighting)'}. No update was applied and "
            f"the last checkpoint is intact. Lower the learning rate (now {self.lr:g}) or check the data "
            "(python -m mpmae_core.data describe ...)"
        )

    def train(self) -> TrainResult:
        cfg = self.cfg
        if cfg.resume and (ckpt := latest_checkpoint(self.out)) is not None:
            self.load(ckpt)
        history: list[StepLog] = []
        last = None
        self.model.train()
        t_log, seen = time.perf_counter(), 0
        while self.epoch < cfg.epochs:
            sampler = self.loader.sampler
            sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            accum = 0
            for batch in self.loader:
                batch = self._to_device(batch)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                    out = self.forward(batch, batch["mask"])
                self._check_finite(out.loss, out.task_losses)
                accum += 1
                sync = accum == cfg.accum_steps
                ctx = self.ddp.no_sync() if (self.ddp is not None and not sync) else contextlib.nullcontext()
                with ctx:
                    (out.loss / cfg.accum_steps).backward()
                seen += batch["sentinel2"].shape[0]
                if not sync:
                    continue
                accum = 0
                lr = lr_at(self.step, self.total_steps, self.warmup_steps, self.lr, cfg.min_lr)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                self.batch_in_epoch += cfg.accum_steps
                if self.step % cfg.log_every == 0 or self.step == 1:
                    now = time.perf_counter()
                    log = StepLog(self.step, self.epoch, lr, float(out.loss.detach()),
                                  {t: float(v.detach()) for t, v in out.task_losses.items()},
                                  {t: float(v) for t, v in out.task_weights.items()},
                                  seen * self.dist.world_size / max(now - t_log, 1e-9))
                    t_log, seen = now, 0
                    history.append(log)
                    if self.on_log and self.dist.main:
                        self.on_log(log)
                if self.on_step and self.dist.main:
                    self.on_step(self)
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    last = self.save() or last
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
                if self.batch_in_epoch >= self.steps_per_epoch * cfg.accum_steps:
                    break
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                if self.batch_in_epoch >= self.steps_per_epoch * cfg.accum_steps:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                last = self.save() or last
                break
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            last = self.save() or last
            if self.on_epoch_end and self.dist.main:
                self.on_epoch_end(self)
        return TrainResult(self.step, self.epoch, self.out, last, history)
