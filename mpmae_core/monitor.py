"""What a person watches during pretraining: CSV and TensorBoard metrics, and preview pictures.

``MetricsWriter`` appends one row per logged step (loss, lr, images/s, every task's loss and
uncertainty weight) to ``metrics.csv`` and, when TensorBoard is installed, to event files.
``save_preview`` draws, for a few samples, the input (RGB), the mask, and the reconstruction or
prediction of every pixel task, into one PNG.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from mpmae_core import registry
from mpmae_core.models.convnextv2 import upsample_mask
from mpmae_core.runtime.io.files import atomic_output


def rows_up_to(lines: list[str], step: int) -> list[str]:
    """The header and the rows of a metrics.csv whose step is at most ``step`` (a resumed run redoes
    the steps after its checkpoint; their old rows would appear twice)."""
    if not lines:
        return []
    kept = [lines[0]]
    for line in lines[1:]:
        head = line.split(",", 1)[0].strip()
        if head.isdigit() and int(head) <= step:
            kept.append(line)
    return kept


class MetricsWriter:
    def __init__(self, output_dir: Path, tasks: tuple[str, ...], resume_step: Optional[int] = None):
        self.path = Path(output_dir) / "metrics.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns = ["step", "epoch", "lr", "loss", "images_per_s"] + [f"loss_{t}" for t in tasks] + \
                       [f"weight_{t}" for t in tasks]
        if resume_step is not None and self.path.exists():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = rows_up_to(lines, resume_step)
            if kept != lines:
                with atomic_output(self.path) as tmp:
                    tmp.write_text("".join(kept))
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="")
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(self.columns)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            pass

    def write(self, log) -> None:
        row = [log.step, log.epoch, f"{log.lr:.6g}", f"{log.loss:.6g}", f"{log.images_per_s:.1f}"]
        row += [f"{log.task_losses[c[5:]]:.6g}" for c in self.columns if c.startswith("loss_")]
        row += [f"{log.task_weights[c[7:]]:.6g}" for c in self.columns if c.startswith("weight_")]
        self._csv.writerow(row)
        self._fh.flush()
        if self._tb is not None:
            self._tb.add_scalar("loss/total", log.loss, log.step)
            self._tb.add_scalar("lr", log.lr, log.step)
            self._tb.add_scalar("images_per_s", log.images_per_s, log.step)
            for t, v in log.task_losses.items():
                self._tb.add_scalar(f"loss/{t}", v, log.step)
            for t, v in log.task_weights.items():
                self._tb.add_scalar(f"weight/{t}", v, log.step)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()


def _rgb(img: np.ndarray, bands: tuple[str, ...], stretch: Optional[tuple] = None) -> Optional[np.ndarray]:
    """An RGB picture from normalised S2 (C, H, W); stretched by its own 2-98 % range unless
    ``stretch`` (lo, hi) is given. None without RGB bands."""
    if not all(b in bands for b in registry.S2_RGB_DISPLAY):
        return None
    rgb = np.stack([img[bands.index(b)] for b in registry.S2_RGB_DISPLAY], axis=-1)
    rgb = np.nan_to_num(rgb, nan=0.0)
    lo, hi = stretch if stretch is not None else (np.percentile(rgb, 2), np.percentile(rgb, 98))
    return np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1)


def reconstruction(model, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The S2 image as the model sees it: visible cells from the input, hidden cells predicted.

    With norm_pix_loss the model predicts each patch normalised by its own mean and std, so the
    prediction is mapped back with the target patch's statistics (as MAE visualisations do).
    """
    from mpmae_core.models.losses import patchify, unpatchify

    p = model.patch_size
    h, w = mask.shape[-2:]
    t = patchify(torch.nan_to_num(target.float()), p)
    pr = pred.float()
    if model.norm_pix_loss:
        mean = t.mean(dim=-1, keepdim=True)
        std = (t.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        pr = pr * std + mean
    hidden = mask.flatten(1).unsqueeze(-1)
    return unpatchify(torch.where(hidden, pr, t), p, h, w)


@torch.no_grad()
def save_preview(model, batch: dict, path: Path, n: int = 4) -> Path:
    """Input, mask and per-task predictions for ``n`` samples of ``batch``, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sub = {k: (v[:n].to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    out = model(sub, sub.get("mask"))
    images = model.prediction_images(out)
    model.train(was_training)
    p = model.patch_size
    mask = upsample_mask(out.mask.unsqueeze(1).float(), p)[:, 0].cpu().numpy()
    bands = model.input_bands
    pixel_tasks = [t for t in model.tasks if model.specs[t].is_pixel]
    cols = 2 + len(pixel_tasks)
    rows = min(n, sub["sentinel2"].shape[0])
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    s2 = sub["sentinel2"].float().cpu().numpy()
    recon = reconstruction(model, out.predictions["sentinel2"], sub["sentinel2"], out.mask).cpu().numpy()
    for r in range(rows):
        rgb = _rgb(s2[r], bands)
        stretch = None
        if rgb is not None:
            stack = np.nan_to_num(np.stack([s2[r][bands.index(b)] for b in registry.S2_RGB_DISPLAY]))
            stretch = (np.percentile(stack, 2), np.percentile(stack, 98))
        axes[r, 0].imshow(rgb if rgb is not None else np.nan_to_num(s2[r, 0]), cmap=None if rgb is not None else "gray")
        axes[r, 1].imshow(rgb * (1 - mask[r][..., None]) if rgb is not None else mask[r], cmap="gray")
        for c, task in enumerate(pixel_tasks, start=2):
            pred = images[task][r].float().cpu().numpy()
            spec = model.specs[task]
            if spec.is_classification:
                axes[r, c].imshow(pred.argmax(0), cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
            elif task == "sentinel2":
                shown = _rgb(recon[r], bands, stretch)
                axes[r, c].imshow(shown if shown is not None else recon[r][0], cmap=None if shown is not None else "gray")
            else:
                axes[r, c].imshow(pred[0], cmap="viridis")
        if r == 0:
            titles = ["input (RGB)", "visible to encoder"] + [
                "reconstruction" if t == "sentinel2" else f"pred: {t}" for t in pixel_tasks]
            for c, title in enumerate(titles):
                axes[0, c].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return path
