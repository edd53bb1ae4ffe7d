"""Prediction / label folders: pair files by name, load them in one geometry, check them.

Both files of a pair go through :func:`~s2s2_monai.data.volumes.read_nifti_ras` (nibabel,
reoriented to RAS: the array and affine :func:`~s2s2_monai.data.volumes.load_volume` gives,
without importing MONAI), so a label stored in another axis order (e.g. LPS) than its prediction
is accepted when both describe the same world grid; a different grid (shape, spacing, origin) is
an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s2s2_monai.data.volumes import case_id_of, read_nifti_ras
from s2s2_monai.errors import S2S2InputError

__all__ = ["VolumePair", "find_pairs", "load_pair", "parse_pred_dirs"]

_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class VolumePair:
    """One case of one method: prediction and label files."""

    method: str
    case: str
    pred_path: Path
    label_path: Path


def parse_pred_dirs(values: list[str]) -> dict[str, Path]:
    """``["P"]`` or ``["name=P", "name2=P2"]`` -> ``{method name: folder}`` (name defaults to the folder name)."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            name, folder = Path(value).name or "prediction", value
        if not name or not folder:
            raise S2S2InputError(
                None, f"bad --pred-dir value {value!r}", "use --pred-dir FOLDER or --pred-dir NAME=FOLDER"
            )
        if name in out:
            raise S2S2InputError(
                folder, f"method name {name!r} given twice", "give each --pred-dir a distinct NAME=FOLDER"
            )
        out[name] = Path(folder)
    if not out:
        raise S2S2InputError(None, "no prediction folder given", "pass --pred-dir FOLDER")
    return out


def _volumes_in(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise S2S2InputError(folder, f"{role} folder not found", f"give an existing folder of NIfTI {role} files")
    files = {
        case_id_of(p): p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(_SUFFIXES) and not p.name.startswith(".")
    }
    if not files:
        raise S2S2InputError(
            folder, f"{role} folder holds no .nii/.nii.gz files", f"put one NIfTI {role} per case in it"
        )
    return files


def find_pairs(pred_dirs: dict[str, str | os.PathLike], label_dir: str | os.PathLike) -> list[VolumePair]:
    """Pair every prediction with the label of the same case name (``.nii`` and ``.nii.gz`` match).

    Every method must cover exactly the labelled cases: a prediction without a label, or a label
    without a prediction, is an error naming the file.
    """
    labels = _volumes_in(Path(label_dir), "label")
    pairs = []
    for method, folder in pred_dirs.items():
        preds = _volumes_in(Path(folder), "prediction")
        for case, path in preds.items():
            if case not in labels:
                raise S2S2InputError(
                    path, f"no label file for case {case!r} in {label_dir}", "add its label or remove the prediction"
                )
        missing = sorted(set(labels) - set(preds))
        if missing:
            raise S2S2InputError(
                labels[missing[0]],
                f"method {method!r} has no prediction for {len(missing)} labelled case(s) ({', '.join(missing[:5])}) in {folder}",
                "predict every case or remove the extra labels",
            )
        pairs += [VolumePair(method, case, preds[case], labels[case]) for case in sorted(preds)]
    return pairs


def _check_ids(arr: torch.Tensor, path: Path, valid: set[int] | None, role: str) -> None:
    if valid is None:
        return
    found = set(torch.unique(arr).tolist())
    unknown = sorted(found - valid)
    if unknown:
        raise S2S2InputError(
            path,
            f"{role} holds ids {unknown[:10]} outside the label map (allowed: {sorted(valid)})",
            "choose the matching --label-map / --num-classes, or remap the file",
        )


def load_pair(
    pred_path: str | os.PathLike, label_path: str | os.PathLike, valid_ids: set[int] | None = None, atol: float = 1e-3
):
    """Load a prediction and its label in RAS on the same grid.

    Returns:
        ``(pred, label, affine)``: uint8/int64 (X, Y, Z) tensors and the RAS affine (numpy).

    Raises:
        S2S2InputError: unreadable file, NaN/non-integer prediction, ids outside ``valid_ids``,
            different grids.
    """
    pred_path, label_path = Path(pred_path), Path(label_path)
    try:
        p, a = read_nifti_ras(pred_path, is_label=False)
    except S2S2InputError as exc:
        raise S2S2InputError(
            pred_path, f"bad prediction: {exc.problem}", "write integer class ids, not probabilities or NaN"
        ) from None
    if not np.array_equal(p, np.round(p)) or (p.size and p.min() < 0):
        raise S2S2InputError(
            pred_path, "prediction holds non-integer or negative values", "write the argmax class ids (integers >= 0)"
        )
    g, b = read_nifti_ras(label_path, is_label=True)
    if p.shape != g.shape:
        raise S2S2InputError(
            pred_path,
            f"prediction grid {p.shape} differs from label grid {g.shape} of {label_path} (after reorientation to RAS)",
            "predict on the label's own grid (resample the prediction back to the image geometry)",
        )
    if not np.allclose(a, b, atol=atol):
        raise S2S2InputError(
            pred_path,
            f"prediction and label {label_path} are on different grids (affines differ by up to {np.abs(a - b).max():.4g} mm after reorientation to RAS)",
            "write predictions with the input image's affine",
        )
    p = torch.from_numpy(p.astype(np.uint8 if p.size == 0 or p.max() < 256 else np.int64))
    g = torch.from_numpy(g.astype(np.uint8) if g.size == 0 or g.max() < 256 else g)
    _check_ids(p, pred_path, valid_ids, "prediction")
    _check_ids(g, label_path, valid_ids, "label")
    return p, g, a
