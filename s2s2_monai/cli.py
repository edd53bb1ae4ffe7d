"""The ``s2s2`` command. Each concept package registers its own sub-commands.

Building the parser imports neither torch nor MONAI (``s2s2 --help`` answers in well under a
second): the ``commands`` modules take their choices from torch-free leaf modules
(:mod:`s2s2_monai.evaluation.names`, :mod:`s2s2_monai.robustness.names`,
:mod:`s2s2_monai.label_maps`) and import the heavy code inside the command functions. Option
names shared by several commands come from :mod:`s2s2_monai.cli_options`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from s2s2_monai.cli_options import reset_aliases
from s2s2_monai.errors import S2S2InputError, user_error_in

__all__ = ["main", "build_parser"]

#: Modules with a ``register(subparsers)`` function, one per concept.
COMMAND_MODULES = [
    "s2s2_monai.ablation.commands",
    "s2s2_monai.data.commands",
    "s2s2_monai.evaluation.commands",
    "s2s2_monai.evaluation.predict_commands",
    "s2s2_monai.label_app.commands",
    "s2s2_monai.robustness.commands",
    "s2s2_monai.stack.commands",
    "s2s2_monai.stack.controlnet_commands",
]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one ``error: OPTION: what. Fix: how`` line (exit 2), as for bad files.

    Sub-command parsers are of this class too; each parse first resets the deprecated-alias state
    of :mod:`s2s2_monai.cli_options` (an alias satisfies its required option for one parse).
    """

    def parse_known_args(self, args=None, namespace=None):
        reset_aliases(self)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        where, sep, what = message.partition(": ")
        if not (sep and where.startswith("argument ")):
            where, what = None, message
        else:
            where = where[len("argument ") :]
        print(f"error: {S2S2InputError(where, what, f'see `{self.prog} --help`')}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from s2s2_monai import __version__

    parser = _Parser(prog="s2s2", description="S2S2 semantic stacking for segmentation on MONAI")
    parser.add_argument("--version", action="version", version=f"s2s2_monai {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; bad input prints one ``error:`` line and returns 2 (no traceback).

    Bad input is an :class:`~s2s2_monai.errors.S2S2InputError` (possibly wrapped, e.g. by MONAI's config
    parser) or a file-system refusal such as a read-only or full ``--out`` (``OSError`` EROFS, ENOSPC,
    EDQUOT, EACCES, EPERM, ENOTDIR with a path): :func:`~s2s2_monai.errors.user_error_in`.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        err = user_error_in(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
