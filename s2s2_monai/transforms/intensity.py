"""Intensity transforms: CT HU window and per-volume MRI percentile clip + z-normalisation.

Array transforms and their dictionary twins, in MONAI's style; both are thin compositions of
MONAI's own ``ScaleIntensityRange``, ``ClipIntensityPercentiles`` and ``NormalizeIntensity``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping

from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    ClipIntensityPercentiles,
    MapTransform,
    NormalizeIntensity,
    ScaleIntensityRange,
    Transform,
)

__all__ = ["intensity_for", "CTWindow", "CTWindowd", "MRINormalize", "MRINormalized"]


class CTWindow(Transform):
    """Clip Hounsfield units to ``[a_min, a_max]`` and scale them linearly to ``[0, 1]``.

    The S2S2 / TransUNet abdominal window is ``[-125, 275]``.
    """

    def __init__(self, a_min: float = -125.0, a_max: float = 275.0) -> None:
        if a_max <= a_min:
            raise ValueError(f"CT window needs a_max > a_min, got [{a_min}, {a_max}]")
        self.a_min, self.a_max = float(a_min), float(a_max)
        self._scale = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self._scale(img)


class MRINormalize(Transform):
    """Per volume: clip values above the ``upper_percentile`` (default the top 0.5 %), then
    subtract the mean and divide by the standard deviation of the clipped volume.

    (SLAug's reference code divides by the mean instead of the std; this does not.)
    """

    def __init__(self, upper_percentile: float = 99.5) -> None:
        if not 0.0 < upper_percentile <= 100.0:
            raise ValueError(f"upper_percentile must be in (0, 100], got {upper_percentile}")
        self.upper_percentile = float(upper_percentile)
        self._clip = ClipIntensityPercentiles(lower=None, upper=upper_percentile, channel_wise=False)
        self._norm = NormalizeIntensity(nonzero=False, channel_wise=False)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        return self._norm(self._clip(img))


class _ArrayTransformd(MapTransform):
    """Apply one array transform to every key."""

    transform: Transform

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class CTWindowd(_ArrayTransformd):
    """Dictionary twin of :class:`CTWindow`."""

    def __init__(
        self, keys: KeysCollection, a_min: float = -125.0, a_max: float = 275.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CTWindow(a_min, a_max)


class MRINormalized(_ArrayTransformd):
    """Dictionary twin of :class:`MRINormalize`."""

    def __init__(self, keys: KeysCollection, upper_percentile: float = 99.5, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = MRINormalize(upper_percentile)


def intensity_for(modality: str) -> Callable:
    """The paper's intensity transform for a modality: CT window [-125, 275] or MRI clip + z-norm."""
    modality = modality.upper()
    if modality == "CT":
        return CTWindow(-125.0, 275.0)
    if modality in ("MR", "MRI"):
        return MRINormalize(99.5)
    raise ValueError(f"unknown modality {modality!r}; use 'CT' or 'MRI'")
