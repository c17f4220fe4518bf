"""Encoder and MP-MAE: shapes, parameter counts, the sparse-masking properties, reference fidelity."""

import pytest
import torch
import torch.nn.functional as F

from mpmae_core import registry
from mpmae_core.models import ENCODER_SIZES, build_encoder, build_mpmae, random_mask
from mpmae_core.models.convnextv2 import upsample_mask

torch.set_num_threads(2)

# Reference table (shared/reference/mmearth.md): encoder params, 12 bands, final norm, no head.
REFERENCE_PARAMS = {"atto": 3.39e6, "femto": 4.85e6, "pico": 8.56e6, "nano": 14.99e6, "tiny": 27.87e6, "base": 87.70e6}


@pytest.mark.parametrize("size", list(ENCODER_SIZES))
def test_parameter_count_matches_reference(size):
    n = sum(p.numel() for p in build_encoder(size, in_chans=12).parameters())
    assert abs(n / REFERENCE_PARAMS[size] - 1) < 0.005


@pytest.mark.parametrize("size", list(ENCODER_SIZES))
@pytest.mark.parametrize("patch", [8, 16])
def test_shapes_any_multiple_of_the_patch(size, patch):
    enc = build_encoder(size, in_chans=5, patch_size=patch).eval()
    h, w = 2 * patch, 3 * patch
    with torch.no_grad():
        out = enc(torch.randn(2, 5, h, w))
        masked = enc(torch.randn(2, 5, h, w), random_mask(2, 2, 3, 0.5))
    assert out.shape == masked.shape == (2, ENCODER_SIZES[size][1][-1], 2, 3)


