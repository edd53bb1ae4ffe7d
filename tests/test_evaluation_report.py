"""``s2s2 evaluate`` end to end: report files, A/B statistics, orientation, bad input, datalist evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from s2s2_monai.cli import main
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.evaluation.compare import paired_comparison

AFFINE = np.diag([1.5, 0.8, 2.5, 1.0])


def _labels(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.zeros((24, 20, 6), np.uint8)
    for c, (x, y) in zip((1, 5, 7), ((3, 3), (12, 4), (5, 12))):
        dx, dy = rng.integers(0, 3, 2)
        lab[x + dx : x + dx + 6, y + dy : y + dy + 5, 1:5] = c
    return lab


def _save(arr, path: Path, affine=AFFINE):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))


@pytest.fixture()
def folders(tmp_path):
    for i in range(4):
        gt = _labels(i)
        _save(gt, tmp_path / "labels" / f"case{i}.nii.gz")
        _save(np.roll(gt, 2, axis=0), tmp_path / "base" / f"case{i}.nii.gz")
        _save(np.roll(gt, 1, axis=0), tmp_path / "s2s2" / f"case{i}.nii.gz")
    return tmp_path


def _run(*args) -> int:
    return main(["evaluate", "--no-progress", "--bootstrap", "200", *[str(a) for a in args]])


def test_report_files_parse_and_ab(folders):
    out = folders / "report"
    rc = _run(
        "--pred-dir",
        f"base={folders / 'base'}",
        "--pred-dir",
        f"s2s2={folders / 's2s2'}",
        "--label-dir",
        folders / "labels",
        "--out",
        out,
        "--hd95",
        "medpy",
    )
    assert rc == 0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["method", "case", "class_id", "class_name", "dice", "hd95_mm", "assd_mm"]
    assert len(rows) == 2 * 4 * 8
    liver = [r for r in rows if r["method"] == "s2s2" and r["class_name"] == "liver"]
    assert all(0 < float(r["dice"]) < 1 for r in liver)
    assert all(r["dice"] == "nan" for r in rows if r["class_name"] == "gallbladder")  # absent in both
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["hd95_definition"] == "medpy" and summary["settings"]["units"] == "mm"
    comp = summary["comparisons"][0]
    assert (comp["baseline"], comp["method"]) == ("base", "s2s2")
    d = comp["per_class"]["liver"]["dice"]
    assert d["mean_diff"] > 0 and d["ci_low"] <= d["mean_diff"] <= d["ci_high"] and d["n"] == 4
    html = (out / "report.html").read_text()
    for img in ("box_dice.png", "worst_s2s2_5.png"):
        assert f"figures/{img}" in html and (out / "figures" / img).stat().st_size > 1000
    assert "HD95 definition <b>medpy</b>" in html


def test_legacy_mode_and_num_classes(folders):
    out = folders / "legacy"
    assert (
        _run(
            "--pred-dir",
            folders / "base",
            "--label-dir",
            folders / "labels",
            "--out",
            out,
            "--legacy-transunet",
            "--num-classes",
            "9",
        )
        == 0
    )
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert list(rows[0]) == ["case", "class_id", "class_name", "dice", "hd95_vox"]
    assert {r["dice"] for r in rows if r["class_name"] == "class_4"} == {"0.0"}  # empty rule: (0, 0), never NaN
    s = json.loads((out / "summary.json").read_text())
    per_class = s["methods"]["base"]["per_class"]
    assert s["methods"]["base"]["overall"]["dice"] == pytest.approx(
        np.mean([v["dice"]["mean"] for v in per_class.values()])
    )


def test_label_in_other_orientation_gives_same_numbers(folders):
    # store the labels flipped along x and y (LPS), with the matching affine: same world grid
    flipped = folders / "labels_lps"
    for p in sorted((folders / "labels").iterdir()):
        img = nib.load(p)
        arr = np.asarray(img.dataobj)[::-1, ::-1, :]
        aff = img.affine.copy()
        aff[:, 0] *= -1
        aff[:, 1] *= -1
        aff[:3, 3] = img.affine[:3, :3] @ np.array([arr.shape[0] - 1, arr.shape[1] - 1, 0]) + img.affine[:3, 3]
        _save(np.ascontiguousarray(arr), flipped / p.name, aff)
    assert _run("--pred-dir", folders / "base", "--label-dir", folders / "labels", "--out", folders / "a") == 0
    assert _run("--pred-dir", folders / "base", "--label-dir", flipped, "--out", folders / "b") == 0
    assert (folders / "a" / "metrics.csv").read_text() == (folders / "b" / "metrics.csv").read_text()


def _bad(folders, capsys, *extra, out_name="bad"):
    out = folders / out_name
    rc = _run("--label-dir", folders / "labels", "--out", out, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1].startswith("error:"), err
    assert not out.exists() and not list(folders.glob(f".{out_name}.tmp*"))
    return err


def test_bad_inputs_exit_2_without_report(folders, capsys, tmp_path):
    (folders / "base" / "case0.nii.gz").unlink()
    assert "no prediction for 1 labelled case" in _bad(folders, capsys, "--pred-dir", folders / "base")
    _save(np.zeros((24, 20, 6), np.uint8), folders / "base" / "extra.nii.gz")
    assert "no label file for case 'extra'" in _bad(folders, capsys, "--pred-dir", folders / "base")
    (folders / "base" / "extra.nii.gz").unlink()
    _save(_labels(0), folders / "base" / "case0.nii.gz", np.diag([1.5, 0.8, 3.0, 1.0]))  # other grid
    assert "different grids" in _bad(folders, capsys, "--pred-dir", folders / "base")
    _save(_labels(0)[:, :-1], folders / "base" / "case0.nii.gz")
    assert "differs from label grid" in _bad(folders, capsys, "--pred-dir", folders / "base")
    bad_ids = _labels(0)
    bad_ids[0, 0, 0] = 12
    _save(bad_ids, folders / "base" / "case0.nii.gz")
    assert "ids [12] outside the label map" in _bad(folders, capsys, "--pred-dir", folders / "base")
    nan = _labels(0).astype(np.float32)
    nan[1, 1, 1] = np.nan
    _save(nan, folders / "base" / "case0.nii.gz")
    assert "NaN" in _bad(folders, capsys, "--pred-dir", folders / "base")
    (folders / "empty").mkdir()
    assert "holds no .nii" in _bad(folders, capsys, "--pred-dir", folders / "empty")
    assert "not found" in _bad(folders, capsys, "--pred-dir", folders / "missing")


def test_paired_comparison_reference():
    from scipy.stats import wilcoxon

    a = [0.7, 0.8, 0.75, 0.6, 0.9, 0.65]
    b = [0.72, 0.85, 0.74, 0.7, 0.93, 0.7]
    r = paired_comparison(a, b, n_boot=2000, seed=3)
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(b, a)))
    assert r["p_wilcoxon"] == pytest.approx(wilcoxon(b, a).pvalue)
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r == paired_comparison(a, b, n_boot=2000, seed=3)  # seeded
    assert paired_comparison(a, a)["p_wilcoxon"] == 1.0
    assert paired_comparison([np.nan], [1.0])["n"] == 0


def test_evaluate_datalist_writes_predictions_in_image_geometry(tiny_demo, tmp_path):
    from s2s2_monai.data.datalist import load_datalist
    from s2s2_monai.evaluation.run import evaluate_datalist
    from s2s2_monai.model import BundleModel
    from s2s2_monai.transforms import CTWindowd

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 9, 3, padding=1)
    model = BundleModel(net, [CTWindowd("image")], "synapse", input_size=(32, 32), hd95="surface-distance")
    dl = load_datalist(tiny_demo)
    summary = evaluate_datalist(model, dl, "validation", tmp_path / "ev", progress=False)
    assert summary["settings"]["hd95_definition"] == "surface-distance"
    for entry in dl.items("validation"):
        img = nib.load(entry["image"])
        name = Path(entry["image"]).name
        pred = nib.load(tmp_path / "ev" / "predictions" / name)
        assert pred.shape == img.shape and np.allclose(pred.affine, img.affine)
    assert (tmp_path / "ev" / "report.html").exists()
    with pytest.raises(S2S2InputError, match="no entries"):
        evaluate_datalist(model, dl, "nonexistent", tmp_path / "x", progress=False)


# ---------------------------------------------------------------------------- the MONAI-free reader
def _same_as_load_volume(path, is_label):
    from s2s2_monai.data.volumes import load_volume, read_nifti_ras

    arr, affine = read_nifti_ras(path, is_label=is_label)
    ref = load_volume(path, is_label=is_label)
    assert arr.dtype == ref.as_tensor().numpy().dtype and arr.shape == tuple(ref.shape[1:])
    np.testing.assert_array_equal(arr, ref.as_tensor()[0].numpy())
    np.testing.assert_array_equal(affine, np.asarray(ref.affine, dtype=np.float64))
    return arr, affine


def test_nibabel_reader_matches_load_volume_on_real_volumes(shared_data):
    """`s2s2 evaluate` reads with nibabel: the same RAS array and affine as MONAI's LoadImage + Orientation."""
    for rel, is_label in (
        ("ct/totalseg_example_ct_sm_seg.nii.gz", True),
        ("ct/totalseg_example_ct_sm.nii.gz", False),
        ("mr/totalseg_example_mr_sm.nii.gz", False),
        ("dicom/totalseg_example_ct_dicom_seg.nii.gz", True),
    ):
        path = shared_data / rel
        if path.exists():
            _same_as_load_volume(path, is_label)
    assert nib.aff2axcodes(nib.load(shared_data / "mr/totalseg_example_mr_sm.nii.gz").affine) != (
        "R",
        "A",
        "S",
    )  # a reoriented one


