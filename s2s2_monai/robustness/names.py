"""Corruption names and severity levels, torch-free, for the CLI's argument parser.

:mod:`s2s2_monai.robustness.corruptions` holds the corruptions themselves and asserts that its
registry matches these names (same names, same order) and levels.
"""

from __future__ import annotations

__all__ = ["CORRUPTION_NAMES", "SEVERITIES", "DEFAULT_SEVERITY"]

#: Registry keys of :data:`~s2s2_monai.robustness.corruptions.CORRUPTIONS`: scanner artefacts, then CT degradations.
CORRUPTION_NAMES: tuple[str, ...] = (
    "bias_field",
    "ghosting",
    "motion",
    "spike",
    "gaussian_noise",
    "resolution",
    "intensity_shift",
    "gamma",
)
#: The severity levels, mildest first (ImageNet-C convention).
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The level :func:`~s2s2_monai.robustness.corruptions.corrupt_volume` uses by default (upstream settings).
DEFAULT_SEVERITY = 3
