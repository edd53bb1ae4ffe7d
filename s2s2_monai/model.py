"""A trained model is one object: :class:`BundleModel`.

What a model needs at test time, read from its bundle config (+ overrides, + a checkpoint), in one
place, in the manner of an nnU-Net results folder with its plans:

- the network (``network_def``), weights loaded strictly with ``weights_only`` and checked finite;
- *the* preprocessing: the bundle's ``train#deterministic_transforms`` (CT window, MRI normalisation,
  label remap), the arrays training saw;
- input size and the image resize mode, the inference procedure (slice inference, or TransUNet's
  legacy round trip) and the HD95 definition;
- the label map (organ names, modality);
- the ``models/model.json`` record of the weights (which epoch, chosen how) and what they were
  trained with: a checkpoint whose record names another preprocessing, label map or input size than
  the config is refused, so a setting changed for training cannot be silently dropped at test time.

Every consumer takes it: stack build and ControlNet fine-tuning (:meth:`volumes`), validation and the
evaluate / inference bundles (config id ``model``), ``s2s2 predict``, ``s2s2 robustness``,
``s2s2 ablation``, ``s2s2 export-bundle`` and the MONAI Label app (:meth:`from_configs`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LabelMap, get_label_map

__all__ = ["BundleModel", "RECORDED_SETTINGS"]

#: What ``model.json`` records of the model besides the weights' provenance; a consumer must agree on each.
RECORDED_SETTINGS = ("label_map", "preprocessing", "input_size", "image_resize_mode")


class BundleModel:
    """A segmentation model as its bundle defines it (see the module docstring).

    Args:
        network: the 2D network (B, 1, H, W) -> (B, K, H, W).
        preprocessing: the bundle's ``train#deterministic_transforms`` (a list, or one dictionary
            transform over ``{"image", "label"}``).
        label_map: a :class:`LabelMap`, a registry name or a label-map dict (organ names, modality).
        input_size: (H, W) the network takes; ``None`` feeds slices at their own size.
        image_resize_mode: interpolation of the image slices to ``input_size`` (the training resize's).
        hd95: HD95 definition reports use.
        legacy_transunet: TransUNet's inference and metric protocol instead of the spacing-aware default.
        batch_size: slices per forward pass.
        checkpoint: weights to load now (strict, finite, checked against their record).
        where: the config file named in errors.
    """

    def __init__(
        self,
        network,
        preprocessing,
        label_map: LabelMap | str | Mapping = "synapse",
        input_size: Sequence[int] | None = None,
        image_resize_mode: str = "bilinear",
        hd95: str | None = None,
        legacy_transunet: bool = False,
        batch_size: int = 32,
        checkpoint: str | os.PathLike | None = None,
        where: str | os.PathLike | None = None,
    ) -> None:
        from monai.transforms import Compose

        from s2s2_monai.evaluation.names import DEFAULT_HD95

        self.network = network
        self.preprocessing = Compose(list(preprocessing)) if isinstance(preprocessing, (list, tuple)) else preprocessing
        try:
            self.label_map = get_label_map(label_map)
        except (KeyError, ValueError) as exc:
            raise S2S2InputError(where, f"label_map: {exc.args[0]}", "set label_map to a known name or a map") from None
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.image_resize_mode = str(image_resize_mode)
        self.hd95 = hd95 or DEFAULT_HD95
        self.legacy_transunet = bool(legacy_transunet)
        self.batch_size = int(batch_size)
        self.where = None if where is None else str(where)
        self.checkpoint: Path | None = None
        self.record: dict = {}
        if checkpoint is not None:
            self.load_weights(checkpoint)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_configs(
        cls,
        config_files: Sequence[str | os.PathLike],
        overrides: Mapping[str, Any] | None = None,
        checkpoint: str | os.PathLike | None = None,
        device=None,
        bundle_root: str | os.PathLike | None = None,
    ) -> BundleModel:
        """The config id ``model`` of the bundle ``config_files`` (merged in order) with ``overrides``.

        Args:
            config_files: ``train.json`` then the overlays the model was trained with.
            overrides: ``{id: value}`` as ``--KEY VALUE`` of ``monai.bundle run`` (e.g. ``{"hu_window": [-160, 240]}``).
            checkpoint: weights file (``models/model.pt`` or an interval checkpoint).
            device: where the network runs (default: the config's ``device``).
            bundle_root: override of the config's ``bundle_root`` (an exported model folder).

        Raises:
            S2S2InputError: missing config, a config without ``model``, weights that do not fit.
        """
        from s2s2_monai.bundle_config import parse_setting, read_config

        parser = read_config(config_files, bundle_root, overrides)
        where = str(config_files[-1]) if config_files else None
        if device is not None:
            parser["device"] = f"$torch.device({str(device)!r})"
        if "model" not in parser:
            raise S2S2InputError(
                where,
                "the config has no 'model' (the BundleModel every stage uses)",
                "use the project's bundles/synapse/train.json (or export the model again with s2s2 export-bundle)",
            )
        parser["model#checkpoint"] = None
        parser["model#where"] = where
        model = parse_setting(parser, "model", where, "fix the bundle config (or the --set overrides)")
        model.parser = parser
        if checkpoint is not None:
            model.load_weights(checkpoint)
        return model

    @staticmethod
    def preprocessing_from_configs(
        config_files: Sequence[str | os.PathLike], overrides: Mapping[str, Any] | None = None
    ):
        """Only the bundle's ``train#deterministic_transforms`` as one transform (no network is built).

        For the jobs that need the intensities but not the network: stack build and ControlNet
        fine-tuning. Pass the datalist as an override (``{"datalist": ...}``): the preprocessing
        follows its modality.
        """
        from monai.transforms import Compose

        from s2s2_monai.bundle_config import parse_setting, read_config

        parser = read_config(config_files, None, overrides)
        where = str(config_files[-1]) if config_files else None
        transforms = parse_setting(parser, "train#deterministic_transforms", where, "fix the bundle config")
        return Compose(list(transforms)) if isinstance(transforms, (list, tuple)) else transforms

    # ------------------------------------------------------------------ weights
    def load_weights(self, checkpoint: str | os.PathLike) -> BundleModel:
        """Load ``checkpoint`` strictly (finite tensors only), check its record, switch to eval mode."""
        from s2s2_monai.checkpoints import load_weights, model_record

        record = model_record(checkpoint)
        self.check_record(record, checkpoint)  # first: "trained with other settings" says more than a shape error
        load_weights(self.network, checkpoint)
        self.checkpoint, self.record = Path(checkpoint), record
        self.network.eval()
        return self

    def describe(self) -> dict:
        """The settings a checkpoint's record must agree with (:data:`RECORDED_SETTINGS`), JSON-safe."""
        from s2s2_monai.transforms.describe import describe_transform

        return {
            "label_map": self.label_map.to_dict(),
            "preprocessing": describe_transform(self.preprocessing),
            "input_size": None if self.input_size is None else list(self.input_size),
            "image_resize_mode": self.image_resize_mode,
        }

    def check_record(self, record: Mapping, checkpoint: str | os.PathLike) -> None:
        """Refuse weights whose record says they were trained with other settings than this config's."""
        mine = self.describe()
        differ = [k for k in RECORDED_SETTINGS if k in record and record[k] != mine[k]]
        if differ:
            details = "; ".join(_first_difference(record[k], mine[k], k) for k in differ)
            raise S2S2InputError(
                checkpoint,
                f"these weights were trained with other settings than the config gives ({details})",
                "give the config files and --set overrides the model was trained with (its models/model.json "
                "records them; a label map declared by a datalist: --set datalist=THAT.json)",
            )

    @property
    def device(self):
        from s2s2_monai.evaluation.inference import network_device

        return network_device(self.network)

    @property
    def modality(self) -> str:
        return self.label_map.modality

    def provenance(self) -> dict | None:
        """What a report says of the weights: the checkpoint file and its record (``None`` without weights)."""
        if self.checkpoint is None:
            return None
        record = {k: v for k, v in self.record.items() if k not in RECORDED_SETTINGS}
        return {
            "checkpoint": str(self.checkpoint),
            "selection": record.get("selection", "unknown (no model.json)"),
            **record,
        }

    # ------------------------------------------------------------------ data the network sees
    def load_case(self, image, label=None, case_id: str | None = None, check_modality: bool = False):
        """One image (and label) read, reoriented to RAS and preprocessed as in training: a :class:`CaseVolume`.

        ``check_modality``: refuse a volume whose raw intensities do not fit the model's modality (an MRI
        sent to a CT model), :func:`~s2s2_monai.data.modality.check_modality_range`.
        """
        from s2s2_monai.data.modality import check_modality_range
        from s2s2_monai.data.volumes import load_case

        def check(raw, path):
            check_modality_range(raw, self.modality, path)

        return load_case(
            image,
            label,
            case_id=case_id,
            transform=self.preprocessing,
            check_image=check if check_modality else None,
        )

    def cases(
        self,
        datalist,
        section: str,
        data_root: str | os.PathLike | None = None,
        labelled_only: bool = False,
        progress: bool = False,
        desc: str | None = None,
        preprocessing: Callable | None = None,
    ) -> Iterator:
        """The cases of a datalist section preprocessed as in training (``preprocessing`` overrides it).

        Raises:
            S2S2InputError: the datalist declares other organs than the model predicts.
        """
        from s2s2_monai.data.cases import as_datalist, iter_cases

        dl = as_datalist(datalist, data_root)
        self.check_datalist(dl)
        yield from iter_cases(
            dl,
            section,
            transform=preprocessing or self.preprocessing,
            labelled_only=labelled_only,
            progress=progress,
            desc=desc,
        )

    def volumes(self, datalist, section: str = "training", data_root=None, progress: bool = True):
        """A :class:`~s2s2_monai.data.slices.VolumeCache` of the section, preprocessed as in training."""
        from s2s2_monai.data.cases import as_datalist
        from s2s2_monai.data.slices import VolumeCache

        dl = as_datalist(datalist, data_root)
        self.check_datalist(dl)
        return VolumeCache(dl, section, transform=self.preprocessing, progress=progress)

    def check_datalist(self, dl) -> None:
        """Refuse a datalist whose label map differs from the model's (other organ ids or names)."""
        dl.require_label_map(
            self.label_map,
            "the model's",
            "use a datalist of the model's label map (or remap its labels with label_remap)",
        )

    # ------------------------------------------------------------------ inference
    def inferer(self, batch_size: int | None = None):
        """The one place that chooses the inference procedure: a :class:`SliceVolumeInferer` of the model's settings."""
        from s2s2_monai.evaluation.inferer import SliceVolumeInferer

        return SliceVolumeInferer(
            input_size=self.input_size,
            batch_size=batch_size or self.batch_size,
            legacy_transunet=self.legacy_transunet,
            mode=self.image_resize_mode,
        )

    def segment(self, image, device=None, batch_size: int | None = None):
        """(X, Y, Z) preprocessed volume -> int64 (X, Y, Z) class ids on ``device`` (default the network's)."""
        return self.inferer(batch_size)(image, self.network, device=device)

    def metric_table(self):
        """An empty :class:`~s2s2_monai.evaluation.metric_table.MetricTable` of the model's organs, protocol and weights."""
        from s2s2_monai.evaluation.metric_table import MetricTable

        return MetricTable(
            self.label_map.classes,
            hd95=self.hd95,
            legacy_transunet=self.legacy_transunet,
            label_map=self.label_map.name,
            model=self.provenance(),
        )

    def __repr__(self) -> str:
        weights = self.checkpoint or "no weights loaded"
        return (
            f"BundleModel({type(self.network).__name__}, {self.label_map.name} {self.modality} "
            f"{len(self.label_map.ids)} organs, input {self.input_size}, {weights})"
        )


def _first_difference(trained, config, path: str) -> str:
    """``"path.to.leaf: trained X, config Y"`` for the first place two JSON values differ."""
    if isinstance(trained, dict) and isinstance(config, dict):
        for key in sorted(set(trained) | set(config), key=lambda k: (k not in ("classes", "transforms"), k)):
            if trained.get(key) != config.get(key):
                return _first_difference(trained.get(key), config.get(key), f"{path}.{key}")
    if isinstance(trained, list) and isinstance(config, list) and len(trained) == len(config):
        for i, (a, b) in enumerate(zip(trained, config)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path}: trained {_short(trained)}, config {_short(config)}"


def _short(value, n: int = 80) -> str:
    import json

    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= n else text[: n - 3] + "..."
