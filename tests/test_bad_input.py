"""Bad input gets a clear error and loses nothing (issue 10).

Every case runs the real command in a subprocess (``python -m s2s2_monai ...`` or
``python -m monai.bundle run ...``) on one kind of bad input and checks what the user sees:

- a non-zero exit (2 for bad input), or the documented recovery with exit 0;
- exactly one ``error: WHERE: what is wrong. Fix: how`` line on stderr naming the offending file
  (or option) and a fix, and no Python traceback;
- nothing half-written: the output folder is absent (or, when it existed, unchanged) and no
  temporary files are left.

:data:`CLI_CASES` is the table of ``s2s2`` cases (one subprocess each); the bundle cases follow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SYNAPSE = REPO / "bundles" / "synapse"
ENV = {
    **os.environ,
    "CUDA_VISIBLE_DEVICES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
}
TRACEBACK = "Traceback (most recent call last)"


# ---------------------------------------------------------------------------- helpers
def run_s2s2(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m s2s2_monai ARGS`` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "s2s2_monai", *map(str, args)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_bundle(configs: list[str | Path], *overrides: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run training --config_file [...] OVERRIDES`` from the repository root."""
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str([str(c) for c in configs]),
        *overrides,
    ]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``folder`` (empty when absent)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_clean_error(r: subprocess.CompletedProcess, *names: str, rc: int = 2) -> str:
    """One ``error: ... Fix: ...`` line naming ``names``, exit ``rc``, no traceback; returns the line."""
    both = r.stdout + r.stderr
    assert TRACEBACK not in both, both[-3000:]
    assert r.returncode == rc, f"exit {r.returncode}\n{both[-3000:]}"
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, r.stderr[-3000:]
    line = lines[0]
    assert " Fix: " in line and len(line.split(" Fix: ", 1)[1].strip()) > 5, line
    for name in names:
        assert str(name) in line, f"{name!r} not in {line!r}"
    print(line)  # shown with -rA: what the user sees
    return line


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), path)
    return path


def write_datalist(path: Path, training: list, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": training, **extra}, indent=1))
    return path


class Demo:
    """The tiny phantom cases (48x48x8) of the ``tiny_demo`` fixture."""

    def __init__(self, datalist: Path) -> None:
        self.datalist = datalist
        self.root = datalist.parent
        dl = json.loads(datalist.read_text())
        self.image = self.root / dl["training"][0]["image"]
        self.label = self.root / dl["training"][0]["label"]
        self.image2 = self.root / dl["training"][1]["image"]
        self.label2 = self.root / dl["training"][1]["label"]
        img = nib.load(self.image)
        self.affine = img.affine
        self.image_array = np.asarray(img.dataobj)
        self.label_array = np.asarray(nib.load(self.label).dataobj)

    def entry(self, image: Path | None = None, label: Path | None = None) -> dict:
        return {"image": str(image or self.image), "label": str(label or self.label)}


@pytest.fixture(scope="module")
def demo(tiny_demo) -> Demo:
    return Demo(tiny_demo)


# ---------------------------------------------------------------------------- s2s2 cases
@dataclass
class Case:
    """What a case runs and what its error line must name.

    ``setup(tmp, demo)`` prepares the bad input and returns ``(argv, names)``; ``out`` is the output
    folder (relative to ``tmp``) that must stay absent, ``keep`` one that must stay unchanged.
    """

    setup: Callable
    out: str | None = "out"
    keep: str | None = None
    rc: int = 2
    shared: bool = False  # setup gets the ``shared_data`` folder as third argument


def stack_build(datalist: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "stack",
        "build",
        "--datalist",
        str(datalist),
        "--out",
        str(tmp / "out"),
        "--n",
        "1",
        "--no-progress",
        "--no-qc",
        *extra,
    ]


def _outside_root(tmp: Path, demo: Demo):
    dl = write_datalist(tmp / "data" / "dl.json", [{"image": "../../etc/passwd", "label": "labelsTr/x.nii.gz"}])
    return ["check-data", "--datalist", dl], [dl, "../../etc/passwd", "outside the data root"]


def _image_4d(tmp: Path, demo: Demo):
    img = save_nifti(tmp / "img4d.nii.gz", np.stack([demo.image_array] * 2, axis=-1), demo.affine)
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(image=img)]), tmp), [
        img,
        "3D volume",
        "4D image",
        "(48, 48, 8, 2)",
    ]


