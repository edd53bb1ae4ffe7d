"""Intensity and label transforms against references computed here with numpy/nibabel."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from s2s2_monai.label_maps import LABEL_REMAPS, SYNAPSE, SYNAPSE_PAPER_ORDER
from s2s2_monai.transforms import CTWindow, CTWindowd, MRINormalize, MRINormalized, RemapLabels, RemapLabelsd


def test_ct_window_matches_numpy_on_real_ct(shared_data):
    hu = nib.load(shared_data / "ct/totalseg_example_ct_sm.nii.gz").get_fdata().astype(np.float32)
    expected = np.clip((hu + 125.0) / 400.0, 0.0, 1.0)
    out = CTWindowd(keys="image")({"image": torch.from_numpy(hu)[None]})["image"]
    np.testing.assert_allclose(np.asarray(out[0]), expected, atol=1e-6)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_ct_window_custom_range_and_validation():
    x = np.array([-1000.0, 0.0, 50.0, 100.0, 2000.0], dtype=np.float32)
    np.testing.assert_allclose(CTWindow(0, 100)(x), [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError):
        CTWindow(10, 10)


def test_mri_normalize_matches_numpy_on_real_mr(shared_data):
    mr = nib.load(shared_data / "mr/totalseg_example_mr_sm.nii.gz").get_fdata().astype(np.float64)
    top = np.percentile(mr, 99.5)
    clipped = np.minimum(mr, top)
    expected = (clipped - clipped.mean()) / clipped.std()  # population std, not the mean (SLAug bug)
    out = MRINormalized(keys="image")({"image": torch.from_numpy(mr.astype(np.float32))[None]})["image"]
    out = np.asarray(out[0], dtype=np.float64)
    np.testing.assert_allclose(out, expected, atol=2e-4)
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1.0) < 1e-4
    # the top 0.5 % really is clipped: no value above the normalised percentile
    assert out.max() <= (top - clipped.mean()) / clipped.std() + 1e-4
    assert (out >= out.max() - 1e-6).mean() >= 0.004


def test_mri_normalize_percentile_validation():
    with pytest.raises(ValueError):
        MRINormalize(0)
    x = np.arange(1000, dtype=np.float32)
    out = MRINormalize(100.0)(x)  # nothing clipped: plain z-score
    np.testing.assert_allclose(out, (x - x.mean()) / x.std(), atol=1e-5)


def test_remap_real_totalseg_labels_gives_all_synapse_organs(shared_data):
    src = np.asarray(nib.load(shared_data / "ct/totalseg_example_ct_sm_seg.nii.gz").dataobj).astype(np.uint8)
    out = RemapLabelsd(keys="label", mapping="totalseg_to_synapse")({"label": src})["label"]
    assert set(np.unique(out)) == set(range(9))
    for ts_id, syn_id in LABEL_REMAPS["totalseg_to_synapse"].mapping.items():
        assert (out == syn_id).sum() == (src == ts_id).sum(), SYNAPSE.name_of(syn_id)
    # every id the map does not list (e.g. duodenum 19, portal vein 64) is background now
    assert np.all(out[np.isin(src, [19, 64, 79])] == 0)


def test_remap_real_mr_labels(shared_data):
    src = np.asarray(nib.load(shared_data / "mr/totalseg_example_mr_sm_seg.nii.gz").dataobj)
    out = RemapLabels("totalseg_mr_to_synapse")(src)
    assert set(np.unique(out)) == set(range(9))
    assert (out == 7).sum() == (src == 23).sum()  # aorta is 23 in total_mr


def test_remap_btcv_hand_case_tensor_keeps_meta():
    from monai.data import MetaTensor

    lab = MetaTensor(torch.tensor([[0, 1, 5, 6, 11, 13, 14]]), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    out = RemapLabels("btcv_to_synapse")(lab)
    assert out.tolist() == [[0, 1, 0, 5, 8, 0, 0]]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, lab.affine)
    with pytest.raises(ValueError):
        RemapLabels({1: 2})(np.array([-1, 1]))


def test_paper_order_is_alphabetical():
    names = [SYNAPSE.name_of(i) for i in SYNAPSE_PAPER_ORDER]
    key = [n.replace("left kidney", "kidney l").replace("right kidney", "kidney r") for n in names]
    assert key == sorted(key)
