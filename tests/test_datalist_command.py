"""Label maps declared by a datalist, ``s2s2 datalist`` (nnU-Net folders -> datalist) and ``evaluate --datalist``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from s2s2_monai.cli import main
from s2s2_monai.data.datalist import datalist_label_map, load_datalist
from s2s2_monai.data.make_datalist import pair_cases, split_cases
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LABEL_MAPS, SYNAPSE, LabelMap, get_label_map, parse_label_map
from s2s2_monai.stack.prompts import build_prompt

ORGANS = {"1": "liver", "2": "spleen", "3": "left kidney"}


# ---------------------------------------------------------------------------- parse_label_map
def test_parse_label_map_forms():
    assert parse_label_map("synapse") is SYNAPSE
    assert parse_label_map(SYNAPSE) is SYNAPSE
    lm = parse_label_map({"1": "liver", 2: "left kidney"})
    assert lm == LabelMap("custom", {1: "liver", 2: "left kidney"}, "CT", "CT scan")
    mr = parse_label_map({" 2": "b", "1": "a"}, modality="mr", name="mine")
    assert (mr.name, mr.modality, mr.anatomy, list(mr.classes)) == ("mine", "MRI", "MRI scan", [1, 2])
    full = parse_label_map({"name": "heart", "classes": {"1": "lv"}, "modality": "MRI", "anatomy": "cardiac MRI scan"})
    assert full == LabelMap("heart", {1: "lv"}, "MRI", "cardiac MRI scan")
    assert lm.to_dict() == {
        "name": "custom",
        "classes": {"1": "liver", "2": "left kidney"},
        "modality": "CT",
        "anatomy": "CT scan",
    }


@pytest.mark.parametrize(
    "lm", [*LABEL_MAPS.values(), parse_label_map(ORGANS, modality="MRI", name="mine")], ids=lambda m: m.name
)
def test_label_map_round_trip(lm):
    d = json.loads(json.dumps(lm.to_dict()))  # JSON-safe
    assert all(isinstance(k, str) for k in d["classes"])
    assert parse_label_map(d) == lm
    assert get_label_map(d) == lm


@pytest.mark.parametrize(
    "value, reason",
    [
        ({}, "no classes"),
        ({"liver": 1}, "not a whole number"),
        ({"1.5": "liver"}, "not a whole number"),
        ({"0": "background", "1": "liver"}, "background, which is implicit"),
        ({"256": "liver"}, "above 255"),
        ({"-1": "liver"}, "negative"),
        ({"1": ""}, "non-empty string"),
        ({"1": 7}, "non-empty string"),
        ({"1": "liver", "2": "Liver"}, "given to ids 1 and 2"),
        ({"1": "a", "01": "b"}, "given twice"),
        ({"classes": {"1": "liver"}, "modality": "PET"}, "unknown modality"),
        ({"classes": {"1": "liver"}, "colour": "red"}, "unknown label map keys"),
        ({"name": "synapse", "classes": {"1": "liver"}}, "registry map of other classes"),
        (["liver"], "registry name or an {id: name} dict"),
    ],
)
def test_parse_label_map_refuses(value, reason):
    with pytest.raises(ValueError) as info:
        parse_label_map(value)
    assert reason in str(info.value)
    with pytest.raises(ValueError):
        get_label_map(value)


def test_unknown_registry_name_keeps_key_error():
    with pytest.raises(KeyError, match="unknown label map 'nope'"):
        get_label_map("nope")


# ---------------------------------------------------------------------------- datalists that declare a map
def _write(path: Path, **keys) -> Path:
    path.write_text(json.dumps({"training": [{"image": "img.nii.gz", "label": "lab.nii.gz"}], **keys}))
    return path


def test_datalist_labels_reach_the_prompt(tmp_path):
    dl = load_datalist(_write(tmp_path / "dl.json", labels={"1": "liver"}))
    assert dl.label_map.classes == {1: "liver"} and dl.modality == "CT"
    assert build_prompt(np.array([[0, 1]]), dl.label_map) == "A 2D slice of a CT scan showing background, liver"
    mr = load_datalist(_write(tmp_path / "mr.json", labels={"1": "liver"}, modality="MR"))
    assert mr.modality == "MRI" and build_prompt(np.array([[1]]), mr.label_map).endswith(
        " MRI scan showing background, liver"
    )


def test_label_map_dict_is_no_longer_a_type_error(tmp_path):
    ok = load_datalist(_write(tmp_path / "ok.json", label_map={"1": "liver", "2": "spleen"}))
    assert ok.label_map.classes == {1: "liver", 2: "spleen"}
    for i, (keys, reason) in enumerate(
        [
            ({"label_map": {"1": ["liver"]}}, "non-empty string"),
            ({"label_map": {"1": "liver", "2": "liver"}}, "'liver' is given to ids 1 and 2"),
            ({"labels": {"0": "background"}}, "id 0"),
            ({"labels": {"1": "liver"}, "modality": "PET"}, "unknown modality"),
            ({"labels": {"1": "liver"}, "label_map": "synapse"}, "both 'labels' and 'label_map'"),
            ({"labels": {"1": "liver"}, "label_remap": "btcv_to_synapse"}, "maps to 'synapse'"),
        ]
    ):
        path = _write(tmp_path / f"bad{i}.json", **keys)
        for read in (load_datalist, datalist_label_map):
            with pytest.raises(S2S2InputError) as info:
                read(path)
            assert info.value.path == str(path) and reason in info.value.problem and info.value.fix


def test_datalist_label_map_reads_only_keys(tmp_path):
    # the entries point to files that do not exist: not looked at
    assert datalist_label_map(_write(tmp_path / "a.json")) is SYNAPSE
    lm = datalist_label_map(_write(tmp_path / "b.json", labels=ORGANS, modality="MRI"))
    assert (lm.name, lm.modality, lm.anatomy, lm.classes[3]) == ("custom", "MRI", "MRI scan", "left kidney")
    syn_mr = datalist_label_map(_write(tmp_path / "c.json", label_map="synapse", modality="MRI"))
    assert syn_mr.classes == SYNAPSE.classes and syn_mr.modality == "MRI" and syn_mr.anatomy == "abdomen MRI scan"
    assert datalist_label_map("data_lists/chaos_t2spir.json") is LABEL_MAPS["chaos_t2spir"]
    with pytest.raises(S2S2InputError, match="datalist not found"):
        datalist_label_map(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(S2S2InputError, match="not valid JSON"):
        datalist_label_map(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- s2s2 datalist
@pytest.fixture(scope="module")
def nnunet(tmp_path_factory) -> Path:
    """An nnU-Net style folder of 4 phantom cases: imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz (ids 0..3)."""
    from s2s2_monai.data.phantom import write_demo_data

    root = tmp_path_factory.mktemp("nnunet")
    write_demo_data(root, cases=4, seed=0, shape=(32, 32, 6), progress=False)
    (root / "datalist.json").unlink()
    for p in sorted((root / "imagesTr").iterdir()):
        p.rename(p.with_name(p.name.replace(".nii.gz", "_0000.nii.gz")))
    for p in sorted((root / "labelsTr").iterdir()):
        img = nib.load(p)
        arr = np.asarray(img.dataobj).astype(np.uint8)
        arr[arr > 3] = 0  # the custom 3-organ map
        nib.save(nib.Nifti1Image(arr, img.affine), p)
    return root


def _datalist(nnunet: Path, out: Path, *extra: str, images: Path | None = None, labels: Path | None = None) -> int:
    argv = [
        "datalist",
        "--images",
        str(images or nnunet / "imagesTr"),
        "--labels",
        str(labels or nnunet / "labelsTr"),
        "--out",
        str(out),
        "--label-names",
        json.dumps(ORGANS),
        "--no-progress",
        *extra,
    ]
    return main(argv)


def test_datalist_command_split_and_paths(nnunet, tmp_path, capsys):
    assert _datalist(nnunet, nnunet / "my.json", "--test-fraction", "0.25", "--val-fraction", "0.34", "--force") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line == (
        f"wrote {nnunet / 'my.json'}: 2 training, 1 validation, 1 test cases (label map custom, CT: liver, spleen, left kidney)"
    )
    raw = json.loads((nnunet / "my.json").read_text())
    assert raw["labels"] == ORGANS and raw["modality"] == "CT" and "label_map" not in raw
    entries = [e for s in ("training", "validation", "test") for e in raw[s]]
    assert sorted(e["case_id"] for e in entries) == [f"phantom_00{i}" for i in range(4)]
    assert all(not Path(e["image"]).is_absolute() and not e["image"].startswith("..") for e in entries)
    dl = load_datalist(nnunet / "my.json")  # default data root = the datalist's folder
    assert dl.label_map.classes == {1: "liver", 2: "spleen", 3: "left kidney"}
    for section in ("training", "validation", "test"):
        for e in dl.items(section):
            assert e["image"] == str(nnunet / "imagesTr" / f"{e['case_id']}_0000.nii.gz")
            assert e["label"] == str(nnunet / "labelsTr" / f"{e['case_id']}.nii.gz")
    # a datalist outside the data folder: absolute paths (a relative one may not climb out with '..')
    assert _datalist(nnunet, tmp_path / "up.json") == 0
    for e in load_datalist(tmp_path / "up.json").items("training"):
        assert Path(e["image"]).is_file() and Path(e["label"]).is_file()


def test_datalist_same_seed_same_bytes(nnunet, tmp_path):
    def split(seed: int, name: str) -> bytes:
        args = ("--test-fraction", "0.5", "--seed", str(seed))
        assert _datalist(nnunet, tmp_path / name, *args) == 0
        return (tmp_path / name).read_bytes()

    assert split(0, "a.json") == split(0, "b.json")
    first = json.loads(split(0, "a2.json"))["test"]
    assert any(json.loads(split(seed, f"s{seed}.json"))["test"] != first for seed in range(1, 6))


def test_split_cases_rules():
    cases = [f"c{i}" for i in range(10)]
    s = split_cases(cases, seed=3, test_fraction=0.2, val_fraction=0.25)
    assert [len(s[k]) for k in ("training", "validation", "test")] == [6, 2, 2]
    assert sorted(sum(s.values(), [])) == sorted(cases) and s["training"] == sorted(s["training"])
    assert split_cases(cases, seed=3, test_fraction=0.2, val_fraction=0.25) == s
    for kwargs, option in [
        ({"test_fraction": 1.0}, "--test-fraction"),
        ({"val_fraction": -0.1}, "--val-fraction"),
        ({"test_list": ["c1", "zz"]}, "--test-list"),
    ]:
        with pytest.raises(S2S2InputError) as info:
            split_cases(cases, **kwargs)
        assert info.value.path == option
    with pytest.raises(S2S2InputError, match="no training case"):
        split_cases(["a", "b"], test_fraction=0.5, val_fraction=0.9)


def test_datalist_test_list(nnunet, tmp_path):
    (tmp_path / "test.txt").write_text("# held out\nphantom_002\nphantom_000_0000.nii.gz\n\n")
    assert _datalist(nnunet, tmp_path / "a.json", "--test-list", str(tmp_path / "test.txt")) == 0
    raw = json.loads((tmp_path / "a.json").read_text())
    assert [e["case_id"] for e in raw["test"]] == ["phantom_000", "phantom_002"] and len(raw["training"]) == 2
    (tmp_path / "test.json").write_text('["phantom_003"]')
    assert (
        _datalist(nnunet, tmp_path / "b.json", "--test-list", str(tmp_path / "test.json"), "--val-fraction", "0.4") == 0
    )
    raw = json.loads((tmp_path / "b.json").read_text())
    assert [e["case_id"] for e in raw["test"]] == ["phantom_003"]
    assert (len(raw["validation"]), len(raw["training"])) == (1, 2)


def test_datalist_dicom_folder_pairing(nnunet, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    shutil.copytree(nnunet / "labelsTr", labels)
    shutil.copy(nnunet / "imagesTr" / "phantom_000_0000.nii.gz", images)
    shutil.copy(nnunet / "imagesTr" / "phantom_001_0000.nii.gz", images / "phantom_001.nii.gz")  # no channel suffix
    for case in ("phantom_002", "phantom_003"):  # a DICOM series folder per case (never read here)
        (images / case).mkdir()
        for i in range(3):
            (images / case / f"IM{i:04d}.dcm").write_bytes(b"DICM")
    (images / ".DS_Store").write_bytes(b"hidden")
    (labels / ".hidden.nii.gz").write_bytes(b"hidden")
    pairs = pair_cases(images, labels)
    assert [(p.case_id, p.image.name, p.label.name) for p in pairs] == [
        ("phantom_000", "phantom_000_0000.nii.gz", "phantom_000.nii.gz"),
        ("phantom_001", "phantom_001.nii.gz", "phantom_001.nii.gz"),
        ("phantom_002", "phantom_002", "phantom_002.nii.gz"),
        ("phantom_003", "phantom_003", "phantom_003.nii.gz"),
    ]
    assert _datalist(nnunet, tmp_path / "dl.json", images=images, labels=labels) == 0
    raw = json.loads((tmp_path / "dl.json").read_text())
    assert {e["case_id"]: e["image"] for e in raw["training"]}["phantom_002"] == "images/phantom_002"


def test_datalist_label_names_from_nnunet_dataset_json(nnunet, tmp_path):
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "spleen": 2, "left kidney": 3}}))
    argv = ["datalist", "--images", str(nnunet / "imagesTr"), "--labels", str(nnunet / "labelsTr")]
    assert (
        main([*argv, "--out", str(tmp_path / "dl.json"), "--label-names", str(ds), "--modality", "MR", "--no-progress"])
        == 0
    )
    raw = json.loads((tmp_path / "dl.json").read_text())
    assert raw["labels"] == ORGANS and raw["modality"] == "MRI"
    assert main([*argv, "--out", str(tmp_path / "syn.json"), "--label-map", "chaos_t2spir", "--no-progress"]) == 0
    raw = json.loads((tmp_path / "syn.json").read_text())
    assert raw["label_map"] == "chaos_t2spir" and raw["modality"] == "MRI" and "labels" not in raw


def test_datalist_bad_input_writes_nothing(nnunet, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "dl.json"
    assert _datalist(nnunet, out, images=tmp_path / "empty") == 2
    assert _datalist(nnunet, out, "--test-fraction", "0.5", "--val-fraction", "0.9") == 2
    assert (
        main(
            [
                "datalist",
                "--images",
                str(nnunet / "imagesTr"),
                "--labels",
                str(nnunet / "labelsTr"),
                "--out",
                str(out),
                "--no-progress",
                "--label-names",
                '{"1": "liver"}',
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") and " Fix: " in line for line in err)
    assert "the images folder is empty" in err[0] and "no training case" in err[1] and "not in the label map" in err[2]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


# ---------------------------------------------------------------------------- s2s2 evaluate --datalist
def test_evaluate_datalist_names_the_organs(nnunet, tmp_path, capsys):
    assert _datalist(nnunet, tmp_path / "dl.json") == 0
    out = tmp_path / "report"
    labels = str(nnunet / "labelsTr")
    argv = [
        "evaluate",
        "--pred-dir",
        labels,
        "--label-dir",
        labels,
        "--out",
        str(out),
        "--datalist",
        str(tmp_path / "dl.json"),
    ]
    assert main([*argv, "--no-progress", "--bootstrap", "10"]) == 0
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["class_name"] for r in rows} == {"liver", "spleen", "left kidney"}
    assert {r["class_id"] for r in rows} == {"1", "2", "3"}
