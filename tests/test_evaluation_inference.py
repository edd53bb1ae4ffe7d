"""Slice inference + reassembly, and the legacy TransUNet protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import zoom

from s2s2_monai.evaluation.inference import predict_volume
from s2s2_monai.evaluation.legacy import legacy_case_metrics, legacy_predict_volume, legacy_summary


def _net(classes=4, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, classes, 3, padding=1),
    )


def test_batched_reassembly_equals_per_slice_loop():
    net = _net().eval()
    vol = torch.rand(20, 16, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.stack([net(vol[None, None, :, :, z]).argmax(1)[0] for z in range(vol.shape[-1])], dim=-1)
        ref_resized = []
        for z in range(vol.shape[-1]):
            x = torch.nn.functional.interpolate(
                vol[None, None, :, :, z], size=(32, 32), mode="bilinear", align_corners=False
            )
            y = torch.nn.functional.interpolate(net(x), size=(20, 16), mode="bilinear", align_corners=False)
            ref_resized.append(y.argmax(1)[0])
    for bs in (1, 3, 32):
        out = predict_volume(net, vol.numpy()[None], batch_size=bs)
        assert out.shape == (20, 16, 7) and out.dtype == torch.int64
        assert torch.equal(out, ref)
    assert torch.equal(predict_volume(net, vol, input_size=(32, 32), batch_size=4), torch.stack(ref_resized, -1))
    logits = predict_volume(net, vol, return_logits=True)
    assert logits.shape == (4, 20, 16, 7) and torch.equal(logits.argmax(0), ref)
    net.train()
    predict_volume(net, vol)
    assert net.training  # mode restored


def test_legacy_predict_is_transunet_loop():
    net = _net().eval()
    vol = np.random.default_rng(0).random((30, 26, 3)).astype(np.float32)
    out = legacy_predict_volume(net, vol, input_size=(24, 24), batch_size=2)
    for z in range(3):  # TransUNet utils.test_single_volume, written out
        s = zoom(vol[:, :, z], (24 / 30, 24 / 26), order=3)
        with torch.no_grad():
            o = torch.argmax(torch.softmax(net(torch.from_numpy(s)[None, None].float()), dim=1), dim=1)[0].numpy()
        assert np.array_equal(out[:, :, z].numpy(), zoom(o, (30 / 24, 26 / 24), order=0))


def test_legacy_probabilities_are_the_labels_softmax():
    net = _net().eval()
    vol = np.random.default_rng(1).random((30, 26, 5)).astype(np.float32)
    labels = legacy_predict_volume(net, vol, input_size=(24, 24), batch_size=2)
    probs = legacy_predict_volume(net, vol, input_size=(24, 24), batch_size=2, return_probabilities=True)
    assert probs.shape == (4, 30, 26, 5) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(0), torch.ones(30, 26, 5))
    assert torch.equal(probs.argmax(0), labels)
    s = zoom(vol[:, :, 2], (24 / 30, 24 / 26), order=3)  # slice 2 by hand: softmax at 24 x 24, nearest zoom back
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(s)[None, None].float()), dim=1)[0].numpy()
    np.testing.assert_allclose(probs[..., 2].numpy(), zoom(p, (1, 30 / 24, 26 / 24), order=0), rtol=1e-6)


def test_legacy_metrics_rules_and_averaging():
    from medpy.metric import binary

    gt = np.zeros((20, 20, 6), np.uint8)
    gt[3:9, 3:9, 1:4] = 1
    gt[12:16, 12:18, 2:5] = 2
    pred = np.zeros_like(gt)
    pred[4:10, 3:9, 1:5] = 1  # both present -> medpy dc, hd95 without spacing
    pred[0:2, 0:2, 0:2] = 3  # prediction only -> (1, 0)
    # class 2 missed -> (0, 0); class 4 absent everywhere -> (0, 0)
    res = legacy_case_metrics(pred, gt, [1, 2, 3, 4])
    assert res[1]["dice"] == pytest.approx(binary.dc(pred == 1, gt == 1))
    assert res[1]["hd95_vox"] == pytest.approx(binary.hd95(pred == 1, gt == 1))
    assert res[2] == {"dice": 0.0, "hd95_vox": 0.0}
    assert res[3] == {"dice": 1.0, "hd95_vox": 0.0}
    assert res[4] == {"dice": 0.0, "hd95_vox": 0.0}
    s = legacy_summary({"a": res, "b": {c: {"dice": 1.0, "hd95_vox": 2.0} for c in res}})
    assert s["per_class"][2] == {"dice": 0.5, "hd95_vox": 1.0}
    expected = np.mean([(res[c]["dice"] + 1.0) / 2 for c in res])
    assert s["mean_dice"] == pytest.approx(expected) and s["num_cases"] == 2
