"""Diffusion stack generation throughput vs batch size (masks per pipeline call).

Alternative compared in the same run: batch size 1, i.e. one pipeline call per mask (its ``n``
members batched, as upstream's ``generate_seg2image.py`` does). For each batch size the same
masks, prompts and seeds are generated; printed: images/s, ratio against batch size 1, and the
largest difference from the batch-size-1 images (seeding is per image, so only float rounding
of differently shaped kernels may differ).

Masks are real: the TotalSegmentator example CT in ../shared/data (remapped to Synapse ids),
slices with most organs; project phantoms when the shared data is absent. The model is the tiny
seeded SD + ControlNet of ``tests/tiny_diffusers.py`` unless ``--sd-dir`` and
``--controlnet-dir`` name real folders (then use e.g. ``--resolution 512 --steps 50``).

Run: ``python benchmarks/bench_generation.py [--masks 8 --n 4 --batch-sizes 1 2 4 8]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from s2s2_monai.data.slices import VolumeCache
from s2s2_monai.stack.diffusion import DiffusionGenerator
from s2s2_monai.stack.prompts import build_prompt

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def load_masks(tmp: Path, count: int) -> tuple[np.ndarray, list[str], str]:
    """``count`` label slices (most organs first) and their prompts."""
    if (SHARED / "ct").is_dir():
        from s2s2_monai.data.datalist import load_datalist

        volumes, source = (
            VolumeCache(
                load_datalist(REPO / "data_lists" / "totalseg_examples.json", SHARED), "training", progress=False
            ),
            "real CT (TotalSegmentator example)",
        )
    else:
        from s2s2_monai.data.phantom import write_demo_data

        volumes, source = (
            VolumeCache(
                write_demo_data(tmp / "demo", cases=2, shape=(96, 96, 16), progress=False), "training", progress=False
            ),
            "phantom CT",
        )
    case = volumes.cases[0]
    order = sorted(range(case.num_slices), key=lambda z: -len(np.unique(case.label[:, :, z])))[:count]
    masks = np.stack([case.label[:, :, z] for z in order]).astype(np.uint8)
    return masks, [build_prompt(m, volumes.datalist.label_map) for m in masks], source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sd-dir", default=None, help="Stable Diffusion folder (default: the tiny test model)")
    ap.add_argument("--controlnet-dir", default=None, help="ControlNet folder (default: the tiny test model)")
    ap.add_argument("--resolution", type=int, default=32, help="generation size (tiny model: multiple of 4)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--n", type=int, default=4, help="members per mask")
    ap.add_argument("--masks", type=int, default=8, help="masks generated per batch size")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--reps", type=int, default=2, help="timed repetitions (best kept)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sd, cn = args.sd_dir, args.controlnet_dir
        model = "given folders"
        if sd is None or cn is None:
            sys.path.insert(0, str(REPO / "tests"))
            from tiny_diffusers import tiny_sd_folders

            sd, cn = tiny_sd_folders(tmp / "tiny")
            model = "tiny seeded SD + ControlNet (tests/tiny_diffusers.py)"
        masks, prompts, source = load_masks(tmp, args.masks)
        seeds = list(range(len(masks)))
        gen = DiffusionGenerator(
            sd, cn, resolution=args.resolution, steps=args.steps, batch_size=1, device=args.device, progress=False
        )
        print(f"model: {model}; masks: {len(masks)} x {masks.shape[1]}x{masks.shape[2]} from {source}")
        print(
            f"device {gen.device} ({gen.dtype}), torch threads {torch.get_num_threads()}, resolution {args.resolution}, steps {args.steps}, n {args.n}"
        )
        gen.generate(masks[:1], prompts[:1], seeds[:1], args.n)  # warm-up
        rows, reference = [], None
        for bs in args.batch_sizes:
            gen.batch_size = bs
            best = float("inf")
            for _ in range(args.reps):
                if gen.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = gen.generate(masks, prompts, seeds, args.n)
                if gen.device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
            reference = out if reference is None else reference
            rows.append((bs, out.size / (masks.shape[1] * masks.shape[2]) / best, float(np.abs(out - reference).max())))
        base = rows[0][1]
        print(
            f"{'batch (masks)':>13} {'images/call':>11} {'images/s':>9} {'vs batch ' + str(args.batch_sizes[0]):>11} {'max |diff|':>10}"
        )
        for bs, ips, diff in rows:
            print(f"{bs:>13} {bs * args.n:>11} {ips:>9.2f} {ips / base:>10.2f}x {diff:>10.2e}")


if __name__ == "__main__":
    main()
