"""`s2s2 demo-data` and `s2s2 check-data`: tables, exit codes, one-line errors (no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from s2s2_monai.cli import main


def _datalist(tmp_path, entries, **extra):
    p = tmp_path / "dl.json"
    p.write_text(json.dumps({"training": entries, **extra}))
    return p


def test_check_data_ok_on_real_data(shared_data, capsys):
    from pathlib import Path

    dl = Path(__file__).resolve().parents[1] / "data_lists/totalseg_examples.json"
    assert main(["check-data", "--datalist", str(dl), "--data-root", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert "totalseg_example_ct_sm" in out and "0 1 2 3 4 5 6 7 8" in out and "2 ok, 0 failed" in out


def test_check_data_reports_each_bad_case(tiny_demo, tmp_path, capsys):
    root = tiny_demo.parent
    lab = np.asarray(nib.load(root / "labelsTr/phantom_000.nii.gz").dataobj).copy()
    aff = nib.load(root / "labelsTr/phantom_000.nii.gz").affine
    lab[0, 0, 0] = 99
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "bad_ids.nii.gz")
    img = np.asarray(nib.load(root / "imagesTr/phantom_000.nii.gz").dataobj).astype(np.float32)
    img[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "nan.nii.gz")
    entries = [
        {"image": str(root / "imagesTr/phantom_000.nii.gz"), "label": str(root / "labelsTr/phantom_000.nii.gz")},
        {
            "image": str(root / "imagesTr/phantom_000.nii.gz"),
            "label": str(tmp_path / "bad_ids.nii.gz"),
            "case_id": "ids",
        },
        {"image": str(tmp_path / "nan.nii.gz"), "label": str(root / "labelsTr/phantom_000.nii.gz")},
        {"image": str(tmp_path / "gone.nii.gz"), "label": str(root / "labelsTr/phantom_000.nii.gz")},
        {
            "image": str(root / "imagesTr/phantom_000.nii.gz"),
            "label": str(root / "labelsTr/phantom_001.nii.gz"),
            "case_id": "swap",
        },
    ]
    assert main(["check-data", "--datalist", str(_datalist(tmp_path, entries))]) == 1
    out = capsys.readouterr().out
    assert "1 ok, 4 failed" in out
    assert "label ids [99]" in out and "NaN/inf" in out and "file not found" in out and "affine differs" in out


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    empty = _datalist(tmp_path, [])
    proc = subprocess.run(
        [sys.executable, "-m", "s2s2_monai", "check-data", "--datalist", str(empty)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: {empty}: datalist has no entries" in proc.stderr


def test_demo_data_cli(tmp_path, capsys):
    assert (
        main(
            [
                "demo-data",
                "--out",
                str(tmp_path / "d"),
                "--cases",
                "2",
                "--seed",
                "1",
                "--shape",
                "32",
                "32",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    dl = json.loads((tmp_path / "d/datalist.json").read_text())
    assert len(dl["training"]) == 1 and nib.load(tmp_path / "d" / dl["training"][0]["image"]).shape == (32, 32, 6)
    assert main(["check-data", "--datalist", str(tmp_path / "d/datalist.json")]) == 0
    capsys.readouterr()
    # the old positional output folder still works (deprecated): same bytes for the same seed
    assert (
        main(["demo-data", str(tmp_path / "old"), "--cases", "2", "--seed", "1", "--shape", "32", "32", "6", "--quiet"])
        == 0
    )
    err = capsys.readouterr().err
    assert "a positional DIR is deprecated; use --out DIR" in err and "--quiet is deprecated; use --no-progress" in err
    name = dl["training"][0]["image"]
    assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()
