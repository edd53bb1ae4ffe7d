"""MONAI Label infer task: an S2S2 model segments a whole 3D volume slice by slice.

A :class:`~monailabel.tasks.infer.basic_infer.BasicInferTask` whose stages are the model's own
(:class:`~s2s2_monai.model.BundleModel` of the exported folder): the pre-transform is
:func:`~s2s2_monai.label_app.segment.prepare_volume` (NIfTI or DICOM, modality range check, the
bundle's ``train#deterministic_transforms``), the inferer is the model's
(:meth:`~s2s2_monai.model.BundleModel.inferer`), the writer is
:func:`~s2s2_monai.label_app.segment.write_label` (uint8 NIfTI on the grid of the input file).
Weights come from the folder's ``models/model.pt`` through the project's one weight loader
(``weights_only``, strict, finite, checked against ``models/model.json``), reloaded when the file
changes (after the train task).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from s2s2_monai.label_app.bundle import ModelBundle
from s2s2_monai.label_app.segment import prepare_volume, write_label

__all__ = ["S2S2InferTask", "PrepareVolumed"]

_VOLUME_KEY = "s2s2_volume"


class PrepareVolumed:
    """Dict transform: ``data["image"]`` (a path) -> (X, Y, Z) network input; keeps the geometry."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, data: dict) -> dict:
        volume = prepare_volume(data["image_path"], self.model)
        data[_VOLUME_KEY] = volume
        data["image"] = volume.image
        return data


class S2S2InferTask(BasicInferTask):
    """Segment a volume with an exported S2S2 model (see :mod:`s2s2_monai.label_app.bundle`).

    Args:
        bundle: the model folder.
        batch_size: slices per forward pass.
    """

    def __init__(self, bundle: ModelBundle, batch_size: int = 32) -> None:
        lm = bundle.label_map
        super().__init__(
            path=str(bundle.weights_path),
            network=bundle.build_network(),
            type=InferType.SEGMENTATION,
            labels=bundle.labels(),
            dimension=3,
            description=f"S2S2 2D network over axial slices: {lm.modality} {lm.anatomy}, {len(lm.ids)} organs ({lm.name} label map)",
            load_strict=True,
        )
        self.bundle = bundle
        self.batch_size = int(batch_size)
        self._loaded: tuple[tuple, object] | None = None

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update(
            {
                "modality": self.bundle.modality,
                "label_map": self.bundle.label_map.name,
                "input_size": self.bundle.input_size,
                "image_resize_mode": self.bundle.image_resize_mode,
            }
        )
        return info

    def pre_transforms(self, data=None):
        return [PrepareVolumed(self.bundle.model)]

    def post_transforms(self, data=None):
        return []

    def _get_network(self, device, data):
        """The weights of ``models/model.pt`` on ``device`` (the project's loader), reloaded when the file changes."""
        path = self.bundle.weights_path
        key = (str(device), path.stat().st_mtime_ns if path.exists() else None)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self.bundle.load_network(device))
        return self._loaded[1]

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cuda") -> dict:
        network = self._get_network(device, data)
        inferer = self.bundle.model.inferer(int(data.get("batch_size", self.batch_size)))
        data[self.output_label_key] = inferer(data["image"], network, device=device)
        return data

    def writer(self, data: dict, extension=None, dtype=None):
        volume = data[_VOLUME_KEY]
        fd, out = tempfile.mkstemp(suffix=".nii.gz", prefix="s2s2_label_")
        os.close(fd)
        write_label(data[self.output_label_key], volume, out)
        return out, {"label_names": self.labels, "model": self.bundle.name}
