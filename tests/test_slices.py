"""Slice dataset over cached volumes, datalists and the phantom demo data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import s2s2_monai.data.cases as cases_mod
from s2s2_monai.data.datalist import load_datalist
from s2s2_monai.data.phantom import ORGANS, write_demo_data
from s2s2_monai.data.slices import SliceDataset, VolumeCache
from s2s2_monai.errors import S2S2InputError


def test_slice_items_match_volume_and_geometry(tiny_demo):
    dl = load_datalist(tiny_demo)
    cache = VolumeCache(dl, "training", progress=False)
    ds = SliceDataset(cache)
    assert len(ds) == sum(c.num_slices for c in cache.cases) == 2 * 8
    item = ds[11]
    case = cache.cases[1]
    assert item["case_id"] == "phantom_001" and item["slice_index"] == 3
    np.testing.assert_array_equal(item["image"][0].numpy(), case.image[:, :, 3])
    np.testing.assert_array_equal(item["label"][0].numpy(), case.label[:, :, 3])
    np.testing.assert_allclose(item["spacing"].numpy(), case.spacing[:2], rtol=1e-6)
    # CT window applied: HU -> [0, 1]; raw file values are HU
    raw = nib.load(dl.items("training")[1]["image"]).get_fdata()
    assert raw.min() < -500 and 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["image"].dtype.is_floating_point and item["label"].shape == item["image"].shape


def test_random_access_never_reloads(tiny_demo, monkeypatch):
    cache = VolumeCache(tiny_demo, "training", progress=False)
    calls = []
    monkeypatch.setattr(cases_mod, "load_case", lambda *a, **k: calls.append(a))
    ds = SliceDataset(cache, transform=lambda d: {**d, "seen": True})
    for i in np.random.default_rng(0).integers(0, len(ds), 50):
        assert ds[int(i)]["seen"]
    assert calls == []
    assert cache.nbytes == sum(c.image.nbytes + c.label.nbytes for c in cache.cases)


def test_labelled_only(tiny_demo):
    ds = SliceDataset(tiny_demo, labelled_only=True)
    full = SliceDataset(ds.volumes)
    assert 0 < len(ds) <= len(full)
    assert all(ds[i]["label"].max() > 0 for i in range(len(ds)))
    assert len(full) - len(ds) == sum(full[i]["label"].max() == 0 for i in range(len(full)))


def test_phantom_is_seeded_and_plausible(tmp_path):
    a = write_demo_data(tmp_path / "a", cases=2, seed=3, shape=(64, 64, 16), progress=False)
    b = write_demo_data(tmp_path / "b", cases=2, seed=3, shape=(64, 64, 16), progress=False)
    c = write_demo_data(tmp_path / "c", cases=2, seed=4, shape=(64, 64, 16), progress=False)
    for sub in ("imagesTr/phantom_000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        assert (a.parent / sub).read_bytes() == (b.parent / sub).read_bytes()
        assert (a.parent / sub).read_bytes() != (c.parent / sub).read_bytes()
    img = nib.load(a.parent / "imagesTr/phantom_000.nii.gz")
    lab = np.asarray(nib.load(a.parent / "labelsTr/phantom_000.nii.gz").dataobj)
    hu = np.asarray(img.dataobj)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and not np.allclose(img.affine, np.eye(4))
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [350 / 64, 350 / 64, 9.0], rtol=0.05)
    assert set(np.unique(lab)) == set(range(9))
    for organ_id, (_, _, _, mean_hu) in ORGANS.items():
        assert abs(np.median(hu[lab == organ_id]) - mean_hu) < 40
    assert hu.min() < -900  # air outside the body
    dl = json.loads(a.read_text())
    assert dl["label_map"] == "synapse" and len(dl["training"]) == 1 and not dl["validation"] and len(dl["test"]) == 1


def test_phantom_anatomy_sides(tiny_demo):
    case = VolumeCache(tiny_demo, "training", progress=False).cases[0]
    x = {k: np.argwhere(case.label == k)[:, 0].mean() for k in range(1, 9)}
    assert x[5] > x[1] and x[2] > x[3] and x[4] > x[6]  # liver/R kidney/gallbladder on the patient's right (+x in RAS)


def test_datalist_errors(tmp_path):
    with pytest.raises(S2S2InputError, match="datalist not found"):
        load_datalist(tmp_path / "missing.json")
    p = tmp_path / "dl.json"
    p.write_text("{not json")
    with pytest.raises(S2S2InputError, match="not valid JSON"):
        load_datalist(p)
    p.write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(S2S2InputError, match="no entries"):
        load_datalist(p)
    p.write_text(json.dumps({"training": [{"label": "x"}]}))
    with pytest.raises(S2S2InputError, match="has no 'image'"):
        load_datalist(p)
    p.write_text(json.dumps({"label_map": "nope", "training": ["a.nii.gz"]}))
    with pytest.raises(S2S2InputError, match="unknown label map"):
        load_datalist(p)
    p.write_text(json.dumps({"label_map": "acdc", "label_remap": "btcv_to_synapse", "training": ["a.nii.gz"]}))
    with pytest.raises(S2S2InputError, match="maps to 'synapse'"):
        load_datalist(p)


def test_shipped_datalists_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data_lists"
    syn = load_datalist(root / "synapse.json", data_root="/data/btcv")
    ids = lambda sec: sorted(int(e["case_id"][4:]) for e in syn.items(sec))  # noqa: E731
    assert ids("training") == [5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28, 30, 31, 33, 34, 37, 39, 40]
    assert ids("test") == [1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38]
    assert syn.label_remap.name == "btcv_to_synapse" and syn.items("test")[0]["image"].startswith("/data/btcv/")
    chaos = load_datalist(root / "chaos_t2spir.json")
    assert chaos.modality == "MRI" and chaos.label_map.num_classes == 5
    assert load_datalist(root / "demo.json").items("training")
