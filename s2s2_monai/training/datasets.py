"""The training dataset of a bundle: S2S2 pairs (x0, x1, y) or, for the baseline, plain slices."""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["training_dataset"]


def training_dataset(
    datalist: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    stack_dir: str | os.PathLike | None = None,
    section: str = "training",
    labelled_only: bool = False,
    volumes=None,
):
    """Training slices: S2S2 pairs (``image``, ``image_stack``, ``label``) when ``stack_dir`` is given,
    else plain slices (the baseline). ``transform`` sees all keys of an item at once.

    ``volumes``: the preprocessed cases (a :class:`~s2s2_monai.data.slices.VolumeCache`, as the bundles
    build it with their ``train#deterministic_transforms``); default loaded from ``datalist``.
    """
    from s2s2_monai.data.slices import SliceDataset, VolumeCache

    if volumes is None:
        volumes = VolumeCache(datalist, section, data_root)
    if stack_dir is None:
        return SliceDataset(volumes, section, transform=transform, labelled_only=labelled_only)
    from s2s2_monai.stack.pairs import StackPairDataset

    return StackPairDataset(SliceDataset(volumes, section, labelled_only=labelled_only), stack_dir, transform=transform)
