"""Check a training bundle's settings before anything is built or written.

``python -m monai.bundle run training ... --max_epochs abc`` would otherwise fail minutes later,
deep in a traceback, after the stack cache and the output folder have been made. The bundles
call :func:`check_training_settings` in ``initialize`` (before the stack is built) with the
values of their plain settings; a bad one is reported as one
``error: --KEY: got VALUE, expected .... Fix: ...`` line (exit status 2 with ``exit_on_error``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

from s2s2_monai.errors import S2S2InputError, exit_or_raise

__all__ = ["SETTING_RULES", "check_training_settings"]


def _int(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum), f"a whole number >= {minimum}"


def _number(minimum: float, strict: bool) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and (v > minimum if strict else v >= minimum)

    return ok, f"a number {'>' if strict else '>='} {minimum:g}"


def _size(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)
    )


def _choices() -> dict[str, tuple[str, ...]]:
    from s2s2_monai.evaluation.metrics import HD95_DEFINITIONS
    from s2s2_monai.training.taps import TAP_PRESETS

    return {
        "tap_preset": tuple(sorted(TAP_PRESETS)),
        "hd95": tuple(HD95_DEFINITIONS),
        "model_selection": MODEL_SELECTIONS,
        "image_resize_mode": ("bicubic", "bilinear", "nearest-exact", "area"),
    }


#: Which trained weights become ``models/model.pt``: the last epoch (TransUNet's choice, the paper's) or the
#: best epoch on the datalist's ``validation`` section (never the test section).
MODEL_SELECTIONS = ("last", "best_validation")


#: setting -> (test, what it must be, example value)
SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "max_epochs": (*_int(1), "150"),
    "batch_size": (*_int(1), "24"),
    "val_batch_size": (*_int(1), "32"),
    "num_workers": (*_int(0), "4"),
    "val_interval": (*_int(1), "10"),
    "stack_n": (*_int(1), "16"),
    "input_size": (_size, "two whole numbers >= 1 (height, width)", "[224,224]"),
    "learning_rate": (*_number(0.0, strict=True), "0.01"),
    "alpha_enc": (*_number(0.0, strict=False), "1.0"),
    "alpha_dec": (*_number(0.0, strict=False), "1.0"),
    "use_stack": (lambda v: isinstance(v, bool), "true or false", "False"),
}


def check_training_settings(
    settings: Mapping[str, Any], choices: Mapping[str, Any] | None = None, exit_on_error: bool = False
) -> dict:
    """Check bundle settings by name (unknown names are ignored); return them unchanged.

    Args:
        settings: ``{name: value}``, e.g. ``{"max_epochs": @max_epochs, "tap_preset": @tap_preset}``.
        choices: more ``{name: allowed names}`` from the bundle itself, e.g. ``{"network_name": list(@networks)}``.
        exit_on_error: print ``error: ...`` and exit with status 2 instead of raising (bundle use).

    Raises:
        S2S2InputError: a value of the wrong type or out of range, or an unknown choice; the
            message names the ``--KEY`` override and gives a valid example.
    """
    try:
        choices = {**_choices(), **{k: tuple(v) for k, v in (choices or {}).items()}}
        for key, value in settings.items():
            if key in SETTING_RULES:
                ok, what, example = SETTING_RULES[key]
                if not ok(value):
                    raise S2S2InputError(
                        f"--{key}",
                        f"got {value!r}, expected {what}",
                        f"pass e.g. --{key} {example}, or fix '{key}' in the config file",
                    )
            elif key in choices and value not in choices[key]:
                known = ", ".join(choices[key])
                raise S2S2InputError(
                    f"--{key}",
                    f"unknown {key.replace('_', ' ')} {value!r} (known: {known})",
                    f"pass one of them, e.g. --{key} {choices[key][0]}",
                )
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return dict(settings)
