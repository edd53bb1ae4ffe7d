"""MONAI Label train task: the model's own training bundle on the app's labelled studies.

MONAI Label runs ``train`` in a child process (``POST /train/{model}``, the "Train" button in
3D Slicer); this task collects the studies with a *final* label and calls
:func:`~s2s2_monai.label_app.retrain.retrain` (bundle config, optional S2S2 stack, fine-tuning
from the current weights, atomic publication of ``models/model.pt``).

A request sets only the keys of :data:`CHECKS` (the task's own and :data:`BUNDLE_KEYS`), each checked
by :func:`request_settings`. Free bundle ``overrides`` are refused: a bundle value is a MONAI config
expression (``"$..."`` runs Python), so a client-chosen one would run the client's code in the server.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import strtobool

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_app.bundle import ModelBundle
from s2s2_monai.label_app.retrain import retrain

__all__ = ["S2S2TrainTask", "request_settings"]

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

#: The stack generators a request may name (``stack_generator``).
STACK_GENERATORS = ("appearance", "diffusion")


def _bad(key: str, value: Any, fix: str) -> S2S2InputError:
    return S2S2InputError(None, f"train request parameter {key!r} is {value!r}", fix)


def _number(kind: type, low: float, low_open: bool = False, high: float | None = None) -> Callable[[str, Any], Any]:
    """A checker ``(key, value) -> value`` as ``kind`` within the bounds (numeric strings too)."""

    def check(key: str, value: Any) -> Any:
        try:
            if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = kind(value)
        except (TypeError, ValueError, OverflowError):
            number = None
        if (
            number is None
            or not math.isfinite(number)
            or (number <= low if low_open else number < low)
            or (high is not None and number >= high)
        ):
            bound = (f"> {low}" if low_open else f">= {low}") + (f" and < {high}" if high is not None else "")
            raise _bad(key, value, f"pass a {kind.__name__} {bound}")
        return number

    return check


def _flag(key: str, value: Any) -> bool:
    try:
        return bool(strtobool(str(value)))
    except (ValueError, AttributeError):
        raise _bad(key, value, "pass true or false") from None


def _generator(key: str, value: Any) -> str:
    if value not in STACK_GENERATORS:
        raise _bad(key, value, f"pass one of {list(STACK_GENERATORS)}")
    return value


#: Every request key the task reads, with its checker.
CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "max_epochs": _number(int, 1),
    "use_stack": _flag,
    "val_split": _number(float, 0, high=1),
    "from_current": _flag,
    "batch_size": _number(int, 1),
    "learning_rate": _number(float, 0, low_open=True),
    "val_interval": _number(int, 1),
    "stack_n": _number(int, 1),
    "stack_generator": _generator,
    "num_workers": _number(int, 0),
}


def request_settings(request: dict, defaults: dict) -> dict[str, Any]:
    """The checked settings of a train request over ``defaults``; other keys (``model``, ``device``) are ignored.

    Raises:
        S2S2InputError: a bad value, or ``overrides`` (bundle expressions are never taken from a request).
    """
    if "overrides" in request:
        raise S2S2InputError(
            None,
            "train request parameter 'overrides' is not accepted (bundle values are config expressions that run code)",
            f"set only {sorted(CHECKS)}; change other bundle values in the model folder's configs/train.json",
        )
    req = {**defaults, **request}
    return {k: check(k, req[k]) for k, check in CHECKS.items() if k in req}


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
        req = request_settings(request, self._config)
        overrides = {k: req[k] for k in BUNDLE_KEYS if k in req}
        items = datastore.datalist()
        logger.info("training %s on %d labelled studies", self.bundle.name, len(items))
        self._last = retrain(
            self.bundle,
            items,
            max_epochs=req["max_epochs"],
            use_stack=req["use_stack"],
            val_split=req["val_split"],
            from_current=req["from_current"],
            overrides=overrides,
        )
        return self._last
