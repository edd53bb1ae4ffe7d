"""CLI command ``s2s2 robustness``: Dice under scanner artefacts and CT degradations vs clean."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register", "resolve_configs"]


def resolve_configs(configs: list[str] | None, bundle: str) -> list[str] | None:
    """``--config`` values -> absolute paths; a path is relative to the current folder.

    A relative value that is no file here but one inside ``bundle`` (the old meaning of
    ``--config``, e.g. ``--config train.json``) is still read from there, with a warning.
    """
    from s2s2_monai.errors import S2S2InputError

    if not configs:
        return None
    out = []
    for value in configs:
        path = Path(value)
        if path.is_file():
            out.append(str(path.absolute()))
            continue
        legacy = Path(bundle) / value
        if not path.is_absolute() and legacy.is_file():
            print(
                f"warning: --config {value} read as {legacy} (relative to --bundle); that is deprecated, --config takes a path "
                f"relative to the current folder: --config {legacy}",
                file=sys.stderr,
            )
            out.append(str(legacy.absolute()))
            continue
        raise S2S2InputError(
            path,
            "config file not found",
            f"give the path of a bundle config file (relative to the current folder), e.g. --config {Path(bundle) / 'train.json'}",
        )
    return out


def _robustness(args: argparse.Namespace) -> int:
    from s2s2_monai.cli_options import bundle_model, options_for
    from s2s2_monai.robustness.run import robustness_evaluation

    configs = resolve_configs(args.config, args.bundle) or [str(Path(args.bundle) / "train.json")]
    extra = {"input_size": list(args.input_size)} if args.input_size else {}
    if args.label_map:
        extra["label_map"] = args.label_map
    if args.hd95:
        extra["hd95"] = args.hd95
    model = bundle_model(args, configs, extra)
    result = robustness_evaluation(
        model,
        **options_for(
            robustness_evaluation, args, out_dir=args.out, corruptions=args.corruption, n_boot=args.bootstrap
        ),
    )
    fmt = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
    dice = result["robustness"]["dice"]
    print(f"{'clean':>15}: mean Dice {fmt(dice['clean']['mean_dice'])} over {dice['clean']['n']} volumes")
    for name, levels in dice.items():
        for level, r in ({} if name == "clean" else levels).items():
            print(
                f"{name + '@' + level:>15}: mean Dice {fmt(r['mean_dice'])} over {r['n']} volumes (degradation {r['degradation']:+.4f})"
            )
    print(f"wrote {args.out}/report.html, metrics.csv, summary.json, robustness.csv, robustness.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai import cli_options as o
    from s2s2_monai.evaluation.names import HD95_DEFINITIONS
    from s2s2_monai.label_maps import LABEL_MAPS
    from s2s2_monai.robustness.names import CORRUPTION_NAMES, DEFAULT_SEVERITY, SEVERITIES

    levels = " ".join(map(str, SEVERITIES))
    p = sub.add_parser(
        "robustness",
        help="Dice on seeded corrupted copies of test volumes vs clean (scanner artefacts, CT degradations)",
        description=(
            f"Segment the labelled cases of a datalist section clean and in seeded corrupted copies, and report the Dice degradation (clean - corrupted; positive = worse). "
            f"Corruptions: {', '.join(CORRUPTION_NAMES)}; each is graded in severities {', '.join(map(str, SEVERITIES))} "
            f"(mildest first; --severities, default {DEFAULT_SEVERITY}, the upstream setting)."
        ),
    )
    p.add_argument(
        "--bundle",
        required=True,
        metavar="DIR",
        help="bundle folder (e.g. bundles/synapse); its train.json is the default --config",
    )
    o.add_checkpoint(p, "trained weights (models/model.pt or a checkpoint_epoch=N.pt)")
    o.add_datalist(p, "datalist JSON of the volumes to corrupt")
    o.add_out(p, "report folder")
    o.add_config(
        p,
        "bundle config file, a path relative to the current folder; repeat, merged in order, e.g. --config bundles/synapse/train.json --config bundles/synapse/cooperative.json",
    )
    o.add_set(p, "bundle setting override, as for monai.bundle (VALUE read as JSON when it parses); repeat")
    p.add_argument("--section", default="test", help="datalist section (default test)")
    p.add_argument(
        "--corruption",
        action="append",
        choices=CORRUPTION_NAMES,
        default=None,
        help=f"corruption(s) to run (default all {len(CORRUPTION_NAMES)})",
    )
    p.add_argument(
        "--severities",
        type=int,
        nargs="+",
        choices=SEVERITIES,
        default=[DEFAULT_SEVERITY],
        metavar="S",
        help=f"severity levels to run, of {levels} (default {DEFAULT_SEVERITY}, the upstream setting); e.g. --severities 1 2 3 4 5",
    )
    p.add_argument("--copies", type=int, default=3, help="seeded copies per case and corruption (default 3)")
    o.add_seed(p, "base seed of the copies")
    p.add_argument(
        "--input-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="network input size (default the bundle's input_size; must be the one the model was trained with)",
    )
    p.add_argument("--label-map", default=None, choices=sorted(LABEL_MAPS), help="label map (default the datalist's)")
    p.add_argument("--hd95", default=None, choices=HD95_DEFINITIONS, help="HD95 definition (default the bundle's)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument(
        "--bootstrap", type=int, default=10000, help="bootstrap resamples of the clean-vs-corruption comparisons"
    )
    o.add_no_progress(p)
    p.set_defaults(func=_robustness)
