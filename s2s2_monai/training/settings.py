"""Check a training bundle's settings before anything is built or written.

``python -m monai.bundle run training ... --max_epochs abc`` would otherwise fail minutes later,
deep in a traceback, after the stack cache and the output folder have been made. The bundles
call :func:`check_training_settings` in ``initialize`` (before the stack is built) with the
values of their plain settings, and :func:`check_data_settings` once the datalist has been
checked (still before the stack); a bad one is reported as one
``error: --KEY: got VALUE, expected .... Fix: ...`` line (exit status 2 with ``exit_on_error``).

What is checked: each value's type and range (:data:`SETTING_RULES`, e.g. ``hu_window`` two numbers
min < max, ``mri_upper_percentile`` in (0, 100]), names against the known choices, ``input_size``
against what the named network can take (:data:`INPUT_SIZE_RULES`), ``num_classes`` against the label
map, ``model_selection best_validation`` against the datalist's validation section, and the keys given on
the command line against the settings the config files define (:func:`unknown_override_keys`).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from pathlib import Path
from typing import Any

from s2s2_monai.errors import S2S2InputError, exit_or_raise

__all__ = [
    "SETTING_RULES",
    "INPUT_SIZE_RULES",
    "MODEL_SELECTIONS",
    "check_training_settings",
    "check_data_settings",
    "unknown_override_keys",
]


def _int(minimum: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum), f"a whole number >= {minimum}"


def _number(minimum: float, strict: bool) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return isinstance(v, Real) and not isinstance(v, bool) and (v > minimum if strict else v >= minimum)

    return ok, f"a number {'>' if strict else '>='} {minimum:g}"


def _is_number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)


def _size(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v)
    )


def _window(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v) and v[0] < v[1]


def _percentile(v: Any) -> bool:
    return _is_number(v) and 0 < v <= 100


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
    "amp": (lambda v: isinstance(v, bool), "True or False (python-fire reads lower-case true/false as text)", "False"),
    "stack_qc": (lambda v: isinstance(v, bool), "True or False", "False"),
    "hu_window": (_window, "two numbers [min, max] in Hounsfield units with min < max", "[-125,275]"),
    "mri_upper_percentile": (_percentile, "a percentile in (0, 100]", "99.5"),
}

#: network_name -> (each side a multiple of, each side at least, why). Found by running each network on
#: every side from 1 to 64 (tests/test_hardening_settings.py keeps it honest): TransUNet refuses other sizes;
#: UNETR's 16 x 16 patch grid, upsampled 16 times by its decoder, must give the input size back; BasicUNet
#: pads odd sizes in its decoder, but its 4 max-poolings turn a side < 16 into 0.
INPUT_SIZE_RULES: dict[str, tuple[int, int, str]] = {
    "transunet": (16, 16, "its ResNet downsamples by 16 and the ViT works on that 1/16 grid"),
    "unetr": (16, 16, "its ViT patches are 16 x 16 and the decoder upsamples the patch grid 16 times"),
    "basic_unet": (1, 16, "its 4 max-poolings halve each side 4 times"),
}


def _fits(network: str, size: Sequence[int]) -> tuple[bool, str, list[int]]:
    """Whether ``size`` fits ``network`` (unknown names: yes), the rule in words, and the nearest size that fits."""
    multiple, minimum, why = INPUT_SIZE_RULES[network]
    nearest = [max(minimum, -(-int(s) // multiple) * multiple) for s in size]
    ok = all(s >= minimum and s % multiple == 0 for s in size)
    rule = f"each side >= {minimum}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
    return ok, f"{rule} ({why})", nearest


def _check_cross(settings: Mapping[str, Any]) -> None:
    """Checks between settings: ``input_size`` vs ``network_name``, ``num_classes`` vs ``label_map``."""
    size, network = settings.get("input_size"), settings.get("network_name")
    if size is not None and network in INPUT_SIZE_RULES:
        ok, rule, nearest = _fits(network, size)
        if not ok:
            raise S2S2InputError(
                "--input_size",
                f"got {list(size)}, but network {network!r} needs {rule}",
                f"pass e.g. --input_size [{nearest[0]},{nearest[1]}] (multiples of 16 fit every network), or "
                "choose another --network_name",
            )
    if "num_classes" in settings and settings.get("label_map") is not None:
        from s2s2_monai.label_maps import get_label_map

        lm = get_label_map(settings["label_map"])
        if settings["num_classes"] != lm.num_classes:
            raise S2S2InputError(
                "--num_classes",
                f"got {settings['num_classes']!r}, but the label map {lm.name!r} has {lm.num_classes} classes "
                f"(background + {lm.num_classes - 1} organs)",
                "leave num_classes out (the bundle derives it from the label map), or choose the label map of your "
                "labels (the datalist's label_map / labels, or --label_map)",
            )


# ---------------------------------------------------------------------------- keys given on the command line
def _monai_run_parameters() -> set[str]:
    """Names ``python -m monai.bundle run`` consumes itself (the rest become config overrides)."""
    from monai.bundle import ConfigWorkflow
    from monai.bundle.scripts import create_workflow, run

    names: set[str] = set()
    for fn in (run, create_workflow, ConfigWorkflow.__init__):
        names |= {p.name for p in inspect.signature(fn).parameters.values() if p.kind is not p.VAR_KEYWORD}
    return names - {"self"}


def _fire_value(value: str) -> Any:
    try:
        from fire.parser import DefaultParseValue
    except ImportError:  # pragma: no cover - fire is what runs `python -m monai.bundle`
        import ast

        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return DefaultParseValue(value)


def _is_flag(arg: str) -> bool:
    """python-fire's test: ``--key``, or ``-k...`` that is not a negative number."""
    return arg.startswith("--") or (len(arg) > 1 and arg[0] == "-" and arg[1].isalpha())


