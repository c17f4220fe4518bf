"""MP-MAE: the multi-pretext masked autoencoder of MMEarth around the ConvNeXt V2 encoder.

encoder (masked, sparse semantics) -> proj (1x1 conv to the decoder dim) -> hidden cells replaced
by a learned mask token -> one decoder per task (a ConvNeXt V2 block of dim 512; or one shared
decoder, as in the reference checkpoints) -> a pixel head (1x1 conv to p*p*C, patch prediction)
or an image head (LayerNorm, global average pool, Linear) -> nodata-aware losses -> equal or
uncertainty weighting.

Batch contract (``forward(batch)``): ``batch["sentinel2"]`` (N, C_in, H, W) is the normalised
input, NaN where invalid (it is fed as 0 there and excluded from the reconstruction loss). Each
other task's target is under its own name: pixel regression (N, C, H, W) float with NaN invalid;
pixel classes (N, H, W) int64 with -1 invalid; image regression (N, C) float with NaN invalid;
image classes (N,) int64 with -1 invalid. A task whose target is all invalid is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from mpmae_core import registry
from mpmae_core.models import losses as L
from mpmae_core.models.convnextv2 import GRN_EPS, Block, ConvNeXtV2Encoder, LayerNorm2d, _init_weights, build_encoder

#: GRN eps of the decoder blocks: the reference's decoders are its dense blocks (eps 1e-4).
DECODER_GRN_EPS = GRN_EPS["reference_dense"]


def random_mask(n: int, h: int, w: int, ratio: float, device=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Per sample, hide all but ``int(h*w*(1-ratio))`` random cells: bool (n, h, w), True = hidden."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    length = h * w
    keep = int(length * (1 - ratio))
    noise = torch.rand(n, length, device=device, generator=generator)
    ids = noise.argsort(dim=1)
    mask = torch.ones(n, length, dtype=torch.bool, device=device)
    mask.scatter_(1, ids[:, :keep], False)
    return mask.reshape(n, h, w)


class PixelHead(nn.Module):
    """1x1 conv to p*p*C values per cell: (N, D, h, w) -> (N, h*w, p*p*C)."""

    def __init__(self, dim: int, channels: int, patch_size: int):
        super().__init__()
        self.pred = nn.Conv2d(dim, patch_size * patch_size * channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(x).flatten(2).transpose(1, 2)


class ImageHead(nn.Module):
    """LayerNorm (channels) -> global average pool -> Linear: (N, D, h, w) -> (N, C)."""

    def __init__(self, dim: int, channels: int, norm: Optional[nn.Module] = None):
        super().__init__()
        self.norm = norm if norm is not None else LayerNorm2d(dim, eps=1e-6)
        self.pred = nn.Linear(dim, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.pred(self.norm(x).mean(dim=(-2, -1)))


@dataclass
class MPMAEOutput:
    loss: Tensor
    task_losses: dict[str, Tensor]
    task_weights: dict[str, Tensor]
    task_counts: dict[str, Tensor]
    predictions: dict[str, Tensor]
    mask: Tensor
    extras: dict = field(default_factory=dict)


class MPMAE(nn.Module):
    def __init__(
        self,
        encoder: ConvNeXtV2Encoder,
        tasks: Sequence[str],
        input_bands: Sequence[str] = registry.S2_MMEARTH_BANDS,
        decoder_dim: int = 512,
        decoder_depth: int = 1,
        share_decoder: bool = False,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = True,
        loss_weighting: str = "uncertainty",
    ):
        super().__init__()
        tasks = registry.resolve_tasks(list(tasks))
        if "sentinel2" not in tasks:
            raise ValueError("MP-MAE needs the 'sentinel2' reconstruction task")
        if len(input_bands) != encoder.in_chans:
            raise ValueError(f"{len(input_bands)} input bands but the encoder takes {encoder.in_chans}")
        self.encoder = encoder
        # The encoder's final norm serves pooled features (probing, fine-tuning); pretraining never
        # uses it (the reference's sparse pretraining encoder has none), so it is frozen here and
        # every trainable parameter receives a gradient, as DDP requires.
        self.encoder.norm.requires_grad_(False)
        self.tasks = tasks
        self.specs = {t: registry.task_spec(t, input_bands) for t in tasks}
        self.input_bands = tuple(input_bands)
        self.patch_size = encoder.patch_size
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder_dim, self.decoder_depth, self.share_decoder = decoder_dim, decoder_depth, share_decoder

        self.proj = nn.Conv2d(encoder.embed_dim, decoder_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))

        def make_decoder() -> nn.Sequential:
            return nn.Sequential(*[Block(decoder_dim, grn_eps=DECODER_GRN_EPS) for _ in range(decoder_depth)])

        shared = make_decoder() if share_decoder else None
        shared_norm = LayerNorm2d(decoder_dim, eps=1e-6) if share_decoder else None
        self.decoders = nn.ModuleDict({t: shared if share_decoder else make_decoder() for t in tasks})
        self.heads = nn.ModuleDict({
            t: PixelHead(decoder_dim, s.channels, self.patch_size) if s.is_pixel
            else ImageHead(decoder_dim, s.channels, norm=shared_norm)
            for t, s in self.specs.items()
        })
        self.weighting = L.LossWeighting(tasks, loss_weighting)
        for module in (self.proj, self.decoders, self.heads):
            module.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def config(self) -> dict:
        return {
            "encoder": self.encoder.config(), "tasks": list(self.tasks), "input_bands": list(self.input_bands),
            "decoder_dim": self.decoder_dim, "decoder_depth": self.decoder_depth,
            "share_decoder": self.share_decoder, "mask_ratio": self.mask_ratio,
            "norm_pix_loss": self.norm_pix_loss, "loss_weighting": self.weighting.mode,
        }

    def tokens(self, latent: Tensor, mask: Tensor) -> Tensor:
        """Decoder input: the projected latent with hidden cells replaced by the mask token."""
        x = self.proj(latent)
        return torch.lerp(x, self.mask_token.to(x.dtype).expand_as(x), mask.unsqueeze(1).to(x.dtype))

    def decode(self, latent: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Decoder and heads: raw predictions, (N, L, p*p*C) per pixel task and (N, C) per image task."""
        x = self.tokens(latent, mask)
        cache: dict[int, Tensor] = {}
        preds = {}
        for task in self.tasks:
            decoder = self.decoders[task]
            key = id(decoder)
            if key not in cache:  # a shared decoder runs once
                cache[key] = decoder(x)
            preds[task] = self.heads[task](cache[key])
        return preds

    def task_loss(self, task: str, pred: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        spec = self.specs[task]
        p = self.patch_size
        mask_l = mask.flatten(1)
        if spec.is_pixel and spec.is_classification:
            return L.pixel_ce_loss(pred, target, mask_l, p, spec.channels)
        if spec.is_pixel:
            return L.pixel_mse_loss(pred, target, mask_l, p, norm_pix=self.norm_pix_loss and task == "sentinel2")
        if spec.is_classification:
            return L.image_ce_loss(pred, target)
        return L.image_mse_loss(pred, target)

    def forward(self, batch: dict[str, Tensor], mask: Optional[Tensor] = None,
                generator: Optional[torch.Generator] = None) -> MPMAEOutput:
        absent = [t for t in self.tasks if t not in batch]
        if absent:
            raise ValueError(f"the batch has no target for task(s) {', '.join(absent)}; samples without a "
                             "modality carry NaN (values) or -1 (classes) so the loss skips them")
        s2 = batch["sentinel2"]
        n, _, hh, ww = s2.shape
        p = self.patch_size
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} is not a multiple of the patch size {p}")
        if mask is None:
            mask = random_mask(n, hh // p, ww // p, self.mask_ratio, device=s2.device, generator=generator)
        x = torch.nan_to_num(s2, nan=0.0)
        latent = self.encoder(x, mask)
        preds = self.decode(latent, mask)
        losses, counts = {}, {}
        for task in self.tasks:
            target = s2 if task == "sentinel2" else batch[task]
            losses[task], counts[task] = self.task_loss(task, preds[task], target, mask)
        total, weights = self.weighting(losses, counts)
        return MPMAEOutput(total, losses, weights, counts, preds, mask)

    def prediction_images(self, out: MPMAEOutput) -> dict[str, Tensor]:
        """Pixel-task predictions as images (N, C, H, W) (class logits for class tasks), for previews."""
        h, w = out.mask.shape[-2:]
        return {t: L.unpatchify(pr, self.patch_size, h, w) for t, pr in out.predictions.items() if self.specs[t].is_pixel}


def build_mpmae(
    size: str = "atto",
    tasks: "str | Sequence[str]" = "all_mod",
    patch_size: int = 16,
    input_bands: Optional[Sequence[str]] = None,
    *,
    decoder_dim: int = 512,
    decoder_depth: int = 1,
    share_decoder: bool = False,
    mask_ratio: float = 0.6,
    norm_pix_loss: bool = True,
    loss_weighting: str = "uncertainty",
    drop_path_rate: float = 0.0,
) -> MPMAE:
    """An MP-MAE of a named size; ``tasks`` is a target set name ("all_mod", "S2", "pix_mod",
    "img_mod", "rgb") or a list of task names. ``input_bands`` defaults to the target set's."""
    if isinstance(tasks, str) and tasks in registry.TARGET_SETS:
        target_set = registry.TARGET_SETS[tasks]
        input_bands = input_bands or target_set.input_bands
        task_names = target_set.tasks
    else:
        task_names = registry.resolve_tasks(tasks)
    input_bands = tuple(input_bands or registry.S2_MMEARTH_BANDS)
    encoder = build_encoder(size, in_chans=len(input_bands), patch_size=patch_size,
                            drop_path_rate=drop_path_rate, convention="sparse")
    return MPMAE(encoder, task_names, input_bands, decoder_dim=decoder_dim, decoder_depth=decoder_depth,
                 share_decoder=share_decoder, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                 loss_weighting=loss_weighting)
