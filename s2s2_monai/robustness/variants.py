"""The one scoring loop of clean and corrupted copies: each volume of a case, segmented by the model.

``s2s2 robustness`` and ``s2s2 ablation`` both iterate :func:`segment_variants` and score what it yields,
so both see the same copies (same seeds, same order) through the same preprocessing and inference
(:class:`~s2s2_monai.model.BundleModel`): first the clean volume, then for every corruption, copy and
severity one corrupted volume. All severities of a copy share its seed (paired levels).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Variant", "segment_variants", "count_variants"]


@dataclass
class Variant:
    """One segmented volume of a case: clean (``corruption`` ``None``, severity 0) or a corrupted copy."""

    corruption: str | None
    severity: int
    copy: int
    seed: int | None
    image: Any
    pred: Any


def count_variants(corruptions: Sequence[str], severities: Sequence[int], copies: int) -> int:
    """Volumes :func:`segment_variants` yields per case (the clean one included)."""
    return 1 + len(corruptions) * len(severities) * int(copies)


def segment_variants(
    model,
    case,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (),
    copies: int = 1,
    seed: int = 0,
    device=None,
    batch_size: int | None = None,
) -> Iterator[Variant]:
    """The clean volume of ``case`` then each corrupted copy, every one segmented by ``model``.

    Args:
        model: a :class:`~s2s2_monai.model.BundleModel` with weights.
        case: a preprocessed :class:`~s2s2_monai.data.volumes.CaseVolume` (the model's preprocessing).
        corruptions / severities: names of :data:`~s2s2_monai.robustness.corruptions.CORRUPTIONS` and levels.
        copies: seeded copies per corruption (seed :func:`~s2s2_monai.robustness.corruptions.copy_seed`).
        seed: base seed of the copies.
        device / batch_size: of the model's inference.
    """
    from s2s2_monai.robustness.corruptions import copy_seed, corrupt_volume

    yield Variant(None, 0, 0, None, case.image, model.segment(case.image, device=device, batch_size=batch_size))
    for name in corruptions:
        for k in range(int(copies)):
            s = copy_seed(seed, name, case.case_id, k)
            for level in severities:
                image = corrupt_volume(case.image, name, s, case.spacing, severity=level)
                yield Variant(name, int(level), k, s, image, model.segment(image, device=device, batch_size=batch_size))
