"""CLI command of the MONAI Label app: ``export-bundle`` (a trained model -> a model folder)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _export_bundle(args: argparse.Namespace) -> int:
    from s2s2_monai.cli_options import parse_sets
    from s2s2_monai.label_app.bundle import export_bundle

    bundle = export_bundle(args.config, args.checkpoint, args.out, force=args.force, overrides=parse_sets(args.set))
    print(
        f"exported model {bundle.name!r} ({bundle.label_map.name}, {bundle.modality}, input {bundle.input_size}) to {bundle.root}; "
        f"serve it with: monailabel start_server --app s2s2_monai/label_app --studies STUDIES "
        f"--conf models_dir {bundle.root.parent} --conf models {bundle.name} --conf zoo_source local --conf sam2 false --host 127.0.0.1"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.cli_options import add_checkpoint, add_config, add_out, add_set

    p = sub.add_parser(
        "export-bundle", help="write a trained model as a MONAI Label model folder (configs/ + models/model.pt)"
    )
    add_config(
        p,
        "bundle config file, a path (e.g. bundles/synapse/train.json), then each overlay used for training; repeat, merged in order",
        required=True,
    )
    add_checkpoint(p, "trained weights: runs/NAME/models/model.pt or a checkpoint_epoch=N.pt")
    add_out(p, "model folder to create, MODELS_DIR/NAME (NAME is the model name in MONAI Label)")
    add_set(p, "bundle override the model was trained with, e.g. --set hu_window=[-160,240]; repeat")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_export_bundle)
