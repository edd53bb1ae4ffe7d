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


def load_entry(
    dl: Datalist, entry: dict, transform: Callable | None = None, intensity: Callable | None = None
) -> CaseVolume:
    """One datalist entry as a preprocessed :class:`CaseVolume` (see the module docstring)."""
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
) -> Iterator[CaseVolume]:
    """The preprocessed cases of ``section``, in datalist order (``labelled_only``: those with a label)."""
    dl = as_datalist(datalist, data_root)
    entries = [e for e in dl.items(section) if e.get("label") or not labelled_only]
    for entry in tqdm(entries, desc=desc or f"loading {section}", unit="case", disable=not progress):
        yield load_entry(dl, entry, transform, intensity)
