"""`s2s2 stack build --generator diffusion` end to end on tiny seeded SD + ControlNet folders."""

from __future__ import annotations

import numpy as np

from s2s2_monai.cli import main
from s2s2_monai.data.slices import SliceDataset
from s2s2_monai.stack.build import build_stack
from s2s2_monai.stack.cache import StackCache
from s2s2_monai.stack.pairs import StackPairDataset


def test_diffusion_stack_build_verify_and_pairs(tiny_demo, tiny_sd, tmp_path):
    sd, cn = tiny_sd
    out = tmp_path / "stack"
    args = dict(
        generator="diffusion", sd_dir=sd, controlnet_dir=cn, resolution=16, n=2, batch_size=4, progress=False, qc=False
    )
    first = build_stack(tiny_demo, out, **args)
    assert first["generated"] == first["entries"] > 0 and first["bytes_per_pixel"] <= 1.0
    again = build_stack(tiny_demo, out, **args)
    assert again["generated"] == 0 and again["digest"] == first["digest"]
    assert main(["stack", "verify", str(out)]) == 0
    manifest = StackCache(out).manifest
    assert manifest["generator"] == "diffusion" and manifest["settings"]["steps"] == 50
    pairs = StackPairDataset(SliceDataset(tiny_demo), out)
    item = pairs[3]
    assert item["image_stack"].shape == item["image"].shape == item["label"].shape
    assert not np.allclose(item["image_stack"].numpy(), item["image"].numpy())
