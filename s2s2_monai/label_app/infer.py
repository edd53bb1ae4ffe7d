"""MONAI Label infer task: an S2S2 model segments a whole 3D volume slice by slice.

A :class:`~monailabel.tasks.infer.basic_infer.BasicInferTask` whose stages are the model's own
(:class:`~s2s2_monai.model.BundleModel` of the exported folder): the pre-transform is
:func:`~s2s2_monai.label_app.segment.prepare_volume` (NIfTI or DICOM, modality range check, the
bundle's ``train#deterministic_transforms``), the inferer is the model's
(:meth:`~s2s2_monai.model.BundleModel.inferer`), the writer is
:func:`~s2s2_monai.label_app.segment.write_label` (uint8 NIfTI on the grid of the input file).
Weights come from the folder's ``models/model.pt`` through the project's one weight loader
(``weights_only``, strict, finite, checked against ``models/model.json``), reloaded when the file
changes (after the train task or ``PUT /model/{name}``). :meth:`S2S2InferTask._get_network` replaces
``BasicInferTask``'s, the only place where MONAI Label would ``torch.load`` the weights (without
``weights_only``); the base class's ``__init__``/``is_valid``/``get_path`` only look at the path.

Hostile input: :meth:`S2S2InferTask.check_request` refuses bad request parameters before any work,
and :func:`check_declared_size` refuses a NIfTI file whose header declares more voxels than
``max_voxels`` before its data is decompressed (:class:`VolumeTooLarge`, HTTP 413 in the app).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from s2s2_monai.checkpoints import weights_digest
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_app.bundle import ModelBundle
from s2s2_monai.label_app.segment import prepare_volume, write_label

__all__ = ["S2S2InferTask", "PrepareVolumed", "VolumeTooLarge", "check_declared_size", "DEFAULT_MAX_VOXELS"]

_VOLUME_KEY = "s2s2_volume"

#: Default cap on the voxels an image may declare: 2**28 (e.g. 512 x 512 x 1024), ~1 GiB as float32.
DEFAULT_MAX_VOXELS = 2**28

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


class VolumeTooLarge(S2S2InputError):
    """The image declares more voxels than the server accepts (the app answers HTTP 413)."""


def check_declared_size(path: str | os.PathLike, max_voxels: int) -> None:
    """Refuse a NIfTI file whose header declares more than ``max_voxels`` voxels, before reading its data.

    Only the header is read (nibabel loads lazily; of a ``.nii.gz`` only the first bytes are
    decompressed), so a small file that unpacks to a huge volume is refused in milliseconds. A header
    that cannot be read passes: the reader then reports the file as unreadable. DICOM folders are not
    checked (their size is the files' size).

    Raises:
        VolumeTooLarge: the declared shape holds more than ``max_voxels`` voxels.
    """
    path = Path(path)
    if not (path.is_file() and path.name.endswith(_NIFTI_SUFFIXES)):
        return
    import nibabel as nib

    try:
        shape = tuple(int(d) for d in nib.load(str(path)).header.get_data_shape())
    except Exception:  # noqa: BLE001 - the reader gives the one "cannot read this NIfTI file" error
        return
    voxels = math.prod(shape)
    if voxels > max_voxels:
        raise VolumeTooLarge(
            path,
            f"the image declares {voxels} voxels (shape {shape}), more than this server accepts "
            f"(max_voxels {max_voxels})",
            "send a smaller volume (crop or resample it), or start the server with a larger --conf max_voxels",
        )


class PrepareVolumed:
    """Dict transform: ``data["image"]`` (a path) -> (X, Y, Z) network input; keeps the geometry.

    Args:
        model: the :class:`~s2s2_monai.model.BundleModel`.
        max_voxels: the most voxels a NIfTI header may declare (:func:`check_declared_size`).
    """

    def __init__(self, model, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
        self.model = model
        self.max_voxels = int(max_voxels)

    def __call__(self, data: dict) -> dict:
        path = data.get("image_path")
        if not isinstance(path, (str, os.PathLike)):
            raise S2S2InputError(None, "the image is not a file path", "send image=ID or upload a .nii.gz file")
        if os.path.isfile(path) and not str(path).endswith(_NIFTI_SUFFIXES):
            raise S2S2InputError(
                None, "not a NIfTI file", "send a .nii or .nii.gz file (or a study id of the server's studies folder)"
            )
        check_declared_size(path, self.max_voxels)
        volume = prepare_volume(path, self.model)
        data[_VOLUME_KEY] = volume
        data["image"] = volume.image
        return data


def _positive_int(value: Any, key: str, example: int) -> int:
    """``value`` as an int >= 1 (numbers and numeric strings); S2S2InputError otherwise."""
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < 1:
        raise S2S2InputError(
            None, f"request parameter {key!r} is {value!r}", f'pass a whole number >= 1, e.g. {{"{key}": {example}}}'
        )
    return number


class S2S2InferTask(BasicInferTask):
    """Segment a volume with an exported S2S2 model (see :mod:`s2s2_monai.label_app.bundle`).

    Args:
        bundle: the model folder.
        batch_size: slices per forward pass.
        max_voxels: the most voxels an input NIfTI header may declare.
    """

    def __init__(self, bundle: ModelBundle, batch_size: int = 32, max_voxels: int = DEFAULT_MAX_VOXELS) -> None:
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
        self.max_voxels = int(max_voxels)
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

    def check_request(self, request: dict) -> None:
        """Refuse request parameters this task cannot use, before any work.

        ``batch_size`` must be a whole number >= 1, ``device`` ``cpu``/``cuda``/``cuda:N``,
        ``logging`` a log level name.

        Raises:
            S2S2InputError: the first bad parameter, with a valid example.
        """
        if "batch_size" in request:
            _positive_int(request["batch_size"], "batch_size", self.batch_size)
        device = request.get("device")
        devices = device if isinstance(device, (list, tuple)) else [device]
        if device is not None and not all(isinstance(d, str) and _DEVICE.match(d) for d in devices):
            raise S2S2InputError(None, f"request parameter 'device' is {device!r}", 'pass "cpu", "cuda" or "cuda:N"')
        level = request.get("logging")
        if level is not None and not (isinstance(level, str) and level.upper() in _LOG_LEVELS):
            raise S2S2InputError(
                None, f"request parameter 'logging' is {level!r}", f"pass one of {sorted(_LOG_LEVELS)}, or leave it out"
            )

    def pre_transforms(self, data=None):
        return [PrepareVolumed(self.bundle.model, self.max_voxels)]

    def post_transforms(self, data=None):
        return []

    def _get_network(self, device, data):
        """The weights of ``models/model.pt`` on ``device`` (the project's loader), reloaded when its content changes.

        Replaces ``BasicInferTask._get_network`` (``torch.load`` without ``weights_only``, a
        client-chosen ``model_filename``): only the bundle's own file, read ``weights_only``.
        """
        path = self.bundle.weights_path
        key = (str(device), weights_digest(path))
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self.bundle.load_network(device))
        return self._loaded[1]

    def run_inferer(self, data: dict, convert_to_batch: bool = True, device: str = "cuda") -> dict:
        network = self._get_network(device, data)
        batch_size = _positive_int(data.get("batch_size", self.batch_size), "batch_size", self.batch_size)
        inferer = self.bundle.model.inferer(batch_size)
        data[self.output_label_key] = inferer(data["image"], network, device=device)
        return data

    def writer(self, data: dict, extension=None, dtype=None):
        volume = data[_VOLUME_KEY]
        fd, out = tempfile.mkstemp(suffix=".nii.gz", prefix="s2s2_label_")
        os.close(fd)
        try:
            write_label(data[self.output_label_key], volume, out)
        except BaseException:
            Path(out).unlink(missing_ok=True)
            raise
        return out, {"label_names": self.labels, "model": self.bundle.name}
