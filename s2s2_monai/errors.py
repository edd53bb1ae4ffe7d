"""One exception type for bad user input, printed by the CLI and the bundles without a traceback."""

from __future__ import annotations

import os
import sys

__all__ = ["S2S2InputError", "input_error_in", "install_excepthook", "exit_or_raise"]


class S2S2InputError(Exception):
    """Bad input from the user: names the file, what is wrong and how to fix it.

    Args:
        path: the file or folder at fault (``None`` when there is none).
        problem: what is wrong, one sentence.
        fix: how to fix it, one sentence.
    """

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        how = f" Fix: {fix}" if fix else ""
        super().__init__(f"{where}{problem}.{how}")

    def __reduce__(self):  # pickles with its three fields (multiprocessing, DDP)
        return type(self), (self.path, self.problem, self.fix)


def input_error_in(exc: BaseException | None) -> S2S2InputError | None:
    """The :class:`S2S2InputError` behind ``exc``: ``exc`` itself or one in its cause/context chain.

    MONAI's config parser wraps what a component raises (``RuntimeError: Failed to instantiate ...``);
    the bad input is the cause underneath.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, S2S2InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_or_raise(exc: S2S2InputError, exit_on_error: bool):
    """Bundle steps: print ``error: ...`` and exit with status 2 (``exit_on_error``), else raise ``exc``."""
    if exit_on_error:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise exc


def _excepthook(exc_type, exc, tb) -> None:
    err = input_error_in(exc)
    if err is None:
        _excepthook.previous(exc_type, exc, tb)
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    print(f"error: {err}", file=sys.stderr, flush=True)
    os._exit(2)  # interpreter exit would print nothing more, but could only return status 1


def install_excepthook() -> None:
    """Make an uncaught exception caused by bad input print one ``error:`` line and exit with status 2.

    For processes the project does not own the top of, such as ``python -m monai.bundle run``: the
    bundles call this first in ``initialize``. Other exceptions keep Python's traceback. Idempotent.
    """
    if sys.excepthook is not _excepthook:
        _excepthook.previous = sys.excepthook
        sys.excepthook = _excepthook
