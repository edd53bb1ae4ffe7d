"""The MONAI Label app: ``monailabel start_server --app <this folder> --studies DIR --conf models NAME``.

Configuration (``--conf KEY VALUE``):

- ``models``: comma-separated model names, or ``all`` (default): folders of ``models_dir``.
- ``models_dir``: where the model folders are (default ``APP/model``, MONAI Label's convention);
  make one with ``s2s2 export-bundle``.
- ``zoo_source``: only ``local`` (the default); the app never downloads a model.
- ``sam2``: only ``false`` (the default); SAM2 needs downloaded weights.
- ``batch_size`` (slices per forward pass, 32), ``max_epochs`` (50), ``use_stack`` (true),
  ``val_split`` (0.2): infer/train defaults.
- ``max_upload_mb`` (512): the largest request body an upload endpoint reads (413 beyond it).
- ``max_voxels`` (2**28): the most voxels an image's NIfTI header may declare (413 beyond it,
  checked before the data is decompressed).
- ``infer_concurrency`` (1): inferences run at the same time; more requests wait their turn.
- ``scoring_model`` (the first model), ``scoring_k`` (4), ``scoring_seed`` (0), ``scoring_mix`` (0.5),
  ``scoring_flips`` (true): active learning (:mod:`s2s2_monai.label_app.scoring`): ``POST
  /scoring/s2s2_disagreement`` scores the unlabeled studies, ``POST /activelearning/s2s2_uncertain``
  answers the most uncertain one and its most uncertain slice.

Bad requests get an HTTP error with the reason and the server keeps serving: unknown model
(404), unknown image id (404), an upload that is not a readable 3D image or whose intensity range
does not fit the model's modality (422).

Hostile input (the server answers with a reason, never reads or writes outside its folders):

- Every image id resolves inside the studies folder (:class:`S2S2Datastore`; real paths, so a link
  pointing out of it counts as absent). A client's ``image`` is a study id, or a path whose real
  path lies inside the studies folder; "outside" and "absent" get the same 404 and the same detail
  text, so the server tells nothing about files elsewhere. The one other file inferred on is the
  server's own copy of an upload, handed to :meth:`S2S2App.infer_upload` by the app's infer route
  (never a path from the request). New image ids and label tags must be plain file names (422).
- The app replaces MONAI Label's ``POST /infer/{model}`` with its own route
  (:func:`install_routes`): the body is bounded by ``max_upload_mb`` (413), ``params`` must be a JSON
  object (422), the work runs in a worker thread (at most ``infer_concurrency`` at once) so
  ``/info/`` and the other endpoints keep answering while an inference runs (MONAI Label's own route
  is ``async`` and runs the whole inference on the event loop). The upload routes of
  ``/datastore``, ``/model`` and ``/session`` get the same body bound and JSON check.
- Train requests set typed, checked keys only (:func:`~s2s2_monai.label_app.train.request_settings`).

Known limits: errors raised inside MONAI Label endpoints the app does not wrap still answer 500
(the FastAPI app is built before the app object, so app-wide exception handlers cannot be added):
``GET /logs/gpu`` without ``nvidia-smi`` and ``/proxy/dicom`` without a DICOMweb server. Train,
batch-infer and scoring requests start a child process and report bad input in their task status
(``ERROR``), not in the HTTP answer. DICOM folders are not size-checked before reading.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from fastapi import BackgroundTasks, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from monailabel.config import RBAC_USER, settings
from monailabel.datastore.local import LocalDatastore
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import strtobool
from monailabel.utils.sessions import Sessions

from s2s2_monai import __version__
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_app.bundle import load_model_bundle, resolve_models
from s2s2_monai.label_app.infer import DEFAULT_MAX_VOXELS, S2S2InferTask, VolumeTooLarge
from s2s2_monai.label_app.train import S2S2TrainTask

__all__ = ["S2S2App", "S2S2Datastore", "install_routes"]

logger = logging.getLogger(__name__)

#: Keys of the infer ``params`` the URL sets (a client sends them as query parameters or a file).
_RESERVED_PARAMS = ("model", "image", "label", "session", "session_id")


# ---------------------------------------------------------------- ids and paths


def _inside(path: str | os.PathLike, root: str) -> bool:
    """Whether the real path of ``path`` is ``root`` (a real path) or lies below it."""
    real = os.path.realpath(path)
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:  # another drive
        return False


def _plain_name(name: Any) -> bool:
    """A file name without folders: what a new image id, label tag or session id must be."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and not any(c in name for c in ("/", "\\", "\0"))
    )


