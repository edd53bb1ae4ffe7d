"""The training dataset of a bundle: S2S2 pairs (x0, x1, y) or, for the baseline, plain slices.

Both come wrapped in a :class:`TrainingDataset`, whose items are drawn from a seed per item once the
trainer gives it the epoch's seed (:class:`~s2s2_monai.training.seeding.EpochSeeding`): item ``i`` of
epoch ``k`` is then the same tensor in every process, with any number of DataLoader workers, and in a
run resumed at epoch ``k``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["training_dataset", "TrainingDataset", "item_seeds"]


def item_seeds(epoch_seed: int, index: int) -> tuple[int, int]:
    """``(member seed, transform seed)`` of item ``index`` from the epoch's item stream (``SeedSequence``)."""
    member, transform = np.random.SeedSequence([int(epoch_seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int(member), int(transform)


class TrainingDataset(Dataset):
    """A training dataset (``SliceDataset`` or ``StackPairDataset``) whose items are seeded per item.

    Until :meth:`set_epoch_seed` is called, items are drawn as the wrapped dataset draws them (torch's global
    generator for the stack member, the transforms' own ``RandomState``). After it, item ``i`` draws its
    stack member from a generator seeded with :func:`item_seeds` ``(epoch seed, i)`` and the wrapped
    dataset's ``transform`` is re-seeded (``monai.data.utils.set_rnd``) with the second seed before it
    runs: the item depends on ``(epoch seed, i)`` only. The epoch seed lives in shared memory, so
    DataLoader workers (persistent ones too) see the value the main process sets before each epoch.

    Args:
        dataset: the wrapped dataset; its ``transform`` (if any) is the one re-seeded.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch_seed = torch.full((), -1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # the wrapped dataset's attributes (``slices``, ``cache``, ``n``, ...)
        if name.startswith("__") or name in ("dataset", "_epoch_seed"):  # pickling / copying an empty instance
            raise AttributeError(name)
        return getattr(self.dataset, name)

    @property
    def transform(self) -> Callable | None:
        """The wrapped dataset's transform."""
        return getattr(self.dataset, "transform", None)

    def set_epoch_seed(self, seed: int | None) -> None:
        """Seed of the items of the coming epoch (``None``: draw as the wrapped dataset does)."""
        self._epoch_seed.fill_(-1 if seed is None else int(seed) & (2**63 - 1))

    @property
    def epoch_seed(self) -> int | None:
        """The current epoch seed (``None`` when unset)."""
        value = int(self._epoch_seed)
        return None if value < 0 else value

    def __getitem__(self, i: int) -> dict:
        seed = self.epoch_seed
        if seed is None:
            return self.dataset[i]
        from monai.data.utils import set_rnd

        member_seed, transform_seed = item_seeds(seed, i)
        if self.transform is not None:
            set_rnd(self.transform, transform_seed)
        pair = getattr(self.dataset, "pair", None)
        if pair is not None:  # StackPairDataset: the member draw takes a generator
            return pair(i, generator=torch.Generator().manual_seed(member_seed))
        return self.dataset[i]


def training_dataset(
    datalist: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    stack_dir: str | os.PathLike | None = None,
    section: str = "training",
    labelled_only: bool = False,
    volumes=None,
) -> TrainingDataset:
    """Training slices: S2S2 pairs (``image``, ``image_stack``, ``label``) when ``stack_dir`` is given,
    else plain slices (the baseline), as a :class:`TrainingDataset`. ``transform`` sees all keys of an item at once.

    ``volumes``: the preprocessed cases (a :class:`~s2s2_monai.data.slices.VolumeCache`, as the bundles
    build it with their ``train#deterministic_transforms``); default loaded from ``datalist``.
    """
    from s2s2_monai.data.slices import SliceDataset, VolumeCache

    if volumes is None:
        volumes = VolumeCache(datalist, section, data_root)
    if stack_dir is None:
        return TrainingDataset(SliceDataset(volumes, section, transform=transform, labelled_only=labelled_only))
    from s2s2_monai.stack.pairs import StackPairDataset

    slices = SliceDataset(volumes, section, labelled_only=labelled_only)
    return TrainingDataset(StackPairDataset(slices, stack_dir, transform=transform))
