"""Run a training bundle in this process: the one place that drives MONAI's :class:`~monai.bundle.ConfigWorkflow`.

Used by ``s2s2 ablation`` (every arm x seed) and by MONAI Label retraining (:mod:`s2s2_monai.label_app.retrain`):
the same steps as ``python -m monai.bundle run training``, in order ``initialize`` -> optional hook -> ``run``
-> ``finalize``, where ``finalize`` runs even when ``run`` (or the hook) raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["run_training_bundle"]

logger = logging.getLogger(__name__)


def run_training_bundle(
    config_files: str | os.PathLike | Sequence[str | os.PathLike],
    overrides: Mapping[str, Any] | None = None,
    meta_file: str | os.PathLike | None = None,
    logging_file: str | os.PathLike | bool | None = None,
    before_run: Callable[[Any], None] | None = None,
    initialize_lock: contextlib.AbstractContextManager | None = None,
):
    """Build the ``train`` workflow of a bundle, initialize, run and finalize it; returns the workflow.

    Args:
        config_files: one config file, or several merged in order (``train.json`` and its overlays).
        overrides: bundle settings replacing the configs' (``{"output_dir": ..., "max_epochs": 2}``).
        meta_file: the bundle's ``metadata.json``; ``None``: MONAI's default (``metadata.json`` beside the
            first config, skipped with a warning when absent).
        logging_file: a ``logging.conf``; ``None``: MONAI's default (beside the first config, when present);
            ``False``: leave logging as it is.
        before_run: ``hook(workflow)`` after ``initialize`` and before ``run``, e.g. loading start weights
            into ``workflow.parser.get_parsed_content("network")``.
        initialize_lock: a context manager held while ``initialize`` runs only (the ablation passes a file
            lock: ``initialize`` builds or checks the stack folder that concurrent jobs share).

    Returns:
        The finalized :class:`monai.bundle.ConfigWorkflow`.

    Raises:
        Whatever ``initialize``, the hook or ``run`` raises (bad input as
        :class:`~s2s2_monai.errors.S2S2InputError`, possibly wrapped by MONAI's config parser).
    """
    from monai.bundle import ConfigWorkflow

    if isinstance(config_files, (str, os.PathLike)):
        configs: str | list[str] = str(config_files)
    else:
        configs = [str(c) for c in config_files]
        if len(configs) == 1:
            configs = configs[0]
    workflow = ConfigWorkflow(
        config_file=configs,
        meta_file=None if meta_file is None else str(meta_file),
        logging_file=logging_file if logging_file is None or isinstance(logging_file, bool) else str(logging_file),
        workflow_type="train",
        **dict(overrides or {}),
    )
    with initialize_lock if initialize_lock is not None else contextlib.nullcontext():
        workflow.initialize()
    try:
        if before_run is not None:
            before_run(workflow)
        workflow.run()
    except BaseException:
        try:
            workflow.finalize()
        except Exception:  # the first error is the one to report
            logger.warning("finalize failed after an error in the run", exc_info=True)
        raise
    workflow.finalize()
    return workflow