def image_not_found(image: Any) -> HTTPException:
    """The one 404 for an image id that is absent *or* outside the studies folder (same text: no oracle)."""
    return HTTPException(
        status_code=404,
        detail=f"image {image!r} is not in the studies folder (ids are the studies' file names without "
        ".nii.gz; files linked from outside it are not served); GET /datastore/?output=all lists the ids",
    )


def _bad_name(what: str, name: Any) -> HTTPException:
    return HTTPException(
        status_code=422,
        detail=f"{what} {name!r} is not a plain file name. Fix: use letters, digits, '-', '_' or '.', "
        "without folders or '..'",
    )


def _json_object(text: Any, key: str) -> dict:
    """The form field ``key`` as a JSON object (``{}`` when empty); HTTP 422 otherwise."""
    if text is None or text == "":
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        where = f" ({exc.msg} at character {exc.pos})" if isinstance(exc, json.JSONDecodeError) else ""
        raise HTTPException(
            status_code=422,
            detail=f"form field {key!r} is not valid JSON{where}. Fix: send a JSON object, e.g. "
            f'{key}={{"batch_size": 8}}',
        ) from None
    if not isinstance(value, dict):
        raise HTTPException(
            status_code=422,
            detail=f"form field {key!r} is a JSON {type(value).__name__}, not an object. Fix: send a JSON "
            f'object, e.g. {key}={{"batch_size": 8}}',
        )
    return value


class S2S2Datastore(LocalDatastore):
    """MONAI Label's local datastore, kept inside its studies folder.

    Image and label uris are real paths and count only when they lie inside the studies folder
    (a link pointing out of it is absent); an unknown or outside image id answers the one 404 of
    :func:`image_not_found`; a new image id or a label tag must be a plain file name (422).
    Errors are ``fastapi.HTTPException``: the datastore is driven by the server's endpoints (and
    by MONAI Label's train/batch child processes, which only list it).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.root = os.path.realpath(self._datastore_path)

    def get_image_uri(self, image_id: str) -> str:
        uri = super().get_image_uri(image_id) if isinstance(image_id, str) else ""
        return uri if uri and _inside(uri, self.root) else ""

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        if not (isinstance(label_id, str) and _plain_name(label_tag)):
            return ""
        uri = super().get_label_uri(label_id, label_tag)
        return uri if uri and _inside(uri, self.root) else ""

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        if not self.get_image_uri(image_id):
            return {}
        self._init_from_datastore_file()  # what a child process wrote (a background scoring run): reloads on a new mtime
        return super().get_image_info(image_id)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        return super().get_label_info(label_id, label_tag) if self.get_label_uri(label_id, label_tag) else {}

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        items = super().datalist(full_path)
        if not full_path:
            return items
        return [i for i in items if _inside(i["image"], self.root) and _inside(i["label"], self.root)]

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if image_id and not _plain_name(image_id):
            raise _bad_name("image id", image_id)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        if not _plain_name(label_tag):
            raise _bad_name("label tag", label_tag)
        if not self.get_image_uri(image_id):
            raise image_not_found(image_id)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        if not self.get_image_uri(image_id):
            raise image_not_found(image_id)
        super().remove_image(image_id)

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        if not self.get_image_uri(image_id):
            raise image_not_found(image_id)
        super().update_image_info(image_id, info)

    def _check_label(self, label_id: str, label_tag: str) -> None:
        if not self.get_label_uri(label_id, label_tag):
            raise HTTPException(
                status_code=404,
                detail=f"no label {label_id!r} with tag {label_tag!r} in the studies folder; "
                "GET /datastore/?output=all lists the labels",
            )

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._check_label(label_id, label_tag)
        super().remove_label(label_id, label_tag)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._check_label(label_id, label_tag)
        super().update_label_info(label_id, label_tag, info)


class _Sessions(Sessions):
    """MONAI Label's sessions, with session ids that are plain names (``../x`` never reaches the disk)."""

    def get_session(self, session_id: str, update_ts: bool = True, fetch_cache: bool = True):
        return super().get_session(session_id, update_ts, fetch_cache) if _plain_name(session_id) else None

    def remove_session(self, session_id: str) -> None:
        if _plain_name(session_id):
            super().remove_session(session_id)


