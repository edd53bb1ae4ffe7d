"""End-to-end evaluations: prediction folders vs labels (the CLI) and a network on a datalist (the bundle).

Both validate all inputs before writing anything, score every case with one
:class:`~s2s2_monai.evaluation.metric_table.MetricTable` and write one report with
:func:`~s2s2_monai.evaluation.report.write_report`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from s2s2_monai.atomic import remove_stale_temp, require_writable
from s2s2_monai.errors import S2S2InputError, file_system_errors
from s2s2_monai.evaluation.metric_table import MetricTable
from s2s2_monai.evaluation.metrics import DEFAULT_HD95
from s2s2_monai.evaluation.report import preload_figures, write_report
from s2s2_monai.label_maps import LabelMap, get_label_map
from s2s2_monai.processes import can_fork

if TYPE_CHECKING:
    import torch

__all__ = ["evaluate_folders", "evaluate_datalist", "numbered_label_map"]


def numbered_label_map(num_classes: int) -> LabelMap:
    """A label map ``class_1 .. class_{K-1}`` for ``--num-classes K`` (K counts the background)."""
    if num_classes < 2:
        raise S2S2InputError(
            None, f"--num-classes must be >= 2 (background + 1 class), got {num_classes}", "count the background too"
        )
    return LabelMap(
        name=f"numbered_{num_classes}",
        classes={i: f"class_{i}" for i in range(1, num_classes)},
        modality="CT",
        anatomy="scan",
    )


def evaluate_folders(
    pred_dirs: Mapping[str, str | os.PathLike],
    label_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_map: LabelMap | str = "synapse",
    hd95: str = DEFAULT_HD95,
    legacy_transunet: bool = False,
    image_dir: str | os.PathLike | None = None,
    progress: bool = True,
    n_boot: int = 10000,
    seed: int = 0,
    allow_missing: bool = False,
    workers: int | None = None,
) -> dict:
    """Score prediction folders (one per method) against a label folder and write the report.

    Args:
        pred_dirs: ``{method name: folder of .nii/.nii.gz predictions}``, matched to labels by file name.
        label_dir: folder of ground-truth label files.
        out_dir: report folder.
        label_map: :class:`LabelMap` or registry name; ids outside it are an error.
        hd95: HD95 definition name.
        legacy_transunet: TransUNet protocol (voxel units, its empty rule).
        image_dir: optional images (same names) shown under the worst-slice overlays.
        progress: progress bar over cases.
        allow_missing: score only the predicted labelled cases (with several methods: those every
            method predicted) instead of refusing; prints one ``note:`` line per method that misses
            cases (stderr) and records them in ``summary.json`` under ``settings`` (``missing_predictions``:
            ``{method: [cases]}``, ``left_out_predictions``, ``labelled_cases``, ``scored_cases``).
        workers: processes scoring cases in parallel (default: the CPU count; 1 = in this process).
            The numbers and the report do not depend on it (cases are merged in order).

    Returns:
        The summary written to ``summary.json``.
    """
    import sys

    from s2s2_monai.evaluation.folders import match_cases

    if workers is not None and int(workers) < 1:
        raise S2S2InputError(
            None, f"--workers must be >= 1, got {workers}", "pass --workers 1 or more, or leave it out"
        )
    lm = get_label_map(label_map)
    match = match_cases(dict(pred_dirs), label_dir, allow_missing=allow_missing)
    require_writable(out_dir, "--out")  # before the scoring, not after it
    remove_stale_temp(out_dir)  # what a killed earlier run left beside out_dir
    for note in match.notes():
        print(note, file=sys.stderr, flush=True)
    ev = MetricTable(
        lm.classes,
        hd95=hd95,
        legacy_transunet=legacy_transunet,
        label_map=lm.name,
        extra_settings=match.record() if allow_missing else {},  # summary.json's settings
    )
    pairs = match.pairs
    jobs = [(pair, ev.empty_copy(), lm.valid_ids(), image_dir) for pair in pairs]
    workers = max(1, min(int(workers) if workers is not None else os.cpu_count() or 1, len(jobs)))
    if not can_fork():
        workers = 1  # spawned workers would re-import everything: slower than scoring here
    with contextlib.ExitStack() as stack:
        bar = stack.enter_context(tqdm(total=len(jobs), desc="evaluating", unit="case", disable=not progress))
        if workers == 1:
            parts = map(_score_pair, jobs)
        else:  # nnU-Net style: one process per case (forked: no re-import), merged in case order
            from s2s2_monai.processes import fork_pool

            pool = stack.enter_context(fork_pool(workers))
            parts = pool.map(_score_pair, jobs)  # the workers start here
            preload_figures()  # while they score
        for part in parts:
            ev.merge(part)
            bar.update(1)
    return write_report(out_dir, ev, n_boot=n_boot, seed=seed)


def _score_pair(job) -> MetricTable:
    """Read one prediction / label pair (and its image), check it and score it into an empty table."""
    from s2s2_monai.data.volumes import load_volume, spacing_of
    from s2s2_monai.evaluation.folders import load_pair

    pair, table, valid_ids, image_dir = job
    pred, gt, affine = load_pair(pair.pred_path, pair.label_path, valid_ids)
    image = None
    if image_dir is not None:
        found = [Path(image_dir) / (pair.case + s) for s in (".nii.gz", ".nii")]
        found = [p for p in found if p.exists()]
        if found:
            image = load_volume(found[0])
            if tuple(image.shape[1:]) != tuple(pred.shape):
                raise S2S2InputError(
                    found[0],
                    f"image grid {tuple(image.shape[1:])} differs from prediction grid {tuple(pred.shape)}",
                    "give the images the predictions were made from",
                )
    table.add(pair.case, pred, gt, spacing_of(affine), method=pair.method, image=image)
    return table


def evaluate_datalist(
    model,
    datalist,
    section: str,
    out_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    write_predictions: bool = True,
    method: str = "prediction",
    progress: bool = True,
    device: torch.device | str | None = None,
) -> dict:
    """Segment every case of a datalist section with a :class:`~s2s2_monai.model.BundleModel`; write predictions + report.

    The cases go through the model's preprocessing (the bundle's ``train#deterministic_transforms``)
    and its inference procedure (:meth:`~s2s2_monai.model.BundleModel.inferer`: slice inference, or
    TransUNet's legacy round trip); the report uses its label map, HD95 definition and protocol, and
    names its checkpoint and record. Predictions go to ``out_dir/predictions/<case>.nii.gz`` in each
    input image's own geometry; the report (``metrics.csv``, ``summary.json``, ``report.html``) covers
    the labelled cases.

    Returns:
        The summary written to ``summary.json``.
    """
    from s2s2_monai.data.cases import as_datalist
    from s2s2_monai.data.volumes import write_prediction

    dl = as_datalist(datalist, data_root)
    if not dl.items(section):
        raise S2S2InputError(
            dl.path,
            f"datalist has no entries in section {section!r}",
            "choose a section with cases (training/validation/test)",
        )
    ev = model.metric_table()
    out_dir = Path(out_dir)
    require_writable(out_dir, "--eval_dir")
    for case in model.cases(dl, section, progress=progress, desc=f"evaluating {section}"):
        pred = model.segment(case.image, device=device)
        if case.label is not None:
            ev.add(case.case_id, pred, case.label, case.spacing, method=method, image=case.image)
        if write_predictions:
            target = out_dir / "predictions" / f"{case.case_id}.nii.gz"
            with file_system_errors(target.parent):  # a full or read-only disk: one line naming the folder
                write_prediction(pred, case.affine, case.source_affine, target)
    if not ev.rows:
        raise S2S2InputError(
            dl.path,
            f"no case of section {section!r} has a label, so nothing can be scored",
            "add 'label' entries or evaluate another section",
        )
    return write_report(out_dir, ev)
