"""One exception type for bad user input, printed by the CLI and the bundles without a traceback.

A file-system refusal (read-only folder, full disk, no permission) is the user's to fix too:
:func:`file_system_error` turns such an :class:`OSError` into an :class:`S2S2InputError` naming the path,
and :func:`user_error_in` finds either behind an exception (the CLI's ``main`` and the bundles' excepthook).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

__all__ = [
    "S2S2InputError",
    "FILE_SYSTEM_ERRNOS",
    "file_system_error",
    "file_system_errors",
    "input_error_in",
    "user_error_in",
    "install_excepthook",
    "exit_or_raise",
]


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


#: errno -> (what the user is told, how to fix it) for the :class:`OSError` s that are the user's to fix.
FILE_SYSTEM_ERRNOS: dict[int, tuple[str, str]] = {
    errno.EROFS: (
        "cannot write here (read-only file system)",
        "choose a folder on a writable file system (e.g. another --out)",
    ),
    errno.ENOSPC: (
        "cannot write here (no space left on the device)",
        "free space on that disk, or choose a folder on another one (e.g. another --out)",
    ),
    errno.EDQUOT: (
        "cannot write here (disk quota exceeded)",
        "free space within your quota, or choose a folder on another disk (e.g. another --out)",
    ),
    errno.EACCES: (
        "permission denied",
        "give a path you have permission for (e.g. another --out), or change the permissions of this one",
    ),
    errno.EPERM: (
        "operation not permitted",
        "give a path you have permission for (e.g. another --out), or change the permissions of this one",
    ),
    errno.ENOTDIR: (
        "a part of this path is a file, not a folder",
        "choose a path whose parent folders are folders (e.g. another --out)",
    ),
}


def file_system_error(exc: BaseException | None, path: object = None) -> S2S2InputError | None:
    """The :class:`S2S2InputError` for a file-system refusal behind ``exc``, else ``None``.

    Looks for an :class:`OSError` whose ``errno`` is one of :data:`FILE_SYSTEM_ERRNOS` in ``exc`` and its
    cause/context chain. Permission and not-a-folder errors need a path to be the user's (``path`` or the
    error's ``filename``); a read-only or full disk is reported with or without one.

    Args:
        exc: the exception raised.
        path: the path to name (e.g. the ``--out`` folder being written); default the error's ``filename``.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in FILE_SYSTEM_ERRNOS:
            where = path if path is not None else exc.filename
            if where is None and exc.errno in (errno.EACCES, errno.EPERM, errno.ENOTDIR):
                return None  # e.g. a socket or a process: not a path the user gave
            problem, fix = FILE_SYSTEM_ERRNOS[exc.errno]
            return S2S2InputError(os.fsdecode(where) if isinstance(where, bytes) else where, problem, fix)
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def file_system_errors(path: object) -> Iterator[None]:
    """Inside the block, a file-system refusal (read-only, full, forbidden) becomes one :class:`S2S2InputError`
    naming ``path`` (:func:`file_system_error`); any other error passes unchanged."""
    try:
        yield
    except OSError as exc:
        err = file_system_error(exc, path)
        if err is None:
            raise
        raise err from None


def user_error_in(exc: BaseException | None) -> S2S2InputError | None:
    """Bad input behind ``exc``: an :class:`S2S2InputError` (:func:`input_error_in`) or a file-system
    refusal (:func:`file_system_error`); ``None`` for a bug, which keeps its traceback."""
    return input_error_in(exc) or file_system_error(exc)


def exit_or_raise(exc: S2S2InputError, exit_on_error: bool):
    """Bundle steps: print ``error: ...`` and exit with status 2 (``exit_on_error``), else raise ``exc``."""
    if exit_on_error:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise exc


def _excepthook(exc_type, exc, tb) -> None:
    err = user_error_in(exc)
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

    Bad input is an :class:`S2S2InputError` or a file-system refusal (:func:`user_error_in`).

    For processes the project does not own the top of, such as ``python -m monai.bundle run``: the
    bundles call this first in ``initialize``. Other exceptions keep Python's traceback. Idempotent.
    """
    if sys.excepthook is not _excepthook:
        _excepthook.previous = sys.excepthook
        sys.excepthook = _excepthook
