"""Latent-code masks against their definitions (Chen et al. 2021 / upstream model_util.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from s2s2_monai.cooperative.masks import (
    MASK_KINDS,
    LatentMasker,
    channel_dropout_mask,
    channel_mask,
    code_gradient,
    frozen,
    spatial_mask,
)


def _grad_with_known_channel_order(b=2, c=10, h=3, w=4):
    """Gradient whose channel means are c-1, ..., 0 for sample 0 and 0, ..., c-1 for sample 1."""
    g = torch.randn(b, c, h, w) * 0.01
    g = g - g.mean(dim=(2, 3), keepdim=True)  # zero-mean noise: channel means are exactly the offsets
    offsets = torch.stack([torch.arange(c - 1, -1, -1.0), torch.arange(c, dtype=torch.float)])
    return g + offsets.view(b, c, 1, 1)


def test_channel_mask_masks_the_top_p_channels_by_mean_gradient():
    g = _grad_with_known_channel_order()
    m = channel_mask(g, p=0.3)  # int(10 * 0.3) = 3 channels
    assert m.shape == (2, 10, 1, 1)
    m = m.view(2, 10)
    assert torch.equal(torch.nonzero(m[0] == 0).flatten(), torch.tensor([0, 1, 2]))  # largest means
    assert torch.equal(torch.nonzero(m[1] == 0).flatten(), torch.tensor([7, 8, 9]))
    assert torch.all(m[m != 0] == 1)


def test_channel_mask_ranks_signed_gradient_not_magnitude():
    g = torch.zeros(1, 4, 2, 2)
    g[0, 0] = -5.0  # largest magnitude but negative: not masked (upstream sorts signed means)
    g[0, 2] = 1.0
    m = channel_mask(g, p=0.25).flatten()
    assert m.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_spatial_mask_masks_the_top_p_locations_by_channel_mean():
    b, c, h, w = 1, 3, 4, 5
    score = torch.arange(h * w, dtype=torch.float).view(1, 1, h, w)  # location (h-1, w-1) largest
    g = score.expand(b, c, h, w).clone()
    g[:, 0] += 1.0
    g[:, 1] -= 1.0  # channel mean unchanged
    m = spatial_mask(g, p=0.25)  # int(20 * 0.25) = 5 locations
    assert m.shape == (1, 1, h, w)
    masked = (m.flatten() == 0).nonzero().flatten().tolist()
    assert masked == [15, 16, 17, 18, 19]


@pytest.mark.parametrize("fn,n", [(channel_mask, 64), (spatial_mask, 8 * 8)])
def test_targeted_proportion_is_int_n_times_p(fn, n):
    g = torch.randn(3, 64, 8, 8)
    for p in (0.0, 0.01, 0.1, 0.37, 0.5):
        m = fn(g, p).reshape(3, -1)
        assert torch.all((m == 0).sum(1) == int(n * p))
    assert torch.all(fn(g, 0.0) == 1)  # p below 1/n masks nothing


@pytest.mark.parametrize("fn", [channel_mask, spatial_mask])
def test_soft_masks_multiply_by_a_in_0_to_half(fn):
    g = torch.randn(4, 32, 6, 6)
    gen = torch.Generator().manual_seed(1)
    hard = fn(g, 0.5)
    soft = fn(g, 0.5, soft=True, generator=gen)
    masked = hard == 0
    assert torch.all(soft[~masked] == 1)  # same positions, unmasked entries untouched
    a = soft[masked]
    assert a.numel() > 50 and torch.all(a >= 0) and torch.all(a < 0.5)
    assert a.std() > 0.05 and abs(float(a.mean()) - 0.25) < 0.06  # uniform on [0, 0.5), one draw per entry


def test_channel_dropout_matches_dropout2d_definition():
    code = torch.rand(64, 50, 3, 3) + 0.1
    m = channel_dropout_mask(code, 0.3, torch.Generator().manual_seed(0))
    assert m.shape == (64, 50, 1, 1)
    assert torch.all((m == 0) | torch.isclose(m, torch.tensor(1 / 0.7)))
    assert abs(float((m == 0).float().mean()) - 0.3) < 0.03  # 3200 channels
    # whole channels: a masked code is exactly zero on a dropped channel, scaled elsewhere
    masked = code * m
    dropped = (m == 0).expand_as(code)
    assert torch.all(masked[dropped] == 0)
    torch.testing.assert_close(masked[~dropped], code[~dropped] / 0.7)
    # the same expectation as torch's F.dropout2d
    torch.testing.assert_close(m.mean(), F.dropout2d(torch.ones(64, 50, 1, 1), 0.3).mean(), atol=0.1, rtol=0)
    with pytest.raises(ValueError):
        channel_dropout_mask(code, 1.0)


class _Dec(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, z):
        return self.bn(self.conv(z))


def test_code_gradient_is_the_autograd_gradient_and_decoder_stays_frozen():
    torch.manual_seed(0)
    dec = _Dec().train()
    dec.bn.running_mean.fill_(0.3)
    code = torch.randn(2, 4, 3, 3)
    target = torch.randn(2, 2, 3, 3)
    loss_fn = lambda out: ((out - target) ** 2).mean()  # noqa: E731
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    g = code_gradient(code, dec, loss_fn)
    # independent reference: plain autograd on a copy
    ref_dec = _Dec().train()
    ref_dec.load_state_dict(before)
    leaf = code.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(loss_fn(ref_dec(leaf)), [leaf])
    torch.testing.assert_close(g, ref)
    after = dec.state_dict()
    for k in before:  # running stats and num_batches_tracked untouched
        torch.testing.assert_close(after[k], before[k])
    assert all(p.grad is None for p in dec.parameters())
    assert all(p.requires_grad for p in dec.parameters())  # restored


def test_frozen_restores_on_error():
    dec = _Dec()
    with pytest.raises(RuntimeError):
        with frozen(dec):
            assert not any(p.requires_grad for p in dec.parameters())
            assert dec.bn.momentum == 0.0
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in dec.parameters()) and dec.bn.momentum == 0.1


def test_latent_masker_targets_the_loss_gradient():
    """A channel decoded to the target region gets the largest gradient and is masked first."""
    code = torch.ones(1, 4, 2, 2)
    dec = nn.Conv2d(4, 1, 1, bias=False)
    with torch.no_grad():
        dec.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1))
    target = torch.full((1, 1, 2, 2), 10.0)  # output 2.5 < 10, so dL/dz_c is proportional to -w_c
    masker = LatentMasker(kinds=("channel",), max_p=1.0, soft=False, seed=0)
    masked, m = masker.mask(code, "channel", dec, lambda out: ((out - target) ** 2).mean())
    k = int((m == 0).sum())
    order = [1, 2, 0, 3]  # descending signed gradient = ascending weight
    assert m.flatten()[order[:k]].eq(0).all() and m.flatten()[order[k:]].eq(1).all()
    torch.testing.assert_close(masked, code * m)
    assert not masked.requires_grad


def test_latent_masker_draws_kinds_and_p_reproducibly():
    a, b = LatentMasker(seed=3), LatentMasker(seed=3)
    kinds = [a.draw_kind() for _ in range(300)]
    assert kinds == [b.draw_kind() for _ in range(300)]
    assert set(kinds) == set(MASK_KINDS) and min(kinds.count(k) for k in MASK_KINDS) > 70
    ps = torch.tensor([a.draw_p() for _ in range(500)])
    assert ps.min() >= 0 and ps.max() < 0.5 and abs(float(ps.mean()) - 0.25) < 0.03
    with pytest.raises(ValueError):
        LatentMasker(kinds=("cutout",))
    with pytest.raises(ValueError):
        LatentMasker().mask(torch.ones(1, 2, 2, 2), "channel")  # targeted without a decoder
