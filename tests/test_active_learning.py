"""Active learning scores: vote entropy by hand and against scipy, appearance variants, S2S2 disagreement,
the TTA / MC-dropout baselines against MONAI's and scipy's definitions, and the slab test on a trained model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from s2s2_monai.active_learning.baselines import NoDropout, dropout_layers, mc_dropout_entropy, tta_variance
from s2s2_monai.active_learning.disagreement import (
    VolumeUncertainty,
    appearance_variants,
    entropy_scores,
    stack_disagreement,
    vote_entropy,
)
from s2s2_monai.model import BundleModel


def test_vote_entropy_by_hand_and_scipy():
    votes = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 2], [0, 2, 0]])[..., None, None]  # 4 members x 3 voxels
    h = vote_entropy(votes, num_classes=3)[:, 0, 0]
    assert h[0] == 0.0  # unanimous
    assert h[1] == pytest.approx(math.log(2) / math.log(3))  # 2 x class 1, 2 x class 2
    assert h[2] == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3))
    rng = np.random.default_rng(0)
    votes = rng.integers(0, 5, (6, 7, 5, 3))
    ref = np.apply_along_axis(lambda v: scipy_entropy(np.bincount(v, minlength=5) / 6), 0, votes) / math.log(5)
    np.testing.assert_allclose(vote_entropy(votes, 5), ref, rtol=1e-6)
    assert vote_entropy(votes[:1], 5).max() == 0.0  # one member: nothing to disagree about


def test_entropy_scores_volume_over_organ_voxels_slices_per_pixel():
    votes = np.zeros((2, 2, 2, 4), dtype=np.uint8)  # 2 members, 2 x 2 pixels, 4 slices
    votes[0, 0, 0, 0] = 1  # slice 0: one voxel disputed (1 vs 0)
    votes[:, :, :, 1] = 2  # slice 1: all organ, unanimous
    votes[0, :, 0, 3] = 1  # slice 3: two voxels disputed
    # slice 2: background everywhere
    score, slices = entropy_scores(votes, num_classes=3)
    assert slices.tolist() == pytest.approx([0.25, 0.0, 0.0, 0.5])  # entropy (1 = log 2 / log 2) per pixel of the slice
    assert score == pytest.approx(3.0 / 7)  # 7 voxels are organ in some member, 3 of them disputed
    assert entropy_scores(np.zeros((3, 2, 2, 2), np.uint8), 3) == (0.0, pytest.approx([0.0, 0.0]))


class _ThresholdNet(torch.nn.Module):
    """Fixed 'network': liver (6) where the image is bright, else background."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 9, *x.shape[2:])
        logits[:, 6] = self.drop((x[:, 0] - 0.5) * 20)
        return logits


def _model(dropout: float = 0.0) -> BundleModel:
    from s2s2_monai.transforms import CTWindowd

    model = BundleModel(_ThresholdNet(dropout), [CTWindowd("image")], "synapse")
    model.network.eval()
    return model


