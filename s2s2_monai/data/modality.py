"""Does a volume's raw intensity range fit the modality a model was trained on?

A CT model windows Hounsfield units to [-125, 275]; an MRI sent to it (arbitrary positive units)
becomes a bright blob and the network returns confident nonsense. The check uses one physical
fact per modality: a CT volume in HU holds air or lung (<= -500 HU) somewhere in an abdominal
field of view, an MRI holds no such values (MR intensities are >= 0 up to small
bias-correction undershoots).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from s2s2_monai.errors import S2S2InputError

__all__ = ["AIR_HU", "MIN_AIR_FRACTION", "check_modality_range"]

#: Values at or below this are air / lung in Hounsfield units.
AIR_HU = -500.0
#: A CT in HU has at least this fraction of air voxels; an MRI less than this.
MIN_AIR_FRACTION = 1e-3


def check_modality_range(
    image: np.ndarray | torch.Tensor,
    modality: str,
    path: str | os.PathLike | None = None,
    expected_by: str = "this model",
    fix: str | None = None,
) -> float:
    """Raise unless the raw (not yet windowed) intensities look like ``modality``.

    Used by ``s2s2 predict`` and the MONAI Label app (the model's modality), and by every datalist
    reader (:func:`~s2s2_monai.data.cases.load_entry`: training, ``stack build``, ``check-data``)
    for a ``"modality": "CT"`` datalist.

    Args:
        image: raw intensities, any shape.
        modality: ``"CT"`` or ``"MRI"`` (the model's, or the datalist's).
        path: named in the error.
        expected_by: who expects ``modality``, as the message says it (``"this model"``, ``"datalist X"``).
        fix: the error's fix (default: advice for a model's input).

    Returns:
        the fraction of voxels at or below :data:`AIR_HU`.

    Raises:
        S2S2InputError: CT expected and a volume without air in HU (MRI, or CT not in HU), MRI
            expected and a volume in HU.
    """
    t = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)
    if t.numel() == 0:
        raise S2S2InputError(path, "the volume is empty", "send a non-empty 3D image")
    air = float(torch.count_nonzero(t <= AIR_HU)) / t.numel()  # a bool mask, no float copy of a big volume
    lo, hi = float(t.min()), float(t.max())
    kind = modality.upper()
    if kind == "CT" and air < MIN_AIR_FRACTION:
        raise S2S2InputError(
            path,
            f"intensities {lo:.4g}..{hi:.4g} do not look like CT in Hounsfield units "
            f"({air:.2%} of voxels <= {AIR_HU:g} HU, need >= {MIN_AIR_FRACTION:.1%} air); {expected_by} expects CT",
            fix
            or "send a CT volume in HU (an MRI needs an MRI model; raw scanner values need RescaleSlope/Intercept applied)",
        )
    if kind in ("MR", "MRI") and air >= MIN_AIR_FRACTION:
        raise S2S2InputError(
            path,
            f"intensities {lo:.4g}..{hi:.4g} look like CT in Hounsfield units ({air:.2%} of voxels <= {AIR_HU:g}); {expected_by} expects MRI",
            fix or "send an MR volume, or use a CT model for CT",
        )
    return air
