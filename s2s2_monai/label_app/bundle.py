"""S2S2 models in the bundle layout MONAI Label expects: export one, load one.

An exported model is a folder::

    NAME/
      configs/train.json      the training config with every overlay merged in (self-contained)
      configs/inference.json  train.json + the bundle's inference.json overlay + the same overlays,
                              reading models/model.pt (when the bundle has an inference.json)
      configs/metadata.json   copied from the bundle (when it has one)
      models/model.pt         the network's ``state_dict`` (plain, strict-loadable)

This is MONAI's bundle layout (``configs/``, ``models/model.pt``), so the folder also runs with
``python -m monai.bundle run training --config_file NAME/configs/train.json``. The app reads the
network definition, label map and input size from it and loads the weights; the retrain task
overwrites ``models/model.pt`` atomically and the infer task reloads it (by modification time).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s2_monai.atomic import torch_save, write_json
from s2s2_monai.bundle_config import build_network, read_config
from s2s2_monai.checkpoints import file_sha256, read_state_dict, record_path
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LabelMap
from s2s2_monai.model import BundleModel

__all__ = [
    "TRAIN_CONFIG",
    "INFER_CONFIG",
    "METADATA",
    "WEIGHTS",
    "ModelBundle",
    "read_state_dict",
    "save_state_dict_atomic",
    "load_model_bundle",
    "export_bundle",
    "resolve_models",
]

TRAIN_CONFIG = "configs/train.json"
INFER_CONFIG = "configs/inference.json"
METADATA = "configs/metadata.json"
WEIGHTS = "models/model.pt"


@dataclass
class ModelBundle:
    """One exported model folder, parsed: its name, folder and :class:`~s2s2_monai.model.BundleModel`.

    Attributes:
        name: model name served by the app (the folder name).
        root: the folder.
        model: the model as its config defines it (network without weights, preprocessing, input
            size, resize mode, label map, modality); :meth:`load_model` adds the weights.
    """

    name: str
    root: Path
    model: BundleModel

    @property
    def weights_path(self) -> Path:
        return self.root / WEIGHTS

    @property
    def config(self) -> Path:
        return self.root / INFER_CONFIG if (self.root / INFER_CONFIG).is_file() else self.train_config

    @property
    def train_config(self) -> Path:
        return self.root / TRAIN_CONFIG

    @property
    def label_map(self) -> LabelMap:
        return self.model.label_map

    @property
    def input_size(self) -> tuple[int, ...] | None:
        return self.model.input_size

    @property
    def image_resize_mode(self) -> str:
        return self.model.image_resize_mode

    @property
    def modality(self) -> str:
        return self.model.modality

    def labels(self) -> dict[str, int]:
        """``{organ name: id}``, the form MONAI Label clients (3D Slicer, OHIF) expect."""
        return {self.label_map.name_of(i): i for i in self.label_map.ids}

    def build_network(self) -> torch.nn.Module:
        """A fresh (untrained) network from the bundle's ``network_def``."""
        return build_network(read_config([self.config], self.root), self.config)

    def load_model(self, device: torch.device | str = "cpu") -> BundleModel:
        """The model with ``models/model.pt`` loaded (strict, finite, checked against its record), on ``device``."""
        return BundleModel.from_configs(
            [self.config], checkpoint=self.weights_path, device=device, bundle_root=self.root
        )

    def load_network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The network with ``models/model.pt`` loaded, in eval mode on ``device``."""
        return self.load_model(device).network


def save_state_dict_atomic(state: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary name, then ``os.replace`` (readers never see half a file)."""
    path = torch_save({k: v.detach().cpu() for k, v in state.items()}, path)
    return path


def load_model_bundle(root: str | os.PathLike, name: str | None = None) -> ModelBundle:
    """Parse an exported model folder (see the module docstring for the layout).

    Raises:
        S2S2InputError: missing folder/config, no ``label_map``/``network_def``, unknown label map.
    """
    root = Path(root).resolve()
    if not (root / TRAIN_CONFIG).is_file() and not (root / INFER_CONFIG).is_file():
        raise S2S2InputError(
            root,
            f"no {TRAIN_CONFIG} here: not an exported S2S2 model",
            "create it with `s2s2 export-bundle --config bundles/synapse/train.json --checkpoint CKPT --out MODELS/NAME`",
        )
    config = root / INFER_CONFIG if (root / INFER_CONFIG).is_file() else root / TRAIN_CONFIG
    model = BundleModel.from_configs([config], device="cpu", bundle_root=root)
    return ModelBundle(name=name or root.name, root=root, model=model)


