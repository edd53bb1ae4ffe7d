"""Prediction / label folders: pair files by name, load them in one geometry, check them.

Both files of a pair go through :func:`~s2s2_monai.data.volumes.read_nifti_ras` (nibabel,
reoriented to RAS: the array and affine :func:`~s2s2_monai.data.volumes.load_volume` gives,
without importing MONAI), so a label stored in another axis order (e.g. LPS) than its prediction
is accepted when both describe the same world grid; a different grid (shape, spacing, origin) is
an error.

Every method must predict every labelled case, unless ``allow_missing`` (``s2s2 evaluate
--allow-missing``): then the predicted cases are scored and the others reported (:class:`CaseMatch`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s2_monai.data.volumes import case_id_of, read_nifti_ras
from s2s2_monai.errors import S2S2InputError

__all__ = ["VolumePair", "CaseMatch", "match_cases", "find_pairs", "load_pair", "parse_pred_dirs"]

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


@dataclass
class CaseMatch:
    """Predictions matched to labels: the pairs to score and what was left out.

    Attributes:
        pairs: the scored (method, case) pairs, methods in the given order, cases sorted.
        labelled: every case of the label folder.
        scored: the cases scored, the same for every method (paired statistics).
        folders: ``{method: prediction folder}``.
        missing: ``{method: labelled cases it has no prediction for}``.
        left_out: ``{method: its predictions not scored because another method lacks that case}``.
    """

    pairs: list[VolumePair]
    labelled: list[str]
    scored: list[str]
    folders: dict[str, Path]
    missing: dict[str, list[str]]
    left_out: dict[str, list[str]]

    def notes(self) -> list[str]:
        """One ``note: ...`` line per method that misses labelled cases or has predictions left out."""
        m, k, out = len(self.labelled), len(self.scored), []
        first = lambda cases: ", ".join(cases[:3]) + (", ..." if len(cases) > 3 else "")  # noqa: E731
        for method, folder in self.folders.items():
            where = f"{folder}" + (f" ({method})" if len(self.folders) > 1 else "")
            miss, extra = self.missing[method], self.left_out[method]
            if not miss and not extra:
                continue
            if miss:
                text = f"note: {len(miss)} of {m} labelled cases have no prediction in {where} (first: {first(miss)})"
            else:
                text = f"note: {where} predicts all {m} labelled cases"
            if extra:
                text += (
                    f"; scored the {k} cases every method predicted (paired statistics), leaving out {len(extra)} "
                    f"of its predictions (first: {first(extra)})"
                )
            else:
                text += f"; scored the {m - len(miss)} predicted ones"
            out.append(text)
        return out

    def record(self) -> dict:
        """What ``summary.json`` records under ``settings``."""
        return {
            "allow_missing": True,
            "labelled_cases": len(self.labelled),
            "scored_cases": len(self.scored),
            "missing_predictions": self.missing,
            "left_out_predictions": self.left_out,
        }


def match_cases(
    pred_dirs: dict[str, str | os.PathLike], label_dir: str | os.PathLike, allow_missing: bool = False
) -> CaseMatch:
    """Pair every prediction with the label of the same case name (``.nii`` and ``.nii.gz`` match).

    A prediction without a label is always an error naming the file. A labelled case without a
    prediction is an error too, unless ``allow_missing``: then each method's predicted cases are
    scored. With several methods only the cases that *every* method predicted are scored (the
    comparisons pair methods case by case, and per-method means over different cases would not be
    comparable); the predictions left out are reported.

    Raises:
        S2S2InputError: a prediction without a label; a labelled case without a prediction (unless
            ``allow_missing``); no case predicted by every method.
    """
    labels = _volumes_in(Path(label_dir), "label")
    folders = {method: Path(folder) for method, folder in pred_dirs.items()}
    preds_of: dict[str, dict[str, Path]] = {}
    missing: dict[str, list[str]] = {}
    for method, folder in folders.items():
        preds = _volumes_in(folder, "prediction")
        for case, path in preds.items():
            if case not in labels:
                raise S2S2InputError(
                    path, f"no label file for case {case!r} in {label_dir}", "add its label or remove the prediction"
                )
        missing[method] = sorted(set(labels) - set(preds))
        if missing[method] and not allow_missing:
            miss = missing[method]
            raise S2S2InputError(
                labels[miss[0]],
                f"method {method!r} has no prediction for {len(miss)} labelled case(s) ({', '.join(miss[:5])}) "
                f"in {folder}",
                "predict every case, remove the extra labels, or pass --allow-missing to score only the predicted cases",
            )
        preds_of[method] = preds
    scored = sorted(set.intersection(*(set(p) for p in preds_of.values())))
    if not scored:
        counts = ", ".join(f"{m}: {len(p)}" for m, p in preds_of.items())
        raise S2S2InputError(
            label_dir,
            f"no labelled case is predicted by every method (predicted cases: {counts})",
            "predict the same cases with every method, or evaluate the methods separately",
        )
    left_out = {m: sorted(set(p) - set(scored)) for m, p in preds_of.items()}
    pairs = [VolumePair(m, case, preds_of[m][case], labels[case]) for m in folders for case in scored]
    return CaseMatch(pairs, sorted(labels), scored, folders, missing, left_out)


def find_pairs(
    pred_dirs: dict[str, str | os.PathLike], label_dir: str | os.PathLike, allow_missing: bool = False
) -> list[VolumePair]:
    """The pairs of :func:`match_cases`: by default every method must cover exactly the labelled cases."""
    return match_cases(pred_dirs, label_dir, allow_missing).pairs


def _present_ids(arr: np.ndarray) -> list[int]:
    """Sorted ids present in a non-negative integer volume."""
    if arr.dtype == np.uint8:  # 256 counters, no int64 copy of the volume (np.bincount would make one)
        lut = np.zeros(256, dtype=bool)
        lut[arr.reshape(-1)] = True
        return np.flatnonzero(lut).tolist()
    return np.unique(arr).tolist()


def _check_ids(arr: np.ndarray, path: Path, valid: set[int] | None, role: str) -> None:
    """Refuse ids outside ``valid``; one max() pass when ``valid`` holds every id from 0 to the volume's max."""
    if valid is None or arr.size == 0:
        return
    hi = int(arr.max())
    if hi < len(valid) and all(i in valid for i in range(hi + 1)):
        return  # ids are >= 0 (checked on reading) and <= hi: all valid
    unknown = sorted(set(_present_ids(arr)) - valid)
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
        ``(pred, label, affine)``: uint8/int64 (X, Y, Z) numpy arrays and the RAS affine.

    Raises:
        S2S2InputError: unreadable file, NaN/non-integer prediction, ids outside ``valid_ids``,
            different grids.
    """
    pred_path, label_path = Path(pred_path), Path(label_path)
    try:  # compact: integer files stay integers (uint8 when they fit), read once, no float/int64 copy
        p, a = read_nifti_ras(pred_path, is_label=False, compact=True)
    except S2S2InputError as exc:
        raise S2S2InputError(
            pred_path, f"bad prediction: {exc.problem}", "write integer class ids, not probabilities or NaN"
        ) from None
    if (p.dtype.kind == "f" and not np.array_equal(p, np.round(p))) or (p.size and p.dtype != np.uint8 and p.min() < 0):
        raise S2S2InputError(
            pred_path, "prediction holds non-integer or negative values", "write the argmax class ids (integers >= 0)"
        )
    g, b = read_nifti_ras(label_path, is_label=True, compact=True)
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
    if p.dtype.kind == "f":  # a float file of integer ids (compact reading keeps integer files as they are)
        p = p.astype(np.uint8 if p.size == 0 or p.max() < 256 else np.int64)
    if g.dtype != np.uint8 and (g.size == 0 or g.max() < 256):  # a float label file (read as int64)
        g = g.astype(np.uint8)
    _check_ids(p, pred_path, valid_ids, "prediction")
    _check_ids(g, label_path, valid_ids, "label")
    return p, g, a
