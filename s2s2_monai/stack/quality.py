"""Quality check of generated stack members (beyond the paper, after MAISI's organ-intensity check).

For every organ, bounds on its *median* intensity are learned from the real training slices:
the ``lower``-th to ``upper``-th percentile of the per-slice organ medians (unit space), widened
by ``margin`` x (range) + ``abs_margin`` on each side. A generated member passes when every organ
with at least ``min_pixels`` pixels in its mask has its median inside its bounds. Failing members
are regenerated with new deterministic seeds (at most ``retries`` times); a member still failing
is kept and *flagged*. ``s2s2 stack info`` reports the pass rate.

The paper filters nothing, so the training bundle builds without this check (``stack_qc: false``, the
default of :func:`~s2s2_monai.stack.build.ensure_stack`); ``--stack_qc True`` turns it on. ``s2s2 stack
build`` and :func:`~s2s2_monai.stack.build.build_stack` check by default (``--no-qc`` / ``qc=False`` is the
paper's). The bounds are part of the stack's identity: a stack built with QC is another stack than one
built without.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from s2s2_monai.stack.base import StackGenerator, UnitIntensity

__all__ = ["QualityBounds", "retry_seed", "check_and_regenerate"]


def retry_seed(seed: int, member: int, attempt: int) -> int:
    """Deterministic seed of regeneration ``attempt`` (1, 2, ...) of ``member``."""
    h = hashlib.sha256(f"qc-retry:{int(seed)}:{int(member)}:{int(attempt)}".encode()).hexdigest()
    return int(h[:16], 16) & (2**63 - 1)


def _organ_medians(image: np.ndarray, mask: np.ndarray, min_pixels: int) -> dict[int, float]:
    mask = np.asarray(mask).astype(np.int64)
    counts = np.bincount(mask.ravel())
    ids = [int(k) for k in np.flatnonzero(counts) if k != 0 and counts[k] >= min_pixels]
    if not ids:
        return {}
    med = ndimage.median(np.asarray(image, dtype=np.float64), labels=mask, index=ids)
    return dict(zip(ids, (float(v) for v in np.atleast_1d(med))))


@dataclass
class QualityBounds:
    """Per-organ bounds on the median unit-space intensity.

    Attributes:
        bounds: ``{organ id: (lo, hi)}``.
        min_pixels: organs smaller than this in a mask are not checked.
        retries: regeneration attempts for a failing member.
    """

    bounds: dict[int, tuple[float, float]]
    min_pixels: int = 16
    retries: int = 3

    @classmethod
    def fit(
        cls,
        pairs: Iterable[tuple[np.ndarray, np.ndarray]],
        unit: UnitIntensity,
        lower: float = 1.0,
        upper: float = 99.0,
        margin: float = 0.25,
        abs_margin: float = 0.05,
        min_pixels: int = 16,
        retries: int = 3,
    ) -> QualityBounds:
        """Learn bounds from real ``(image, label)`` slices (network intensity space)."""
        medians: dict[int, list[float]] = {}
        for image, label in pairs:
            img = unit.to_unit(np.squeeze(np.asarray(image)))
            for k, v in _organ_medians(img, np.squeeze(np.asarray(label)), min_pixels).items():
                medians.setdefault(k, []).append(v)
        bounds = {}
        for k, vals in sorted(medians.items()):
            lo, hi = np.percentile(vals, [lower, upper])
            pad = margin * (hi - lo) + abs_margin
            bounds[k] = (round(float(max(lo - pad, 0.0)), 5), round(float(min(hi + pad, 1.0)), 5))
        return cls(bounds, min_pixels, retries)

    @classmethod
    def fit_volumes(cls, volumes, **kwargs) -> QualityBounds:
        """:meth:`fit` on every slice of a :class:`~s2s2_monai.data.slices.VolumeCache`."""
        pairs = (
            (case.image[:, :, z], case.label[:, :, z])
            for case in volumes.cases
            if case.label is not None
            for z in range(case.num_slices)
        )
        return cls.fit(pairs, UnitIntensity.for_modality(volumes.datalist.modality), **kwargs)

    def to_dict(self) -> dict:
        """JSON form (part of the cache key)."""
        return {
            "bounds": {str(k): [lo, hi] for k, (lo, hi) in sorted(self.bounds.items())},
            "min_pixels": self.min_pixels,
            "retries": self.retries,
        }

    @classmethod
    def from_dict(cls, d: dict) -> QualityBounds:
        return cls(
            {int(k): (float(v[0]), float(v[1])) for k, v in d["bounds"].items()},
            int(d["min_pixels"]),
            int(d["retries"]),
        )

    def failures(self, image: np.ndarray, mask: np.ndarray) -> dict[int, float]:
        """Organs whose median (unit space) is outside its bounds: ``{id: median}``."""
        out = {}
        for k, v in _organ_medians(image, mask, self.min_pixels).items():
            if k in self.bounds and not (self.bounds[k][0] <= v <= self.bounds[k][1]):
                out[k] = v
        return out

    def passes(self, image: np.ndarray, mask: np.ndarray) -> bool:
        """Whether every checked organ's median lies inside its bounds."""
        return not self.failures(image, mask)


def check_and_regenerate(
    generator: StackGenerator, mask: np.ndarray, prompt: str, seed: int, images: np.ndarray, bounds: QualityBounds
) -> tuple[np.ndarray, list[dict]]:
    """Check each member of one mask's stack; regenerate failing ones with :func:`retry_seed`.

    Args:
        images: float32 (n, H, W) unit-space members generated with ``seed``.

    Returns:
        the (possibly partly regenerated) images and one record per member:
        ``{"pass": bool, "attempts": int}`` (attempts = regenerations used).
    """
    images = np.array(images, dtype=np.float32, copy=True)
    records = []
    for m in range(images.shape[0]):
        ok = bounds.passes(images[m], mask)
        attempt = 0
        while not ok and attempt < bounds.retries:
            attempt += 1
            new = generator.generate(np.asarray(mask)[None], [prompt], [retry_seed(seed, m, attempt)], 1)[0, 0]
            images[m] = new
            ok = bounds.passes(new, mask)
        records.append({"pass": bool(ok), "attempts": attempt})
    return images, records