def _float_labels(tmp: Path, demo: Demo):
    lab = save_nifti(tmp / "float_label.nii.gz", demo.label_array.astype(np.float32) * 0.5, demo.affine)
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(label=lab)]), tmp), [lab, "non-integer"]


def _label_other_grid(tmp: Path, demo: Demo):
    affine = demo.affine.copy()
    affine[:3, :3] *= 1.5  # same shape, other spacing
    lab = save_nifti(tmp / "other_grid.nii.gz", demo.label_array, affine)
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(label=lab)]), tmp), [lab, str(demo.image), "affine"]


def _sd_without_unet(tmp: Path, demo: Demo):
    sd = tmp / "sd"
    shutil.copytree(tiny_models(tmp.parent)[0], sd)
    shutil.rmtree(sd / "unet")
    argv = [
        "controlnet",
        "train",
        "--sd-dir",
        sd,
        "--datalist",
        demo.datalist,
        "--out",
        tmp / "out",
        "--epochs",
        "1",
        "--quiet",
    ]
    return argv, [sd / "unet" / "config.json", "layout"]


def _controlnet_other_base(tmp: Path, demo: Demo):
    sd, cn = tiny_models(tmp.parent)
    argv = stack_build(
        demo.datalist,
        tmp,
        "--generator",
        "diffusion",
        "--sd-dir",
        str(sd),
        "--controlnet-dir",
        str(cn.parent / "controlnet_other"),
        "--resolution",
        "16",
    )
    return argv, [cn.parent / "controlnet_other" / "config.json", "block_out_channels"]


def _empty_pred_dir(tmp: Path, demo: Demo):
    (tmp / "pred").mkdir()
    labels = _label_dir(tmp, demo)
    return ["evaluate", "--pred-dir", tmp / "pred", "--label-dir", labels, "--out", tmp / "out", "--no-progress"], [
        tmp / "pred",
        "no .nii",
    ]


def _pred_outside_map(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    pred = demo.label_array.copy()
    pred[0, 0, 0] = 12
    save_nifti(tmp / "pred" / "case.nii.gz", pred, demo.affine)
    return ["evaluate", "--pred-dir", tmp / "pred", "--label-dir", labels, "--out", tmp / "out", "--no-progress"], [
        tmp / "pred" / "case.nii.gz",
        "[12]",
    ]


def _label_dir(tmp: Path, demo: Demo) -> Path:
    (tmp / "labels").mkdir()
    shutil.copyfile(demo.label, tmp / "labels" / "case.nii.gz")
    return tmp / "labels"


def _missing_datalist(tmp: Path, demo: Demo):
    return ["check-data", "--datalist", tmp / "nope.json"], [tmp / "nope.json", "not found"]


def _datalist_not_json(tmp: Path, demo: Demo):
    (tmp / "dl.json").write_text("{'training': [oops")
    return ["check-data", "--datalist", tmp / "dl.json"], [tmp / "dl.json", "JSON"]


def _no_training_entries(tmp: Path, demo: Demo):
    dl = tmp / "dl.json"
    dl.write_text(json.dumps({"training": [], "validation": [demo.entry()]}))
    return stack_build(dl, tmp), [dl, "training"]


def _image_not_nifti(tmp: Path, demo: Demo):
    img = tmp / "garbage.nii.gz"
    img.write_bytes(os.urandom(4096))
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(image=img)]), tmp), [img, "cannot read"]


