"""Run an exported model's own training bundle on MONAI Label's labelled studies.

:func:`write_studies_datalist` turns the studies' (image, final label) pairs into a datalist;
:func:`retrain` runs ``configs/train.json`` of the model folder in this process with
:func:`s2s2_monai.bundle_runner.run_training_bundle` (MONAI's ``ConfigWorkflow``; the same config as
``python -m monai.bundle run training``, S2S2 stack optional), starting from the current weights, then
publishes the best (or last) weights atomically as ``models/model.pt``, which the infer task picks up on
its next request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s2s2_monai.atomic import write_json
from s2s2_monai.checkpoints import file_sha256, model_record, record_path
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_app.bundle import METADATA, ModelBundle, read_state_dict, save_state_dict_atomic
from s2s2_monai.label_maps import LabelMap

__all__ = ["split_items", "write_studies_datalist", "retrain"]

logger = logging.getLogger(__name__)


def split_items(items: Sequence[Mapping], val_split: float = 0.2) -> tuple[list[dict], list[dict]]:
    """(training, validation): the last ``ceil(n * val_split)`` items (at least one) validate.

    A single labelled study is used for both (training still runs; the score is optimistic).

    Raises:
        S2S2InputError: no labelled study.
    """
    items = [dict(i) for i in items]
    if not items:
        raise S2S2InputError(
            None,
            "no labelled study to train on",
            "save at least one final label (3D Slicer: 'Submit Label') before training",
        )
    if len(items) == 1:
        return items, items
    n_val = min(len(items) - 1, max(1, math.ceil(len(items) * float(val_split))))
    return items[:-n_val], items[-n_val:]


def write_studies_datalist(
    items: Sequence[Mapping], label_map: LabelMap, out: str | os.PathLike, val_split: float = 0.2
) -> Path:
    """Write a project datalist (absolute paths, ``label_map``, ``modality``) for the studies."""
    training, validation = split_items(items, val_split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "description": "MONAI Label studies with final labels",
        "label_map": label_map.to_dict(),
        "modality": label_map.modality,
        "training": [{"image": str(i["image"]), "label": str(i["label"])} for i in training],
        "validation": [{"image": str(i["image"]), "label": str(i["label"])} for i in validation],
    }
    return write_json(out, doc)


def retrain(
    bundle: ModelBundle,
    items: Sequence[Mapping],
    run_dir: str | os.PathLike | None = None,
    max_epochs: int = 50,
    use_stack: bool = True,
    val_split: float = 0.2,
    from_current: bool = True,
    overrides: Mapping[str, Any] | None = None,
    publish: bool = True,
) -> dict[str, Any]:
    """Train the model on labelled studies with its own bundle config.

    Args:
        bundle: the exported model folder.
        items: ``[{"image": path, "label": path}, ...]`` (MONAI Label ``datastore.datalist()``).
        run_dir: where the run writes (datalist, checkpoints, logs, stack); default
            ``MODEL/train_runs/<time>``.
        max_epochs / use_stack: bundle overrides (S2S2 stack on or off).
        val_split: fraction of studies held out for validation.
        from_current: start from ``models/model.pt`` when it exists (fine-tuning).
        overrides: more bundle overrides (``{"batch_size": 4, "stack_n": 8, ...}``).
        publish: replace ``models/model.pt`` with the trained weights (atomic).

    Returns:
        ``{"run_dir", "weights", "published", "epochs", "train_items", "val_items", "seconds"}``.
    """
    from s2s2_monai.bundle_runner import run_training_bundle
    from s2s2_monai.checkpoints import load_weights, numbered_checkpoints

    start = time.time()
    run_dir = Path(run_dir) if run_dir is not None else bundle.root / "train_runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    datalist = write_studies_datalist(items, bundle.label_map, run_dir / "datalist.json", val_split)
    settings = {
        "bundle_root": str(bundle.root),
        "datalist": str(datalist),
        "dataset_dir": str(run_dir),
        "output_dir": str(run_dir),
        "stack_dir": str(run_dir / "stack"),
        "max_epochs": int(max_epochs),
        "use_stack": bool(use_stack),
        **dict(overrides or {}),
    }
    meta = bundle.root / METADATA

    def start_from_current(workflow) -> None:  # after initialize (pretrained encoder), before the first step
        if from_current and bundle.weights_path.is_file():
            load_weights(workflow.parser.get_parsed_content("network"), bundle.weights_path, device="cpu")
            logger.info("fine-tuning from %s", bundle.weights_path)

    run_training_bundle(
        bundle.train_config,
        settings,
        meta_file=meta if meta.is_file() else None,
        logging_file=False,
        before_run=start_from_current,
    )
    best = run_dir / "models" / "model.pt"
    interval = numbered_checkpoints(run_dir / "checkpoints")
    weights = best if best.is_file() else (interval[0] if interval else None)
    if weights is None:
        raise S2S2InputError(run_dir, "training wrote no checkpoint", "raise max_epochs to at least 1")
    published = None
    if publish:
        published = str(save_state_dict_atomic(read_state_dict(weights), bundle.weights_path))
        # the published weights' record: what they were trained with (the infer task checks it on load)
        record = {**model_record(weights), "retrained_in": str(run_dir), "sha256": file_sha256(published)}
        write_json(record_path(published), record)
    return {
        "run_dir": str(run_dir),
        "weights": str(weights),
        "published": published,
        "epochs": int(max_epochs),
        "train_items": len(json.loads(datalist.read_text())["training"]),
        "val_items": len(json.loads(datalist.read_text())["validation"]),
        "seconds": round(time.time() - start, 2),
    }
