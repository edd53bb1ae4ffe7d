"""CLI command ``s2s2 evaluate``: score prediction folders against labels and write a report."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def _evaluate(args: argparse.Namespace) -> int:
    from s2s2_monai.evaluation.folders import parse_pred_dirs
    from s2s2_monai.evaluation.run import evaluate_folders, numbered_label_map

    label_map = numbered_label_map(args.num_classes) if args.num_classes is not None else args.label_map
    if args.datalist is not None:
        from s2s2_monai.data.datalist import datalist_label_map

        label_map = datalist_label_map(args.datalist)
    summary = evaluate_folders(
        parse_pred_dirs(args.pred_dir),
        args.label_dir,
        args.out,
        label_map=label_map,
        hd95=args.hd95,
        legacy_transunet=args.legacy_transunet,
        image_dir=args.image_dir,
        progress=not args.no_progress,
        n_boot=args.bootstrap,
        seed=args.seed,
        allow_missing=args.allow_missing,
        workers=args.workers,
    )
    s = summary["settings"]
    dice_key = "dice"
    for name, res in summary["methods"].items():
        ov = res["overall"][dice_key]
        mean = ov["mean"] if isinstance(ov, dict) else ov
        print(
            f"{name}: {res['num_cases']} cases, mean Dice {mean:.4f} ({s['protocol']}, HD95 {s['hd95_definition']}, {s['units']})"
        )
    fmt = lambda v, spec="+.4f": "–" if v is None else format(v, spec)  # noqa: E731
    for comp in summary["comparisons"]:  # the A/B statistics, n pairs beside the interval; few pairs: a warning
        d = comp["overall"][dice_key]
        print(
            f"{comp['method']} vs {comp['baseline']}: ΔDice {fmt(d['mean_diff'])} [95% CI {fmt(d['ci_low'])}, "
            f"{fmt(d['ci_high'])}], n={d['n']} pairs, Wilcoxon p {fmt(d['p_wilcoxon'], '.3g')}"
        )
        if comp.get("warning"):
            print(f"warning: {comp['warning']}", file=sys.stderr)
    print(f"wrote {args.out}/metrics.csv, summary.json, report.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.cli_options import add_no_progress, add_out
    from s2s2_monai.evaluation.names import DEFAULT_HD95, HD95_DEFINITIONS
    from s2s2_monai.label_maps import LABEL_MAPS

    p = sub.add_parser("evaluate", help="Dice / HD95 / ASSD per case and organ, report with A/B statistics")
    p.add_argument(
        "--pred-dir",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="prediction folder; repeat as NAME=DIR to compare methods (the first is the baseline)",
    )
    p.add_argument(
        "--label-dir", required=True, metavar="DIR", help="ground-truth label folder (files named like the predictions)"
    )
    add_out(p, "report folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--label-map", default="synapse", choices=sorted(LABEL_MAPS), help="label map (default synapse)")
    g.add_argument(
        "--num-classes", type=int, default=None, help="K classes including background (ids 1..K-1 named class_i)"
    )
    g.add_argument(
        "--datalist",
        default=None,
        metavar="FILE",
        help="take the label map (organ names) the datalist declares ('label_map' or 'labels')",
    )
    p.add_argument(
        "--hd95", default=DEFAULT_HD95, choices=HD95_DEFINITIONS, help=f"HD95 definition (default {DEFAULT_HD95})"
    )
    p.add_argument(
        "--legacy-transunet",
        action="store_true",
        help="TransUNet protocol: medpy without spacing, its empty rule, voxel units",
    )
    p.add_argument(
        "--image-dir",
        default=None,
        metavar="DIR",
        help="optional images (same file names) under the worst-slice overlays",
    )
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples for the A/B confidence interval")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="score only the labelled cases that were predicted (several methods: those every method predicted) "
        "and report the others (a note line, summary.json settings.missing_predictions) instead of refusing",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes scoring cases in parallel (default: the CPU count; 1 = none); same numbers for any N",
    )
    add_no_progress(p)
    p.set_defaults(func=_evaluate)
