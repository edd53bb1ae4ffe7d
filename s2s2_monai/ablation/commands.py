"""CLI command ``s2s2 ablation``: arms x seeds trained with the bundle, scored in-domain, out-of-domain and corrupted."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _ablation(args: argparse.Namespace) -> int:
    from s2s2_monai.ablation.arms import parse_arms
    from s2s2_monai.ablation.run import AblationPlan, all_pairs, parse_shard, run_ablation, run_pairs, select_pairs
    from s2s2_monai.cli_options import parse_sets
    from s2s2_monai.robustness.names import CORRUPTION_NAMES

    if "none" in (args.corruptions or []) and len(args.corruptions) > 1:
        from s2s2_monai.errors import S2S2InputError

        raise S2S2InputError("--corruptions", f"got {args.corruptions}", "pass corruption names, or `none` alone")
    shard = parse_shard(args.shard) if args.shard is not None else None
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
    if shard is not None or args.only:
        pairs = select_pairs(plan, shard=shard, only=args.only or ())
        _, done = run_pairs(plan, pairs, progress=not args.no_progress)
        which = f"shard {shard[0]}/{shard[1]}" if shard is not None else "--only"
        names = lambda key: ", ".join(done[key]) or "none"  # noqa: E731
        print(
            f"{which}: {len(pairs)} of {len(all_pairs(plan))} arm x seed runs (trained now: {names('trained')}; "
            f"trained before: {names('already_trained')}), scores in {args.out}/runs/ARM/seedK/scores.csv; "
            "a plain run (the same command without --shard/--only) writes ablation.csv, ablation.json, report.html"
        )
        return 0
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
    jobs = p.add_mutually_exclusive_group()
    jobs.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="train and score only shard K of N, K counting from 1 (1/4 .. 4/4): the arm x seed runs whose index "
        "in the order (arms as given) x (seeds 0..) is K-1 modulo N; for one job per shard (SLURM array: "
        "--shard $SLURM_ARRAY_TASK_ID/N with --array=1-N) into one --out; writes no summary: run the same "
        "command without --shard afterwards to summarise",
    )
    jobs.add_argument(
        "--only",
        action="append",
        default=None,
        metavar="ARM:SEED",
        help="train and score only this arm x seed (repeat), e.g. --only enc+dec:2; writes no summary, like --shard",
    )
    add_no_progress(p)
    p.set_defaults(func=_ablation)
