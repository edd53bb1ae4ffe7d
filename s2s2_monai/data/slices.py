"""Axial 2D slices of preprocessed volumes, with the volumes cached in memory.

:class:`VolumeCache` loads each case once (reoriented to RAS, intensity-transformed, labels
remapped) and keeps it as plain numpy arrays; :class:`SliceDataset` indexes ``(case, z)`` and
serves views into those arrays, so random slice access never reloads a file.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from s2s2_monai.data.cases import as_datalist, iter_cases
from s2s2_monai.data.datalist import Datalist
from s2s2_monai.data.volumes import CaseVolume

__all__ = ["VolumeCache", "SliceDataset"]


def _release_free_heap() -> None:
    """Hand the loaders' freed temporaries back to the OS (glibc keeps them otherwise, which
    inflates resident memory ~1.7x over the cached arrays); a no-op off glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class VolumeCache:
    """Preprocessed cases of one datalist section, loaded once and kept in memory.

    Args:
        datalist: a :class:`Datalist` or the path of a datalist JSON.
        section: ``"training"``, ``"validation"`` or ``"test"``.
        data_root: root for relative paths (default: the datalist's folder).
        intensity: image array transform; default from the datalist's modality.
        transform: dictionary transform over ``{"image", "label"}`` per volume instead (a bundle's
            ``train#deterministic_transforms``); see :mod:`s2s2_monai.data.cases`.
        progress: show a progress bar while loading.
    """

    def __init__(
        self,
        datalist: Datalist | str | os.PathLike,
        section: str = "training",
        data_root: str | os.PathLike | None = None,
        intensity: Callable | None = None,
        progress: bool = True,
        transform: Callable | None = None,
    ) -> None:
        self.datalist = as_datalist(datalist, data_root)
        self.section = section
        self.entries = self.datalist.items(section)
        self.cases: list[CaseVolume] = list(
            iter_cases(self.datalist, section, transform=transform, intensity=intensity, progress=progress)
        )
        _release_free_heap()

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> CaseVolume:
        return self.cases[i]

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached arrays."""
        return sum(c.nbytes for c in self.cases)


class SliceDataset(Dataset):
    """Axial slices ``(case, z)`` of cached volumes.

    Each item is a dict: ``image`` (1, X, Y) float32, ``label`` (1, X, Y) float32 class ids
    (absent for unlabelled cases), ``case_id``, ``slice_index``, ``spacing`` (2,) in mm, then
    ``transform`` (e.g. a MONAI dictionary ``Compose`` for resizing/augmentation) is applied.

    Args:
        volumes: a :class:`VolumeCache`, or a datalist (path) from which one is built.
        section: datalist section when ``volumes`` is a datalist.
        transform: dictionary transform applied to every item.
        labelled_only: keep only slices whose label has a foreground voxel.
        data_root: root for relative datalist paths.
    """

    def __init__(
        self,
        volumes: VolumeCache | Datalist | str | os.PathLike,
        section: str = "training",
        transform: Callable | None = None,
        labelled_only: bool = False,
        data_root: str | os.PathLike | None = None,
    ) -> None:
        self.volumes = volumes if isinstance(volumes, VolumeCache) else VolumeCache(volumes, section, data_root)
        self.transform = transform
        self.index: list[tuple[int, int]] = []
        for ci, case in enumerate(self.volumes.cases):
            zs: Sequence[int] = range(case.num_slices)
            if labelled_only and case.label is not None:
                zs = np.flatnonzero(case.label.reshape(-1, case.num_slices).any(axis=0)).tolist()
            self.index.extend((ci, int(z)) for z in zs)

    def __len__(self) -> int:
        return len(self.index)

    def slice_item(self, i: int) -> dict:
        """The raw item of index ``i`` before ``transform``."""
        ci, z = self.index[i]
        case = self.volumes.cases[ci]
        item = {
            "image": torch.from_numpy(case.image[None, :, :, z].copy()),
            "case_id": case.case_id,
            "slice_index": z,
            "spacing": torch.as_tensor(case.spacing[:2], dtype=torch.float32),
        }
        if case.label is not None:
            item["label"] = torch.from_numpy(case.label[None, :, :, z].astype(np.float32))
        return item

    def __getitem__(self, i: int) -> dict:
        item = self.slice_item(i)
        return self.transform(item) if self.transform is not None else item
