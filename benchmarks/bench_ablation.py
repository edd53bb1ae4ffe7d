"""What S2S2 does to a model on real data: `s2s2 ablation` (Table 6) on the real CT/MR in ../shared/data.

- train: the full real CT ``ct/totalseg_example_ct.nii.gz`` (122 x 101 x 112, 3 mm) with its
  TotalSegmentator labels (``_seg_fast``) remapped to the 8 Synapse organs (not the ``_sm`` slab,
  which is a part of the same scan);
- in-domain test: the real DICOM CT series ``dicom/totalseg_example_ct_dicom`` (another scan, 512 x 512
  x 20, 2 mm; its five present organs);
- out-of-domain: the real MR ``mr/totalseg_example_mr_sm.nii.gz`` (CT -> MRI, the paper's Table 4
  direction; MRI percentile normalisation);
- corruptions: the eight corruptions of the suite on the in-domain test scan, at the chosen severities.

The alternative every arm is compared with, in the same run, is the ``baseline`` arm (x0 only): the
script prints each arm's Dice, its paired difference to the baseline with the 95 % bootstrap CI over
cases and seeds, and the mCE relative to the baseline. All settings below were fixed before any test
number was seen (the epoch count from the time budget only); nothing is tuned on the test scans.
Labels are TotalSegmentator outputs, not manual ground truth, and there is one training scan: this
shows the direction and size of an effect on this data, not the paper's Synapse numbers.

    python benchmarks/bench_ablation.py [--out runs/bench_ablation] [--seeds 3] [--epochs 30]
        [--severities 1 3 5] [--arms baseline,synthetic,enc,enc+dec]

Resumable: re-running continues where it stopped (finished arms x seeds are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("S2S2_SHARED_DATA") or REPO.parent / "shared" / "data")

#: Fixed before any test number was seen. Network and size chosen to fit ~45 min for 4 arms x 3 seeds on
#: 2 CPU cores; optimiser as the demo bundle (BasicUNet from scratch); no validation: the last epoch counts.
SETTINGS = {
    "network_name": "basic_unet",
    "networks#basic_unet#features": [16, 16, 32, 64, 128, 16],
    "pretrained_weights": None,
    "input_size": [96, 96],
    "batch_size": 8,
    "learning_rate": 0.05,
    "num_workers": 0,
    "val_interval": 1000,
    "stack_generator": "appearance",
    "stack_n": 8,
    "amp": False,
    "device": "$torch.device('cpu')",
}


def write_datalists(out: Path) -> tuple[Path, Path]:
    """The training + in-domain test datalist and the out-of-domain MR datalist (data root = ../shared/data)."""
    for rel in ("ct/totalseg_example_ct.nii.gz", "dicom/totalseg_example_ct_dicom", "mr/totalseg_example_mr_sm.nii.gz"):
        if not (SHARED / rel).exists():
            sys.exit(
                f"error: {SHARED / rel}: real test data not found. Fix: put ../shared beside the clone or set S2S2_SHARED_DATA"
            )
    out.mkdir(parents=True, exist_ok=True)
    ct = {
        "description": "real CT (TotalSegmentator example, full scan) -> Synapse; test: the real DICOM CT series",
        "label_map": "synapse",
        "label_remap": "totalseg_to_synapse",
        "modality": "CT",
        "training": [
            {
                "image": str(SHARED / "ct/totalseg_example_ct.nii.gz"),
                "label": str(SHARED / "ct/totalseg_example_ct_seg_fast.nii.gz"),
                "case_id": "totalseg_ct",
            }
        ],
        "validation": [],
        "test": [
            {
                "image": str(SHARED / "dicom/totalseg_example_ct_dicom"),
                "label": str(SHARED / "dicom/totalseg_example_ct_dicom_seg.nii.gz"),
                "case_id": "dicom_ct",
            }
        ],
    }
    mr = {
        "description": "real MR (TotalSegmentator MRI example) -> Synapse: out-of-domain (CT -> MRI)",
        "label_map": "synapse",
        "label_remap": "totalseg_mr_to_synapse",
        "modality": "MRI",
        "test": [
            {
                "image": str(SHARED / "mr/totalseg_example_mr_sm.nii.gz"),
                "label": str(SHARED / "mr/totalseg_example_mr_sm_seg.nii.gz"),
                "case_id": "totalseg_mr",
            }
        ],
    }
    (out / "ct.json").write_text(json.dumps(ct, indent=1))
    (out / "mr_ood.json").write_text(json.dumps(mr, indent=1))
    return out / "ct.json", out / "mr_ood.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_ablation")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--severities", type=int, nargs="+", default=[1, 3, 5])
    p.add_argument("--arms", default="baseline,synthetic,enc,enc+dec")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from s2s2_monai.ablation.arms import parse_arms
    from s2s2_monai.ablation.report import table_rows
    from s2s2_monai.ablation.run import AblationPlan, run_ablation
    from s2s2_monai.robustness.names import CORRUPTION_NAMES

    out = Path(args.out)
    ct, mr = write_datalists(out / "datalists")
    sets = {**SETTINGS, "max_epochs": args.epochs, "datalist": str(ct), "dataset_dir": str(SHARED)}
    plan = AblationPlan(
        [REPO / "bundles/synapse/train.json"], out, parse_arms(args.arms), seeds=args.seeds, ood_datalists=[mr],
        corruptions=CORRUPTION_NAMES, severities=args.severities, sets=sets, device="cpu",
    )  # fmt: skip
    start = time.perf_counter()
    summary = run_ablation(plan, n_boot=5000, progress=False)
    minutes = (time.perf_counter() - start) / 60
    header, rows = table_rows(summary)
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\n{len(plan.arms)} arms x {len(plan.seeds)} seeds, {args.epochs} epochs, in {minutes:.1f} min; report {out}/report.html"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
