"""Benchmark: does S2S2's stack disagreement rank volumes by how wrong the model is?

Trains the demo model (``bundles/synapse/train.json`` + ``demo.json``: 50 epochs on 3 phantoms, ~2 min on
2 CPUs; reused from ``--work`` when already there), then scores a pool of volumes the model has not seen:

- the clean validation and test phantoms of the demo datalist;
- their seeded corrupted copies at severities 1-5 (``--corruptions``, the project's registry);
- the real volumes in ``../shared/data``: the small and the full TotalSegmentator CT, the DICOM series
  (labels remapped to Synapse), and the MR (``totalseg_mr_to_synapse``; preprocessed with the model's
  CT window as an out-of-modality volume).

Per volume: the true error ``1 - Dice`` (mean over the organs in prediction or label, the project's empty
rule) and the scores, in the same run:

- ``s2s2_disagreement``: :func:`~s2s2_monai.active_learning.disagreement.stack_disagreement` (k variants);
- ``tta_variance``: test-time augmentation, k + 1 copies (the same number of forward passes);
- ``mc_dropout_entropy``: MONAI Label's epistemic scorer, where the network has dropout (the demo's
  BasicUNet has none: reported as not applicable);
- ``random``: a uniform score, 2000 draws.

Prints Spearman's rho of each score with the true error and a 95 % bootstrap interval over volumes
(2000 resamples), the per-group means, seconds per volume, and the slab test: a clean test phantom whose
slices 10-15 alone are replaced by their severity-5 copy under each of ``--slab-corruptions`` should have
its most uncertain slice in 10..15 (printed beside it: the slice with the most wrongly labelled pixels, and
how many organ pixels the model still predicts in the slab: a committee of the model's own predictions
cannot see an organ that every member confidently misses). Writes ``WORK/bench_uncertainty.json`` and ``WORK/uncertainty_vs_error.png``.

Run: ``python benchmarks/bench_uncertainty.py [--work runs/bench_uncertainty] [--k 4] [--corruptions gamma gaussian_noise
motion bias_field]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "synapse"
SHARED = ROOT.parent / "shared" / "data"
SLAB = (10, 16)  # slices 10..15


def train(work: Path) -> Path:
    ckpt = work / "run" / "models" / "model.pt"
    if ckpt.is_file():
        print(f"reusing {ckpt}")
        return ckpt
    from s2s2_monai.bundle_runner import run_training_bundle

    t = time.perf_counter()
    run_training_bundle(
        [BUNDLE / "train.json", BUNDLE / "demo.json"],
        {"output_dir": str(work / "run"), "dataset_dir": str(work / "data")},
        meta_file=BUNDLE / "metadata.json",
        logging_file=False,
    )
    print(f"trained the demo model in {time.perf_counter() - t:.0f} s")
    return ckpt


def load_model(work: Path, ckpt: Path):
    from s2s2_monai.model import BundleModel

    overrides = {"output_dir": str(work / "run"), "dataset_dir": str(work / "data")}
    configs = [BUNDLE / "train.json", BUNDLE / "demo.json"]
    return BundleModel.from_configs(configs, overrides, checkpoint=ckpt, device="cpu")


def pool(model, work: Path, corruptions: list[str], seed: int):
    """(group, name, image, label, spacing) of every volume scored."""
    from s2s2_monai.data.volumes import load_case
    from s2s2_monai.robustness.corruptions import copy_seed, corrupt_volume
    from s2s2_monai.transforms.labels import RemapLabels

    datalist = work / "data" / "datalist.json"
    for section in ("validation", "test"):
        for case in model.cases(datalist, section, labelled_only=True):
            yield "clean phantom", case.case_id, case.image, case.label, case.spacing
            for name in corruptions:
                s = copy_seed(seed, name, case.case_id, 0)
                for level in range(1, 6):
                    image = corrupt_volume(case.image, name, s, case.spacing, severity=level)
                    yield f"corrupted s{level}", f"{case.case_id} {name}@{level}", image, case.label, case.spacing
    real = [
        ("real CT", "ct_sm", SHARED / "ct" / "totalseg_example_ct_sm.nii.gz", SHARED / "ct" / "totalseg_example_ct_sm_seg.nii.gz", "totalseg_to_synapse"),
        ("real CT", "ct", SHARED / "ct" / "totalseg_example_ct.nii.gz", SHARED / "ct" / "totalseg_example_ct_seg_fast.nii.gz", "totalseg_to_synapse"),
        ("real CT", "dicom", SHARED / "dicom" / "totalseg_example_ct_dicom", SHARED / "dicom" / "totalseg_example_ct_dicom_seg.nii.gz", "totalseg_to_synapse"),
        ("real MR", "mr_sm", SHARED / "mr" / "totalseg_example_mr_sm.nii.gz", SHARED / "mr" / "totalseg_example_mr_sm_seg.nii.gz", "totalseg_mr_to_synapse"),
    ]  # fmt: skip
    for group, name, image, label, remap in real:
        if not Path(image).exists():
            print(f"skipping {name}: {image} not found")
            continue
        case = load_case(image, label, remap=RemapLabels(remap), transform=model.preprocessing, case_id=name)
        yield group, name, case.image, case.label, case.spacing


def true_error(model, pred, label, spacing) -> float:
    from s2s2_monai.evaluation.metrics import compute_case_metrics

    m = compute_case_metrics(pred, label, spacing, model.label_map.ids, hd95="medpy")
    dice = [v["dice"] for v in m.values() if np.isfinite(v["dice"])]
    return 1.0 - float(np.mean(dice)) if dice else float("nan")


def spearman_ci(x, y, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    from scipy.stats import spearmanr

    x, y = np.asarray(x), np.asarray(y)
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boots.append(spearmanr(x[i], y[i]).statistic)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return rho, float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_uncertainty")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--corruptions", nargs="+", default=["gamma", "gaussian_noise", "motion", "bias_field"])
    ap.add_argument("--slab-corruptions", nargs="+", default=["gaussian_noise", "motion", "gamma", "bias_field"])
    a = ap.parse_args()
    from s2s2_monai.active_learning.baselines import NoDropout, mc_dropout_entropy, tta_variance
    from s2s2_monai.active_learning.disagreement import stack_disagreement
    from s2s2_monai.robustness.corruptions import corrupt_volume

    work = a.work.resolve()
    model = load_model(work, train(work))
    methods = {
        "s2s2_disagreement": lambda img: stack_disagreement(model, img, k=a.k, seed=a.seed),
        "tta_variance": lambda img: tta_variance(model, img, k=a.k + 1, seed=a.seed),
        "mc_dropout_entropy": lambda img: mc_dropout_entropy(model, img, k=a.k + 1, seed=a.seed),
    }
    rows, seconds, not_applicable = [], {m: 0.0 for m in methods}, {}
    for group, name, image, label, spacing in pool(model, work, a.corruptions, a.seed):
        pred = model.segment(image).cpu().numpy()
        row = {"group": group, "volume": name, "error": true_error(model, pred, label, spacing)}
        for method, fn in methods.items():
            if method in not_applicable:
                continue
            t = time.perf_counter()
            try:
                result = fn(image)
            except NoDropout as exc:
                not_applicable[method] = str(exc)
                continue
            seconds[method] += time.perf_counter() - t
            row[method] = result.score
            row[f"{method}_slice"] = result.most_uncertain_slice
        rows.append(row)
        print(
            f"{group:15s} {name:28s} error {row['error']:.3f}  "
            + "  ".join(f"{m} {row[m]:.4f}" for m in methods if m in row)
        )
    rows = [r for r in rows if np.isfinite(r["error"])]
    errors = [r["error"] for r in rows]
    print(
        f"\n{len(rows)} volumes; Spearman rho of each score with the true error (1 - Dice), 95 % bootstrap interval over volumes:"
    )
    results = {}
    for method in methods:
        if method in not_applicable:
            print(f"  {method:20s} not applicable: {not_applicable[method]}")
            results[method] = {"not_applicable": not_applicable[method]}
            continue
        rho, lo, hi = spearman_ci([r[method] for r in rows], errors)
        per = seconds[method] / len(rows)
        print(f"  {method:20s} rho {rho:+.3f} [{lo:+.3f}, {hi:+.3f}]   {per:.2f} s per volume")
        results[method] = {"rho": rho, "ci": [lo, hi], "seconds_per_volume": per}
    from scipy.stats import spearmanr

    rng = np.random.default_rng(a.seed)
    random_rhos = [spearmanr(rng.random(len(rows)), errors).statistic for _ in range(2000)]
    lo, hi = np.percentile(random_rhos, [2.5, 97.5])
    print(f"  {'random':20s} rho {np.mean(random_rhos):+.3f} [{lo:+.3f}, {hi:+.3f}] (2000 draws)")
    results["random"] = {"rho": float(np.mean(random_rhos)), "ci": [float(lo), float(hi)]}
    groups = sorted({r["group"] for r in rows}, key=lambda g: [r["group"] for r in rows].index(g))
    print("\nmeans per group:   error   " + "   ".join(m for m in methods if m not in not_applicable))
    for g in groups:
        sel = [r for r in rows if r["group"] == g]
        vals = "   ".join(f"{np.mean([r[m] for r in sel]):.4f}" for m in methods if m not in not_applicable)
        print(f"  {g:15s} (n={len(sel):2d})  {np.mean([r['error'] for r in sel]):.3f}   {vals}")

    # the slab: a clean test phantom, slices 10-15 replaced by their severity-5 corrupted copy
    case = list(model.cases(work / "data" / "datalist.json", "test", labelled_only=True))[0]
    slab_result = {}
    for corruption in a.slab_corruptions:
        corrupted = corrupt_volume(case.image, corruption, a.seed, case.spacing, severity=5)
        slab = np.array(case.image, dtype=np.float32, copy=True)
        slab[:, :, SLAB[0] : SLAB[1]] = corrupted[:, :, SLAB[0] : SLAB[1]]
        pred = model.segment(slab).cpu().numpy()
        wrong = [int(np.count_nonzero(pred[:, :, z] != case.label[:, :, z])) for z in range(slab.shape[2])]
        organ = [int(np.count_nonzero(pred[:, :, z])) for z in range(SLAB[0], SLAB[1])]
        print(
            f"\nslab test ({case.case_id}, slices {SLAB[0]}-{SLAB[1] - 1} of {slab.shape[2]} replaced by {corruption}@5; "
            f"most wrongly labelled pixels in slice {int(np.argmax(wrong))}; organ pixels predicted in the slab {organ}):"
        )
        entry = {"wrong_pixels_per_slice": wrong, "organ_pixels_in_slab": organ}
        for method, fn in methods.items():
            if method in not_applicable:
                continue
            r = fn(slab)
            z = r.most_uncertain_slice
            inside = SLAB[0] <= z < SLAB[1]
            print(
                f"  {method:20s} most uncertain slice {z:2d} ({'inside' if inside else 'OUTSIDE'} the slab), score {r.slice_scores[z]:.4f}"
            )
            entry[method] = {"slice": z, "inside": inside, "slice_scores": [float(v) for v in r.slice_scores]}
        slab_result[corruption] = entry
    out = {
        "k": a.k,
        "seed": a.seed,
        "corruptions": a.corruptions,
        "rows": rows,
        "spearman": results,
        "slab": slab_result,
    }
    (work / "bench_uncertainty.json").write_text(json.dumps(out, indent=1))
    _plot(work / "uncertainty_vs_error.png", rows, [m for m in methods if m not in not_applicable], results)
    print(f"wrote {work / 'bench_uncertainty.json'} and {work / 'uncertainty_vs_error.png'}")


def _plot(path: Path, rows: list[dict], methods: list[str], results: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = sorted({r["group"] for r in rows})
    colors = dict(
        zip(groups, ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"] * 2)
    )
    fig = Figure(figsize=(4.2 * len(methods), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for i, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        for g in groups:
            sel = [r for r in rows if r["group"] == g]
            ax.scatter([r[m] for r in sel], [r["error"] for r in sel], s=14, color=colors[g], label=g)
        ax.set_xlabel(m, fontsize=8)
        ax.set_ylabel("true error (1 - Dice)", fontsize=8)
        ax.set_title(f"Spearman rho {results[m]['rho']:+.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.legend(
        *fig.axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(groups), fontsize=7, frameon=False
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    fig.savefig(path)


if __name__ == "__main__":
    main()
