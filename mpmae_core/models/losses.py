"""MP-MAE losses: nodata-aware, one small function per kind, plus loss weighting.

Conventions for targets (set by the data pipeline):
- float targets (pixel (N, C, H, W) or image (N, C)) mark invalid entries with NaN;
- class targets (pixel (N, H, W) or image (N,)) are int64 labels with -1 for invalid.
Invalid entries are excluded from every loss (never regressed to zero, unlike the reference).

Each loss returns ``(loss, count)``: ``count`` (a tensor: no host sync in the training step) is
how many target elements entered it. When it is zero the loss is an exact zero that is still
connected to the prediction (so every parameter gets a gradient, which DDP requires), and the
weighting leaves the task out.

Patch layout (as FCMAE/MMEarth): a pixel head predicts, for every cell of the (h, w) grid,
p*p*C values ordered (row-in-patch, column-in-patch, channel), channel fastest.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def patchify(imgs: Tensor, p: int) -> Tensor:
    """(N, C, H, W) -> (N, L, p*p*C) with L = (H/p)(W/p), channel fastest within a patch."""
    n, c, hh, ww = imgs.shape
    h, w = hh // p, ww // p
    x = imgs.reshape(n, c, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, p * p * c)


def unpatchify(x: Tensor, p: int, h: int, w: int) -> Tensor:
    """(N, L, p*p*C) -> (N, C, h*p, w*p); the inverse of :func:`patchify`."""
    n, length, d = x.shape
    c = d // (p * p)
    x = x.reshape(n, h, w, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, h * p, w * p)


def pixel_mse_loss(pred: Tensor, target: Tensor, mask: Tensor, p: int, norm_pix: bool = False,
                   eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """MSE on hidden patches: mean over each patch's valid elements, then over hidden patches.

    pred (N, L, p*p*C); target (N, C, H, W) with NaN = invalid; mask (N, L) bool, True = hidden.
    ``norm_pix`` normalises each target patch by its own mean and (unbiased) variance over its
    valid elements, as FCMAE's norm_pix_loss. Returns (loss, number of target elements used).
    """
    t = patchify(target, p)
    valid = ~torch.isnan(t)
    v = valid.to(pred.dtype)
    t = torch.where(valid, t, torch.zeros((), dtype=t.dtype, device=t.device))
    n = v.sum(dim=-1)  # valid elements per patch
    if norm_pix:
        n1 = n.clamp(min=1).unsqueeze(-1)
        mean = t.sum(dim=-1, keepdim=True) / n1
        var = (((t - mean) * v) ** 2).sum(dim=-1, keepdim=True) / (n1 - 1).clamp(min=1)
        t = (t - mean) / (var + eps).sqrt()
    per_patch = ((pred - t) ** 2 * v).sum(dim=-1) / n.clamp(min=1)  # (N, L)
    use = (mask & (n > 0)).to(pred.dtype)
    loss = (per_patch * use).sum() / use.sum().clamp(min=1)
    return loss, (n * use).sum()


def pixel_ce_loss(pred: Tensor, target: Tensor, mask: Tensor, p: int, num_classes: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the valid pixels of hidden patches (mean over those pixels).

    pred (N, L, p*p*K); target (N, H, W) int64 with -1 = invalid; mask (N, L) bool, True = hidden.
    """
    t = patchify(target.unsqueeze(1), p)  # (N, L, p*p)
    t = torch.where(mask.unsqueeze(-1) & (t >= 0), t, torch.full((), -1, dtype=t.dtype, device=t.device))
    count = (t >= 0).sum()
    total = F.cross_entropy(pred.reshape(-1, num_classes), t.reshape(-1), ignore_index=-1, reduction="sum")
    return total / count.clamp(min=1), count


def image_mse_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """MSE over the valid (non-NaN) entries of an image-level target (N, C)."""
    valid = ~torch.isnan(target)
    t = torch.where(valid, target, torch.zeros((), dtype=target.dtype, device=target.device))
    err = torch.where(valid, (pred - t) ** 2, torch.zeros((), dtype=pred.dtype, device=pred.device))
    count = valid.sum()
    return err.sum() / count.clamp(min=1), count


def image_ce_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy over samples with a valid label; pred (N, K), target (N,) int64, -1 = invalid."""
    count = (target >= 0).sum()
    total = F.cross_entropy(pred, target, ignore_index=-1, reduction="sum")
    return total / count.clamp(min=1), count


class LossWeighting(nn.Module):
    """Combine task losses: "equal" (sum) or "uncertainty" (Kendall et al., as MMEarth implements it).

    Uncertainty: L = sum_i exp(-s_i) * L_i + s_i over the tasks that had valid targets, one
    learnable s_i per task initialised to 0. ``log_vars`` takes no weight decay (see the engine).
    """

    MODES = ("equal", "uncertainty")

    def __init__(self, tasks: tuple[str, ...], mode: str = "uncertainty"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"loss weighting must be one of {self.MODES}, got {mode!r}")
        self.tasks, self.mode = tuple(tasks), mode
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if mode == "uncertainty" else None

    def forward(self, losses: Mapping[str, Tensor], counts: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        total = None
        weights: dict[str, Tensor] = {}
        for i, task in enumerate(self.tasks):
            loss = losses[task]
            if self.log_vars is None:
                w = torch.ones((), dtype=loss.dtype, device=loss.device)
                term = loss  # exactly 0 when the task had no valid targets
            else:
                s = self.log_vars[i]
                w = torch.exp(-s)
                # A task without valid targets contributes an exact, connected zero (no s_i term).
                term = (w * loss + s) * (counts[task] > 0).to(loss.dtype)
            weights[task] = w.detach()
            total = term if total is None else total + term
        return total, weights
