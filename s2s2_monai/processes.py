"""Forked worker processes that never outlive the process that forked them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys

__all__ = ["fork_pool", "can_fork"]


def can_fork() -> bool:
    """Whether this platform forks (Linux, macOS): workers then inherit the imports, nothing is re-imported."""
    return "fork" in multiprocessing.get_all_start_methods()


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, a SIGKILL when the parent dies (a ``kill -9`` of the command leaves no
    orphan waiting on its queue); elsewhere, at least not start if the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def fork_pool(workers: int):
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of ``workers`` forked processes that die with this one."""
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_die_with_parent,
        initargs=(os.getpid(),),
    )
