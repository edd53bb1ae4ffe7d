"""Seeded scanner-artefact corruptions of whole volumes: bias field, ghosting, motion, spike.

The four corruptions and their settings are those of the robustness sets of Chen et al. (MICCAI
2021, upstream ``generate_artefacted_data.py``), made with TorchIO: ``RandomBiasField()``,
``RandomGhosting()``, ``RandomMotion(degrees=30, translation=10)``, ``RandomSpike()``. MONAI has
a bias field and a k-space spike (``RandBiasField``, ``RandKSpaceSpikeNoise``) but no ghosting or
motion, so TorchIO is used for all four for one consistent definition.

:func:`corrupt_volume` works in the network's input space (after the CT window / MRI
normalisation), as upstream: the volume is min-max scaled to [0, 1], corrupted as one 3D image
with its voxel spacing, min-max scaled back to [0, 1] (upstream ``rescale_intensity``) and mapped
back to the original range. The TorchIO draw uses torch's RNG forked and seeded with ``seed``,
so a (volume, corruption, seed) triple always gives the same copy and the global RNG is untouched.
:func:`copy_seed` derives the seed of copy ``k`` of a case from a base seed (stable across runs
and machines).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from s2s2_monai.errors import S2S2InputError

__all__ = ["CORRUPTIONS", "corruption_transform", "corrupt_volume", "copy_seed"]

#: name -> (TorchIO class name, keyword arguments); upstream settings.
CORRUPTIONS: dict[str, tuple[str, dict]] = {
    "bias_field": ("RandomBiasField", {}),
    "ghosting": ("RandomGhosting", {}),
    "motion": ("RandomMotion", {"degrees": 30, "translation": 10}),
    "spike": ("RandomSpike", {}),
}


def _torchio():
    try:
        import torchio
    except ImportError as exc:  # pragma: no cover - torchio is an install requirement
        raise S2S2InputError(None, "the robustness corruptions need TorchIO, which is not installed", "pip install torchio") from exc
    return torchio


def corruption_transform(name: str) -> Callable:
    """The TorchIO random transform of corruption ``name`` (see :data:`CORRUPTIONS`)."""
    if name not in CORRUPTIONS:
        raise S2S2InputError(None, f"unknown corruption {name!r}", f"use one of {', '.join(CORRUPTIONS)}")
    cls, kwargs = CORRUPTIONS[name]
    return getattr(_torchio(), cls)(**kwargs)


def copy_seed(base_seed: int, corruption: str, case_id: str, copy: int) -> int:
    """Seed of copy ``copy`` of ``case_id`` under ``corruption`` (CRC32 of the four, 31-bit)."""
    return zlib.crc32(f"{int(base_seed)}|{corruption}|{case_id}|{int(copy)}".encode()) & 0x7FFFFFFF


def _rescale01(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def corrupt_volume(image, corruption: str, seed: int, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """One seeded corrupted copy of a volume.

    Args:
        image: (X, Y, Z) or (1, X, Y, Z) array/tensor, intensity-transformed (network input space).
        corruption: a name of :data:`CORRUPTIONS`.
        seed: seed of the draw (same seed, same copy).
        spacing: voxel size in mm (motion translations are in mm).

    Returns:
        float32 (X, Y, Z) array in the value range of ``image``.
    """
    vol = torch.as_tensor(np.asarray(image.as_tensor() if hasattr(image, "as_tensor") else image), dtype=torch.float32)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {tuple(vol.shape)}")
    tio = _torchio()
    transform = corruption_transform(corruption)
    lo, hi = vol.min(), vol.max()
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    subject = tio.Subject(image=tio.ScalarImage(tensor=_rescale01(vol)[None], affine=affine))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        out = transform(subject)["image"].data[0].float()
    return (_rescale01(out) * (hi - lo) + lo).numpy().astype(np.float32)
