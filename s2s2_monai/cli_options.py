"""Options shared by the ``s2s2`` sub-commands: one name per concept, old spellings as hidden aliases.

Torch-free (the parser is built on every ``s2s2`` call). Every command spells a concept the same way:

=================  =====================================================  ==========================
option             meaning                                                hidden deprecated aliases
=================  =====================================================  ==========================
``--checkpoint``   trained weights file                                   ``--ckpt``
``--no-progress``  no progress bars                                       ``--quiet``
``--config``       config file, a path relative to the current folder     (robustness: a name inside
                   (repeat: merged in order)                              ``--bundle`` still works)
``--set``          ``KEY=VALUE`` bundle override (VALUE read as JSON)
``--out``          output folder                                          demo-data: positional OUT
=================  =====================================================  ==========================

An alias shares the canonical option's ``dest`` and is left out of ``--help``
(``help=argparse.SUPPRESS``); using it prints one ``warning:`` line naming the new spelling. A
required option is also satisfied by its alias.
"""

from __future__ import annotations

import argparse
import sys

__all__ = [
    "add_option",
    "add_command_group",
    "add_checkpoint",
    "add_no_progress",
    "add_config",
    "add_set",
    "add_out",
    "add_datalist",
    "add_seed",
    "parse_sets",
    "options_for",
    "add_bundle_preprocessing",
    "bundle_preprocessing",
    "bundle_model",
    "reset_aliases",
]


class _Store(argparse.Action):
    """``store``, whose ``required`` is waived while one of its deprecated aliases was given in this parse."""

    def __init__(self, *args, **kwargs) -> None:
        self.alias_given = False
        super().__init__(*args, **kwargs)

    @property
    def required(self) -> bool:
        return self._required and not self.alias_given

    @required.setter
    def required(self, value: bool) -> None:
        self._required = bool(value)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)


class _Alias(argparse.Action):
    """A deprecated spelling of ``canonical``: same ``dest``, hidden from ``--help``, one warning when used."""

    def __init__(self, option_strings, dest, canonical: argparse.Action, positional: bool = False, **kwargs) -> None:
        self.canonical = canonical
        self.positional = positional
        nargs = "?" if positional else canonical.nargs
        super().__init__(
            option_strings,
            dest,
            nargs=nargs,
            type=canonical.type,
            choices=canonical.choices,
            metavar=canonical.metavar,
            help=argparse.SUPPRESS,
            default=None if positional else argparse.SUPPRESS,
        )

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.positional and values is None:  # an optional positional that was not given
            return
        new = self.canonical.option_strings[0]
        if option_string:
            print(f"warning: {option_string} is deprecated; use {new}", file=sys.stderr)
        else:
            metavar = self.canonical.metavar or self.canonical.dest.upper()
            print(f"warning: a positional {metavar} is deprecated; use {new} {metavar}", file=sys.stderr)
        if isinstance(self.canonical, _Store):
            self.canonical.alias_given = True
        self.canonical(parser, namespace, values, self.canonical.option_strings[0])


def reset_aliases(parser: argparse.ArgumentParser) -> None:
    """Forget which aliases the previous parse saw (called by the ``s2s2`` parser before each parse)."""
    for action in parser._actions:
        if isinstance(action, _Store):
            action.alias_given = False


def add_option(
    parser: argparse.ArgumentParser, name: str, *, aliases: tuple[str, ...] = (), **kwargs
) -> argparse.Action:
    """``parser.add_argument(name, **kwargs)`` plus hidden deprecated ``aliases`` sharing its ``dest``.

    An alias starting with ``-`` is an option; a bare name is an optional positional argument
    (its ``dest`` is that name; the value lands in the canonical ``dest``).
    """
    if aliases and kwargs.get("action", "store") == "store":
        kwargs["action"] = _Store
    canonical = parser.add_argument(name, **kwargs)
    for alias in aliases:
        if alias.startswith("-"):
            parser.add_argument(alias, action=_Alias, dest=canonical.dest, canonical=canonical)
        else:
            parser.add_argument(alias, action=_Alias, canonical=canonical, positional=True)
    return canonical


def add_command_group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """``s2s2 NAME ACTION``: a command whose actions are sub-commands (``dest`` ``NAME_command``, required)."""
    group = sub.add_parser(name, help=help)
    return group.add_subparsers(dest=f"{name}_command", required=True, metavar="ACTION")


def add_checkpoint(parser: argparse.ArgumentParser, help: str, required: bool = True) -> argparse.Action:
    """``--checkpoint FILE`` (alias ``--ckpt``)."""
    return add_option(parser, "--checkpoint", aliases=("--ckpt",), required=required, metavar="FILE", help=help)


