"""D(a, b) = 1 - cos(a, b) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from s2s2_monai.training.consistency import ConsistencyLoss, consistency_distance


def test_hand_computed_feature_maps():
    # (B=1, C=2, H=1, W=3): per position the channel vectors are
    # a: (1,0) (1,1) (0,2);  b: (0,1) (1,1) (0,-3)
    a = torch.tensor([[[[1.0, 1.0, 0.0]], [[0.0, 1.0, 2.0]]]])
    b = torch.tensor([[[[0.0, 1.0, 0.0]], [[1.0, 1.0, -3.0]]]])
    # cosines 0, 1, -1 -> distances 1, 0, 2 -> mean 1
    assert consistency_distance(a, b, channel_dim=1).item() == pytest.approx(1.0, abs=1e-7)


def test_hand_computed_tokens_over_last_dim():
    # (B=2, N=1, C=2) tokens, cosine over C: (3,4).(4,3)/25 = 24/25 ; (1,0).(1,1)/sqrt(2)
    a = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
    b = torch.tensor([[[4.0, 3.0]], [[1.0, 1.0]]])
    expected = ((1 - 24 / 25) + (1 - 1 / math.sqrt(2))) / 2
    assert consistency_distance(a, b, channel_dim=-1).item() == pytest.approx(expected, abs=1e-6)
    assert ConsistencyLoss(channel_dim=-1)(a, b).item() == pytest.approx(expected, abs=1e-6)


def test_scale_invariance_and_range():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, 4, generator=g), torch.randn(3, 5, 4, 4, generator=g)
    d = consistency_distance(a, b)
    assert 0.0 <= d.item() <= 2.0
    assert consistency_distance(2.5 * a, 0.1 * b).item() == pytest.approx(d.item(), abs=1e-6)
    assert consistency_distance(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_distance(a, -a).item() == pytest.approx(2.0, abs=1e-6)


def test_gradient_reaches_both_inputs():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(2, 4, 3, 3, generator=g, requires_grad=True)
    consistency_distance(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        consistency_distance(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="batch and a channel"):
        consistency_distance(torch.zeros(3), torch.zeros(3))


def test_matches_torch_cosine_similarity():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 6, 5, 7, generator=g), torch.randn(2, 6, 5, 7, generator=g)
    ref = (1 - torch.nn.functional.cosine_similarity(a, b, dim=1)).mean()
    assert consistency_distance(a, b).item() == pytest.approx(ref.item(), abs=1e-6)
    t1, t2 = torch.randn(3, 9, 4, generator=g), torch.randn(3, 9, 4, generator=g)
    ref = (1 - torch.nn.functional.cosine_similarity(t1, t2, dim=-1)).mean()
    assert consistency_distance(t1, t2, channel_dim=-1).item() == pytest.approx(ref.item(), abs=1e-6)
    assert consistency_distance(a.half(), b.half()).dtype == torch.float32
