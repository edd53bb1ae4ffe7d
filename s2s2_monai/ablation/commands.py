"""CLI command ``s2s2 ablation``: arms x seeds trained with the bundle, scored in-domain, out-of-domain and corrupted."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _ablation(args: argparse.Namespace) -> int:
    from s2s2_monai.ablation.arms import parse_arms
    from s2s2_monai.ablation.run import AblationPlan, run_ablation
    from s2s2_monai.cli_options import parse_sets
    from s2s2_monai.robustness.names import CORRUPTION_NAMES

    if "none" in (args.corruptions or []) and len(args.corruptions) > 1:
        from s2s2_monai.errors import S2S2InputError

        raise S2S2InputError("--corruptions", f"got {args.corruptions}", "pass corruption names, or `none` alone")
    plan = AblationPlan(
        args.config,
        args.out,
        parse_arms(args.arms),
        seeds=args.seeds,
        ood_datalists=args.ood_datalist or (),
        corruptions=() if args.corruptions == ["none"] else (args.corruptions or CORRUPTION_NAMES),
        severities=args.severities,
        sets=parse_sets(args.set),
        copies=args.copies,
        device=args.device,
    )
    summary = run_ablation(plan, n_boot=args.bootstrap, progress=not args.no_progress)
    from s2s2_monai.ablation.report import table_rows

    header, rows = table_rows(summary)
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(row))
    print(f"wrote {args.out}/ablation.csv, ablation.json, report.html")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.ablation.arms import ARMS, DEFAULT_ARMS
    from s2s2_monai.cli_options import add_config, add_no_progress, add_out, add_set
    from s2s2_monai.robustness.names import CORRUPTION_NAMES, SEVERITIES

    p = sub.add_parser(
        "ablation", help="train and compare the S2S2 arms (Table 6): in-domain, out-of-domain, corrupted"
    )
    add_config(
        p, "bundle config file (repeat, merged in order), e.g. --config bundles/synapse/train.json", required=True
    )
    add_out(p, "output folder (runs/, ablation.csv, ablation.json, report.html); re-run to resume")
    p.add_argument(
        "--arms",
        default=",".join(DEFAULT_ARMS),
        help=f"comma-separated arms of {', '.join(ARMS)} (default {','.join(DEFAULT_ARMS)})",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm: 0..N-1 (default 3)")
    p.add_argument(
        "--ood-datalist",
        action="append",
        metavar="JSON",
        default=None,
        help="out-of-domain datalist (its test section); repeat",
    )
    p.add_argument(
        "--corruptions",
        nargs="+",
        metavar="NAME",
        choices=(*CORRUPTION_NAMES, "none"),
        default=None,
        help=f"corruptions of the in-domain test cases, of {', '.join(CORRUPTION_NAMES)} (default all; `none`: clean only)",
    )
    p.add_argument(
        "--severities",
        nargs="+",
        type=int,
        choices=SEVERITIES,
        default=list(SEVERITIES),
        metavar="LEVEL",
        help="corruption severity levels 1-5 (default all)",
    )
    p.add_argument(
        "--copies", type=int, default=1, help="seeded corrupted copies per case, corruption and level (default 1)"
    )
    p.add_argument(
        "--bootstrap", type=int, default=2000, help="bootstrap resamples of the paired differences (default 2000)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    add_set(p, "bundle setting for every arm, e.g. --set max_epochs=2 (VALUE read as JSON); repeat")
    add_no_progress(p)
    p.set_defaults(func=_ablation)
