"""Cases of a datalist section, loaded the one way every job loads them.

:func:`load_entry` reads one datalist entry with :func:`~s2s2_monai.data.volumes.load_case`:
image (and label) read and checked, reoriented to RAS, the datalist's ``label_remap`` applied (it
describes the files: which ids they use), then the preprocessing:

- ``transform``: a MONAI dictionary transform over ``{"image", "label"}`` (the bundles'
  ``train#deterministic_transforms``, e.g. ``CTWindowd`` / ``MRINormalized`` / ``RemapLabelsd``); or
- ``intensity``: an array transform of the image; default the paper's for the datalist's modality
  (:func:`~s2s2_monai.transforms.intensity_for`: CT window [-125, 275], MRI clip + z-norm).

:func:`iter_cases` does it for a whole section (training slices, validation, evaluation, robustness,
``check-data``).

Both check what the datalist declares: in a ``"modality": "CT"`` datalist every image must look
like CT in Hounsfield units (:func:`~s2s2_monai.data.modality.check_modality_range`: an MR volume
is refused, naming the file), and :func:`iter_cases` refuses a section listing one image twice,
or a training/validation section holding a test image
(:meth:`~s2s2_monai.data.datalist.Datalist.require_distinct`). An ``"MRI"`` datalist is not
range-checked: MR intensities have no physical unit to check, and CT phantoms stand in for MRI in
tests (``s2s2 predict`` checks both directions against the model's modality).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from tqdm.auto import tqdm

from s2s2_monai.data.datalist import Datalist, load_datalist
from s2s2_monai.data.volumes import CaseVolume, case_id_of, load_case

__all__ = ["as_datalist", "load_entry", "iter_cases"]


def as_datalist(datalist: Datalist | str | os.PathLike, data_root: str | os.PathLike | None = None) -> Datalist:
    """A :class:`Datalist` as it is, or loaded from its JSON path."""
    return datalist if isinstance(datalist, Datalist) else load_datalist(datalist, data_root)


def _modality_check(dl: Datalist) -> Callable | None:
    """``check_image`` for :func:`load_case`: raw CT images must look like CT (``None`` for MRI datalists)."""
    if dl.modality != "CT":
        return None
    from s2s2_monai.data.modality import check_modality_range

    def check(raw, path) -> None:
        check_modality_range(
            raw,
            "CT",
            path,
            expected_by=f'the datalist {dl.path} ("modality": "CT")',
            fix='list it in a datalist with "modality": "MRI" (or convert the image to Hounsfield units)',
        )

    return check


def load_entry(
    dl: Datalist,
    entry: dict,
    transform: Callable | None = None,
    intensity: Callable | None = None,
    check_modality: bool = True,
) -> CaseVolume:
    """One datalist entry as a preprocessed :class:`CaseVolume` (see the module docstring).

    ``check_modality``: refuse an image that does not fit the datalist's ``"modality": "CT"``.
    """
    from s2s2_monai.transforms import RemapLabels, intensity_for

    if transform is None and intensity is None:
        intensity = intensity_for(dl.modality)
    return load_case(
        entry["image"],
        entry.get("label"),
        intensity=intensity,
        remap=RemapLabels(dl.label_remap) if dl.label_remap else None,
        transform=transform,
        valid_label_ids=dl.valid_label_ids(),
        case_id=entry.get("case_id") or case_id_of(entry["image"]),
        check_image=_modality_check(dl) if check_modality else None,
    )


def iter_cases(
    datalist: Datalist | str | os.PathLike,
    section: str,
    data_root: str | os.PathLike | None = None,
    transform: Callable | None = None,
    intensity: Callable | None = None,
    labelled_only: bool = False,
    progress: bool = False,
    desc: str | None = None,
    check_modality: bool = True,
) -> Iterator[CaseVolume]:
    """The preprocessed cases of ``section``, in datalist order (``labelled_only``: those with a label).

    Raises:
        S2S2InputError: (before anything is loaded) an image listed twice in ``section``, or a
            training/validation image that is a test image; then what :func:`load_entry` refuses.
    """
    dl = as_datalist(datalist, data_root)
    dl.require_distinct((section,))
    entries = [e for e in dl.items(section) if e.get("label") or not labelled_only]
    for entry in tqdm(entries, desc=desc or f"loading {section}", unit="case", disable=not progress):
        yield load_entry(dl, entry, transform, intensity, check_modality)
