"""Losses against hand computations (numpy loops over patches and pixels), nodata and weighting."""

import math

import numpy as np
import pytest
import torch

from mpmae_core.models import losses as L


def test_patchify_layout_is_row_col_channel_with_channel_fastest():
    p, c = 2, 3
    img = torch.arange(1 * c * 4 * 6, dtype=torch.float32).reshape(1, c, 4, 6)
    x = L.patchify(img, p)
    assert x.shape == (1, 2 * 3, p * p * c)
    for cell in range(6):
        r, q = divmod(cell, 3)
        for i in range(p):
            for j in range(p):
                for ch in range(c):
                    assert x[0, cell, (i * p + j) * c + ch] == img[0, ch, r * p + i, q * p + j]
    torch.testing.assert_close(L.unpatchify(x, p, 2, 3), img)


def _hand_pixel_mse(pred, target, mask, p, norm_pix):
    n, c, hh, ww = target.shape
    w = ww // p
    per_patch = []
    for b in range(n):
        for cell in range(mask.shape[1]):
            if not mask[b, cell]:
                continue
            r, q = divmod(cell, w)
            vals, preds = [], []
            for i in range(p):
                for j in range(p):
                    for ch in range(c):
                        t = target[b, ch, r * p + i, q * p + j]
                        if not math.isnan(t):
                            vals.append(t)
                            preds.append(pred[b, cell, (i * p + j) * c + ch])
            if not vals:
                continue
            vals = np.array(vals, dtype=np.float64)
            if norm_pix:
                vals = (vals - vals.mean()) / math.sqrt(vals.var(ddof=1) + 1e-6)
            per_patch.append(np.mean((np.array(preds) - vals) ** 2))
    return float(np.mean(per_patch))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_pixel_mse_matches_hand_computation_with_nodata(norm_pix):
    rng = np.random.default_rng(0)
    p, n, c = 4, 2, 3
    target = rng.normal(size=(n, c, 8, 12)).astype(np.float32)
    target[0, :, :4, :4] = np.nan  # a whole hidden patch without data: left out
    target[1, 1, 5:7, 2:6] = np.nan  # partly invalid patches
    pred = rng.normal(size=(n, 6, p * p * c)).astype(np.float32)
    mask = np.zeros((n, 6), dtype=bool)
    mask[0, [0, 2, 5]] = True
    mask[1, [1, 4]] = True
    loss, count = L.pixel_mse_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask), p,
                                   norm_pix=norm_pix)
    assert loss.item() == pytest.approx(_hand_pixel_mse(pred, target, mask, p, norm_pix), rel=1e-5)
    patches = L.patchify(torch.from_numpy(target), p).numpy()
    assert int(count) == int((~np.isnan(patches[torch.from_numpy(mask).numpy()])).sum())


def test_pixel_ce_matches_hand_computation():
    rng = np.random.default_rng(1)
    p, k = 2, 4
    target = rng.integers(-1, k, size=(2, 4, 4))
    pred = rng.normal(size=(2, 4, p * p * k)).astype(np.float32)
    mask = np.array([[True, False, True, False], [False, False, False, True]])
    terms = []
    for b in range(2):
        for cell in range(4):
            if not mask[b, cell]:
                continue
            r, q = divmod(cell, 2)
            for i in range(p):
                for j in range(p):
                    t = target[b, r * p + i, q * p + j]
                    if t < 0:
                        continue
                    logits = pred[b, cell, (i * p + j) * k:(i * p + j + 1) * k].astype(np.float64)
                    terms.append(-(logits[t] - np.log(np.exp(logits).sum())))
    loss, count = L.pixel_ce_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask), p, k)
    assert int(count) == len(terms)
    assert loss.item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_image_losses_skip_invalid_entries():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.5, float("nan")], [float("nan"), 2.0]])
    loss, count = L.image_mse_loss(pred, target)
    assert int(count) == 2 and loss.item() == pytest.approx((0.25 + 4.0) / 2)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    loss, count = L.image_ce_loss(logits, torch.tensor([0, -1, 2]))
    hand = (-(2 - math.log(math.exp(2) + 2)) + math.log(3)) / 2
    assert int(count) == 2 and loss.item() == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("kind", ["pixel_mse", "pixel_ce", "image_mse", "image_ce"])
def test_no_valid_target_gives_exact_zero_and_finite_zero_gradient(kind):
    pred = torch.randn(2, 4, 2 * 2 * 3, requires_grad=True)
    mask = torch.ones(2, 4, dtype=torch.bool)
    if kind == "pixel_mse":
        loss, count = L.pixel_mse_loss(pred, torch.full((2, 3, 4, 4), float("nan")), mask, 2, norm_pix=True)
    elif kind == "pixel_ce":
        loss, count = L.pixel_ce_loss(pred, torch.full((2, 4, 4), -1), mask, 2, 3)
    elif kind == "image_mse":
        loss, count = L.image_mse_loss(pred[:, 0], torch.full((2, 12), float("nan")))
    else:
        loss, count = L.image_ce_loss(pred[:, 0], torch.full((2,), -1))
    loss.backward()
    assert int(count) == 0 and loss.item() == 0
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max() == 0


def test_uncertainty_weighting_matches_hand_and_drops_empty_tasks():
    w = L.LossWeighting(("a", "b", "c"), "uncertainty")
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.5, -0.3, 1.0]))
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.7), "c": torch.tensor(0.0)}
    counts = {"a": torch.tensor(10), "b": torch.tensor(3), "c": torch.tensor(0)}
    total, weights = w(losses, counts)
    hand = math.exp(-0.5) * 2.0 + 0.5 + math.exp(0.3) * 0.7 - 0.3
    assert total.item() == pytest.approx(hand, rel=1e-6)
    assert weights["b"].item() == pytest.approx(math.exp(0.3))
    total.backward()
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L; the empty task's s gets no gradient
    assert w.log_vars.grad[0].item() == pytest.approx(1 - math.exp(-0.5) * 2.0, rel=1e-6)
    assert w.log_vars.grad[2].item() == 0


def test_equal_weighting_is_the_sum():
    w = L.LossWeighting(("a", "b"), "equal")
    total, weights = w({"a": torch.tensor(1.5), "b": torch.tensor(2.0)}, {"a": torch.tensor(1), "b": torch.tensor(1)})
    assert total.item() == 3.5 and weights["a"].item() == 1.0
    assert list(w.parameters()) == []
    with pytest.raises(ValueError, match="loss weighting"):
        L.LossWeighting(("a",), "gradnorm")