def _fire_keywords(args: Sequence[str], named: set[str]) -> dict[str, Any]:
    """``{keyword: raw value}`` of the flag tokens, as python-fire reads them for a function with named
    parameters ``named`` and ``**kwargs``: ``--key value``, ``--key=value``, a bare ``--flag`` (``True``; a
    bare ``--noKEY`` is ``KEY=False`` unless ``noKEY`` is a named parameter), ``-`` in a key read as ``_``; a
    lone ``--`` ends them (fire's own flags follow)."""
    out: dict[str, Any] = {}
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg == "--":
            break
        if not _is_flag(arg):
            continue
        key, eq, value = arg.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = value
        elif i + 1 == len(args) or _is_flag(args[i + 1]):
            if key not in named and key.startswith("no"):
                out[key[2:]] = False
            else:
                out[key] = True
        else:
            out[key] = args[i + 1]
            skip = True
    return out


def _top_ids(config_files: Sequence[str]) -> set[str]:
    """Top-level ids the config files define (``networks#basic_unet#features`` defines ``networks``)."""
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    ids: set[str] = set()
    for f in config_files:
        ids |= {ReferenceResolver.split_id(str(k))[0] for k in ConfigParser.load_config_file(f)}
    return ids


def unknown_override_keys(argv: Sequence[str] | None = None) -> list[tuple[str, list[str], str | None]]:
    """Keys given to ``python -m monai.bundle run`` on its command line that no config file defines.

    MONAI passes every ``--key value`` it does not consume itself to ``ConfigParser.update`` as an
    override, and an override of an id that no config uses is set and silently ignored
    (``--image_size 7`` for ``input_size``). The workflow object is not reachable from a config
    expression, and the parser it holds has the overrides merged in already, so this reads what the
    user typed: ``sys.argv`` of the ``monai.bundle`` process (``torchrun -m monai.bundle`` workers
    included), split the way python-fire splits it, plus the overrides of an ``--args_file``; and it
    compares their top-level ids with those of the ``--config_file`` files. Processes started otherwise
    (``s2s2 ablation``, MONAI Label, tests building a ``ConfigWorkflow``) are not ``monai.bundle``
    processes and get ``[]``: their overrides come from code, not from typing.

    Args:
        argv: the command line (default ``sys.argv``).

    Returns:
        ``[(key, config files, closest known key or None)]`` for each unknown key, in command-line order.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return []
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    own = _monai_run_parameters()
    given = _fire_keywords(argv[2:], own)
    if isinstance(given.get("args_file"), str):  # its keys are defaults of the command line's
        given = {**ConfigParser.load_config_file(str(_fire_value(given["args_file"]))), **given}
    files = given.get("config_file")
    files = _fire_value(files) if isinstance(files, str) else files
    if not files:
        return []
    files = [str(f) for f in (files if isinstance(files, (list, tuple)) else [files])]
    known = _top_ids(files) | _tracking_ids(given.get("tracking"))
    unknown = []
    for key in given:
        if key in own or key.startswith("_"):
            continue
        top = ReferenceResolver.split_id(key)[0]
        if top not in known:
            unknown.append((top, files, _closest(top, sorted(k for k in known if not k.startswith("_")))))
    return unknown


def _tracking_ids(tracking) -> set[str]:
    """Ids that ``--tracking`` adds to the config (MONAI's MLflow settings, or a settings file's ``configs``):
    ``--tracking mlflow --tracking_uri ...`` sets them, so they are settings of this run."""
    if isinstance(tracking, str):
        tracking = _fire_value(tracking)
    if not tracking:
        return set()
    if tracking == "mlflow":
        from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

        return set(DEFAULT_MLFLOW_SETTINGS["configs"])
    if isinstance(tracking, str) and Path(tracking).is_file():
        from monai.bundle import ConfigParser

        tracking = ConfigParser.load_config_file(tracking)
    return set(tracking.get("configs", {})) if isinstance(tracking, dict) else set()


def _similar(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _closest(key: str, known: Sequence[str]) -> str | None:
    """The known setting ``key`` was most likely meant to be, or ``None``.

    Settings are named ``modifier_noun`` (``input_size``, ``stack_dir``): known names with the same last word
    come first, then similarity of the whole name plus word-by-word similarity, so ``image_size`` finds
    ``input_size`` (plain :func:`difflib.get_close_matches` would offer ``image_resize_mode``).
    """
    words = key.split("_")

    def score(name: str) -> float:
        other = name.split("_")
        by_word = sum(_similar(a, b) for a, b in zip(words, other)) / max(len(words), len(other))
        return _similar(key, name) + by_word

    pool = [k for k in known if k.split("_")[-1] == words[-1]] or list(known)
    best = max(pool, key=lambda k: (score(k), k), default=None)
    return best if best is not None and score(best) >= 1.0 else None


def _check_override_keys() -> None:
    for key, files, close in unknown_override_keys()[:1]:
        hint = f" (did you mean --{close}?)" if close else ""
        raise S2S2InputError(
            f"--{key}",
            f"not a setting of this bundle{hint}",
            f"spell it as the config files do ({', '.join(files)}), or define '{key}' in a config file of your own",
        )


def check_training_settings(
    settings: Mapping[str, Any], choices: Mapping[str, Any] | None = None, exit_on_error: bool = False
) -> dict:
    """Check bundle settings by name (unknown names are ignored); return them unchanged.

    Also refuses a key typed on the ``python -m monai.bundle run`` command line that the config files do not
    define (:func:`unknown_override_keys`), naming the closest known one. ``settings`` may hold, besides the
    keys of :data:`SETTING_RULES` and ``choices``: ``network_name`` with ``input_size`` (the size must fit the
    network, :data:`INPUT_SIZE_RULES`) and ``label_map`` with ``num_classes`` (they must agree).

    Args:
        settings: ``{name: value}``, e.g. ``{"max_epochs": @max_epochs, "tap_preset": @tap_preset}``.
        choices: more ``{name: allowed names}`` from the bundle itself, e.g. ``{"network_name": list(@networks)}``.
        exit_on_error: print ``error: ...`` and exit with status 2 instead of raising (bundle use).

    Raises:
        S2S2InputError: a value of the wrong type or out of range, or an unknown choice; the
            message names the ``--KEY`` override and gives a valid example.
    """
    try:
        _check_override_keys()
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
        _check_cross(settings)
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return dict(settings)


def check_data_settings(
    datalist: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    label_map: Any = None,
    num_classes: Any = None,
    model_selection: str = "last",
    exit_on_error: bool = False,
) -> str:
    """Check the settings that depend on the datalist, before the stack is built; return the datalist path.

    Called after ``require_data`` (the datalist is readable then): ``num_classes`` must be the label map's
    (the bundle derives it from ``label_map``, so an override that differs is an error), and
    ``model_selection best_validation`` needs a non-empty ``validation`` section.

    Args:
        datalist: the bundle's datalist.
        data_root: its data root (``dataset_dir``).
        label_map: the bundle's label map (name, dict or :class:`~s2s2_monai.label_maps.LabelMap`).
        num_classes: the bundle's ``num_classes``.
        model_selection: ``last`` or ``best_validation``.
        exit_on_error: print ``error: ...`` and exit with status 2 instead of raising (bundle use).

    Raises:
        S2S2InputError: naming ``--num_classes`` or ``--model_selection``.
    """
    try:
        if label_map is not None and num_classes is not None:
            _check_cross({"label_map": label_map, "num_classes": num_classes})
        if model_selection == "best_validation":
            from s2s2_monai.data.datalist import load_datalist

            if not load_datalist(datalist, data_root).items("validation"):
                raise S2S2InputError(
                    "--model_selection",
                    f"best_validation needs validation cases, and the validation section of {datalist} is empty",
                    "add a validation section (cases not in test) to the datalist (e.g. data_lists/synapse_holdout.json),"
                    " or use --model_selection last",
                )
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return str(datalist)
