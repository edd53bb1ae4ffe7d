"""One volume in, one label NIfTI out, in the input file's own geometry, as the model was trained.

The three steps of the MONAI Label infer task, usable without MONAI Label:
:func:`prepare_volume` (read, check the modality range, the model's preprocessing: the bundle's
``train#deterministic_transforms``), the model's inference (:meth:`~s2s2_monai.model.BundleModel.segment`)
and :func:`write_label` (undo the RAS reorientation, write with the file's own affine).
:func:`segment_file` chains them; ``s2s2 predict`` does the same per file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from s2s2_monai.data.volumes import CaseVolume, write_prediction

__all__ = ["prepare_volume", "write_label", "segment_file"]


def prepare_volume(path: str | os.PathLike, model) -> CaseVolume:
    """Read a NIfTI file / DICOM folder, check its range fits the model's modality, preprocess it as in training.

    Raises:
        S2S2InputError: unreadable file, not one 3D volume, NaN/inf, wrong modality range.
    """
    return model.load_case(path, check_modality=True)


def write_label(labels: torch.Tensor | np.ndarray, volume: CaseVolume, out: str | os.PathLike) -> Path:
    """Write (X, Y, Z) RAS labels as uint8 NIfTI on the grid of the original file (atomic)."""
    return write_prediction(labels, volume.affine, volume.source_affine, out)


def segment_file(
    model,
    image_path: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Path:
    """Segment one volume with a :class:`~s2s2_monai.model.BundleModel`; write its labels in the file's geometry."""
    volume = prepare_volume(image_path, model)
    return write_label(model.segment(volume.image, device=device, batch_size=batch_size), volume, out)