def add_no_progress(parser: argparse.ArgumentParser, help: str = "no progress bars") -> argparse.Action:
    """``--no-progress`` (alias ``--quiet``), ``dest="no_progress"``."""
    return add_option(parser, "--no-progress", aliases=("--quiet",), action="store_true", help=help)


def add_config(parser: argparse.ArgumentParser, help: str, required: bool = False) -> argparse.Action:
    """``--config FILE``, repeatable: config files merged in order, paths relative to the current folder."""
    return parser.add_argument("--config", action="append", required=required, default=None, metavar="FILE", help=help)


def add_set(parser: argparse.ArgumentParser, help: str) -> argparse.Action:
    """``--set KEY=VALUE``, repeatable: bundle setting overrides (read them with :func:`parse_sets`)."""
    return parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help=help)


def add_out(parser: argparse.ArgumentParser, help: str, aliases: tuple[str, ...] = ()) -> argparse.Action:
    """``--out DIR`` (required)."""
    return add_option(parser, "--out", aliases=aliases, required=True, metavar="DIR", help=help)


def add_datalist(parser: argparse.ArgumentParser, help: str = "datalist JSON") -> None:
    """``--datalist JSON`` (required) and ``--data-root DIR``, the root of its relative paths."""
    parser.add_argument("--datalist", required=True, metavar="JSON", help=help)
    parser.add_argument(
        "--data-root",
        default=None,
        metavar="DIR",
        help="root of relative datalist paths (default: the datalist's folder)",
    )


def add_seed(parser: argparse.ArgumentParser, help: str) -> argparse.Action:
    """``--seed N`` (default 0)."""
    return parser.add_argument("--seed", type=int, default=0, help=f"{help} (default 0)")


def parse_sets(items: list[str] | None) -> dict:
    """``KEY=VALUE`` pairs of ``--set`` -> dict; VALUE is read as JSON when it parses (numbers, lists), else as a string."""
    import json

    from s2s2_monai.errors import S2S2InputError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise S2S2InputError(
                None, f"--set {item!r} is not KEY=VALUE", "write e.g. --set cooperative_channels=[8,16,16,16,16]"
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def options_for(fn, args: argparse.Namespace, **given) -> dict:
    """Keyword arguments for ``fn`` (a function or dataclass) from the parsed ``args``.

    Every parameter of ``fn`` that ``args`` has an attribute of the same name for is taken from it;
    ``progress`` is ``not args.no_progress``; ``given`` (values or renamed options) wins over both.
    """
    import inspect

    kwargs = {}
    for name in inspect.signature(fn).parameters:
        if name == "progress" and hasattr(args, "no_progress"):
            kwargs[name] = not args.no_progress
        elif hasattr(args, name):
            kwargs[name] = getattr(args, name)
    return {**kwargs, **given}


def add_bundle_preprocessing(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (repeat) and ``--set KEY=VALUE``: the training bundle whose preprocessing a data job uses."""
    add_config(
        parser,
        "training bundle config (repeat for overlays): its train#deterministic_transforms preprocess the volumes, "
        "as the network will see them (default: the paper's for the datalist's modality)",
    )
    add_set(parser, "bundle override, e.g. --set hu_window=[-160,240]; repeat")


def bundle_preprocessing(args: argparse.Namespace):
    """The preprocessing of ``--config``/``--set`` for ``args.datalist`` (``None`` without ``--config``)."""
    if not getattr(args, "config", None):
        return None
    from s2s2_monai.model import BundleModel

    overrides = {"datalist": str(args.datalist)}
    if getattr(args, "data_root", None):
        overrides["dataset_dir"] = str(args.data_root)
    return BundleModel.preprocessing_from_configs(args.config, {**overrides, **parse_sets(args.set)})


def bundle_model(args: argparse.Namespace, configs: list[str], extra: dict | None = None):
    """The :class:`~s2s2_monai.model.BundleModel` of ``configs`` + ``--set`` (+ ``extra`` overrides) with
    ``--checkpoint`` loaded, on ``--device`` (default cuda when available)."""
    from pathlib import Path

    import torch

    from s2s2_monai.errors import S2S2InputError
    from s2s2_monai.model import BundleModel

    if not Path(args.checkpoint).is_file():  # before the (slow) bundle config is parsed
        raise S2S2InputError(
            args.checkpoint, "checkpoint file not found", "pass the models/model.pt written by training (--checkpoint)"
        )
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {**(extra or {}), **parse_sets(args.set)}
    return BundleModel.from_configs(configs, overrides, checkpoint=args.checkpoint, device=device)
