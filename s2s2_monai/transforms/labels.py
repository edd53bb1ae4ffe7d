"""Label id remapping (raw BTCV / TotalSegmentator ids -> the project's label maps)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform

from s2s2_monai.label_maps import LabelRemap, get_label_remap

__all__ = ["RemapLabels", "RemapLabelsd"]


class RemapLabels(Transform):
    """Map label ids through ``mapping``; every id not in it becomes 0.

    Args:
        mapping: ``{source id: target id}``, or the name of a registered
            :class:`~s2s2_monai.label_maps.LabelRemap` (e.g. ``"totalseg_to_synapse"``).

    Implemented as one lookup table indexed by the label values (O(voxels), any number of ids).
    Negative or non-integer label values raise ``ValueError``.
    """

    def __init__(self, mapping: Mapping[int, int] | str | LabelRemap) -> None:
        if isinstance(mapping, str):
            mapping = get_label_remap(mapping)
        if isinstance(mapping, LabelRemap):
            mapping = mapping.mapping
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        size = max(self.mapping, default=0) + 1
        self._lut = np.zeros(size, dtype=np.int64)
        for src, dst in self.mapping.items():
            self._lut[src] = dst

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        is_tensor = isinstance(label, torch.Tensor)
        arr = label.detach().cpu().numpy() if is_tensor else np.asarray(label)
        ids = arr.astype(np.int64)
        if ids.size and (ids.min() < 0 or not np.array_equal(ids, arr)):
            raise ValueError("label values must be non-negative integers")
        inside = ids < self._lut.size
        out = np.where(inside, self._lut[np.where(inside, ids, 0)], 0).astype(
            arr.dtype if arr.dtype != bool else np.uint8
        )
        if is_tensor:
            result = torch.as_tensor(out, device=label.device)
            if hasattr(label, "copy_meta_from"):
                result = type(label)(result, meta=label.meta)  # keep MetaTensor geometry
            return result
        return out


class RemapLabelsd(MapTransform):
    """Dictionary twin of :class:`RemapLabels`."""

    def __init__(
        self, keys: KeysCollection, mapping: Mapping[int, int] | str | LabelRemap, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.remap = RemapLabels(mapping)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.remap(d[key])
        return d
