"""HD95 definition names, torch-free, for the CLI's argument parser (``s2s2 --help`` imports no torch).

:mod:`s2s2_monai.evaluation.metrics` re-exports these; the definitions themselves are described there.
"""

from __future__ import annotations

__all__ = ["HD95_DEFINITIONS", "DEFAULT_HD95", "check_hd95"]

HD95_DEFINITIONS: tuple[str, ...] = ("medpy", "surface-distance", "monai")
#: The ecosystem's own definition (MONAI ``HausdorffDistanceMetric(percentile=95)``).
DEFAULT_HD95 = "monai"


def check_hd95(hd95: str) -> str:
    """Validate an HD95 definition name (``ValueError`` listing the known names)."""
    if hd95 not in HD95_DEFINITIONS:
        raise ValueError(f"unknown HD95 definition {hd95!r}; use one of {list(HD95_DEFINITIONS)}")
    return hd95
