"""CLI command ``s2s2 robustness``: Dice under bias field, ghosting, motion and spike corruptions."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _parse_sets(items: list[str] | None) -> dict:
    """``ID=VALUE`` pairs -> dict; VALUE is read as JSON when it parses (numbers, lists), else as a string."""
    import json

    from s2s2_monai.errors import S2S2InputError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise S2S2InputError(None, f"--set {item!r} is not ID=VALUE", "write e.g. --set cooperative_channels=[8,16,16,16,16]")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _robustness(args: argparse.Namespace) -> int:
    import torch

    from s2s2_monai.robustness.run import load_bundle_network, robustness_evaluation

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network, settings = load_bundle_network(args.bundle, args.ckpt, args.config, _parse_sets(args.set), device=device)
    input_size = args.input_size or settings["input_size"]
    result = robustness_evaluation(
        network,
        args.datalist,
        args.out,
        section=args.section,
        corruptions=args.corruption,
        copies=args.copies,
        seed=args.seed,
        input_size=input_size,
        label_map=args.label_map,
        hd95=args.hd95 or settings["hd95"],
        device=device,
        batch_size=args.batch_size,
        data_root=args.data_root,
        n_boot=args.bootstrap,
        progress=not args.no_progress,
    )
    fmt = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
    for name, r in result["robustness"]["dice"].items():
        drop = "" if name == "clean" else f"  (drop {fmt(r['drop'])})"
        print(f"{name:>11}: mean Dice {fmt(r['mean_dice'])} over {r['n']} volumes{drop}")
    print(f"wrote {args.out}/report.html, metrics.csv, summary.json, robustness.csv, robustness.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.evaluation.metrics import HD95_DEFINITIONS
    from s2s2_monai.label_maps import LABEL_MAPS
    from s2s2_monai.robustness.corruptions import CORRUPTIONS

    p = sub.add_parser("robustness", help="Dice on seeded corrupted copies (bias field, ghosting, motion, spike) of test volumes vs clean")
    p.add_argument("--bundle", required=True, help="bundle folder (e.g. bundles/synapse)")
    p.add_argument("--ckpt", required=True, help="trained weights (models/model.pt or a checkpoint_epoch=N.pt)")
    p.add_argument("--datalist", required=True, help="datalist JSON of the volumes to corrupt")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--config", action="append", default=None, metavar="FILE", help="bundle config file(s) merged in order (default inference.json or train.json); repeat, e.g. --config train.json --config cooperative.json")
    p.add_argument("--set", action="append", default=None, metavar="ID=VALUE", help="bundle setting override, as for monai.bundle (VALUE read as JSON when it parses); repeat")
    p.add_argument("--data-root", default=None, help="root of relative datalist paths (default: the datalist's folder)")
    p.add_argument("--section", default="test", help="datalist section (default test)")
    p.add_argument("--corruption", action="append", choices=list(CORRUPTIONS), default=None, help="corruption(s) to run (default all four)")
    p.add_argument("--copies", type=int, default=3, help="seeded copies per case and corruption (default 3)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the copies (default 0)")
    p.add_argument("--input-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="network input size (default the bundle's input_size)")
    p.add_argument("--label-map", default=None, choices=sorted(LABEL_MAPS), help="label map (default the datalist's)")
    p.add_argument("--hd95", default=None, choices=HD95_DEFINITIONS, help="HD95 definition (default the bundle's)")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples of the clean-vs-corruption comparisons")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_robustness)
