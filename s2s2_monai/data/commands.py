"""CLI commands of the data layer: ``demo-data``, ``check-data`` and ``datalist``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _demo_data(args: argparse.Namespace) -> int:
    from s2s2_monai.data.phantom import write_demo_data, write_nnunet_demo

    if args.nnunet:
        path = write_nnunet_demo(
            args.out, cases=args.cases, seed=args.seed, shape=tuple(args.shape), progress=not args.no_progress
        )
        print(f"wrote {args.cases} phantom cases in nnU-Net layout (liver, spleen, kidney) and {path}")
        return 0
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


def _datalist(args: argparse.Namespace) -> int:
    from s2s2_monai.cli_options import options_for
    from s2s2_monai.data.make_datalist import make_datalist, summary_line

    print(summary_line(*make_datalist(**options_for(make_datalist, args))))
    return 0


def _modality(value: str) -> str:
    from s2s2_monai.label_maps import normalize_modality

    try:
        return normalize_modality(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.cli_options import add_datalist, add_no_progress, add_option, add_out, add_seed
    from s2s2_monai.label_maps import LABEL_MAPS

    p = sub.add_parser("demo-data", help="write phantom abdominal CT volumes + datalist (the embedded demo data)")
    add_out(p, "output folder", aliases=("legacy_out",))
    p.add_argument("--cases", type=int, default=6, help="number of cases (default 6)")
    add_seed(p, "random seed (same seed, same bytes)")
    p.add_argument(
        "--shape", type=int, nargs=3, default=(128, 128, 48), metavar=("X", "Y", "Z"), help="voxels per case"
    )
    p.add_argument(
        "--nnunet",
        action="store_true",
        help="nnU-Net raw layout instead (imagesTr/CASE_0000.nii.gz, labelsTr, imagesTs, labelsTs, dataset.json) with "
        "three organs (liver, spleen, kidney): a stand-in for your own data",
    )
    add_no_progress(p)
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("check-data", help="verify every entry of a datalist and print a per-case table")
    add_datalist(p)
    p.set_defaults(func=_check_data)

    p = sub.add_parser(
        "datalist",
        help="datalist JSON for your own data: pair nnU-Net style images/labels, seeded split, label ids checked",
        description="Pairs images CASE_0000.nii.gz (or CASE.nii.gz, or a DICOM series folder CASE/) with labels "
        "CASE.nii.gz, splits the cases with a seed, checks every label's ids against the label map and writes a "
        "decathlon-style datalist with paths relative to its folder.",
    )
    p.add_argument("--images", required=True, metavar="DIR", help="image folder (nnU-Net imagesTr)")
    p.add_argument("--labels", required=True, metavar="DIR", help="label folder (nnU-Net labelsTr)")
    add_option(p, "--out", required=True, metavar="FILE", help="datalist JSON to write")
    p.add_argument(
        "--modality", type=_modality, default=None, metavar="CT|MRI", help="modality (default: the label map's; CT)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--label-map", default=None, choices=sorted(LABEL_MAPS), help="registry label map (default synapse)")
    g.add_argument(
        "--label-names",
        default=None,
        metavar="JSON",
        help='your own classes: \'{"1": "liver", "2": "left kidney"}\' or a JSON file (an nnU-Net dataset.json works)',
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--test-fraction", type=float, default=0.0, metavar="F", help="fraction of cases for test (default 0)"
    )
    g.add_argument("--test-list", default=None, metavar="FILE", help="test case names, one per line or a JSON list")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction of the other cases for validation (default 0)",
    )
    add_seed(p, "split seed (same seed, same bytes)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    add_no_progress(p)
    p.set_defaults(func=_datalist)