@pytest.mark.filterwarnings("ignore:axcodes")  # MONAI on the 2D case
def test_nibabel_reader_matches_load_volume_on_lps_and_permuted_phantoms(tiny_demo, tmp_path):
    from s2s2_monai.data.volumes import read_nifti_ras

    dl = json.loads(tiny_demo.read_text())
    image, label = (tiny_demo.parent / dl["training"][0][k] for k in ("image", "label"))
    assert nib.aff2axcodes(nib.load(image).affine) == ("L", "P", "S")  # the phantoms are stored in LPS order
    img_arr, img_aff = _same_as_load_volume(image, False)
    lab_arr, lab_aff = _same_as_load_volume(label, True)
    assert np.array_equal(img_aff, lab_aff) and nib.aff2axcodes(img_aff) == ("R", "A", "S")
    # axes permuted (S, L, P order) and a scaled float32 label: same RAS result
    src = nib.load(label)
    perm = np.asarray(src.dataobj).transpose(2, 0, 1)
    aff = src.affine[:, [2, 0, 1, 3]]
    _save(np.ascontiguousarray(perm), tmp_path / "perm.nii.gz", aff)
    np.testing.assert_array_equal(_same_as_load_volume(tmp_path / "perm.nii.gz", True)[0], lab_arr)
    _save(np.ascontiguousarray(perm).astype(np.float32), tmp_path / "perm_f.nii.gz", aff)
    _same_as_load_volume(tmp_path / "perm_f.nii.gz", True)
    # the same checks, the same messages
    bad = {
        "nan": (
            np.where(np.arange(lab_arr.size).reshape(lab_arr.shape) == 5, np.nan, 1.0).astype(np.float32),
            False,
            "image holds 1 NaN/inf voxels",
        ),
        "frac": (np.full((4, 4, 3), 0.5, np.float32), True, "non-integer values"),
        "neg": (np.full((4, 4, 3), -1, np.int16), True, "negative values"),
        "vol4d": (np.zeros((4, 4, 3, 2), np.uint8), True, "got a 4D image of shape (4, 4, 3, 2)"),
        "vol2d": (np.zeros((4, 4), np.uint8), True, "got a 2D image"),
    }
    from s2s2_monai.data.volumes import load_volume

    for name, (arr, is_label, msg) in bad.items():
        _save(arr, tmp_path / f"{name}.nii.gz", np.eye(4))
        with pytest.raises(S2S2InputError, match=msg.replace("(", r"\(").replace(")", r"\)")) as mine:
            read_nifti_ras(tmp_path / f"{name}.nii.gz", is_label=is_label)
        with pytest.raises(S2S2InputError) as ref:
            load_volume(tmp_path / f"{name}.nii.gz", is_label=is_label)
        assert mine.value.problem == ref.value.problem, name
    _save(np.zeros((4, 4, 3, 1), np.uint8), tmp_path / "one_channel.nii.gz", np.eye(4))
    assert _same_as_load_volume(tmp_path / "one_channel.nii.gz", True)[0].shape == (4, 4, 3)
    (tmp_path / "trunc.nii.gz").write_bytes((tmp_path / "perm.nii.gz").read_bytes()[:200])
    with pytest.raises(S2S2InputError, match="cannot read this NIfTI file"):
        read_nifti_ras(tmp_path / "trunc.nii.gz")
    with pytest.raises(S2S2InputError, match="file not found"):
        read_nifti_ras(tmp_path / "gone.nii.gz")
