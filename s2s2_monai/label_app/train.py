"""MONAI Label train task: the model's own training bundle on the app's labelled studies.

MONAI Label runs ``train`` in a child process (``POST /train/{model}``, the "Train" button in
3D Slicer); this task collects the studies with a *final* label and calls
:func:`~s2s2_monai.label_app.retrain.retrain` (bundle config, optional S2S2 stack, fine-tuning
from the current weights, atomic publication of ``models/model.pt``).
"""

from __future__ import annotations

import logging
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from s2s2_monai.label_app.bundle import ModelBundle
from s2s2_monai.label_app.retrain import retrain

__all__ = ["S2S2TrainTask"]

logger = logging.getLogger(__name__)

#: Request keys passed to the bundle as overrides (with their type), besides the task's own.
BUNDLE_KEYS = {
    "batch_size": int,
    "learning_rate": float,
    "val_interval": int,
    "stack_n": int,
    "stack_generator": str,
    "num_workers": int,
}


class S2S2TrainTask(TrainTask):
    """Train an exported S2S2 model on the studies labelled so far.

    Args:
        bundle: the model folder (its ``configs/train.json`` is run).
        max_epochs / use_stack / val_split: defaults the client may change per request.
    """

    def __init__(
        self, bundle: ModelBundle, max_epochs: int = 50, use_stack: bool = True, val_split: float = 0.2
    ) -> None:
        super().__init__(
            f"Train {bundle.name} ({bundle.label_map.name} label map) with its bundle on the labelled studies"
        )
        self.bundle = bundle
        self._config = {
            "max_epochs": int(max_epochs),
            "use_stack": bool(use_stack),
            "val_split": float(val_split),
            "from_current": True,
        }
        self._last: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def stats(self) -> dict[str, Any]:
        return dict(self._last)

    def __call__(self, request: dict, datastore: Datastore) -> dict[str, Any]:
        req = {**self._config, **request}
        overrides = {k: cast(req[k]) for k, cast in BUNDLE_KEYS.items() if k in req}
        overrides.update(req.get("overrides") or {})
        items = datastore.datalist()
        logger.info("training %s on %d labelled studies", self.bundle.name, len(items))
        self._last = retrain(
            self.bundle,
            items,
            max_epochs=int(req["max_epochs"]),
            use_stack=bool(strtobool(str(req["use_stack"]))),
            val_split=float(req["val_split"]),
            from_current=bool(strtobool(str(req["from_current"]))),
            overrides=overrides,
        )
        return self._last
