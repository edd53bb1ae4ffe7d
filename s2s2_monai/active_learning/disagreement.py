"""S2S2's uncertainty: how much a model disagrees with itself across appearance variants of a volume.

For one preprocessed volume (network input space):

1. predict it (the model's own inference procedure) -> label map ``P``;
2. make ``k`` appearance variants of the image *conditioned on* ``P``: the weight-free stack
   generator (:class:`~s2s2_monai.stack.appearance.AppearanceGenerator`), fitted on this volume's
   intensities under ``P``, paints each slice of ``P`` (member ``m``, seeded by ``(seed, slice)``);
   the variant is ``(1 - mix) * image + mix * painted`` (``mix`` 0.5: the real evidence stays, the
   appearance moves as across a semantic stack); with ``flips`` every second variant is also
   mirrored left-right (and its prediction mirrored back);
3. predict every variant; the ``k + 1`` label maps vote per voxel.

Score (:func:`entropy_scores`): the **vote entropy** (query by committee; Dagan & Engelson 1995) of
the ``k + 1`` votes per voxel, normalised by ``log(min(k + 1, classes))`` to [0, 1]. The volume's score
is its mean over the voxels that any member labels as an organ (background everywhere says nothing;
comparable across volumes of any size and organ content; 0 when no member finds an organ). A slice's
score is the disagreement it holds: the entropy summed over the slice, per pixel of the slice (a slice
where a large organ is in doubt outranks one where a few pixels at an organ's end are). Where a
prediction is right, the variants agree with it and the entropy is low; where the model is unsure
of the organ or its boundary, the stack pulls the votes apart.

Known limit: a committee of the model's own predictions cannot see an organ that every member
confidently misses (a slab so dark or so biased that the model predicts no organ there: every
variant is painted from "no organ" and agrees). Measured in ``benchmarks/bench_uncertainty.py``.

Same seed, same variants, same score (every random draw comes from ``seed`` and the slice index).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from s2s2_monai.arrays import to_numpy

__all__ = ["VolumeUncertainty", "stack_disagreement", "vote_entropy", "entropy_scores", "appearance_variants"]


@dataclass
class VolumeUncertainty:
    """A volume's uncertainty score and its per-slice profile.

    Attributes:
        score: the volume's score (higher = less sure).
        slice_scores: float (Z,) score of every axial slice.
        prediction: the model's label map of the unchanged volume, uint8 (X, Y, Z).
        method: which score this is (e.g. ``"s2s2_disagreement"``).
        settings: how it was computed (k, seed, mix, flips, ...).
    """

    score: float
    slice_scores: np.ndarray
    prediction: np.ndarray | None = None
    method: str = "s2s2_disagreement"
    settings: dict = field(default_factory=dict)

    @property
    def most_uncertain_slice(self) -> int:
        """Index of the axial slice with the highest score (the first of ties; 0 for an empty profile)."""
        return int(np.argmax(self.slice_scores)) if len(self.slice_scores) else 0

    def record(self) -> dict:
        """JSON-safe summary (what the MONAI Label datastore stores)."""
        z = self.most_uncertain_slice
        return {
            "score": float(self.score),
            "slice": z,
            "slice_score": float(self.slice_scores[z]) if len(self.slice_scores) else 0.0,
            "slice_scores": [round(float(v), 6) for v in self.slice_scores],
            "method": self.method,
            "settings": dict(self.settings),
        }


def vote_entropy(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-voxel entropy of the votes of ``M`` label maps, normalised to [0, 1].

    Args:
        labels: integer (M, ...) label maps, one per committee member.
        num_classes: class ids are ``0 .. num_classes - 1``.

    Returns:
        float32 (...): ``-sum_c p_c log p_c / log(min(M, num_classes))`` with ``p_c`` the fraction of
        members voting ``c`` (0 where all agree, 1 where the votes spread as far as they can).
    """
    labels = np.asarray(labels)
    m = labels.shape[0]
    top = math.log(min(m, int(num_classes)))
    out = np.zeros(labels.shape[1:], dtype=np.float64)
    if top <= 0:
        return out.astype(np.float32)
    for c in range(int(num_classes)):
        p = np.count_nonzero(labels == c, axis=0) / m
        nz = p > 0
        out[nz] -= p[nz] * np.log(p[nz])
    return (out / top).astype(np.float32)