def test_bad_inputs_are_named():
    enc = build_encoder("atto", patch_size=16)
    with pytest.raises(ValueError, match=r"expected input \(N, 12, H, W\)"):
        enc(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="multiples of the patch size 16"):
        enc(torch.randn(1, 12, 40, 32), torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool tensor of shape"):
        enc(torch.randn(1, 12, 32, 32), torch.zeros(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="patch_size must be one of"):
        build_encoder("atto", patch_size=32)
    with pytest.raises(ValueError, match="unknown encoder size"):
        build_encoder("huge")


def _hidden_pixels(mask, p, channels):
    return upsample_mask(mask.unsqueeze(1).float(), p).bool().expand(-1, channels, -1, -1)


@pytest.mark.parametrize("patch, size_px", [(16, 112), (8, 56)])
def test_hidden_input_cannot_leak_into_visible_outputs(patch, size_px):
    torch.manual_seed(0)
    enc = build_encoder("atto", patch_size=patch).eval()
    x = torch.randn(3, 12, size_px, size_px)
    mask = random_mask(3, size_px // patch, size_px // patch, 0.6)
    hidden = _hidden_pixels(mask, patch, 12)
    x2 = x.clone()
    x2[hidden] = torch.randn(int(hidden.sum())) * 100
    with torch.no_grad():
        y1, y2 = enc(x, mask), enc(x2, mask)
    visible = ~mask
    torch.testing.assert_close(y1.permute(0, 2, 3, 1)[visible], y2.permute(0, 2, 3, 1)[visible], rtol=0, atol=1e-6)
    assert y1.permute(0, 2, 3, 1)[mask].abs().max() == 0  # hidden cells are exactly empty


@pytest.mark.parametrize("patch", [16, 8])
def test_gathered_tokens_equal_the_dense_masked_computation(patch):
    torch.manual_seed(7)
    enc = build_encoder("atto", patch_size=patch).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if ".grn." in name:  # trained GRNs are far from their zero initialisation
                p.normal_(std=0.2)
    x = torch.randn(3, 12, 7 * patch, 7 * patch)
    mask = random_mask(3, 7, 7, 0.6)
    with torch.no_grad():
        gathered = enc(x, mask)
        enc.gather_visible = False
        dense = enc(x, mask)
    torch.testing.assert_close(gathered, dense, rtol=1e-5, atol=1e-5)


def test_unequal_masks_use_the_dense_path_and_do_not_leak():
    torch.manual_seed(8)
    enc = build_encoder("atto", patch_size=16).eval()
    x = torch.randn(2, 12, 64, 64)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, :2] = True  # 8 hidden cells in sample 0, 3 in sample 1
    mask[1, 3, :3] = True
    hidden = _hidden_pixels(mask, 16, 12)
    x2 = x.clone()
    x2[hidden] = 50.0
    with torch.no_grad():
        y1, y2 = enc(x, mask), enc(x2, mask)
    torch.testing.assert_close(y1, y2, rtol=0, atol=1e-6)
    assert y1.permute(0, 2, 3, 1)[mask].abs().max() == 0


def test_masked_rectangle_equals_dense_encoder_on_the_crop():
    """Sparse semantics, checked independently: a visible rectangle surrounded by hidden cells
    sees hidden cells as the image border, so it must equal the plain encoder on the crop."""
    torch.manual_seed(1)
    enc = build_encoder("atto", patch_size=16).eval()
    x = torch.randn(1, 12, 112, 112)
    mask = torch.ones(1, 7, 7, dtype=torch.bool)
    mask[:, 2:5, 1:5] = False  # a 3 x 4 cell window inside the image
    with torch.no_grad():
        masked = enc(x, mask)[:, :, 2:5, 1:5]
        crop = enc(x[:, :, 32:80, 16:80])
    torch.testing.assert_close(masked, crop, rtol=1e-5, atol=1e-5)


def test_all_visible_mask_equals_dense_forward():
    enc = build_encoder("atto", patch_size=8).eval()
    x = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(enc(x, torch.zeros(2, 7, 7, dtype=torch.bool)), enc(x), rtol=0, atol=1e-6)


def test_each_sample_is_independent_of_its_batch():
    torch.manual_seed(2)
    enc = build_encoder("atto", patch_size=16).eval()
    x = torch.randn(4, 12, 64, 64)
    mask = random_mask(4, 4, 4, 0.6)
    with torch.no_grad():
        batch = enc(x, mask)
        alone = enc(x[1:2], mask[1:2])
        others_changed = enc(torch.cat([x[:1] * 5, x[1:2], x[2:] - 3]), mask)
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(others_changed[1:2], batch[1:2], rtol=1e-5, atol=1e-5)


def _reference_dense_forward(sd, x, depths, patch):
    """The reference's dense ConvNeXt V2 written from its documented facts with torch.functional:
    unpadded initial conv, stem padded by k // 2, manual channels-first LayerNorm, GRN eps 1e-4."""

    def ln_cf(x, w, b):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return w[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + b[:, None, None]

    k = patch // 8
    x = F.conv2d(x, sd["initial_conv.0.weight"], sd["initial_conv.0.bias"])
    x = F.gelu(ln_cf(x, sd["initial_conv.1.weight"], sd["initial_conv.1.bias"]))
    x = F.conv2d(x, sd["stem.0.weight"], sd["stem.0.bias"], stride=k, padding=k // 2, groups=x.shape[1])
    x = ln_cf(x, sd["stem.1.weight"], sd["stem.1.bias"])
    for i, depth in enumerate(depths):
        if i:
            x = ln_cf(x, sd[f"downsample_layers.{i-1}.0.weight"], sd[f"downsample_layers.{i-1}.0.bias"])
            x = F.conv2d(x, sd[f"downsample_layers.{i-1}.1.weight"], sd[f"downsample_layers.{i-1}.1.bias"], stride=2)
        for j in range(depth):
            pre = f"stages.{i}.{j}."
            y = F.conv2d(x, sd[pre + "dwconv.weight"], sd[pre + "dwconv.bias"], padding=3, groups=x.shape[1])
            y = y.permute(0, 2, 3, 1)
            y = F.layer_norm(y, (y.shape[-1],), sd[pre + "norm.weight"], sd[pre + "norm.bias"], 1e-6)
            y = F.gelu(F.linear(y, sd[pre + "pwconv1.weight"], sd[pre + "pwconv1.bias"]))
            gx = torch.norm(y, p=2, dim=(1, 2), keepdim=True)
            nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-4)
            y = sd[pre + "grn.gamma"] * (y * nx) + sd[pre + "grn.beta"] + y
            y = F.linear(y, sd[pre + "pwconv2.weight"], sd[pre + "pwconv2.bias"])
            x = x + y.permute(0, 3, 1, 2)
    return x


@pytest.mark.parametrize("patch, size_px, grid", [(16, 112, 7), (8, 56, 6)])
def test_reference_dense_convention_reproduces_the_reference(patch, size_px, grid):
    torch.manual_seed(3)
    enc = build_encoder("atto", patch_size=patch, convention="reference_dense").eval()
    with torch.no_grad():  # non-trivial GRN and norms, as trained weights have
        for name, p in enc.named_parameters():
            if "grn" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    sd = enc.state_dict()
    x = torch.randn(2, 12, size_px, size_px)
    with torch.no_grad():
        ours = enc(x)
        ref = _reference_dense_forward(sd, x, enc.depths, patch)
    assert ours.shape[-2:] == (grid, grid)  # the reference's 56/8 dense map is 6x6
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_random_mask_keeps_the_reference_count_per_sample():
    g = torch.Generator().manual_seed(0)
    mask = random_mask(64, 7, 7, 0.6, generator=g)
    assert mask.dtype == torch.bool and mask.shape == (64, 7, 7)
    assert (mask.flatten(1).sum(1) == 49 - int(49 * 0.4)).all()  # 30 hidden, 19 kept
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 60  # masks differ between samples
    again = random_mask(64, 7, 7, 0.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def _batch(n=2, hw=112, tasks=registry.TASKS):
    b = {"sentinel2": torch.randn(n, 12, hw, hw)}
    for t in tasks:
        spec = registry.TASKS[t]
        if t == "sentinel2":
            continue
        if spec.is_pixel:
            b[t] = torch.randint(-1, spec.channels, (n, hw, hw)) if spec.is_classification else torch.randn(n, spec.channels, hw, hw)
        else:
            b[t] = torch.randint(0, spec.channels, (n,)) if spec.is_classification else torch.randn(n, spec.channels)
    return b


@pytest.mark.parametrize("share", [False, True])
def test_mpmae_forward_backward_all_tasks(share):
    torch.manual_seed(4)
    model = build_mpmae("atto", "all_mod", share_decoder=share)
    out = model(_batch())
    assert set(out.task_losses) == set(registry.TASKS)
    assert torch.isfinite(out.loss)
    expected = sum(torch.exp(-model.weighting.log_vars[i]) * out.task_losses[t] + model.weighting.log_vars[i]
                   for i, t in enumerate(model.tasks))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    imgs = model.prediction_images(out)
    assert imgs["sentinel2"].shape == (2, 12, 112, 112) and imgs["esa_worldcover"].shape == (2, 11, 112, 112)
    assert out.predictions["eco_region"].shape == (2, 846)


def test_shared_decoder_is_one_module():
    model = build_mpmae("atto", "all_mod", share_decoder=True)
    assert len({id(d) for d in model.decoders.values()}) == 1
    assert len({id(model.heads[t].norm) for t in registry.IMAGE_TASKS}) == 1


def test_absent_modality_is_skipped_not_regressed_to_zero():
    torch.manual_seed(5)
    model = build_mpmae("atto", ["sentinel2", "sentinel1", "biome"])
    batch = _batch(tasks=model.tasks)
    batch["sentinel1"][:] = float("nan")
    batch["biome"][:] = -1
    out = model(batch)
    assert out.task_losses["sentinel1"].item() == 0 and int(out.task_counts["sentinel1"]) == 0
    assert out.task_losses["biome"].item() == 0
    out.loss.backward()
    assert model.heads["sentinel1"].pred.weight.grad.abs().max() == 0  # no pull towards anything
    assert model.weighting.log_vars.grad[1] == 0 and model.weighting.log_vars.grad[0] != 0


def test_loss_ignores_targets_in_visible_cells():
    torch.manual_seed(6)
    model = build_mpmae("atto", ["sentinel2", "aster"], loss_weighting="equal").eval()
    batch = _batch(tasks=model.tasks)
    mask = random_mask(2, 7, 7, 0.6)
    with torch.no_grad():
        a = model(batch, mask)
        visible = _hidden_pixels(~mask, 16, 2)
        batch["aster"][visible] = 1e6
        b = model(batch, mask)
    torch.testing.assert_close(a.task_losses["aster"], b.task_losses["aster"])


def test_rgb_target_set_uses_rgb_input():
    model = build_mpmae("atto", "rgb")
    assert model.input_bands == registry.S2_RGB_BANDS and model.encoder.in_chans == 3
    out = model({"sentinel2": torch.randn(2, 3, 112, 112)})
    assert out.predictions["sentinel2"].shape == (2, 49, 16 * 16 * 3)