def _blob_volume(noise_slices=(), seed=0):
    """A bright sphere-ish organ on a dark background (network space [0, 1]); noise in some slices."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(20), indexing="ij")
    img = np.where((x - 20) ** 2 + (y - 20) ** 2 < 100, 0.8, 0.2).astype(np.float32)
    rng = np.random.default_rng(seed)
    for s in noise_slices:
        img[:, :, s] = rng.random((40, 40)).astype(np.float32)
    return img


def test_appearance_variants_seeded_and_mixed():
    img = _blob_volume()
    pred = (img > 0.5).astype(np.uint8) * 6
    a = list(appearance_variants(img, pred, "CT", k=3, seed=1))
    b = list(appearance_variants(img, pred, "CT", k=3, seed=1))
    c = list(appearance_variants(img, pred, "CT", k=3, seed=2))
    assert len(a) == 3 and all(v.shape == img.shape and v.dtype == np.float32 for v in a)
    assert all(np.array_equal(u, v) for u, v in zip(a, b)) and not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # members differ
    np.testing.assert_allclose(next(appearance_variants(img, pred, "CT", k=1, mix=0.0)), img)
    painted = next(appearance_variants(img, pred, "CT", k=1, mix=1.0))
    assert painted[pred == 6].mean() > painted[pred == 0].mean() + 0.2  # the organ is painted from its own statistics
    with pytest.raises(ValueError, match="grid"):
        next(appearance_variants(img, pred[:-1], "CT", k=1))


def test_stack_disagreement_is_seeded_and_finds_the_noisy_slab():
    model = _model()
    clean = stack_disagreement(model, _blob_volume(), k=4, seed=0)
    assert isinstance(clean, VolumeUncertainty) and clean.slice_scores.shape == (20,)
    again = stack_disagreement(model, _blob_volume(), k=4, seed=0)
    assert again.score == clean.score and np.array_equal(again.slice_scores, clean.slice_scores)
    slab = stack_disagreement(model, _blob_volume(noise_slices=range(10, 16)), k=4, seed=0)
    assert 10 <= slab.most_uncertain_slice <= 15 and slab.score > clean.score
    rec = slab.record()
    assert rec["slice"] == slab.most_uncertain_slice and len(rec["slice_scores"]) == 20
    assert rec["settings"] == {"k": 4, "seed": 0, "mix": 0.5, "flips": True}
    with pytest.raises(ValueError, match="k must be"):
        stack_disagreement(model, _blob_volume(), k=0)


def test_tta_variance_matches_monai_variance_metric():
    from monai.metrics.active_learning_metrics import compute_variance

    model = _model()
    img = _blob_volume(noise_slices=[3])
    r = tta_variance(model, img, k=3, seed=5)
    assert r.score == tta_variance(model, img, k=3, seed=5).score and r.score > 0
    # the same copies by hand, scored by MONAI's VarianceMetric definition (variance over copies, summed over classes)
    from s2s2_monai.active_learning.baselines import _probabilities

    probs = []
    for m in range(3):
        rng = np.random.default_rng([5, m])
        x = img.copy()
        axes = [a for a in (0, 1) if m > 0 and rng.random() < 0.5]
        if m > 0:
            x = x * rng.uniform(0.9, 1.1) + rng.standard_normal(x.shape).astype(np.float32) * 0.02 * float(np.ptp(img))
        p = _probabilities(model, np.ascontiguousarray(np.flip(x, axes), dtype=np.float32))
        probs.append(np.flip(p, [a + 1 for a in axes]))
    ref = compute_variance(
        torch.from_numpy(np.stack(probs))[:, None], include_background=True, spatial_map=True, threshold=0.0005
    )
    np.testing.assert_allclose(
        r.score, float(ref.mean()) * 9, rtol=1e-4
    )  # MONAI averages the classes; MONAI Label sums


def test_baselines_use_the_models_own_inference_procedure():
    from s2s2_monai.active_learning.baselines import _probabilities
    from s2s2_monai.transforms import CTWindowd

    img = _blob_volume(noise_slices=[3])
    for legacy in (False, True):  # legacy TransUNet: cubic zoom to 24 x 24 and nearest back, as its labels
        model = BundleModel(
            _ThresholdNet(), [CTWindowd("image")], "synapse", input_size=(24, 24), legacy_transunet=legacy
        )
        probs = _probabilities(model, img)
        assert probs.shape == (9, 40, 40, 20)
        assert np.array_equal(probs.argmax(0), model.segment(img).numpy())
    slice_probs = _probabilities(
        BundleModel(_ThresholdNet(), [CTWindowd("image")], "synapse", input_size=(24, 24)), img
    )
    assert not np.allclose(slice_probs, probs)  # the two procedures differ: each baseline follows the model's


def test_mc_dropout_entropy_needs_dropout_and_restores_eval():
    with pytest.raises(NoDropout, match="no dropout"):
        mc_dropout_entropy(_model(), _blob_volume(), k=3)
    model = _model(dropout=0.3)
    assert len(dropout_layers(model.network)) == 1
    r = mc_dropout_entropy(model, _blob_volume(), k=3, seed=1)
    assert r.score > 0 and r.score == mc_dropout_entropy(model, _blob_volume(), k=3, seed=1).score
    assert not any(m.training for m in model.network.modules())  # inference mode is back
    # the same samples by hand (dropout on at every forward, seed 1), scored by scipy's entropy of the mean softmax
    from s2s2_monai.active_learning.baselines import _probabilities

    class Active(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            self.net.drop.train()
            return self.net(x)

    torch.manual_seed(1)
    samples = np.stack([_probabilities(model, _blob_volume(), network=Active(model.network).eval()) for _ in range(3)])
    samples[samples <= 0] = 5e-5
    ref = scipy_entropy(samples.mean(axis=0), axis=0)
    model.network.eval()
    assert r.score == pytest.approx(float(ref.mean()), rel=1e-5)
    np.testing.assert_allclose(r.slice_scores, ref.mean(axis=(0, 1)), rtol=1e-5)
