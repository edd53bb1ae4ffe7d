"""Checkpoint handlers of the training bundles: atomic per-epoch checkpoints and resuming from the newest readable one.

:class:`AtomicCheckpointSaver` writes MONAI/ignite checkpoints via a temporary file and a rename (a
``kill -9`` never leaves half a file); :class:`ResumeCheckpointLoader` restores network, optimizer,
scheduler and the trainer's own state from the newest ``checkpoint_epoch=N.pt`` it can read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "ResumeCheckpointLoader"]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(DiskSaver):
    """DiskSaver writing temp + rename (a kill never leaves half a file), with normal permissions
    and optional fixed filename (as MONAI's CheckpointSaver needs)."""

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(Path(self.dirname) / filename, 0o666 & ~umask)

    def remove(self, filename: str) -> None:
        super().remove(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI :class:`~monai.handlers.CheckpointSaver` whose files are written atomically.

    Same arguments, plus ``engine_key``: when set, the engine the saver is attached to (the
    trainer) is saved under that key too, so the bundle need not reference the trainer from its
    own handler list. Interval checkpoints are named ``checkpoint_epoch=N.pt`` (epoch level) as in
    MONAI, which :class:`ResumeCheckpointLoader` finds.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.engine_key = engine_key
        for ckpt in self._checkpoints():
            ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(ckpt.save_handler, "filename", None))

    def _checkpoints(self) -> list:
        return [
            c for c in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint) if c is not None
        ]

    def attach(self, engine) -> None:
        if self.engine_key is not None:
            for ckpt in self._checkpoints():
                ckpt.to_save = {**ckpt.to_save, self.engine_key: engine}
        super().attach(engine)


class ResumeCheckpointLoader(CheckpointLoader):
    """Loads the newest readable ``checkpoint_epoch=N.pt`` of ``ckpt_dir`` when the run starts; no-op if none.

    Put the network, optimizer and lr scheduler in ``load_dict``; the engine it is attached to (the
    trainer) is restored under ``engine_key`` (as saved by :class:`AtomicCheckpointSaver` with the
    same key): a run killed at any moment continues after its last completed epoch. A checkpoint
    that cannot be read (truncated, damaged) is moved aside to ``NAME.corrupt`` with one warning and
    the next newest is used (:func:`s2s2_monai.checkpoints.newest_readable`); none left: from scratch.

    Args:
        ckpt_dir: folder of the interval checkpoints.
        load_dict: objects to restore.
        engine_key: key of the engine's own state (``None``: do not restore the engine).
        kwargs: other :class:`~monai.handlers.CheckpointLoader` arguments (``map_location``, ``strict``).
    """

    def __init__(
        self, ckpt_dir: str | os.PathLike, load_dict: dict, engine_key: str | None = "trainer", **kwargs: Any
    ) -> None:
        super().__init__(load_path=str(ckpt_dir), load_dict=dict(load_dict), **kwargs)
        self.ckpt_dir = str(ckpt_dir)
        self.engine_key = engine_key
        self.found: str | None = None

    def attach(self, engine) -> None:
        from s2s2_monai.checkpoints import newest_readable, numbered_checkpoints, torch_load

        def full_read(path):  # finds damage anywhere in the file; MONAI's __call__ then reads the good one again
            torch_load(path, "cpu")

        readable = newest_readable(numbered_checkpoints(self.ckpt_dir), full_read)
        if readable is None:
            logger.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return
        self.found = self.load_path = str(readable[0])
        logger.info("resuming from %s", self.found)
        if self.engine_key is not None:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)