def entropy_scores(labels: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Scores of (M, X, Y, Z) votes: the volume's (mean vote entropy over the voxels any member labels as an
    organ; 0 when none does) and every axial slice's (the entropy summed over the slice / pixels per slice)."""
    labels = np.asarray(labels)
    h = vote_entropy(labels, num_classes)  # 0 wherever every member says background
    fg = (labels > 0).any(axis=0)
    total = int(fg.sum())
    slice_scores = h.astype(np.float64).sum(axis=(0, 1)) / (h.shape[0] * h.shape[1])
    return (float(h.sum(dtype=np.float64) / total) if total else 0.0), slice_scores


def _slice_seed(seed: int, z: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(z)]).generate_state(1)[0])


def appearance_variants(
    image: np.ndarray, prediction: np.ndarray, modality: str, k: int, seed: int = 0, mix: float = 0.5
) -> Iterator[np.ndarray]:
    """``k`` float32 (X, Y, Z) variants of ``image`` painted from ``prediction`` (see the module docstring)."""
    from s2s2_monai.stack.appearance import AppearanceGenerator
    from s2s2_monai.stack.base import UnitIntensity

    image = np.asarray(image, dtype=np.float32)
    pred = np.asarray(prediction).astype(np.uint8)
    if image.shape != pred.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and prediction {pred.shape} must be one (X, Y, Z) grid")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    z_slices = range(image.shape[2])
    generator = AppearanceGenerator.from_slices(((image[:, :, z], pred[:, :, z]) for z in z_slices), modality)
    unit = UnitIntensity.for_modality(modality)
    seeds = [_slice_seed(seed, z) for z in z_slices]
    for m in range(int(k)):
        painted = np.stack([generator.render(pred[:, :, z], seeds[z], m) for z in z_slices], axis=-1)
        yield ((1.0 - mix) * image + mix * unit.from_unit(painted)).astype(np.float32)


def stack_disagreement(
    model,
    image,
    k: int = 4,
    seed: int = 0,
    mix: float = 0.5,
    flips: bool = True,
    batch_size: int | None = None,
    device=None,
) -> VolumeUncertainty:
    """S2S2's uncertainty of one preprocessed (X, Y, Z) volume under a :class:`~s2s2_monai.model.BundleModel`.

    Args:
        model: the model (network with weights, its inference procedure, modality and label map).
        image: the volume in network input space (``model.load_case(...).image``).
        k: appearance variants (committee of ``k + 1`` with the unchanged volume); >= 1.
        seed: seed of the variants.
        mix: weight of the painted appearance in a variant (0: the image itself, 1: painted only).
        flips: mirror every second variant left-right before predicting (and its labels back).
        batch_size / device: of the model's inference (slices per forward pass; default the network's device).
    """
    if int(k) < 1:
        raise ValueError(f"k must be >= 1 (the committee needs a variant), got {k}")
    image = np.asarray(to_numpy(image), dtype=np.float32)
    image = image[0] if image.ndim == 4 and image.shape[0] == 1 else image

    def segment(volume: np.ndarray) -> np.ndarray:
        return to_numpy(model.segment(volume, device=device, batch_size=batch_size)).astype(np.uint8)

    pred = segment(image)
    votes = [pred]
    for m, variant in enumerate(appearance_variants(image, pred, model.modality, k, seed, mix)):
        if flips and m % 2 == 1:
            votes.append(segment(np.ascontiguousarray(variant[::-1]))[::-1])
        else:
            votes.append(segment(variant))
    score, slices = entropy_scores(np.stack(votes), model.label_map.num_classes)
    settings = {"k": int(k), "seed": int(seed), "mix": float(mix), "flips": bool(flips)}
    return VolumeUncertainty(score, slices, pred, "s2s2_disagreement", settings)
