"""``s2s2 evaluate --allow-missing``: score the predicted cases, report the others; the default still refuses."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from s2s2_monai.cli import main

AFFINE = np.diag([1.5, 0.8, 2.5, 1.0])
CASES = [f"case{i}" for i in range(5)]


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((16, 14, 4), np.uint8)
    for c, (x, y) in zip((1, 5), ((2, 2), (8, 4))):
        dx, dy = rng.integers(0, 2, 2)
        lab[x + dx : x + dx + 5, y + dy : y + dy + 4, 1:3] = c
    return lab


def _save(arr, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, AFFINE), str(path))


@pytest.fixture()
def folders(tmp_path) -> Path:
    """5 labelled cases; ``base`` predicts all but case3 and case4, ``s2s2`` all but case1."""
    for i, case in enumerate(CASES):
        gt = _labels(i)
        _save(gt, tmp_path / "labels" / f"{case}.nii.gz")
        if case not in ("case3", "case4"):
            _save(np.roll(gt, 1, axis=0), tmp_path / "base" / f"{case}.nii.gz")
        if case != "case1":
            _save(gt, tmp_path / "s2s2" / f"{case}.nii.gz")
    return tmp_path


def _run(folders: Path, *args) -> int:
    return main(
        ["evaluate", "--no-progress", "--bootstrap", "50", "--label-dir", str(folders / "labels"), "--out"]
        + [str(folders / "out"), *[str(a) for a in args]]
    )


def _cases(out: Path) -> dict[str, set[str]]:
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r.get("method", "prediction"), set()).add(r["case"])
    return found


def test_default_refuses_and_names_the_flag(folders, capsys):
    assert _run(folders, "--pred-dir", folders / "base") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "no prediction for 2 labelled case(s) (case3, case4)" in err[0] and "--allow-missing" in err[0]
    assert not (folders / "out").exists()


def test_one_method_scores_the_predicted_cases(folders, capsys):
    assert _run(folders, "--pred-dir", folders / "base", "--allow-missing") == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: 2 of 5 labelled cases have no prediction in {folders / 'base'} (first: case3, case4); "
        "scored the 3 predicted ones"
    ]
    assert _cases(folders / "out") == {"prediction": {"case0", "case1", "case2"}}
    s = json.loads((folders / "out" / "summary.json").read_text())
    assert s["settings"]["missing_predictions"] == {"base": ["case3", "case4"]}
    assert (s["settings"]["labelled_cases"], s["settings"]["scored_cases"]) == (5, 3)
    assert s["methods"]["base"]["num_cases"] == 3


def test_several_methods_score_the_cases_every_method_predicted(folders, capsys):
    args = ["--pred-dir", f"base={folders / 'base'}", "--pred-dir", f"s2s2={folders / 's2s2'}", "--allow-missing"]
    assert _run(folders, *args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 2
    assert notes[0].startswith(f"note: 2 of 5 labelled cases have no prediction in {folders / 'base'} (base)")
    assert "scored the 2 cases every method predicted (paired statistics), leaving out 1 of its predictions" in notes[0]
    assert notes[1].startswith(f"note: 1 of 5 labelled cases have no prediction in {folders / 's2s2'} (s2s2)")
    assert "leaving out 2 of its predictions (first: case3, case4)" in notes[1]
    assert _cases(folders / "out") == {"base": {"case0", "case2"}, "s2s2": {"case0", "case2"}}
    s = json.loads((folders / "out" / "summary.json").read_text())
    assert s["settings"]["missing_predictions"] == {"base": ["case3", "case4"], "s2s2": ["case1"]}
    assert s["settings"]["left_out_predictions"] == {"base": ["case1"], "s2s2": ["case3", "case4"]}
    assert s["comparisons"][0]["overall"]["dice"]["n"] == 2  # paired over the same 2 cases


def test_nothing_to_score_and_unlabelled_predictions_stay_errors(folders, capsys):
    (folders / "none").mkdir()
    assert _run(folders, "--pred-dir", folders / "none", "--allow-missing") == 2
    assert "holds no .nii/.nii.gz files" in capsys.readouterr().err
    for case in ("case0", "case2"):  # the only cases both would share
        (folders / "s2s2" / f"{case}.nii.gz").unlink()
    (folders / "base" / "case1.nii.gz").unlink()
    args = ["--pred-dir", f"base={folders / 'base'}", "--pred-dir", f"s2s2={folders / 's2s2'}", "--allow-missing"]
    assert _run(folders, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "no labelled case is predicted by every method (predicted cases: base: 2, s2s2: 2)" in err[0]
    )
    _save(_labels(0), folders / "base" / "extra.nii.gz")
    assert _run(folders, "--pred-dir", folders / "base", "--allow-missing") == 2
    assert "no label file for case 'extra'" in capsys.readouterr().err
    assert not (folders / "out").exists()
