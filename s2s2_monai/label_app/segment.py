"""One volume in, one label NIfTI out, in the input file's own geometry.

The three steps of the MONAI Label infer task, usable without MONAI Label:
:func:`prepare_volume` (read, check the modality range, intensity transform),
:func:`~s2s2_monai.evaluation.inference.predict_volume` (the evaluation's slice inference), and
:func:`write_label` (undo the RAS reorientation, write with the file's own affine).
:func:`segment_file` chains them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2s2_monai.data.volumes import load_volume, source_affine_of, write_prediction
from s2s2_monai.evaluation.inference import predict_volume
from s2s2_monai.label_app.checks import check_modality_range
from s2s2_monai.transforms import intensity_for

__all__ = ["PreparedVolume", "prepare_volume", "write_label", "segment_file"]


@dataclass
class PreparedVolume:
    """A volume ready for the network.

    Attributes:
        image: float32 (X, Y, Z) tensor, RAS, intensity-transformed.
        affine: 4x4 RAS affine of ``image``.
        source_affine: affine of the file as stored.
    """

    image: torch.Tensor
    affine: np.ndarray
    source_affine: np.ndarray


def prepare_volume(path: str | os.PathLike, modality: str) -> PreparedVolume:
    """Read a NIfTI file / DICOM folder, check its range fits ``modality``, apply the intensity transform.

    Raises:
        S2S2InputError: unreadable file, not one 3D volume, NaN/inf, wrong modality range.
    """
    img = load_volume(path)
    check_modality_range(img, modality, path)
    transformed = intensity_for(modality)(img)
    return PreparedVolume(
        image=torch.as_tensor(transformed.as_tensor() if hasattr(transformed, "as_tensor") else transformed)[0].float(),
        affine=np.asarray(img.affine, dtype=np.float64),
        source_affine=source_affine_of(img),
    )


def write_label(labels: torch.Tensor | np.ndarray, volume: PreparedVolume, out: str | os.PathLike) -> Path:
    """Write (X, Y, Z) RAS labels as uint8 NIfTI on the grid of the original file (atomic)."""
    return write_prediction(labels, volume.affine, volume.source_affine, out)


def segment_file(
    network: torch.nn.Module,
    image_path: str | os.PathLike,
    out: str | os.PathLike,
    modality: str,
    input_size=None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    mode: str = "bilinear",
) -> Path:
    """Segment one volume with a 2D network; write its labels in the file's geometry (atomic).

    ``mode`` is the interpolation of the slice resize to ``input_size`` (the bundle's ``image_resize_mode``).
    """
    volume = prepare_volume(image_path, modality)
    labels = predict_volume(
        network, volume.image, input_size=input_size, batch_size=batch_size, device=device, mode=mode
    )
    return write_label(labels, volume, out)
