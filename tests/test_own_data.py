"""The README's "own data" path, shrunk: nnU-Net folder -> datalist -> training -> predict -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from s2s2_monai.bundle_runner import run_training_bundle
from s2s2_monai.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "bundles" / "synapse" / "train.json"), str(REPO / "bundles" / "synapse" / "small.json")]
TINY = {"input_size": [48, 48], "networks#basic_unet#features": [4, 4, 8, 8, 16, 4], "stack_n": 2, "num_workers": 0}


def test_nnunet_demo_layout(tmp_path):
    from s2s2_monai.data.phantom import NNUNET_DEMO_LABELS, write_nnunet_demo

    dataset = write_nnunet_demo(tmp_path / "d", cases=3, test_cases=1, shape=(32, 32, 6), progress=False)
    info = json.loads(dataset.read_text())
    assert info["labels"] == NNUNET_DEMO_LABELS and info["numTraining"] == 2 and info["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (tmp_path / "d" / "imagesTr").iterdir()) == [
        "phantom_000_0000.nii.gz",
        "phantom_001_0000.nii.gz",
    ]
    assert [p.name for p in (tmp_path / "d" / "labelsTs").iterdir()] == ["phantom_002.nii.gz"]
    label = np.asarray(nib.load(tmp_path / "d" / "labelsTr" / "phantom_000.nii.gz").dataobj)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # liver, spleen, both kidneys; the rest background


def test_own_data_four_commands(tmp_path, capsys):
    data, run = tmp_path / "own_data", tmp_path / "runs" / "own"
    assert main(["demo-data", "--out", str(data), "--nnunet", "--cases", "5", "--shape", "48", "48", "8"]) == 0
    datalist = data / "datalist.json"
    argv = ["datalist", "--images", str(data / "imagesTr"), "--labels", str(data / "labelsTr")]
    argv += ["--label-names", str(data / "dataset.json"), "--val-fraction", "0.34", "--out", str(datalist)]
    assert main(argv + ["--no-progress"]) == 0
    settings = {"datalist": str(datalist), "dataset_dir": str(data), "output_dir": str(run), "max_epochs": 1, **TINY}
    run_training_bundle(CONFIGS, settings, logging_file=False)
    record = json.loads((run / "models" / "model.json").read_text())
    assert record["label_map"]["classes"] == {"1": "liver", "2": "spleen", "3": "kidney"}

    predict = ["predict", "--config", CONFIGS[0], "--config", CONFIGS[1], "--checkpoint", str(run / "models/model.pt")]
    predict += ["--input", str(data / "imagesTs"), "--out", str(run / "predictions"), "--no-progress"]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in TINY.items()]
    capsys.readouterr()
    assert main(predict + sets) == 2  # without the datalist the config's label map is Synapse's: refused
    assert "label_map.classes" in capsys.readouterr().err
    assert main(predict + sets + [f"--set=datalist={datalist}"]) == 0
    assert f"wrote 2 predictions to {run / 'predictions'}" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "predictions").iterdir()) == ["phantom_003.nii.gz", "phantom_004.nii.gz"]

    report = tmp_path / "report"
    argv = ["evaluate", "--pred-dir", str(run / "predictions"), "--label-dir", str(data / "labelsTs")]
    assert main(argv + ["--datalist", str(datalist), "--out", str(report), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(report / "metrics.csv")))
    assert {r["class_name"] for r in rows} == {"liver", "spleen", "kidney"}
    assert "kidney" in (report / "report.html").read_text()
