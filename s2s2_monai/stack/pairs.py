"""Paired sampling for S2S2 training: real slice x0, one stack member x1, the label.

For a slice of a :class:`~s2s2_monai.data.slices.SliceDataset`, the content key of its stack is
recomputed from its mask, its prompt and the generator settings stored in the cache's manifest,
one member is drawn uniformly (with the generator given to :meth:`StackPairDataset.pair`; by default
torch's global RNG, so ``monai.utils.set_determinism`` and DataLoader worker seeding control it), mapped
from unit space back to the network's intensity space, and attached as ``image_stack`` *before*
``transform`` runs. A MONAI dictionary transform on ``keys=["image", "image_stack", "label"]`` thus
applies the same random geometry to all three. Training draws the member of item ``i`` from a generator
seeded per epoch and item (:class:`~s2s2_monai.training.datasets.TrainingDataset`), so a resumed run
draws what an uninterrupted one does.

No member is resized here: it is stored on the slice's own grid (the diffusion generator resized it back
from its generation resolution with the stack's ``resize_mode``, recorded in the manifest; the appearance
generator draws on that grid) and must have the slice's shape. Any later resize (the bundle's
``train#resize`` to ``input_size``) is the ``transform``'s, applied to x0, x1 and the label alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.stack.base import UnitIntensity
from s2s2_monai.stack.cache import CorruptEntryError, StackCache, entry_key, from_uint8
from s2s2_monai.stack.prompts import build_prompt

__all__ = ["StackPairDataset"]


class StackPairDataset(Dataset):
    """Items ``image`` (x0), ``image_stack`` (x1), ``label``, ``case_id``, ``slice_index``, ``member``.

    Args:
        slice_dataset: a ``SliceDataset`` (its own ``transform`` must be ``None``: give it here).
        cache_dir: a stack cache built by ``s2s2 stack build``.
        transform: MONAI dictionary transform applied after x1 is attached.
        generator: if given, the cache must have been built with this generator name.
        check: at construction, fail fast if any slice has no stack entry or a damaged one
            (header checksum and file size; member checksums are checked on every read).

    Raises:
        S2S2InputError: no cache, another label map, a slice without an entry or with a corrupt one
            (names the case, slice and entry file and says to run ``s2s2 stack build``).
    """

    def __init__(
        self,
        slice_dataset,
        cache_dir: str | os.PathLike,
        transform: Callable | None = None,
        generator: str | None = None,
        check: bool = True,
    ) -> None:
        if getattr(slice_dataset, "transform", None) is not None:
            raise ValueError(
                "give the transform to StackPairDataset (so it also sees image_stack), not to the SliceDataset"
            )
        self.slices = slice_dataset
        self.cache = StackCache(cache_dir)
        self.transform = transform
        manifest = self.cache.manifest
        label_map = slice_dataset.volumes.datalist.label_map
        if generator is not None and manifest["generator"] != generator:
            raise S2S2InputError(
                cache_dir,
                f"stack was built with generator {manifest['generator']!r}, not {generator!r}",
                f"rebuild it with `s2s2 stack build --generator {generator}`",
            )
        if manifest.get("label_map") != label_map.name:
            raise S2S2InputError(
                cache_dir,
                f"stack was built for label map {manifest.get('label_map')!r}, the data uses {label_map.name!r}",
                "build the stack from this datalist with `s2s2 stack build`",
            )
        self.label_map = label_map
        self.unit = UnitIntensity(*manifest["unit"])
        self.n = int(manifest["n"])
        self._keys: dict[tuple[int, int], str] = {}
        self._checked: set[str] = set()
        if check:
            for i in range(len(self.slices)):
                self._require(i)

    def __len__(self) -> int:
        return len(self.slices)

    def key_of(self, i: int) -> str:
        """Content key of slice ``i``'s stack, recomputed from its mask and the manifest."""
        ci, z = self.slices.index[i]
        if (ci, z) not in self._keys:
            case = self.slices.volumes.cases[ci]
            if case.label is None:
                raise S2S2InputError(
                    case.image_path,
                    f"case {case.case_id} has no label, so it has no stack",
                    "use labelled training cases",
                )
            mask = case.label[:, :, z]
            self._keys[(ci, z)] = entry_key(mask, build_prompt(mask, self.label_map), self.cache.manifest)
        return self._keys[(ci, z)]

    def _missing(self, i: int) -> S2S2InputError:
        ci, z = self.slices.index[i]
        case = self.slices.volumes.cases[ci]
        return S2S2InputError(
            self.cache.root,
            f"no stack entry for case {case.case_id} slice {z} (with the generator settings of this cache)",
            f"run `{self._build_command()}`",
        )

    def _corrupt(self, i: int, key: str, why: str) -> S2S2InputError:
        ci, z = self.slices.index[i]
        case = self.slices.volumes.cases[ci]
        return S2S2InputError(
            self.cache.entry_path(key),
            f"stack entry of case {case.case_id} slice {z} is corrupt ({why})",
            f"run `{self._build_command()}` to rebuild corrupt entries "
            f"(`s2s2 stack verify {self.cache.root}` lists them)",
        )

    def _build_command(self) -> str:
        """The ``s2s2 stack build`` line that completes this very stack (its generator, n, seed, QC, resize mode)."""
        from s2s2_monai.stack.build import manifest_build_command

        return manifest_build_command(self.cache.manifest, self.slices.volumes.datalist.path, self.cache.root)

    def _require(self, i: int) -> str:
        key = self.key_of(i)
        if key not in self._checked:
            status = self.cache.check_entry(key, full=False)
            if status == "missing":
                raise self._missing(i)
            if status == "corrupt":
                raise self._corrupt(i, key, "truncated or damaged header")
            self._checked.add(key)
        return key

    def __getitem__(self, i: int) -> dict:
        return self.pair(i)

    def pair(self, i: int, generator: torch.Generator | None = None) -> dict:
        """Item ``i`` with its member drawn from ``generator`` (default torch's global RNG), after ``transform``."""
        item = self.slices.slice_item(i)
        member = int(torch.randint(self.n, (1,), generator=generator).item())
        key = self.key_of(i)
        try:  # no separate existence check: the read itself says when the entry is missing
            x1 = self.cache.read_member(key, member)
        except (KeyError, FileNotFoundError):
            raise self._missing(i) from None
        except CorruptEntryError as exc:
            raise self._corrupt(i, key, str(exc)) from None
        if x1.shape != tuple(item["image"].shape[1:]):
            raise S2S2InputError(
                self.cache.root,
                f"stack of case {item['case_id']} slice {item['slice_index']} is {x1.shape}, the slice is {tuple(item['image'].shape[1:])}",
                "rebuild the stack from this datalist",
            )
        item["image_stack"] = torch.from_numpy(self.unit.from_unit(from_uint8(x1))[None].astype(np.float32))
        item["member"] = member
        return self.transform(item) if self.transform is not None else item
