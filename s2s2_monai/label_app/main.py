"""The MONAI Label app: ``monailabel start_server --app <this folder> --studies DIR --conf models NAME``.

Configuration (``--conf KEY VALUE``):

- ``models``: comma-separated model names, or ``all`` (default): folders of ``models_dir``.
- ``models_dir``: where the model folders are (default ``APP/model``, MONAI Label's convention);
  make one with ``s2s2 export-bundle``.
- ``zoo_source``: only ``local`` (the default); the app never downloads a model.
- ``sam2``: only ``false`` (the default); SAM2 needs downloaded weights.
- ``batch_size`` (slices per forward pass, 32), ``max_epochs`` (50), ``use_stack`` (true),
  ``val_split`` (0.2): infer/train defaults.

Bad requests get an HTTP error with the reason and the server keeps serving: unknown model
(404), unknown image id (404), an upload that is not a readable 3D image or whose intensity range
does not fit the model's modality (422).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.utils.others.generic import strtobool

from s2s2_monai import __version__
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_app.bundle import load_model_bundle, resolve_models
from s2s2_monai.label_app.infer import S2S2InferTask
from s2s2_monai.label_app.train import S2S2TrainTask

__all__ = ["S2S2App"]

logger = logging.getLogger(__name__)


class S2S2App(MONAILabelApp):
    """Serves exported S2S2 models (infer + train) from a local studies folder."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        if strtobool(conf.get("sam2", "false")):
            raise S2S2InputError(
                None,
                "SAM2 is not served by this app (it needs weights from the internet)",
                "start with --conf sam2 false",
            )
        zoo = conf.get("zoo_source", "local")
        if zoo != "local":
            logger.warning("zoo_source %r ignored: this app serves local model folders only and never downloads", zoo)
        self.models_dir = Path(conf.get("models_dir", os.path.join(app_dir, "model"))).resolve()
        self.bundles = {
            b.name: b
            for b in (load_model_bundle(p) for p in resolve_models(self.models_dir, conf.get("models", "all")))
        }
        label_maps = {b.label_map.name for b in self.bundles.values()}
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="S2S2 segmentation",
            description=f"S2S2 (semantic stacking) 2D segmentation models: {sorted(self.bundles)} ({', '.join(sorted(label_maps))})",
            version=__version__,
            labels=sorted({name for b in self.bundles.values() for name in b.labels()}),
        )

    def init_infers(self):
        batch_size = int(self.conf.get("batch_size", 32))
        return {name: S2S2InferTask(b, batch_size=batch_size) for name, b in self.bundles.items()}

    def init_trainers(self):
        kwargs = {
            "max_epochs": int(self.conf.get("max_epochs", 50)),
            "use_stack": bool(strtobool(self.conf.get("use_stack", "true"))),
            "val_split": float(self.conf.get("val_split", 0.2)),
        }
        return {name: S2S2TrainTask(b, **kwargs) for name, b in self.bundles.items()}

    def _check_model(self, model, tasks) -> None:
        if model not in tasks:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server serves {sorted(tasks)}")

    def infer(self, request, datastore=None):
        """MONAI Label's infer with HTTP errors for bad input (the server keeps serving)."""
        self._check_model(request.get("model"), self._infers)
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            ds = datastore if datastore is not None else self.datastore()
            if not ds.get_image_uri(image):
                raise HTTPException(
                    status_code=404,
                    detail=f"image {image!r} is not in the studies folder; GET /datastore/?output=all lists the ids",
                )
        try:
            return super().infer(request, datastore)
        except S2S2InputError as exc:
            raise HTTPException(
                status_code=422, detail=f"model {request.get('model')!r}: {exc.problem}. Fix: {exc.fix}"
            ) from None

    def train(self, request):
        self._check_model(request.get("model"), self._trainers)
        return super().train(request)
