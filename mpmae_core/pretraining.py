"""A pretraining run as a person starts it: Trainer + progress bar + metrics + previews + summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mpmae_core.engine import TrainConfig, Trainer, TrainResult
from mpmae_core.monitor import MetricsWriter, save_preview


def _preview_batch(trainer: Trainer, n: int = 4) -> dict:
    """A fixed batch to draw: the first validation tiles if the data has a val split, else train."""
    from torch.utils.data import default_collate

    ds = trainer.dataset
    try:
        from mpmae_core.data.mmearth import MMEarthDataset

        cfg = trainer.cfg
        val = MMEarthDataset(cfg.data, split="val", tasks=cfg.tasks, crop=cfg.img_size, s2_bands=cfg.s2_bands,
                             random_crop=False, seed=cfg.seed, mask_ratio=cfg.mask_ratio, patch_size=cfg.patch_size)
        if len(val) >= 1:
            ds = val
    except Exception:  # no val split: the training tiles will do for a picture
        pass
    return default_collate([ds[(i, 0)] for i in range(min(n, len(ds)))])


def pretrain(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    from tqdm import tqdm

    out = Path(cfg.output_dir)
    trainer_holder: dict = {}
    bar = None
    metrics = None

    def on_log(log):
        metrics.write(log)
        if bar is not None:
            bar.set_postfix(loss=f"{log.loss:.4f}", img_s=f"{log.images_per_s:.0f}", lr=f"{log.lr:.2e}")

    def on_step(tr: Trainer):
        if bar is not None:
            bar.update(tr.step - bar.n)

    def on_epoch_end(tr: Trainer):
        if cfg.preview_every and (tr.epoch % cfg.preview_every == 0 or tr.epoch == cfg.epochs):
            batch = trainer_holder.setdefault("preview", _preview_batch(tr))
            save_preview(tr.model, batch, out / "previews" / f"epoch_{tr.epoch:04d}.png")

    from mpmae_core.engine import checkpoint_step, latest_checkpoint
    from mpmae_core.runtime.io.files import atomic_write_text, check_output

    check_output(out / "train_config.json", [cfg.data], "run folder")
    previous = latest_checkpoint(out)
    if previous is not None and not cfg.resume:
        raise ValueError(f"the run folder '{out}' already holds a run ({previous.name}); --no-resume would overwrite "
                         "it. Give another --output-dir for a new run, or drop --no-resume to continue this one")
    trainer = Trainer(cfg, on_log=on_log, on_step=on_step, on_epoch_end=on_epoch_end)
    main = trainer.dist.main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "train_config.json", json.dumps(cfg.to_dict(), indent=1))
        metrics = MetricsWriter(out, trainer.model.tasks,
                                resume_step=checkpoint_step(previous) if previous is not None else 0)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"[pretrain] MP-MAE {cfg.size} patch {cfg.patch_size} on {cfg.img_size} px, tasks "
              f"{', '.join(trainer.model.tasks)} ({n_params / 1e6:.2f} M parameters); {len(trainer.dataset)} "
              f"training tiles; {trainer.device}; {trainer.dist.world_size} process(es); effective batch "
              f"{cfg.effective_batch(trainer.dist.world_size)}; lr {trainer.lr:.3g}; {trainer.total_steps} steps",
              file=sys.stderr)
        total = min(trainer.total_steps, cfg.max_steps or trainer.total_steps)
        if progress:
            bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        result = trainer.train()
    finally:
        if bar is not None:
            bar.close()
        if metrics is not None:
            metrics.close()
    if main:
        hist = result.history
        if hist:
            k = max(1, len(hist) // 5)
            first = sum(h.loss for h in hist[:k]) / k
            last = sum(h.loss for h in hist[-k:]) / k
            print(f"[pretrain] loss {first:.4f} -> {last:.4f} (mean of the first and last {k} logged steps)",
                  file=sys.stderr)
            for task in hist[0].task_losses:
                a = sum(h.task_losses[task] for h in hist[:k]) / k
                b = sum(h.task_losses[task] for h in hist[-k:]) / k
                print(f"[pretrain]   {task:<18s} {a:.4f} -> {b:.4f}", file=sys.stderr)
        print(f"[pretrain] checkpoint {result.last_checkpoint}\n[pretrain] metrics {out / 'metrics.csv'}"
              f"\n[pretrain] previews {out / 'previews'}", file=sys.stderr)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result
