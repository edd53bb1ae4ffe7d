"""CLI commands of the data layer: ``demo-data`` and ``check-data``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _demo_data(args: argparse.Namespace) -> int:
    from s2s2_monai.data.phantom import write_demo_data

    path = write_demo_data(
        args.out, cases=args.cases, seed=args.seed, shape=tuple(args.shape), progress=not args.no_progress
    )
    print(f"wrote {args.cases} phantom cases and {path}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from s2s2_monai.data.check import check_datalist, format_table

    results = check_datalist(args.datalist, args.data_root)
    print(format_table(results))
    return 0 if all(r.ok for r in results) else 1


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.cli_options import add_datalist, add_no_progress, add_out, add_seed

    p = sub.add_parser("demo-data", help="write phantom abdominal CT volumes + datalist (the embedded demo data)")
    add_out(p, "output folder", aliases=("legacy_out",))
    p.add_argument("--cases", type=int, default=6, help="number of cases (default 6)")
    add_seed(p, "random seed (same seed, same bytes)")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 128, 48), metavar=("X", "Y", "Z"), help="voxels per case"
    )
    add_no_progress(p)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("check-data", help="verify every entry of a datalist and print a per-case table")
    add_datalist(p)
    p.set_defaults(func=_check_data)
