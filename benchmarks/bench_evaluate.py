"""Benchmark: the whole ``s2s2 evaluate`` command (subprocess) vs a medpy ``dc`` + ``hd95`` per-class loop.

Two held-out cases are made from the real TotalSegmentator CT labels (../shared/data), remapped to
the 8 Synapse organs (``totalseg_to_synapse``) and upsampled to ~500x400x110 as in
``bench_metrics.py``; each "prediction" is a perturbed copy (organs dilated, eroded or shifted, plus
false-positive blobs; another seed per case). Both are written as NIfTI into a temporary folder.

Timed in the same run:

- ``python -m s2s2_monai evaluate --hd95 medpy ...`` as a subprocess (imports, reading, checks,
  metrics, worst slices, report with figures; default ``--workers``: one process per case up to the
  CPU count), several repeats, best and median;
- the medpy loop over the same files: ``nibabel`` read of both files, then ``dc`` + ``hd95``
  (with the voxel spacing) per class, in this process (its imports not counted).

It prints both times and the ratio, checks the Dice/HD95 values agree, and prints a per-stage
profile of one ``evaluate --workers 1`` run (cProfile in a fresh interpreter, imports included; the
cases are scored in that process, so every scoring stage is seen; the overlays are drawn in a forked
process beside the box plots whenever there are 2 CPUs, so they show as ~0 there).

Run: ``python benchmarks/bench_evaluate.py [--repeats 3] [--skip-medpy] [--root TREE]``; ``--root`` times
the ``s2s2_monai`` of another checkout (e.g. ``git archive`` of an older commit) on the same cases.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import make_volumes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CASES = ("case_a", "case_b")

# stage name -> function names (cProfile cumulative time); first match of each name counts
STAGES = {
    "import torch (none expected)": ("<module> torch/__init__.py",),
    "read + checks (load_pair)": ("load_pair",),
    "  of which read_nifti_ras": ("read_nifti_ras",),
    "metrics (compute_case_metrics)": ("compute_case_metrics",),
    "worst-slice tracking": ("_track_worst",),
    "report (write_report)": ("write_report",),
    "  of which box plots": ("_box_plots",),
    "  of which overlays": ("_overlays",),
    "  of which summary/bootstrap": ("summarize",),
}
FIGURES = ("_box_plots", "_overlays")

PROFILE_SNIPPET = r"""
import cProfile, pstats, sys, time
t0 = time.perf_counter()
prof = cProfile.Profile()
prof.enable()
from s2s2_monai.cli import main
rc = main(sys.argv[1:])
prof.disable()
total = time.perf_counter() - t0
st = pstats.Stats(prof)
out = {}
for (file, line, name), (cc, nc, tt, ct, callers) in st.stats.items():
    key = name if name != "<module>" else "<module> " + "/".join(file.split("/")[-2:])
    out[key] = max(out.get(key, 0.0), ct)
print("TOTAL", total)
for k, v in out.items():
    print("FN", repr(k), v)