def export_bundle(
    config_files: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    force: bool = False,
    overrides: dict | None = None,
) -> ModelBundle:
    """Write a trained model as a MONAI Label model folder (see the module docstring).

    Args:
        config_files: the bundle's ``train.json`` then its overlays (e.g. ``demo.json``), as
            used for training; merged in order. A sibling ``inference.json`` / ``metadata.json``
            of the first file is exported too.
        checkpoint: the trained weights (plain state dict or a trainer checkpoint).
        out: the model folder to create; its name is the model name in MONAI Label.
        force: replace an existing ``out``.
        overrides: the ``--set`` overrides the model was trained with (e.g. ``{"hu_window": [-160, 240]}``);
            written into the exported configs.

    Raises:
        S2S2InputError: missing files, existing ``out`` without ``force``, weights that do not fit.
    """
    config_files = [Path(c) for c in config_files]
    if not config_files:
        raise S2S2InputError(
            None, "no config files given", "pass --config bundles/synapse/train.json (then any overlays)"
        )
    for c in config_files:
        if not c.is_file():
            raise S2S2InputError(
                c, "config file not found", "pass the bundle's train.json and the overlays used for training"
            )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise S2S2InputError(out, "already exists", "choose another --out or pass --force to replace it")
    model = BundleModel.from_configs(config_files, overrides, checkpoint=checkpoint, device="cpu")
    state = model.network.state_dict()
    first = config_files[0]
    overlays = config_files[1:]
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        (tmp / "configs").mkdir(parents=True)
        root = str(out.resolve())
        # self-contained: the label map is frozen (a datalist-declared one needs no datalist at inference)
        frozen = {"bundle_root": root, "label_map": model.label_map.to_dict()}
        merged = {**read_config(config_files, overrides=overrides).config, **frozen}
        (tmp / TRAIN_CONFIG).write_text(json.dumps(merged, indent=2) + "\n")
        if (first.parent / "inference.json").is_file():
            # the bundle's inference.json is an overlay of train.json: export both merged, reading our weights
            merged_inf = read_config([first, first.parent / "inference.json", *overlays], overrides=overrides).config
            merged_inf.update({**frozen, "model_path": "$@bundle_root + '/models/model.pt'"})
            (tmp / INFER_CONFIG).write_text(json.dumps(merged_inf, indent=2) + "\n")
        if (first.parent / "metadata.json").is_file():
            shutil.copyfile(first.parent / "metadata.json", tmp / METADATA)
        weights = save_state_dict_atomic(state, tmp / WEIGHTS)
        record = {**model.record, **model.describe(), "exported_from": str(checkpoint), "sha256": file_sha256(weights)}
        write_json(record_path(weights), record)
        load_model_bundle(tmp, name=out.name).load_model()  # the folder loads as the app will load it
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return load_model_bundle(out)


def resolve_models(models_dir: str | os.PathLike, models: str = "all") -> list[Path]:
    """Model folders named by ``models`` (``"all"`` or ``"a,b"``) under ``models_dir``.

    Raises:
        S2S2InputError: a named model is missing, or there is none at all.
    """
    models_dir = Path(models_dir)
    found = sorted(p.parent.parent for p in models_dir.glob("*/configs/train.json")) if models_dir.is_dir() else []
    names = [n.strip() for n in str(models).split(",") if n.strip()]
    if names in ([], ["all"]):
        if not found:
            raise S2S2InputError(
                models_dir,
                "holds no exported model",
                "create one with `s2s2 export-bundle --config bundles/synapse/train.json --checkpoint CKPT --out MODELS_DIR/NAME` and pass --conf models_dir MODELS_DIR",
            )
        return found
    by_name = {p.name: p for p in found}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise S2S2InputError(
            models_dir,
            f"no model folder for {missing} (available: {sorted(by_name)})",
            "export it with `s2s2 export-bundle ... --out MODELS_DIR/NAME` or fix --conf models",
        )
    return [by_name[n] for n in names]