def _truncated_nifti(tmp: Path, demo: Demo):
    img = tmp / "truncated.nii.gz"
    data = demo.image.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(image=img)]), tmp), [img, "truncated"]


def _nan_image(tmp: Path, demo: Demo):
    arr = demo.image_array.astype(np.float32)
    arr[5, 5, 2] = np.nan
    img = save_nifti(tmp / "nan.nii.gz", arr, demo.affine)
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(image=img)]), tmp), [img, "NaN"]


def _unknown_label_id(tmp: Path, demo: Demo):
    arr = demo.label_array.copy()
    arr[1, 1, 1] = 99
    lab = save_nifti(tmp / "ids.nii.gz", arr, demo.affine)
    return stack_build(write_datalist(tmp / "dl.json", [demo.entry(label=lab)]), tmp), [lab, "[99]", "label map"]


def _missing_image(tmp: Path, demo: Demo):
    dl = write_datalist(tmp / "dl.json", [demo.entry(image=tmp / "gone.nii.gz")])
    return stack_build(dl, tmp), [tmp / "gone.nii.gz", "not found"]


def _stack_info_no_stack(tmp: Path, demo: Demo):
    (tmp / "keep").mkdir()
    (tmp / "keep" / "notes.txt").write_text("not a stack")
    return ["stack", "info", tmp / "keep"], [tmp / "keep", "not a stack cache", "stack build"]


def _out_is_a_file(tmp: Path, demo: Demo):
    (tmp / "keep").mkdir()
    (tmp / "keep" / "out").write_text("a file where the stack should go")
    argv = [
        "stack",
        "build",
        "--datalist",
        demo.datalist,
        "--out",
        tmp / "keep" / "out",
        "--n",
        "1",
        "--no-progress",
        "--no-qc",
    ]
    return argv, [tmp / "keep" / "out", "not a folder"]


