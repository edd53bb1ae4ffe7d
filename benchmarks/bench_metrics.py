"""Benchmark: per-case Dice + HD95 (all organs) vs medpy's per-class loop and MONAI's metrics; slice inference.

Volume: the real TotalSegmentator CT labels (../shared/data), remapped to the 8 Synapse organs and
upsampled to ~500x400x110 (0.73 x 0.76 x 3.05 mm); the "prediction" is a perturbed copy (organs
dilated, eroded or shifted, plus false-positive blobs). A synthetic volume is used when the data is
missing. Run: ``python benchmarks/bench_metrics.py [--skip-medpy]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from s2s2_monai.evaluation.inference import predict_volume
from s2s2_monai.evaluation.metrics import DEFAULT_HD95, compute_case_metrics

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "totalseg_example_ct_seg_fast.nii.gz"
SHAPE = (500, 400, 110)


def make_volumes(seed: int = 0):
    rng = np.random.default_rng(seed)
    if DATA.exists():
        import nibabel as nib

        from s2s2_monai.label_maps import get_label_remap

        seg = np.asarray(nib.load(DATA).dataobj)
        lut = np.zeros(256, np.uint8)
        for s, t in get_label_remap("totalseg_to_synapse").mapping.items():
            lut[s] = t
        src = lut[seg]
        source = f"real labels {DATA.name}"
    else:
        src = np.zeros((122, 101, 112), np.uint8)
        for c in range(1, 9):
            x, y, z = rng.integers(20, 80, 3)
            src[x - 10 : x + 10, y - 8 : y + 8, z - 15 : z + 15] = c
        source = "synthetic boxes (real data not found)"
    gt = ndimage.zoom(src, np.divide(SHAPE, src.shape), order=0)
    spacing = 3.0 * np.divide(src.shape, gt.shape)
    pred = gt.copy()
    for c in range(1, 9):
        m = gt == c
        m2 = (
            ndimage.binary_dilation(m, iterations=2)
            if c % 3 == 0
            else ndimage.binary_erosion(m, iterations=2)
            if c % 3 == 1
            else np.roll(m, 3, axis=0)
        )
        pred[(pred == c) & ~m2] = 0
        pred[m2] = c
    for _ in range(10):
        c = rng.integers(1, 9)
        x, y, z = rng.integers(0, gt.shape)
        pred[max(x - 5, 0) : x + 5, max(y - 5, 0) : y + 5, max(z - 2, 0) : z + 2] = c
    return pred, gt, spacing, source


def timed(fn, repeats=1):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def medpy_loop(pred, gt, spacing):
    from medpy.metric import binary

    return {
        c: (binary.dc(pred == c, gt == c), binary.hd95(pred == c, gt == c, voxelspacing=spacing)) for c in range(1, 9)
    }


def monai_metrics(pred, gt, spacing):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    p = one_hot(torch.from_numpy(pred)[None, None].long(), 9)
    g = one_hot(torch.from_numpy(gt)[None, None].long(), 9)
    dice = DiceMetric(include_background=False, reduction="none")(p, g)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, g, spacing=list(spacing)
        )[0]
    return {c: (float(dice[c - 1]), float(hd[c - 1])) for c in range(1, 9)}


def max_rel(ours, ref):
    return max(abs(ours[c]["hd95_mm"] - ref[c][1]) / max(abs(ref[c][1]), 1e-12) for c in ref), max(
        abs(ours[c]["dice"] - ref[c][0]) for c in ref
    )


def bench_metrics(skip_medpy: bool, repeats: int):
    pred, gt, spacing, source = make_volumes()
    print(
        f"volume {gt.shape} spacing {np.round(spacing, 3).tolist()} mm, 8 organs, {source}; torch threads {torch.get_num_threads()}"
    )
    pt, gtt = torch.from_numpy(pred), torch.from_numpy(gt)
    compute_case_metrics(pt[:40, :40, :10], gtt[:40, :40, :10], spacing, range(1, 9))  # warm-up
    ours = {}
    for name in ("monai", "medpy", "surface-distance"):
        ours[name], t = timed(lambda n=name: compute_case_metrics(pt, gtt, spacing, range(1, 9), hd95=n), repeats)
        print(f"ours ({name:16s}) Dice+HD95+ASSD, 8 organs: {t:7.3f} s")
        ours[name + "_t"] = t
    ref, t_monai = timed(lambda: monai_metrics(pred, gt, spacing))
    rel, dd = max_rel(ours["monai"], ref)
    print(
        f"MONAI DiceMetric + HausdorffDistanceMetric (CPU): {t_monai:7.3f} s -> ours is {t_monai / ours['monai_t']:.1f}x faster (target >= 10x); "
        f"max rel HD95 diff {rel:.2e}, max Dice diff {dd:.2e}"
    )
    if not skip_medpy:
        ref, t_medpy = timed(lambda: medpy_loop(pred, gt, spacing))
        rel, dd = max_rel(ours["medpy"], ref)
        print(
            f"medpy dc + hd95 per-class loop:                   {t_medpy:7.3f} s -> ours is {t_medpy / ours['medpy_t']:.1f}x faster (target >= 50x); "
            f"max rel HD95 diff {rel:.2e}, max Dice diff {dd:.2e}"
        )
    print(f"(default definition: {DEFAULT_HD95})")


def bench_inference(repeats: int):
    from monai.networks.nets import BasicUNet

    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=9, features=(8, 8, 16, 32, 64, 8)).eval()
    vol = torch.rand(160, 160, 48)

    def per_slice():
        with torch.inference_mode():
            return torch.stack([net(vol[None, None, :, :, z]).argmax(1)[0] for z in range(vol.shape[-1])], dim=-1)

    ref, t_loop = timed(per_slice, repeats)
    out, t_batch = timed(lambda: predict_volume(net, vol, batch_size=16), repeats)
    assert torch.equal(out, ref) or (out != ref).float().mean() < 1e-4
    print(
        f"slice inference {tuple(vol.shape)}, BasicUNet: per-slice loop {t_loop:.3f} s, batched predict_volume {t_batch:.3f} s "
        f"-> {t_loop / t_batch:.1f}x (target >= 3x); identical labels: {torch.equal(out, ref)}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-medpy", action="store_true", help="skip the slow medpy reference loop")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    bench_metrics(a.skip_medpy, a.repeats)
    bench_inference(a.repeats)
