"""Checkpoint handlers of the training bundles: atomic per-epoch checkpoints, resuming, and the evaluated model.

:class:`AtomicCheckpointSaver` writes MONAI/ignite checkpoints via a temporary file and a rename (a
``kill -9`` never leaves half a file); :class:`ResumeCheckpointLoader` restores network, optimizer,
scheduler and the trainer's own state from the newest ``checkpoint_epoch=N.pt`` it can read (and finite),
and seeds every epoch from ``(seed, rank, epoch)`` so that the resumed run is the uninterrupted one;
:class:`ModelSaver` writes ``models/model.pt`` (the weights evaluation uses) and ``models/model.json``
(which weights they are: the last epoch, or the best epoch on the validation section).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "ResumeCheckpointLoader", "ModelSaver"]

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
    that cannot be read (truncated, damaged) or whose network / optimizer tensors hold NaN/inf is moved
    aside to ``NAME.corrupt`` with one warning and the next newest is used
    (:func:`s2s2_monai.checkpoints.newest_readable`); none left: from scratch.

    With ``seed``, the trainer's random states are re-derived at the start of every epoch from
    ``(seed, rank, epoch)`` (:class:`~s2s2_monai.training.seeding.EpochSeeding`; global generators, shuffle,
    worker seeds, stack members, MONAI transforms, the trainer's own generators), so a resumed run ends with
    the weights of an uninterrupted one; the seed is recorded in the trainer's state, and resuming a
    checkpoint written with another seed is reported.

    Args:
        ckpt_dir: folder of the interval checkpoints.
        load_dict: objects to restore.
        engine_key: key of the engine's own state (``None``: do not restore the engine).
        seed: the run's base seed (the bundle's ``seed``); ``None``: no per-epoch seeding.
        kwargs: other :class:`~monai.handlers.CheckpointLoader` arguments (``map_location``, ``strict``).
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        load_dict: dict,
        engine_key: str | None = "trainer",
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(load_path=str(ckpt_dir), load_dict=dict(load_dict), **kwargs)
        self.ckpt_dir = str(ckpt_dir)
        self.engine_key = engine_key
        self.seed = None if seed is None else int(seed)
        self.found: str | None = None

    def attach(self, engine) -> None:
        from s2s2_monai.checkpoints import newest_readable, numbered_checkpoints, require_finite, torch_load

        if self.seed is not None:
            from s2s2_monai.training.seeding import EpochSeeding

            EpochSeeding(self.seed).attach(engine)

        def full_read(path):  # finds damage anywhere in the file; MONAI's __call__ then reads the good one again
            state = torch_load(path, "cpu")
            if isinstance(state, dict):  # NaN/inf weights or optimizer state: diverged or damaged, as unreadable
                require_finite({k: state[k] for k in self.load_dict if k in state and k != self.engine_key})

        readable = newest_readable(numbered_checkpoints(self.ckpt_dir), full_read)
        if readable is None:
            logger.info("no checkpoint in %s: starting from scratch", self.ckpt_dir)
            return
        self.found = self.load_path = str(readable[0])
        logger.info("resuming from %s", self.found)
        if self.engine_key is not None:
            self.load_dict[self.engine_key] = engine
        super().attach(engine)


class ModelSaver:
    """Writes the model evaluation uses: ``save_dir/model.pt`` (state dict) and ``model.json`` (its record).

    ``selection="last"`` (TransUNet's choice, the paper's setting): when training completes, the final
    weights. ``selection="best_validation"``: after each validation run whose key metric beats the best so
    far (read back from ``model.json`` on resume), those weights; this needs a non-empty ``validation``
    section, which the project's datalists keep disjoint from ``test``. Only rank 0 writes. The record:
    ``{"selection", "epoch", "max_epochs", "metric_name", "metric"}`` (metric ``None`` for ``last`` when no
    validation ran).

    Args:
        save_dir: the bundle's ``model_dir``.
        network: the trained network (DDP unwrapped when saved).
        selection: ``"last"`` or ``"best_validation"``.
        validator: the validation evaluator (its key metric is recorded; required for ``best_validation``).
        filename: weights file name.
        record: what the weights were trained with, added to ``model.json`` (the bundle passes
            ``@model.describe()``: label map, preprocessing, input size, resize mode), so that every
            consumer can refuse a config that would feed the network otherwise
            (:class:`~s2s2_monai.model.BundleModel`).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        network,
        selection: str = "last",
        validator=None,
        filename: str = "model.pt",
        record: Mapping | None = None,
    ) -> None:
        from s2s2_monai.errors import S2S2InputError
        from s2s2_monai.training.settings import MODEL_SELECTIONS

        if selection not in MODEL_SELECTIONS:
            raise S2S2InputError(
                "--model_selection",
                f"unknown model selection {selection!r}",
                f"use one of {', '.join(MODEL_SELECTIONS)}",
            )
        if selection == "best_validation" and (validator is None or not _has_cases(validator)):
            raise S2S2InputError(
                "--model_selection",
                "best_validation needs validation cases, and the datalist's validation section is empty",
                "add a validation section (cases not in test) to the datalist, or use --model_selection last",
            )
        self.path = Path(save_dir) / filename
        self.network = network
        self.selection = selection
        self.validator = validator
        self.trainer = None
        self.record = dict(record or {})

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self.trainer = engine
        if self.selection == "last":
            engine.add_event_handler(Events.COMPLETED, self._save_last)
        else:
            self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._save_if_best)

    def _metric(self) -> tuple[str | None, float | None]:
        state = getattr(self.validator, "state", None)
        name = getattr(state, "key_metric_name", None)
        value = None if state is None or name is None else state.metrics.get(name)
        return name, (None if value is None else float(value))

    def _save_last(self, engine) -> None:
        name, value = self._metric() if self.validator is not None else (None, None)
        self._save(engine.state.epoch, name, value)

    def _save_if_best(self, validator) -> None:
        name, value = self._metric()
        if value is None:
            return
        from s2s2_monai.checkpoints import model_record

        record = model_record(self.path)
        if (
            record.get("selection") == "best_validation"
            and record.get("metric") is not None
            and value <= record["metric"]
        ):
            return
        self._save(self.trainer.state.epoch, name, value)

    def _save(self, epoch: int, metric_name: str | None, metric: float | None) -> None:
        from s2s2_monai.atomic import torch_save, write_json
        from s2s2_monai.checkpoints import file_sha256, record_path
        from s2s2_monai.networks.wrappers import unwrap_network
        from s2s2_monai.training.seeding import current_rank

        if current_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch_save(unwrap_network(self.network).state_dict(), self.path)
        write_json(
            record_path(self.path),
            {
                "selection": self.selection,
                "epoch": int(epoch),
                "max_epochs": int(self.trainer.state.max_epochs),
                "metric_name": metric_name,
                "metric": metric,
                "sha256": file_sha256(self.path),
                **self.record,
            },
        )
        logger.info("wrote %s (%s, epoch %d)", self.path, self.selection, epoch)


def _has_cases(validator) -> bool:
    loader = getattr(validator, "data_loader", None)
    try:
        return loader is None or len(loader.dataset) > 0
    except TypeError:
        return True
