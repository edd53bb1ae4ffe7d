"""Paired sampling (x0, x1 ~ stack, y): alignment under shared augmentation, RNG control, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose, RandAffined, RandFlipd
from monai.utils import set_determinism

from s2s2_monai.data.slices import SliceDataset, VolumeCache
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.stack.base import StackGenerator
from s2s2_monai.stack.build import build_stack
from s2s2_monai.stack.cache import StackCache
from s2s2_monai.stack.pairs import StackPairDataset

N = 4
KEYS = ["image", "image_stack", "label"]


class LabelPainter(StackGenerator):
    """Member m paints label k with (16 k + m) / 255: x1 is a known function of the mask."""

    name = "label_painter"

    def settings(self) -> dict:
        return {"scale": 16}

    def generate(self, masks, prompts, seeds, n):
        m = np.arange(n, dtype=np.float32)[None, :, None, None]
        return (16.0 * masks[:, None].astype(np.float32) + m) / 255.0


@pytest.fixture(scope="module")
def volumes(tiny_demo):
    return VolumeCache(tiny_demo, "training", progress=False)


@pytest.fixture(scope="module")
def painted(volumes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("painted") / "stack"
    build_stack(volumes, out, generator=LabelPainter(), n=N, progress=False, qc=False, contact_sheet=False)
    return out


def test_items_carry_x0_x1_label_and_member(volumes, painted):
    ds = StackPairDataset(SliceDataset(volumes), painted)
    assert len(ds) == 16
    set_determinism(0)
    item = ds[5]
    assert set(item) >= {"image", "image_stack", "label", "case_id", "slice_index", "member"}
    assert item["image_stack"].shape == item["image"].shape == item["label"].shape == (1, 48, 48)
    assert item["image_stack"].dtype == torch.float32
    # CT unit space is the network space: x1 = (16 y + member) / 255 exactly as stored
    expected = (16 * item["label"] + item["member"]) / 255
    torch.testing.assert_close(item["image_stack"], expected, atol=1e-6, rtol=0)
    raw = SliceDataset(volumes).slice_item(5)
    torch.testing.assert_close(item["image"], raw["image"])
    assert (item["case_id"], item["slice_index"]) == (raw["case_id"], raw["slice_index"])


def test_member_draw_is_uniform_and_controlled_by_set_determinism(volumes, painted):
    ds = StackPairDataset(SliceDataset(volumes), painted)
    set_determinism(123)
    a = [ds[i % len(ds)]["member"] for i in range(400)]
    set_determinism(123)
    b = [ds[i % len(ds)]["member"] for i in range(400)]
    set_determinism(124)
    c = [ds[i % len(ds)]["member"] for i in range(400)]
    assert a == b and a != c
    counts = np.bincount(a, minlength=N)
    chi2 = ((counts - 100) ** 2 / 100).sum()
    assert chi2 < 16.27  # chi-square, 3 dof, p = 0.001
    set_determinism(None)


def test_shared_random_affine_keeps_x1_aligned(volumes, painted):
    aug = Compose(
        [
            RandFlipd(KEYS, prob=0.5, spatial_axis=0),
            RandAffined(
                KEYS,
                prob=1.0,
                rotate_range=0.5,
                translate_range=(6, 6),
                scale_range=0.2,
                mode="nearest",
                padding_mode="zeros",
            ),
        ]
    )
    ds = StackPairDataset(SliceDataset(volumes), painted, transform=aug)
    set_determinism(7)
    moved = 0
    for i in range(len(ds)):
        item = ds[i]
        y = item["label"].as_tensor() if hasattr(item["label"], "as_tensor") else item["label"]
        x1 = item["image_stack"].as_tensor() if hasattr(item["image_stack"], "as_tensor") else item["image_stack"]
        inside = (x1 > 0) | (y > 0)  # zero padding maps to label 0 and to 0 intensity alike
        torch.testing.assert_close(x1[inside], ((16 * y + item["member"]) / 255)[inside], atol=1e-6, rtol=0)
        raw = SliceDataset(volumes).slice_item(i)["label"]
        moved += int(not torch.equal(y, raw))
    assert moved >= len(ds) // 2  # the augmentation really moved the slices
    # control: augmenting x1 alone with a different draw breaks the alignment (the test can fail)
    lone = RandAffined(["image_stack"], prob=1.0, rotate_range=0.5, translate_range=(6, 6), mode="nearest")
    lone.set_random_state(3)
    item = StackPairDataset(SliceDataset(volumes), painted)[10]
    y = item["label"]
    shifted = lone(dict(item))["image_stack"]
    assert not torch.allclose(torch.as_tensor(shifted), (16 * y + item["member"]) / 255, atol=1e-6)
    set_determinism(None)


def test_mri_stacks_are_mapped_back_to_z_scores(tiny_demo, tmp_path):
    dl = json.loads(Path(tiny_demo).read_text())
    dl["modality"] = "MRI"
    path = Path(tiny_demo).parent / "as_mri.json"
    path.write_text(json.dumps(dl))
    vol = VolumeCache(path, "training", progress=False)
    build_stack(vol, tmp_path / "s", generator=LabelPainter(), n=N, progress=False, qc=False, contact_sheet=False)
    item = StackPairDataset(SliceDataset(vol), tmp_path / "s")[3]
    lo, hi = StackCache(tmp_path / "s").manifest["unit"]
    assert (lo, hi) == (-3.0, 5.0)
    torch.testing.assert_close(
        item["image_stack"], (16 * item["label"] + item["member"]) / 255 * 8 - 3, atol=1e-5, rtol=0
    )


def test_missing_entry_names_case_and_slice(volumes, painted, tmp_path):
    import shutil

    out = tmp_path / "stack"
    shutil.copytree(painted, out)
    ds = StackPairDataset(SliceDataset(volumes), out)
    victim = ds.key_of(9)
    StackCache(out).remove_entry(victim)
    case = volumes.cases[SliceDataset(volumes).index[9][0]].case_id
    with pytest.raises(S2S2InputError, match=rf"case {case} slice \d+.*s2s2 stack build"):
        StackPairDataset(SliceDataset(volumes), out)
    lazy = StackPairDataset(SliceDataset(volumes), out, check=False)
    with pytest.raises(S2S2InputError, match="no stack entry"):
        lazy[9]
    with pytest.raises(ValueError, match="transform"):
        StackPairDataset(SliceDataset(volumes, transform=lambda d: d), out)
    with pytest.raises(S2S2InputError, match="generator"):
        StackPairDataset(SliceDataset(volumes), painted, generator="diffusion")
    with pytest.raises(S2S2InputError, match="not a stack cache"):
        StackPairDataset(SliceDataset(volumes), tmp_path / "nothing")


def test_with_appearance_stack_and_dataloader(volumes, tmp_path):
    build_stack(volumes, tmp_path / "a", n=2, progress=False, contact_sheet=False)
    ds = StackPairDataset(SliceDataset(volumes), tmp_path / "a")
    from monai.data import DataLoader

    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False, num_workers=0)))
    assert batch["image_stack"].shape == (4, 1, 48, 48) and batch["member"].shape == (4,)
    assert 0 <= float(batch["image_stack"].min()) and float(batch["image_stack"].max()) <= 1
