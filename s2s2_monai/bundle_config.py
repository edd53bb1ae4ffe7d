"""Reading MONAI bundle configs outside ``monai.bundle run``: one parser, one network builder.

Used by every command that rebuilds a trained model from its bundle (``s2s2 robustness``,
``s2s2 export-bundle``, the MONAI Label app, ``s2s2 ablation``): config files are merged in order
(overlays last), ``bundle_root`` and overrides are set, and every failure is one clear
:class:`~s2s2_monai.errors.S2S2InputError` naming the config file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from s2s2_monai.errors import S2S2InputError

__all__ = ["read_config", "parse_setting", "build_network"]


def read_config(
    config_files: Sequence[str | os.PathLike],
    bundle_root: str | os.PathLike | None = None,
    overrides: Mapping | None = None,
):
    """A MONAI ``ConfigParser`` of ``config_files`` merged in order, with ``bundle_root`` and ``overrides`` set.

    Raises:
        S2S2InputError: a config file that does not exist.
    """
    from monai.bundle import ConfigParser

    for f in config_files:
        if not Path(f).is_file():
            raise S2S2InputError(
                f,
                "bundle config file not found",
                "give the config files the model was trained with (e.g. bundles/synapse/train.json)",
            )
    parser = ConfigParser()
    parser.read_config([str(f) for f in config_files])
    if bundle_root is not None:
        parser["bundle_root"] = str(bundle_root)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def parse_setting(parser, key: str, where: str | os.PathLike, fix: str, default=...):
    """``parser.get_parsed_content(key)``; a missing key (without ``default``) or a failing one is an S2S2InputError."""
    if key not in parser:
        if default is not ...:
            return default
        raise S2S2InputError(where, f"the config has no '{key}'", fix)
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:  # any config error becomes one clear message
        raise S2S2InputError(
            where, f"cannot evaluate '{key}' ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", fix
        ) from None


def build_network(parser, where: str | os.PathLike):
    """A fresh (untrained) network from the config's ``network_def``."""
    return parse_setting(
        parser, "network_def", where, "use the bundle's train.json (and the overlays it was trained with)"
    )
