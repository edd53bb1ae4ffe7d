"""Segment new scans with a :class:`~s2s2_monai.model.BundleModel`: uint8 NIfTI in each input's own geometry.

The one prediction writer of ``s2s2 predict`` and the inference bundle, in the manner of
``nnUNetv2_predict``: inputs are NIfTI files, DICOM series folders, a folder of either, or a datalist
section; outputs are ``OUT/CASE.nii.gz`` with the nnU-Net channel suffix dropped (``CASE_0000.nii.gz``
-> ``CASE.nii.gz``), so they pair with ``labelsTr/CASE.nii.gz`` in ``s2s2 evaluate``. Each file is
written atomically; an interrupted run continues where it stopped (finished outputs are kept unless
``overwrite``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from s2s2_monai.errors import S2S2InputError

__all__ = ["PredictionInput", "PredictionRun", "find_inputs", "output_name", "predict_to_folder"]

_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PredictionInput:
    """One volume to segment: its path (file or DICOM folder) and the output case name."""

    path: str
    case: str


@dataclass
class PredictionRun:
    """What :func:`predict_to_folder` did: ``written`` now, ``kept`` from an earlier run, in ``out_dir``."""

    out_dir: Path
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)

    @property
    def outputs(self) -> list[Path]:
        return sorted(self.written + self.kept)

    def summary(self) -> str:
        kept = f" ({len(self.kept)} kept from an earlier run)" if self.kept else ""
        return f"wrote {len(self.written)} predictions to {self.out_dir}{kept}; {len(self.outputs)} in all"


def output_name(path: str | os.PathLike) -> str:
    """Case name of an input: nnU-Net's ``CASE_0000.nii.gz`` -> ``CASE``; a DICOM series folder keeps its name."""
    from s2s2_monai.data.make_datalist import image_case

    path = Path(path)
    return path.name if path.is_dir() else image_case(path, "--input")


def _is_series_folder(p: Path) -> bool:
    """A folder holding files but neither NIfTI files nor sub-folders: one DICOM series."""
    entries = [e for e in p.iterdir() if not e.name.startswith(".")]
    return bool(entries) and not any(e.is_dir() or e.name.endswith(_NIFTI) for e in entries)


def find_inputs(inputs, section: str = "test", data_root: str | os.PathLike | None = None) -> list[PredictionInput]:
    """The volumes named by ``inputs``, each with its output case name (names must be distinct).

    ``inputs``: a NIfTI file, a DICOM series folder, a folder of NIfTI files and/or DICOM series
    folders, a datalist JSON (its ``section``), a list of paths, or the list this function returned.

    Raises:
        S2S2InputError: nothing found, a missing path, or two inputs with the same case name.
    """
    from s2s2_monai.data.datalist import load_datalist

    fix = "give NIfTI files (.nii/.nii.gz), DICOM series folders, a folder of them, or a datalist JSON"
    if isinstance(inputs, (list, tuple)) and all(isinstance(i, PredictionInput) for i in inputs):
        found = list(inputs)  # found already (the CLI checks its input before building the model)
    elif isinstance(inputs, (list, tuple)):
        found = [PredictionInput(str(p), output_name(p)) for p in inputs]
    else:
        p = Path(inputs)
        if not p.exists():
            raise S2S2InputError(p, "no such file or folder", fix)
        if p.is_file() and p.suffix == ".json":
            dl = load_datalist(p, data_root)
            entries = dl.items(section)
            if not entries:
                raise S2S2InputError(p, f"datalist has no entries in section {section!r}", "choose another section")
            found = [PredictionInput(e["image"], e.get("case_id") or output_name(e["image"])) for e in entries]
        elif p.is_file():
            if not p.name.endswith(_NIFTI):
                raise S2S2InputError(p, "not a NIfTI file (.nii / .nii.gz)", fix)
            found = [PredictionInput(str(p), output_name(p))]
        elif _is_series_folder(p):
            found = [PredictionInput(str(p), output_name(p))]
        else:
            members = sorted(
                e
                for e in p.iterdir()
                if not e.name.startswith(".") and (e.name.endswith(_NIFTI) and e.is_file() or e.is_dir())
            )
            found = [PredictionInput(str(e), output_name(e)) for e in members if e.is_file() or _is_series_folder(e)]
            if not found:
                raise S2S2InputError(p, "folder holds no NIfTI files and no DICOM series folders", fix)
    seen: dict[str, str] = {}
    for item in found:
        if item.case in seen:
            raise S2S2InputError(
                item.path,
                f"gives the same output name {item.case}.nii.gz as {seen[item.case]}",
                "keep one image per case in the input (e.g. not both CASE.nii and CASE.nii.gz)",
            )
        seen[item.case] = item.path
    return found


def predict_to_folder(
    model,
    inputs,
    out_dir: str | os.PathLike,
    section: str = "test",
    data_root: str | os.PathLike | None = None,
    overwrite: bool = False,
    device=None,
    batch_size: int | None = None,
    check_modality: bool = True,
    progress: bool = True,
    announce: bool = True,
) -> PredictionRun:
    """Segment every input with ``model`` into ``out_dir/CASE.nii.gz`` (uint8, the input's own geometry).

    Args:
        model: a :class:`~s2s2_monai.model.BundleModel` with weights.
        inputs: see :func:`find_inputs`.
        out_dir: output folder (created).
        section / data_root: for a datalist input.
        overwrite: redo outputs that exist (default: keep them, so an interrupted run continues).
        device / batch_size: where the network runs and slices per forward pass (default the model's).
        check_modality: refuse a volume whose raw intensities do not fit the model's modality.
        progress: progress bar over the inputs.
        announce: print the closing ``wrote N predictions to OUT`` line.

    Raises:
        S2S2InputError: bad inputs (before anything is written), or an unreadable volume (the outputs
            written so far stay, and a re-run continues after them).
    """
    from tqdm.auto import tqdm

    from s2s2_monai.data.volumes import write_prediction

    items = find_inputs(inputs, section, data_root)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise S2S2InputError(out, "exists and is not a folder", "give --out a new or existing folder")
    run = PredictionRun(out)
    for item in tqdm(items, desc="predicting", unit="volume", disable=not progress):
        target = out / f"{item.case}.nii.gz"
        if target.is_file() and not overwrite:
            run.kept.append(target)
            continue
        case = model.load_case(item.path, case_id=item.case, check_modality=check_modality)
        labels = model.segment(case.image, device=device, batch_size=batch_size)
        run.written.append(write_prediction(labels, case.affine, case.source_affine, target))
    if announce:
        print(run.summary(), flush=True)
    return run