sys.exit(rc)
"""


def write_cases(folder: Path) -> tuple[Path, Path, np.ndarray]:
    pred_dir, label_dir = folder / "pred", folder / "labels"
    pred_dir.mkdir()
    label_dir.mkdir()
    for seed, case in enumerate(CASES):
        pred, gt, spacing, source = make_volumes(seed)
        affine = np.diag([*spacing, 1.0])
        nib.save(nib.Nifti1Image(gt.astype(np.uint8), affine), label_dir / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), pred_dir / f"{case}.nii.gz")
    print(f"2 cases {gt.shape}, spacing {np.round(spacing, 3).tolist()} mm, 8 organs, {source}")
    return pred_dir, label_dir, spacing


def evaluate_cmd(pred_dir: Path, label_dir: Path, out: Path, hd95: str) -> list[str]:
    return [
        "evaluate",
        "--no-progress",
        "--pred-dir",
        str(pred_dir),
        "--label-dir",
        str(label_dir),
        "--out",
        str(out),
        "--hd95",
        hd95,
    ]


def run_evaluate(args: list[str], root: Path = ROOT) -> float:
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "s2s2_monai", *args], cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"s2s2 evaluate failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return dt


def medpy_loop(pred_dir: Path, label_dir: Path) -> dict:
    from medpy.metric import binary

    out = {}
    for case in CASES:
        pi, gi = nib.load(pred_dir / f"{case}.nii.gz"), nib.load(label_dir / f"{case}.nii.gz")
        pred, gt = np.asanyarray(pi.dataobj), np.asanyarray(gi.dataobj)
        spacing = gi.header.get_zooms()[:3]
        for c in range(1, 9):
            p, g = pred == c, gt == c
            out[case, c] = (binary.dc(p, g), binary.hd95(p, g, voxelspacing=spacing))
    return out


def read_metrics(out: Path) -> dict:
    with open(out / "metrics.csv", newline="") as f:
        return {(r["case"], int(r["class_id"])): (float(r["dice"]), float(r["hd95_mm"])) for r in csv.DictReader(f)}


def profile(args: list[str], root: Path = ROOT) -> tuple[float, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-c", PROFILE_SNIPPET, *args], cwd=root, env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"profiled evaluate failed:\n{r.stdout}\n{r.stderr}")
    fns, total = {}, float("nan")
    for line in r.stdout.splitlines():
        if line.startswith("TOTAL "):
            total = float(line.split()[1])
        elif line.startswith("FN "):
            name, _, value = line[3:].rpartition(" ")
            fns[eval(name)] = float(value)  # noqa: S307 - our own repr() output
    return total, fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-medpy", action="store_true")
    ap.add_argument("--hd95", default="medpy", help="definition given to s2s2 evaluate (medpy: the loop's own)")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose s2s2_monai is timed (default: this one)")
    a = ap.parse_args()
    root = a.root.resolve()
    print(f"s2s2_monai from {root}")
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        tmp = Path(tmp)
        pred_dir, label_dir, _ = write_cases(tmp)
        timed = {}
        for workers in (None, 1):  # default (one process per case, up to the CPU count) and one process
            extra = [] if workers is None else ["--workers", str(workers)]
            times = [
                run_evaluate([*evaluate_cmd(pred_dir, label_dir, tmp / f"out{i}_{workers}", a.hd95), *extra], root)
                for i in range(a.repeats)
            ]
            timed[workers] = (min(times), statistics.median(times))
            print(
                f"s2s2 evaluate{' '.join(['', *extra])} (subprocess, --hd95 {a.hd95}, 2 cases, {os.cpu_count()} CPUs): "
                f"best {min(times):.2f} s, median {statistics.median(times):.2f} s over {a.repeats} runs "
                f"({', '.join(f'{t:.2f}' for t in times)})"
            )
        total, fns = profile([*evaluate_cmd(pred_dir, label_dir, tmp / "out_prof", a.hd95), "--workers", "1"], root)
        print(
            f"profile of one evaluate --workers 1 run (cProfile, fresh interpreter; {total:.2f} s under the profiler):"
        )
        for stage, names in STAGES.items():
            v = sum(fns.get(n, 0.0) for n in names)
            print(f"  {stage:34s} {v:6.2f} s")
        top = ("<module> torch/__init__.py", "load_pair", "compute_case_metrics", "_track_worst", "write_report")
        other = total - sum(fns.get(n, 0.0) for n in top)
        print(f"  {'other (interpreter, imports, CLI)':34s} {other:6.2f} s")
        figures = sum(fns.get(n, 0.0) for n in FIGURES)
        print(f"  {'figures (box plots + overlays)':34s} {figures:6.2f} s ({100 * figures / total:.0f} % of the run)")
        if not a.skip_medpy:
            t = time.perf_counter()
            ref = medpy_loop(pred_dir, label_dir)
            t_medpy = time.perf_counter() - t
            ours = read_metrics(tmp / "out0_None")
            dd = max(abs(ours[k][0] - ref[k][0]) for k in ref)
            dh = max(abs(ours[k][1] - ref[k][1]) / max(abs(ref[k][1]), 1e-12) for k in ref)
            (best, med), (best1, med1) = timed[None], timed[1]
            print(
                f"medpy dc + hd95 per-class loop (nibabel read included): {t_medpy:.2f} s -> s2s2 evaluate is "
                f"{t_medpy / best:.1f}x faster end to end (best; median {t_medpy / med:.1f}x; target >= 50x); "
                f"with --workers 1 {t_medpy / best1:.1f}x (median {t_medpy / med1:.1f}x); "
                f"max Dice diff {dd:.1e}, max rel HD95 diff {dh:.1e}"
                + (" (other HD95 definition)" if a.hd95 != "medpy" else "")
            )


if __name__ == "__main__":
    main()
