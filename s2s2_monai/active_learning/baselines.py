"""The uncertainty scores S2S2's disagreement is measured against, computed as MONAI Label computes them.

- :func:`tta_variance`: test-time augmentation (MONAI's ``TestTimeAugmentation`` idea): ``k``
  randomly flipped / intensity-scaled / noised copies, softmax probabilities mapped back (<= 0 set to
  5e-4), the variance over copies summed over classes per voxel (MONAI Label's ``EpistemicScoring.variance_volume``,
  ``use_variance=True``), averaged over the volume and per axial slice.
- :func:`mc_dropout_entropy`: epistemic MC dropout (MONAI Label's ``EpistemicScoring`` default):
  ``k`` forward passes with the dropout layers active, the entropy of the mean softmax summed over
  classes (``entropy_volume``, probabilities <= 0 set to 5e-5 as there), averaged over the volume and
  per slice. Only for networks with dropout (``p > 0``); others raise :class:`NoDropout`.

Both return :class:`~s2s2_monai.active_learning.disagreement.VolumeUncertainty`; same seed, same score.
"""

from __future__ import annotations

import numpy as np

from s2s2_monai.active_learning.disagreement import VolumeUncertainty
from s2s2_monai.arrays import to_numpy

__all__ = ["tta_variance", "mc_dropout_entropy", "NoDropout", "dropout_layers"]


class NoDropout(ValueError):
    """The network has no dropout layer with ``p > 0``: MC dropout does not apply."""


def _probabilities(model, image: np.ndarray, network=None, batch_size=None, device=None):
    """Softmax (C, X, Y, Z) of the model's own inference procedure (float32 numpy; legacy TransUNet included)."""
    return (
        model.inferer(batch_size)
        .probabilities(image, network if network is not None else model.network, device=device)
        .cpu()
        .numpy()
    )


def _profile(voxel_scores: np.ndarray) -> tuple[float, np.ndarray]:
    return float(np.nanmean(voxel_scores)), np.nanmean(voxel_scores, axis=(0, 1))


def tta_variance(
    model, image, k: int = 4, seed: int = 0, scale: float = 0.1, noise: float = 0.02, batch_size=None, device=None
) -> VolumeUncertainty:
    """Test-time-augmentation variance of one preprocessed (X, Y, Z) volume (see the module docstring).

    Copy ``m`` (seeded by ``(seed, m)``) is flipped along x and/or y with probability 0.5 each,
    multiplied by ``U(1 - scale, 1 + scale)`` and given Gaussian noise of ``noise`` x the volume's
    intensity range; the first copy is the volume itself.
    """
    if int(k) < 2:
        raise ValueError(f"k must be >= 2 (a variance needs two copies), got {k}")
    image = np.asarray(to_numpy(image), dtype=np.float32)
    span = float(image.max() - image.min()) or 1.0
    probs = []
    for m in range(int(k)):
        rng = np.random.default_rng([int(seed), m])
        x = image.copy()
        axes = [a for a in (0, 1) if m > 0 and rng.random() < 0.5]
        if m > 0:
            x = x * rng.uniform(1 - scale, 1 + scale) + rng.standard_normal(x.shape).astype(np.float32) * noise * span
        x = np.ascontiguousarray(np.flip(x, axes) if axes else x, dtype=np.float32)
        p = _probabilities(model, x, batch_size=batch_size, device=device)
        probs.append(np.flip(p, [a + 1 for a in axes]) if axes else p)
    stacked = np.stack(probs)
    stacked[stacked <= 0] = 0.0005  # as MONAI Label's variance_volume
    variance = np.var(stacked, axis=0).sum(axis=0)
    score, slices = _profile(variance)
    return VolumeUncertainty(
        score, slices, None, "tta_variance", {"k": int(k), "seed": int(seed), "scale": scale, "noise": noise}
    )


def dropout_layers(network) -> list:
    """The network's dropout modules with ``p > 0``."""
    from torch import nn

    kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
    return [m for m in network.modules() if isinstance(m, kinds) and m.p > 0]


def mc_dropout_entropy(model, image, k: int = 4, seed: int = 0, batch_size=None, device=None) -> VolumeUncertainty:
    """MC-dropout entropy of one preprocessed (X, Y, Z) volume (see the module docstring).

    Raises:
        NoDropout: the network has no dropout layer with ``p > 0``.
    """
    import torch
    from torch import nn

    if int(k) < 2:
        raise ValueError(f"k must be >= 2 (an entropy over samples needs two), got {k}")
    layers = dropout_layers(model.network)
    if not layers:
        raise NoDropout(f"{type(model.network).__name__} has no dropout layer with p > 0: MC dropout does not apply")

    class _Active(nn.Module):  # eval() everywhere (as inference sets), dropout on at every forward
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            for layer in layers:
                layer.train()
            return self.net(x)

    image = np.asarray(to_numpy(image), dtype=np.float32)
    active = _Active(model.network).eval()  # inference restores this mode afterwards
    probs = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            for _ in range(int(k)):
                probs.append(_probabilities(model, image, network=active, batch_size=batch_size, device=device))
        finally:
            for layer in layers:
                layer.eval()
    stacked = np.stack(probs)
    stacked[stacked <= 0] = 5e-5  # as MONAI Label's entropy_volume
    mean = stacked.mean(axis=0)
    entropy = -(mean * np.log(mean)).sum(axis=0)
    score, slices = _profile(entropy)
    return VolumeUncertainty(score, slices, None, "mc_dropout_entropy", {"k": int(k), "seed": int(seed)})
