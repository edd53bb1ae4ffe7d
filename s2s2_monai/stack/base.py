"""The interface every stack generator implements, and the stack's intensity space.

A generator turns label masks into ``n`` synthetic images per mask, pixel-aligned with the mask.
Images travel in the *unit space* ``[0, 1]``: for CT that is the [-125, 275] HU window the
network sees; for MRI a fixed linear map of z-scores (see :class:`UnitIntensity`). The cache
stores unit-space images as uint8.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

__all__ = ["StackGenerator", "UnitIntensity"]


@dataclass(frozen=True)
class UnitIntensity:
    """Linear map between network intensities and the stack's [0, 1] unit space.

    CT (window already in [0, 1]): ``lo=0, hi=1``. MRI (z-scored): ``lo=-3, hi=5`` by default.
    """

    lo: float = 0.0
    hi: float = 1.0

    @classmethod
    def for_modality(cls, modality: str) -> UnitIntensity:
        return cls(0.0, 1.0) if modality.upper() == "CT" else cls(-3.0, 5.0)

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(x, np.float32) - self.lo) / (self.hi - self.lo), 0.0, 1.0)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        return np.asarray(u, np.float32) * (self.hi - self.lo) + self.lo


class StackGenerator(ABC):
    """Masks + prompts + n + seeds -> images aligned with the masks.

    Implementations must be deterministic per ``(mask, prompt, seed)``: the images of one mask
    must not depend on the batch it was generated in, nor on which process made it.
    """

    #: registry name, e.g. ``"diffusion"`` or ``"appearance"``
    name: str = ""

    @abstractmethod
    def settings(self) -> dict:
        """JSON-serialisable settings that change the output (part of every cache key)."""

    @abstractmethod
    def generate(self, masks: np.ndarray, prompts: list[str], seeds: list[int], n: int) -> np.ndarray:
        """Generate the stacks of a batch of masks.

        Args:
            masks: (B, H, W) uint8 label ids of the target label map.
            prompts: B prompts (see :mod:`s2s2_monai.stack.prompts`).
            seeds: B seeds, one per mask.
            n: members per mask.

        Returns:
            float32 (B, n, H, W) images in unit space [0, 1], aligned with ``masks``.
        """