def _pred_name_mismatch(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    save_nifti(tmp / "pred" / "other_case.nii.gz", demo.label_array, demo.affine)
    return ["evaluate", "--pred-dir", tmp / "pred", "--label-dir", labels, "--out", tmp / "out", "--no-progress"], [
        tmp / "pred" / "other_case.nii.gz",
        "case",
    ]


def _hd95_bogus(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    shutil.copytree(labels, tmp / "pred")
    return ["evaluate", "--pred-dir", tmp / "pred", "--label-dir", labels, "--out", tmp / "out", "--hd95", "bogus"], [
        "--hd95",
        "bogus",
        "monai",
    ]


def _robustness_no_ckpt(tmp: Path, demo: Demo):
    argv = [
        "robustness",
        "--bundle",
        SYNAPSE,
        "--ckpt",
        tmp / "models" / "model.pt",
        "--datalist",
        demo.datalist,
        "--out",
        tmp / "out",
    ]
    return argv, [tmp / "models" / "model.pt"]


def _export_no_ckpt(tmp: Path, demo: Demo):
    argv = [
        "export-bundle",
        "--config",
        SYNAPSE / "train.json",
        "--config",
        SYNAPSE / "demo.json",
        "--checkpoint",
        tmp / "model.pt",
        "--out",
        tmp / "out",
    ]
    return argv, [tmp / "model.pt"]


def _dicom_unreadable_file(tmp: Path, demo: Demo, shared: Path):
    series = tmp / "series"
    series.mkdir()
    for f in sorted((shared / "dicom" / "totalseg_example_ct_dicom").iterdir()):
        (series / f.name).symlink_to(f)  # the real series, not copied
    (series / "IM_BROKEN.dcm").write_bytes(b"DICM" + os.urandom(2000))
    dl = write_datalist(
        tmp / "dl.json",
        [{"image": str(series), "label": str(shared / "dicom" / "totalseg_example_ct_dicom_seg.nii.gz")}],
        label_remap="totalseg_to_synapse",
    )
    return stack_build(dl, tmp), [series, "21 files", "20 slices"]


def _num_classes_one(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    shutil.copytree(labels, tmp / "pred")
    return [
        "evaluate",
        "--pred-dir",
        tmp / "pred",
        "--label-dir",
        labels,
        "--out",
        tmp / "out",
        "--num-classes",
        "1",
    ], ["--num-classes", ">= 2"]


def _workers_zero(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    shutil.copytree(labels, tmp / "pred")
    argv = ["evaluate", "--pred-dir", tmp / "pred", "--label-dir", labels, "--out", tmp / "out", "--workers", "0"]
    return argv, ["--workers", ">= 1"]


def _nnunet(tmp: Path, demo: Demo) -> list[str]:
    """``s2s2 datalist`` argv over an nnU-Net folder of the two demo cases (imagesTr/CASE_0000, labelsTr/CASE)."""
    for i, (image, label) in enumerate(((demo.image, demo.label), (demo.image2, demo.label2))):
        (tmp / "nn" / "imagesTr").mkdir(parents=True, exist_ok=True)
        (tmp / "nn" / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, tmp / "nn" / "imagesTr" / f"case_{i}_0000.nii.gz")
        shutil.copyfile(label, tmp / "nn" / "labelsTr" / f"case_{i}.nii.gz")
    nn = tmp / "nn"
    return ["datalist", "--images", nn / "imagesTr", "--labels", nn / "labelsTr", "--out", tmp / "out", "--no-progress"]


def _dl_image_without_label(tmp: Path, demo: Demo):
    argv = _nnunet(tmp, demo)
    (tmp / "nn" / "labelsTr" / "case_1.nii.gz").unlink()
    return argv, [tmp / "nn" / "imagesTr" / "case_1_0000.nii.gz", "has no label", "case_1.nii.gz"]


def _dl_label_without_image(tmp: Path, demo: Demo):
    argv = _nnunet(tmp, demo)
    shutil.copyfile(demo.label, tmp / "nn" / "labelsTr" / "case_9.nii.gz")
    return argv, [tmp / "nn" / "labelsTr" / "case_9.nii.gz", "has no image"]


def _dl_unusable_label_names(tmp: Path, demo: Demo):
    return [*_nnunet(tmp, demo), "--label-names", '{"0": "background", "1": "liver"}'], [
        "--label-names",
        "id 0",
        "implicit",
    ]


def _dl_test_fraction_one(tmp: Path, demo: Demo):
    return [*_nnunet(tmp, demo), "--test-fraction", "1"], ["--test-fraction", "[0, 1)"]


def _dl_unknown_test_case(tmp: Path, demo: Demo):
    (tmp / "test.txt").write_text("case_0\nnobody\n")
    return [*_nnunet(tmp, demo), "--test-list", tmp / "test.txt"], ["--test-list", "'nobody'"]


def _dl_missing_images(tmp: Path, demo: Demo):
    argv = _nnunet(tmp, demo)
    argv[argv.index("--images") + 1] = tmp / "nope"
    return argv, [tmp / "nope", "not found"]


def _dl_out_exists(tmp: Path, demo: Demo):
    argv = _nnunet(tmp, demo)
    (tmp / "keep").mkdir()
    (tmp / "keep" / "dl.json").write_text('{"training": []}')
    argv[argv.index("--out") + 1] = tmp / "keep" / "dl.json"
    return argv, [tmp / "keep" / "dl.json", "already exists", "--force"]


def _dl_label_ids_outside_map(tmp: Path, demo: Demo):
    return [*_nnunet(tmp, demo), "--label-names", '{"1": "liver"}'], [
        tmp / "nn" / "labelsTr" / "case_0.nii.gz",
        "[2, 3,",
        "not in the label map",
    ]


def _dl_second_channel(tmp: Path, demo: Demo):
    argv = _nnunet(tmp, demo)
    shutil.copyfile(demo.image, tmp / "nn" / "imagesTr" / "case_0_0001.nii.gz")
    return argv, [tmp / "nn" / "imagesTr" / "case_0_0001.nii.gz", "single-channel"]


def _datalist_bad_label_map_dict(tmp: Path, demo: Demo):
    dl = write_datalist(tmp / "dl.json", [demo.entry()], label_map={"1": "liver", "2": "liver"})
    return ["check-data", "--datalist", dl], [dl, "'liver' is given to ids 1 and 2"]


def _evaluate_datalist_bad_labels(tmp: Path, demo: Demo):
    labels = _label_dir(tmp, demo)
    dl = write_datalist(tmp / "dl.json", [demo.entry()], labels={"liver": 1})
    argv = ["evaluate", "--pred-dir", labels, "--label-dir", labels, "--out", tmp / "out", "--datalist", dl]
    return argv, [dl, "'liver' is not a whole number"]


#: kind of bad input -> case (one ``s2s2`` subprocess each)
def _predict_model(tmp: Path, demo: Demo, record: bool = True) -> tuple[Path, Path]:
    """A tiny model of the Synapse bundle (BasicUNet, 48x48): its overlay and ``model.pt`` (+ ``model.json``)."""
    from s2s2_monai.checkpoints import file_sha256
    from s2s2_monai.model import BundleModel

    overlay = tmp / "tiny.json"
    overlay.write_text(
        json.dumps(
            {
                "datalist": str(demo.datalist),
                "dataset_dir": str(demo.root),
                "input_size": [48, 48],
                "network_name": "basic_unet",
                "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
                "device": "$torch.device('cpu')",
            }
        )
    )
    model = BundleModel.from_configs([SYNAPSE / "train.json", overlay], device="cpu")
    ckpt = tmp / "model.pt"
    torch.save(model.network.state_dict(), ckpt)
    if record:
        ckpt.with_suffix(".json").write_text(json.dumps({**model.describe(), "sha256": file_sha256(ckpt)}))
    return overlay, ckpt


def predict_argv(overlay: Path, ckpt: Path, inputs: Path, tmp: Path, *extra: str) -> list:
    return [
        "predict",
        "--config",
        SYNAPSE / "train.json",
        "--config",
        overlay,
        "--checkpoint",
        ckpt,
        "--input",
        inputs,
        "--out",
        tmp / "out",
        "--no-progress",
        *extra,
    ]


def _predict_missing_input(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    return predict_argv(overlay, ckpt, tmp / "scans", tmp), [tmp / "scans", "no such file or folder"]


def _predict_folder_without_images(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    (tmp / "scans").mkdir()
    (tmp / "scans" / "notes.txt").write_text("x")
    (tmp / "scans" / "sub").mkdir()
    return predict_argv(overlay, ckpt, tmp / "scans", tmp), [tmp / "scans", "no NIfTI files"]


def _predict_same_case_twice(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    (tmp / "scans").mkdir()
    shutil.copy(demo.image, tmp / "scans" / "a_0000.nii.gz")
    shutil.copy(demo.image2, tmp / "scans" / "a.nii.gz")
    return predict_argv(overlay, ckpt, tmp / "scans", tmp), ["a.nii.gz", "same output name"]


def _predict_second_channel(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    (tmp / "scans").mkdir()
    shutil.copy(demo.image, tmp / "scans" / "a_0001.nii.gz")
    return predict_argv(overlay, ckpt, tmp / "scans", tmp), ["a_0001.nii.gz", "channel 1 of case"]


def _predict_batch_size_zero(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    return predict_argv(overlay, ckpt, demo.image, tmp, "--batch-size", "0"), ["--batch-size", "got 0"]


def _predict_nan_weights(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo, record=False)
    state = torch.load(ckpt, weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("inf")
    torch.save(state, ckpt)
    return predict_argv(overlay, ckpt, demo.image, tmp), [ckpt, "NaN/inf"]


def _predict_other_window(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    argv = predict_argv(overlay, ckpt, demo.image, tmp, "--set", "hu_window=[-160,240]")
    return argv, [ckpt, "trained with other settings", "a_max: trained 275.0, config 240.0"]


def _predict_mr_into_ct_model(tmp: Path, demo: Demo, shared: Path):
    overlay, ckpt = _predict_model(tmp, demo)
    mr = shared / "mr" / "totalseg_example_mr_sm.nii.gz"
    return predict_argv(overlay, ckpt, mr, tmp), [mr, "this model expects CT"]


def _predict_out_is_a_file(tmp: Path, demo: Demo):
    overlay, ckpt = _predict_model(tmp, demo)
    (tmp / "keep").mkdir()
    (tmp / "keep" / "out").write_text("x")
    argv = predict_argv(overlay, ckpt, demo.image, tmp)
    argv[argv.index("--out") + 1] = tmp / "keep" / "out"
    return argv, [tmp / "keep" / "out", "not a folder"]


def _predict_missing_checkpoint(tmp: Path, demo: Demo):
    overlay, _ = _predict_model(tmp, demo)
    return predict_argv(overlay, tmp / "none.pt", demo.image, tmp), [tmp / "none.pt", "not found"]


CLI_CASES: dict[str, Case] = {
    "datalist path outside the data root": Case(_outside_root),
    "4D image": Case(_image_4d),
    "float labels": Case(_float_labels),
    "label on another grid than its image": Case(_label_other_grid),
    "SD folder without unet/": Case(_sd_without_unet),
    "ControlNet of another base model": Case(_controlnet_other_base),
    "empty prediction folder": Case(_empty_pred_dir),
    "prediction ids outside the label map": Case(_pred_outside_map),
    "missing datalist": Case(_missing_datalist),
    "datalist that is not JSON": Case(_datalist_not_json),
    "datalist without training entries": Case(_no_training_entries),
    "image that is not NIfTI": Case(_image_not_nifti),
    "truncated .nii.gz": Case(_truncated_nifti),
    "NaN in an image": Case(_nan_image),
    "label id not in the map": Case(_unknown_label_id),
    "missing image file": Case(_missing_image),
    "stack info on a folder that is no stack": Case(_stack_info_no_stack, out=None, keep="keep"),
    "stack --out is a file": Case(_out_is_a_file, out=None, keep="keep"),
    "prediction / label name mismatch": Case(_pred_name_mismatch),
    "unknown --hd95": Case(_hd95_bogus),
    "--num-classes 1": Case(_num_classes_one),
    "evaluate --workers 0": Case(_workers_zero),
    "robustness without checkpoint": Case(_robustness_no_ckpt),
    "export-bundle without checkpoint": Case(_export_no_ckpt),
    "DICOM folder with an unreadable file": Case(_dicom_unreadable_file, shared=True),
    "datalist: image without label": Case(_dl_image_without_label),
    "datalist: label without image": Case(_dl_label_without_image),
    "datalist: unusable --label-names": Case(_dl_unusable_label_names),
    "datalist: --test-fraction 1": Case(_dl_test_fraction_one),
    "datalist: unknown case in --test-list": Case(_dl_unknown_test_case),
    "datalist: missing --images folder": Case(_dl_missing_images),
    "datalist: --out exists without --force": Case(_dl_out_exists, keep="keep"),
    "datalist: label ids outside the map": Case(_dl_label_ids_outside_map),
    "datalist: second channel image": Case(_dl_second_channel),
    "datalist declaring an unusable label_map dict": Case(_datalist_bad_label_map_dict),
    "evaluate --datalist with unusable labels": Case(_evaluate_datalist_bad_labels),
    "predict: missing --input": Case(_predict_missing_input),
    "predict: folder without images": Case(_predict_folder_without_images),
    "predict: two inputs of one case": Case(_predict_same_case_twice),
    "predict: second channel": Case(_predict_second_channel),
    "predict: --batch-size 0": Case(_predict_batch_size_zero),
    "predict: inf in the weights": Case(_predict_nan_weights),
    "predict: config of another window than the weights": Case(_predict_other_window),
    "predict: MR volume to a CT model": Case(_predict_mr_into_ct_model, shared=True),
    "predict: --out is a file": Case(_predict_out_is_a_file, out=None, keep="keep"),
    "predict: missing checkpoint": Case(_predict_missing_checkpoint),
}


_MODELS: dict[Path, tuple[Path, Path]] = {}


def tiny_models(base: Path) -> tuple[Path, Path]:
    """A tiny SD folder and its ControlNet (``tests/tiny_diffusers.py``), plus ``controlnet_other``: a
    ControlNet made for another UNet (other block_out_channels, same cross-attention width)."""
    if base not in _MODELS:
        from diffusers import ControlNetModel, UNet2DConditionModel
        from tiny_diffusers import tiny_sd_folders

        sd, cn = tiny_sd_folders(base / "models")
        torch.manual_seed(0)
        other = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=4,
        )
        ControlNetModel.from_unet(other, conditioning_embedding_out_channels=(8, 16)).save_pretrained(
            cn.parent / "controlnet_other"
        )
        _MODELS[base] = (sd, cn)
    return _MODELS[base]


@pytest.fixture(scope="module")
def case_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad_input")


@pytest.mark.parametrize("kind", list(CLI_CASES))
def test_cli_bad_input(kind, demo, case_root, request):
    case = CLI_CASES[kind]
    tmp = case_root / kind.replace(" ", "_").replace("/", "").replace(".", "").strip("-")
    tmp.mkdir()
    extra = (request.getfixturevalue("shared_data"),) if case.shared else ()
    argv, names = case.setup(tmp, demo, *extra)
    before = files_of(tmp / case.keep) if case.keep else None
    r = run_s2s2(*argv)
    assert_clean_error(r, *names, rc=case.rc)
    if case.out:
        assert not (tmp / case.out).exists(), f"partial output left: {sorted(files_of(tmp / case.out))}"
    if case.keep:
        assert files_of(tmp / case.keep) == before  # unchanged, no temp files
    assert not [p for p in tmp.rglob("*") if ".tmp" in p.name or p.name.startswith(".tmp")]


# ---------------------------------------------------------------------------- bundle cases
def tiny_overlay(path: Path, demo: Demo, out: Path, stack: Path, **extra) -> Path:
    """Shrink the Synapse bundle to seconds (BasicUNet, 32x32, 2 epochs, 2 stack members)."""
    o = {
        "bundle_root": str(SYNAPSE),
        "dataset_dir": str(demo.root),
        "datalist": str(demo.datalist),
        "output_dir": str(out),
        "stack_dir": str(stack),
        "stack_n": 2,
        "input_size": [32, 32],
        "max_epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "val_interval": 1,
        "network_name": "basic_unet",
        "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
        "stack_generator": "appearance",
        **extra,
    }
    path.write_text(json.dumps(o))
    return path


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> dict:
    """One tiny 2-epoch run in this process: checkpoints of epochs 1 and 2 plus its stack cache."""
    from monai.bundle import ConfigWorkflow

    root = tmp_path_factory.mktemp("bad_input_bundle")
    overlay = tiny_overlay(root / "tiny.json", demo, root / "run", root / "stack")
    w = ConfigWorkflow(config_file=[str(SYNAPSE / "train.json"), str(overlay)], workflow_type="train")
    w.initialize()
    w.run()
    w.finalize()
    assert {p.name for p in (root / "run" / "checkpoints").iterdir()} == {
        "checkpoint_epoch=1.pt",
        "checkpoint_epoch=2.pt",
    }
    return {"root": root, "run": root / "run", "stack": root / "stack"}


def _truncate(path: Path, keep: float = 0.5) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return data


def _some_entry(stack: Path) -> Path:
    return sorted((stack / "entries").glob("*/*.stk"))[0]


def test_bundle_recovers_from_corrupt_checkpoint_and_stack_entry(trained, demo, tmp_path):
    """Documented recovery: the newest checkpoint is truncated (the older one intact) and a stack entry
    is truncated; the same command resumes from the older checkpoint, rebuilds the entry and finishes."""
    from s2s2_monai.stack.cache import StackCache

    run, stack = tmp_path / "run", tmp_path / "stack"
    shutil.copytree(trained["run"], run)
    shutil.copytree(trained["stack"], stack)
    ckpts = run / "checkpoints"
    _truncate(ckpts / "checkpoint_epoch=2.pt")
    corrupt_bytes = (ckpts / "checkpoint_epoch=2.pt").read_bytes()
    entry = _some_entry(stack)
    _truncate(entry)
    overlay = tiny_overlay(tmp_path / "tiny.json", demo, run, stack)
    r = run_bundle([SYNAPSE / "train.json", overlay])
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert TRACEBACK not in log
    corrupt_line = [ln for ln in log.splitlines() if "corrupt checkpoint" in ln]
    assert corrupt_line and "checkpoint_epoch=2.pt" in corrupt_line[0] and "skipped" in corrupt_line[0], log[-4000:]
    assert "resuming from" in corrupt_line[0] and "checkpoint_epoch=1.pt" in corrupt_line[0]
    aside = [p for p in ckpts.iterdir() if ".corrupt" in p.name]
    assert (
        len(aside) == 1 and aside[0].name.startswith("checkpoint_epoch=2.pt") and aside[0].read_bytes() == corrupt_bytes
    )  # moved, not deleted
    assert "Epoch: 1/2" not in log and "Epoch: 2/2" in log  # epoch 1 not redone
    final = torch.load(ckpts / "checkpoint_epoch=2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 2 * final["trainer"]["epoch_length"]
    assert any("corrupt stack entry" in ln and entry.name in ln for ln in log.splitlines()), log[-4000:]
    info = StackCache(stack).verify()
    assert info["complete"] and not info["temp_files"]
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]


def test_bundle_corrupt_stack_entry_without_rebuild(trained, demo, tmp_path):
    """A damaged stack entry met by training (``build_stack_if_missing false``): one error naming the
    entry and ``s2s2 stack build`` / ``stack verify``; the entry is left in place, nothing written."""
    stack, out = tmp_path / "stack", tmp_path / "run"
    shutil.copytree(trained["stack"], stack)
    entry = _some_entry(stack)
    _truncate(entry)
    before = files_of(stack)
    overlay = tiny_overlay(tmp_path / "tiny.json", demo, out, stack)
    r = run_bundle([SYNAPSE / "train.json", overlay], "--build_stack_if_missing", "False")
    assert_clean_error(r, entry, "s2s2 stack build", "stack verify")
    assert not out.exists()
    assert files_of(stack) == before


@pytest.mark.parametrize(
    "override, names",
    [
        (("--tap_preset", "nope"), ("tap_preset", "nope", "basic_unet", "unetr")),
        (("--max_epochs", "abc"), ("max_epochs", "abc")),
        (("--batch_size", "0"), ("batch_size", "0")),
    ],
    ids=["unknown tap preset", "max_epochs abc", "batch_size 0"],
)
def test_bundle_bad_setting(override, names, demo, tmp_path):
    """A bad ``--key value`` override stops before anything is written (no stack, no output folder)."""
    out, stack = tmp_path / "run", tmp_path / "stack"
    overlay = tiny_overlay(tmp_path / "tiny.json", demo, out, stack)
    r = run_bundle([SYNAPSE / "train.json", overlay], *override)
    assert_clean_error(r, *names)
    assert not out.exists() and not stack.exists()