# ---------------------------------------------------------------- routes


class _BodyLimit:
    """ASGI wrapper of one route: HTTP 413 once the request body exceeds ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is read; otherwise the
    bytes are counted as the body arrives (chunked uploads), so no more than ``limit`` is ever stored.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = int(limit)
        self.detail = (
            f"the request body is larger than this server accepts (max_upload_mb {limit / 2**20:g}). Fix: send "
            "a smaller volume (compressed .nii.gz, cropped or resampled), or start the server with a larger "
            "--conf max_upload_mb"
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.strip().isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(status_code=413, detail=self.detail)
            return message

        await self.app(scope, limited_receive, send)


def _upload_suffix(filename: str | None) -> str:
    """``.nii.gz`` / ``.nii`` from an upload's file name (no name: ``.nii.gz``); HTTP 415 for other files."""
    name = (filename or "upload.nii.gz").lower()
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return suffix
    raise HTTPException(
        status_code=415,
        detail=f"upload {filename!r} is not a NIfTI file. Fix: send the volume as a .nii.gz (or .nii) file, "
        "or a study id as image=ID",
    )


async def api_infer(
    request: Request,
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile | None = File(None),
    output: ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """``POST /infer/{model}``: MONAI Label's inference endpoint (same parameters), hardened.

    Checks the request before any work (model 404, ``params`` a JSON object 422, an upload a NIfTI
    file 415, a multipart body without its ``file`` part 400), then runs the inference in a worker
    thread, at most ``infer_concurrency`` at once, so the event loop keeps serving ``/info/`` and
    the rest. An upload is copied to a file of the server's own and handed to
    :meth:`S2S2App.infer_upload`; every other image goes through :meth:`S2S2App.infer`, which
    resolves it inside the studies folder.
    """
    instance: S2S2App = app_instance()
    instance.check_model(model, instance._infers)
    p = _json_object(params, "params")
    reserved = sorted(k for k in p if k in _RESERVED_PARAMS)
    if reserved:
        raise HTTPException(
            status_code=422,
            detail=f"params may not set {reserved}. Fix: give the model in the URL and the image as "
            "image=ID, session_id=ID or a multipart 'file'",
        )
    if output == ResultType.dicom_seg:
        raise HTTPException(
            status_code=422,
            detail="output=dicom_seg is not served by this app. Fix: ask for output=image (a NIfTI label in the "
            "image's geometry)",
        )
    req: dict[str, Any] = {**instance.info().get("config", {}).get("infer", {}), **p, "model": model}
    if file is not None:
        suffix = _upload_suffix(file.filename)
        work = functools.partial(instance.infer_upload_file, req, file.file, suffix)
    elif session_id:
        req["image"] = instance.session_image(session_id)
        work = functools.partial(instance.infer_upload, req, req["image"])
    elif image:
        req["image"] = image
        work = functools.partial(instance.infer, req)
    elif request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(
            status_code=400,
            detail="the multipart body holds no complete 'file' part (a truncated upload?) and no image id "
            "was given. Fix: send the whole volume as the multipart 'file' field, or image=ID",
        )
    else:
        raise HTTPException(
            status_code=422,
            detail="no image given. Fix: send image=ID (GET /datastore/?output=all lists the ids), "
            "session_id=ID, or the volume as a multipart 'file' field",
        )
    result = await anyio.to_thread.run_sync(work, limiter=instance.infer_limiter())
    if result is None:
        raise HTTPException(status_code=500, detail="the inference gave no result")
    return send_response(instance.datastore(), result, output, background_tasks)


def _guarded(endpoint):
    """``endpoint`` (an async MONAI Label endpoint) with its request checked first.

    A ``model`` must be served (404; MONAI Label's ``PUT /model/{name}`` answers 500);
    ``params``/``info``/``wsi`` form fields must be JSON objects (422; MONAI Label's ``json.loads``
    answers 500); ``uncompress=true`` (archives unpacked on the server) is refused (422).
    """

    @functools.wraps(endpoint)  # FastAPI reads the original signature (parameters, RBAC dependency)
    async def guarded(**kwargs):
        if "model" in kwargs:
            instance = app_instance()
            instance.check_model(kwargs["model"], instance._infers)
        for key in ("params", "info", "wsi"):
            if isinstance(kwargs.get(key), str):
                _json_object(kwargs[key], key)
        if kwargs.get("uncompress"):
            raise HTTPException(
                status_code=422,
                detail="uncompress=true is not served: this server does not unpack archives. "
                "Fix: send the volume as one .nii.gz file",
            )
        return await endpoint(**kwargs)

    return guarded


def _add_first(fastapi_app, path: str, endpoint, methods: list[str], limit: int, **kwargs) -> None:
    """Register ``endpoint`` at ``path`` ahead of every other route (the first full match serves)."""
    routes = fastapi_app.router.routes
    fastapi_app.add_api_route(path, endpoint, methods=methods, include_in_schema=False, **kwargs)
    route = routes.pop()
    route.app = _BodyLimit(route.app, limit)
    routes.insert(0, route)


def install_routes(fastapi_app, max_upload_bytes: int) -> None:
    """Put the app's hardened routes ahead of MONAI Label's on the server's FastAPI app.

    Why routes and not exception handlers or a middleware: MONAI Label creates the app object in
    the server's lifespan, after Starlette has built its middleware stack, so handlers and
    middleware added then never run; the router's route list is read on every request, so a
    route put first serves its path. ``POST /infer/{model}`` becomes :func:`api_infer` (it needs
    its own body: limits, threads, the upload kept apart from client paths); the upload routes of
    ``/datastore``, ``/model`` and ``/session`` become MONAI Label's own endpoints behind the body
    limit and the checks of :func:`_guarded` (their ids are checked by :class:`S2S2Datastore`), and
    so do the (whole-slide) ``/infer/wsi`` routes, which :meth:`S2S2App.infer_wsi` answers with 404.
    """
    if getattr(fastapi_app.state, "s2s2_routes", False):
        return
    from fastapi.routing import APIRoute
    from monailabel.endpoints import datastore, model, session, wsi_infer

    prefix = settings.MONAI_LABEL_API_STR
    for router in (datastore.router, model.router, session.router, wsi_infer.router):
        for route in list(router.routes):
            if isinstance(route, APIRoute) and route.methods & {"PUT", "POST"}:
                _add_first(
                    fastapi_app,
                    prefix + route.path,
                    _guarded(route.endpoint),
                    sorted(route.methods),
                    max_upload_bytes,
                    name=f"s2s2_{route.name}",
                )
    _add_first(
        fastapi_app,
        prefix + "/infer/{model}",
        api_infer,
        ["POST"],
        max_upload_bytes,
        summary=f"{RBAC_USER}Run Inference for supported model",
        name="s2s2_infer",
    )
    mark = getattr(fastapi_app.router, "_mark_routes_changed", None)
    if mark is not None:
        mark()
    fastapi_app.state.s2s2_routes = True
    logger.info(
        "S2S2 routes installed: POST /infer/{model} and the upload routes (max_upload_mb %g)", max_upload_bytes / 2**20
    )


# ---------------------------------------------------------------- the app


def _conf_number(conf: dict, key: str, default: float, whole: bool = False) -> float:
    """``--conf key`` as a number > 0 (a whole one if ``whole``); S2S2InputError otherwise."""
    value = conf.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0 and (not whole or number.is_integer())):
        raise S2S2InputError(
            None,
            f"--conf {key} {value!r} is not a {'whole ' if whole else ''}number > 0",
            f"pass e.g. --conf {key} {default}",
        )
    return number


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
        self.max_upload_bytes = int(_conf_number(conf, "max_upload_mb", 512) * 2**20)
        self.max_voxels = int(_conf_number(conf, "max_voxels", DEFAULT_MAX_VOXELS, whole=True))
        self.infer_concurrency = int(_conf_number(conf, "infer_concurrency", 1, whole=True))
        self._infer_limiter: anyio.CapacityLimiter | None = None
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

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return S2S2Datastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _load_sessions(self, load: bool = False):
        return _Sessions(settings.MONAI_LABEL_SESSION_PATH, settings.MONAI_LABEL_SESSION_EXPIRY) if load else None

    def init_infers(self):
        batch_size = int(_conf_number(self.conf, "batch_size", 32, whole=True))
        return {
            name: S2S2InferTask(b, batch_size=batch_size, max_voxels=self.max_voxels)
            for name, b in self.bundles.items()
        }

    def init_trainers(self):
        kwargs = {
            "max_epochs": int(self.conf.get("max_epochs", 50)),
            "use_stack": bool(strtobool(self.conf.get("use_stack", "true"))),
            "val_split": float(self.conf.get("val_split", 0.2)),
        }
        return {name: S2S2TrainTask(b, **kwargs) for name, b in self.bundles.items()}

    def init_scoring_methods(self):
        """``s2s2_disagreement``: S2S2 stack disagreement of ``--conf scoring_model`` (default: the first model)."""
        from s2s2_monai.label_app.scoring import SCORING_METHOD, S2S2Scoring

        if not self.bundles:
            return {}
        name = self.conf.get("scoring_model") or sorted(self.bundles)[0]
        if name not in self.bundles:
            raise S2S2InputError(
                None, f"--conf scoring_model {name!r} is not a served model", f"use one of {sorted(self.bundles)}"
            )
        batch_size = int(_conf_number(self.conf, "batch_size", 32, whole=True))
        return {SCORING_METHOD: S2S2Scoring(self.bundles[name], self.conf, batch_size=batch_size)}

    def init_strategies(self):
        """MONAI Label's ``random`` and ``first``, and ``s2s2_uncertain`` (the highest stack-disagreement score)."""
        from monailabel.tasks.activelearning.first import First
        from monailabel.tasks.activelearning.random import Random

        from s2s2_monai.label_app.scoring import STRATEGY, MostUncertain

        return {"random": Random(), "first": First(), STRATEGY: MostUncertain(self.bundles)}

    def on_init_complete(self) -> None:
        """MONAI Label's start-up jobs, then the app's routes on the server (:func:`install_routes`)."""
        super().on_init_complete()
        server = sys.modules.get("monailabel.app")  # the FastAPI app uvicorn serves (``--uvicorn_app`` default)
        fastapi_app = getattr(server, "app", None)
        if fastapi_app is None:
            logger.warning("monailabel.app not loaded: MONAI Label's own /infer and upload routes serve unhardened")
            return
        install_routes(fastapi_app, self.max_upload_bytes)

    def infer_limiter(self) -> anyio.CapacityLimiter:
        """The limiter of concurrent inferences (made on first use, in the server's event loop)."""
        if self._infer_limiter is None:
            self._infer_limiter = anyio.CapacityLimiter(self.infer_concurrency)
        return self._infer_limiter

    def check_model(self, model, tasks) -> None:
        if model not in tasks:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server serves {sorted(tasks)}")

    _check_model = check_model

    def resolve_image(self, image: Any, datastore=None) -> str:
        """A client's image: a study id (returned as is) or a path inside the studies folder (its real path).

        Raises:
            HTTPException: 404 with the same detail whether the image is absent or outside the
                studies folder; 422 for an empty or non-text image.
        """
        if not isinstance(image, str) or not image:
            raise HTTPException(
                status_code=422,
                detail="no image id given. Fix: send image=ID (GET /datastore/?output=all lists the ids)",
            )
        ds = datastore if datastore is not None else self.datastore()
        root = getattr(ds, "root", None)
        uri = ds.get_image_uri(image)
        if uri and (root is None or _inside(uri, root)):
            return image if not os.path.exists(image) else uri  # an id MONAI Label would take for a path: its uri
        if root is not None and "\0" not in image and _inside(image, root) and os.path.exists(image):
            return os.path.realpath(image)
        raise image_not_found(image)

    def session_image(self, session_id: str) -> str:
        """The image of a session of this server (404 for an unknown or malformed id)."""
        sessions = self.sessions()
        session = sessions.get_session(session_id) if sessions is not None and _plain_name(session_id) else None
        store = os.path.realpath(sessions.store_path) if sessions is not None else ""
        if session is None or not session.image or not _inside(session.image, store):
            raise HTTPException(
                status_code=404, detail=f"session {session_id!r} not found. Fix: create one with PUT /session/"
            )
        return session.image

    def infer(self, request, datastore=None):
        """MONAI Label's infer with the image resolved inside the studies folder and HTTP errors for bad input."""
        model = request.get("model")
        self.check_model(model, self._infers)
        image = self.resolve_image(request.get("image"), datastore)
        return self._run_infer({**request, "image": image}, datastore)

    def infer_upload(self, request: dict, path: str) -> dict:
        """Infer on ``path``, a file the server itself wrote (an upload or a session's image), never a client's path."""
        self.check_model(request.get("model"), self._infers)
        return self._run_infer({**request, "image": str(path)}, None)

    def infer_upload_file(self, request: dict, fileobj, suffix: str) -> dict:
        """Copy an uploaded file to a private temporary file, infer on it (:meth:`infer_upload`), remove it."""
        fd, path = tempfile.mkstemp(suffix=suffix, prefix="s2s2_upload_")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out)
            return self.infer_upload(request, path)
        finally:
            Path(path).unlink(missing_ok=True)

    def _run_infer(self, request: dict, datastore) -> dict:
        model = request.get("model")
        try:
            self._infers[model].check_request(request)
            return super().infer(request, datastore)
        except VolumeTooLarge as exc:
            raise HTTPException(status_code=413, detail=f"model {model!r}: {exc.problem}. Fix: {exc.fix}") from None
        except S2S2InputError as exc:
            raise HTTPException(status_code=422, detail=f"model {model!r}: {exc.problem}. Fix: {exc.fix}") from None

    def infer_wsi(self, request, datastore=None):
        """Whole-slide inference: not served (404); MONAI Label's would read tiles of any existing path."""
        raise HTTPException(
            status_code=404,
            detail="this server serves no whole-slide (WSI) model. Fix: use POST /infer/{model} with a 3D volume",
        )

    def next_sample(self, request):
        """MONAI Label's active learning, with 404 for an unknown strategy (MONAI Label answers 500)."""
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise HTTPException(
                status_code=404,
                detail=f"unknown active-learning strategy {strategy!r}; this server serves {sorted(self._strategies)}",
            )
        return super().next_sample(request)

    def train(self, request):
        self.check_model(request.get("model"), self._trainers)
        return super().train(request)
