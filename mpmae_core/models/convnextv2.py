"""ConvNeXt V2 encoder with the MMEarth stem, and sparse masked encoding in plain dense PyTorch.

Read top to bottom: layers (LayerNorm2d, GRN, DropPath), the block, the encoder, the size table.

**Masked (sparse) encoding.** MMEarth pretrains with a submanifold sparse network
(MinkowskiEngine): hidden cells neither contribute to nor receive any computation. Here the same
semantics run on dense tensors: the input is zeroed in hidden cells and the keep-mask is
re-applied after every operation whose output at a hidden position could leak into a visible one
(after the stem, after every downsampler, inside each block before GRN and on the residual
branch). Per-position operations (LayerNorm, Linear, GELU) need no mask; GRN's statistics are
taken per sample over visible positions only (hidden positions are exactly zero when they are
taken). When every sample keeps the same number of cells (MP-MAE's random masks do), the
pointwise part of each block runs on the gathered visible positions only, like the sparse
network, which saves most of the arithmetic. Masks are aligned with the final grid, so every stride-2 window is wholly visible or
wholly hidden. Consequences, tested in tests/test_models.py: the encoder output at visible cells
does not depend on the input inside hidden cells, hidden cells output exactly zero, and every
sample is independent of the rest of its batch (the reference's sparse GRN pools over the whole
batch; this one does not).

**Border conventions.**
- ``"sparse"`` (default; our pretraining): the convention of the reference's sparse model with
  every position active: the initial 3x3 conv keeps the size (112 -> 112), GRN eps 1e-6. Any
  H, W that are multiples of the patch size give an (H/p, W/p) map.
- ``"reference_dense"``: the reference's dense model (its fine-tuning and released inference
  model): initial conv unpadded (112 -> 110), stem padded by kernel // 2, GRN eps 1e-4, so
  imported checkpoints reproduce the reference outputs to float precision. Its map is
  (floor((H - 2 + 2 * (k // 2)) / k) / 8 ...): 7x7 for 112/16, but 6x6 for 56/8, as in the reference.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mpmae_core import registry

# The sizes, patch sizes and border conventions live in the registry (one place for every CLI).
ENCODER_SIZES = registry.ENCODER_SIZES
CONVENTIONS = registry.CONVENTIONS
GRN_EPS = {"sparse": 1e-6, "reference_dense": 1e-4}
PATCH_SIZES = registry.PATCH_SIZES


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization on channels-last input (N, H, W, C), per sample.

    ``keep`` (N, H, W, 1) restricts the statistics to visible positions (hidden ones are zeroed
    first, so they contribute nothing to the L2 norm).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor, keep: Optional[Tensor] = None) -> Tensor:
        if keep is not None:
            x = x * keep
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return torch.addcmul(x + self.beta, self.gamma, x * nx)


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample (scaled by the keep probability)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """ConvNeXt V2 block: dw 7x7 -> LN -> Linear(d, 4d) -> GELU -> GRN -> Linear(4d, d) -> residual."""

    def __init__(self, dim: int, drop_path: float = 0.0, grn_eps: float = 1e-6):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim, eps=grn_eps)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, keep: Optional[Tensor] = None, visible: Optional[Tensor] = None) -> Tensor:
        """x (N, C, H, W), zero at hidden positions when a mask is given.

        ``visible`` (N, V) indexes the visible positions of the flattened map when every sample has
        the same number of them: the pointwise part of the block (LayerNorm, MLP, GRN) then runs on
        those V tokens only, as the sparse network does, and the result is scattered back (hidden
        positions stay exactly zero). Otherwise ``keep`` (N, 1, H, W) masks the dense computation.
        """
        if visible is not None:
            n, c, h, w = x.shape
            index = visible.unsqueeze(1).expand(n, c, visible.shape[1])
            t = self.dwconv(x).flatten(2).gather(2, index).transpose(1, 2)  # (N, V, C)
            t = self.act(self.pwconv1(self.norm(t)))
            t = self.grn(t.unsqueeze(2)).squeeze(2)  # statistics over the V visible tokens
            t = self.drop_path(self.pwconv2(t))
            return x.flatten(2).scatter_add(2, index, t.transpose(1, 2)).view(n, c, h, w)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.act(self.pwconv1(self.norm(y)))
        y = self.grn(y, None if keep is None else keep.permute(0, 2, 3, 1))
        y = self.pwconv2(y).permute(0, 3, 1, 2)
        if keep is not None:
            y = y * keep
        return x + self.drop_path(y)


def upsample_mask(mask: Tensor, scale: int) -> Tensor:
    """Nearest upsampling of an (N, 1, h, w) mask by an integer factor (a view-and-copy, no interpolation)."""
    if scale == 1:
        return mask
    n, c, h, w = mask.shape
    return mask[:, :, :, None, :, None].expand(n, c, h, scale, w, scale).reshape(n, c, h * scale, w * scale)


def visible_positions(keep: Tensor, count: int) -> Tensor:
    """Flat indices (N, count) of the visible positions of an (N, 1, H, W) keep-mask, in raster order.

    Every sample must have exactly ``count`` visible positions (MP-MAE's masks do).
    """
    flat = keep.flatten(1)
    # stable sort: ones (visible) first, each group in raster order
    return flat.argsort(dim=1, descending=True, stable=True)[:, :count]


class ConvNeXtV2Encoder(nn.Module):
    """ConvNeXt V2 with the MMEarth stem: 3x3 stride-1 initial conv, stem of kernel = stride = p / 8.

    ``forward(x, mask=None)``: x (N, C, H, W) with H, W multiples of ``patch_size``; mask a bool
    tensor (N, H/p, W/p), True = hidden. Returns the final feature map (N, D, H/p, W/p).
    """

    def __init__(
        self,
        depths: Sequence[int],
        dims: Sequence[int],
        in_chans: int = 12,
        patch_size: int = 16,
        drop_path_rate: float = 0.0,
        convention: str = "sparse",
    ):
        super().__init__()
        if patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES} (MMEarth stem), got {patch_size}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.in_chans, self.patch_size, self.convention = in_chans, patch_size, convention
        self.grn_eps = GRN_EPS[convention]
        #: Run blocks on gathered visible tokens when all samples keep equally many cells (same
        #: result as the dense masked computation, much less arithmetic). False forces the dense path.
        self.gather_visible = True
        ref = convention == "reference_dense"
        k = patch_size // 8
        self.initial_conv = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], kernel_size=3, stride=1, padding=0 if ref else 1),
            LayerNorm2d(dims[0], eps=1e-6),
            nn.GELU(),
        )
        self.stem = nn.Sequential(
            nn.Conv2d(dims[0], dims[0], kernel_size=k, stride=k, padding=k // 2 if ref else 0, groups=dims[0]),
            LayerNorm2d(dims[0], eps=1e-6),
        )
        self.downsample_layers = nn.ModuleList(
            nn.Sequential(LayerNorm2d(dims[i], eps=1e-6), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            for i in range(3)
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for i, depth in enumerate(depths):
            self.stages.append(nn.Sequential(
                *[Block(dims[i], drop_path=rates[cur + j], grn_eps=self.grn_eps) for j in range(depth)]))
            cur += depth
        # Final norm of the pooled features (used by forward_pooled, as in the reference's dense model).
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.apply(_init_weights)

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    def config(self) -> dict:
        return {"depths": list(self.depths), "dims": list(self.dims), "in_chans": self.in_chans,
                "patch_size": self.patch_size, "convention": self.convention}

    def _check_input(self, x: Tensor, mask: Optional[Tensor]) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input (N, {self.in_chans}, H, W), got {tuple(x.shape)}")
        p = self.patch_size
        if mask is None:
            return
        if self.convention != "sparse":
            raise ValueError("masked encoding needs convention='sparse'; the reference dense model has no sparse semantics")
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"H and W must be multiples of the patch size {p}, got {tuple(x.shape[-2:])}")
        expected = (x.shape[0], x.shape[-2] // p, x.shape[-1] // p)
        if tuple(mask.shape) != expected or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {expected} (True = hidden), got "
                             f"{mask.dtype} {tuple(mask.shape)}")

    def forward(self, x: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        self._check_input(x, mask)
        if mask is None:
            x = self.stem(self.initial_conv(x))
            for i in range(4):
                if i:
                    x = self.downsample_layers[i - 1](x)
                x = self.stages[i](x)
            return x
        keep = (~mask).unsqueeze(1).to(x.dtype)  # (N, 1, h, w), 1 = visible
        counts = (~mask).flatten(1).sum(1)
        gather = self.gather_visible and bool((counts == counts[0]).all())
        x = x * upsample_mask(keep, self.patch_size)
        x = self.stem(self.initial_conv(x))
        for i in range(4):
            k = upsample_mask(keep, 8 >> i)  # stage i runs at 2**(3-i) x the final grid
            x = x * k if i == 0 else self.downsample_layers[i - 1](x) * k
            visible = visible_positions(k, int(counts[0]) * (8 >> i) ** 2) if gather else None
            for block in self.stages[i]:
                x = block(x, k, visible)
        return x

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Every stage's output map (no mask): strides p/8, p/4, p/2 and p; the last is ``forward``'s."""
        self._check_input(x, None)
        x = self.stem(self.initial_conv(x))
        maps = []
        for i in range(4):
            if i:
                x = self.downsample_layers[i - 1](x)
            x = self.stages[i](x)
            maps.append(x)
        return maps

    def forward_pooled(self, x: Tensor) -> Tensor:
        """Global average pooled, normalised features (N, D): the reference's forward_features."""
        return self.norm(self.forward(x).mean(dim=(-2, -1)))


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_encoder(size: str = "atto", in_chans: int = 12, patch_size: int = 16, *, drop_path_rate: float = 0.0,
                  convention: str = "sparse") -> ConvNeXtV2Encoder:
    """A ConvNeXt V2 encoder of a named size (atto, femto, pico, nano, tiny, base) with the MMEarth stem."""
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {', '.join(ENCODER_SIZES)}")
    depths, dims = ENCODER_SIZES[size]
    return ConvNeXtV2Encoder(depths, dims, in_chans=in_chans, patch_size=patch_size,
                             drop_path_rate=drop_path_rate, convention=convention)


def size_from_dims(dims: Sequence[int], depths: Optional[Sequence[int]] = None) -> Optional[str]:
    """The size name whose dims (and depths, if given) match, or None."""
    for name, (dp, dm) in ENCODER_SIZES.items():
        if tuple(dm) == tuple(dims) and (depths is None or tuple(dp) == tuple(depths)):
            return name
    return None
