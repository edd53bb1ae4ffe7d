"""Volume validation: VolumeMetric arithmetic and VolumeEvaluator against MONAI's DiceMetric."""

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from torch import nn

from s2s2_monai.data.phantom import ORGANS
from s2s2_monai.data.slices import VolumeCache
from s2s2_monai.training.validation import (
    VolumeDataset,
    VolumeEvaluator,
    VolumeMetric,
    first_item,
    volume_loader,
    volume_metrics,
)


def test_volume_metric_means_over_cases_then_classes():
    m = VolumeMetric("dice")
    m.reset()
    m.update(({1: {"dice": 0.5}, 2: {"dice": math.nan}}, 0))
    m.update(({1: {"dice": 1.0}, 2: {"dice": 0.25}}, 1))
    m.update(({1: {"dice": 1.0}, 2: {"dice": 0.25}}, 1))  # the same case again (DDP padding): counted once
    assert m.compute() == pytest.approx((0.75 + 0.25) / 2)
    one = VolumeMetric("dice", class_id=2)
    one.reset()
    one.update(({2: {"dice": 0.25}}, 0))
    assert one.compute() == pytest.approx(0.25)
    empty = VolumeMetric("dice", class_ids=[3])
    empty.reset()
    assert math.isnan(empty.compute())


def _intensity_classifier(num_classes: int) -> nn.Module:
    """A real 1x1-conv network: nearest-centre classification of window intensities (c_k per class)."""
    centres = torch.zeros(num_classes)
    centres[0] = 0.3  # body / fat background
    for organ_id, (_, _, _, hu) in ORGANS.items():
        centres[organ_id] = (hu + 125.0) / 400.0
    net = nn.Conv2d(1, num_classes, 1)
    with torch.no_grad():  # argmax_k -(x - c_k)^2 = argmax_k 2 c_k x - c_k^2
        net.weight.copy_((2 * centres).view(-1, 1, 1, 1))
        net.bias.copy_(-(centres**2))
    return net


def test_evaluator_matches_monai_dice_metric(tiny_demo):
    volumes = VolumeCache(tiny_demo, "validation", progress=False)
    net = _intensity_classifier(9)
    ev = VolumeEvaluator(
        "cpu", volume_loader(VolumeDataset(volumes)), net, "synapse", additional_metrics=volume_metrics("synapse")
    )
    ev.run()
    # independent reference: MONAI DiceMetric on the same predictions
    from s2s2_monai.evaluation.inference import predict_volume

    ref = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    for case in volumes:
        pred = predict_volume(net, torch.from_numpy(case.image), device="cpu")
        ref(one_hot(pred[None, None], 9), one_hot(torch.from_numpy(case.label).long()[None, None], 9))
    per_class = ref.aggregate()  # (cases, 8), NaN where the class is absent from the ground truth
    class_means = torch.nanmean(per_class, dim=0)
    assert ev.state.metrics["val_mean_dice"] == pytest.approx(float(torch.nanmean(class_means)), abs=1e-6)
    assert ev.state.metrics["val_dice_liver"] == pytest.approx(float(class_means[4]), abs=1e-6)
    assert 0.05 < ev.state.metrics["val_mean_dice"] < 1.0  # a non-trivial prediction
    assert ev.state.metrics["val_mean_hd95_mm"] > 0
    assert ev.state.output["case_id"] == volumes[len(volumes) - 1].case_id


def test_first_item_and_volume_dataset(tiny_demo):
    ds = VolumeDataset(tiny_demo, "validation")
    item = ds[0]
    assert item["image"].ndim == 3 and item["label"].shape == item["image"].shape and len(item["spacing"]) == 3
    assert first_item([item]) is item
    with pytest.raises(ValueError, match="batch_size=1"):
        first_item([item, item])
