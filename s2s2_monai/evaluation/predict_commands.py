"""CLI command ``s2s2 predict``: a trained model on new scans, in the manner of ``nnUNetv2_predict``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from s2s2_monai.cli_options import bundle_model
    from s2s2_monai.errors import S2S2InputError
    from s2s2_monai.evaluation.predictions import find_inputs, predict_to_folder

    if args.batch_size is not None and args.batch_size < 1:
        raise S2S2InputError("--batch-size", f"got {args.batch_size}", "pass a whole number >= 1, e.g. --batch-size 32")
    for c in args.config:
        if not Path(c).is_file():
            raise S2S2InputError(c, "config file not found", "give the bundle config files the model was trained with")
    inputs = find_inputs(args.input)  # bad input before the (slow) model is built
    model = bundle_model(args, args.config)
    predict_to_folder(
        model,
        inputs,
        args.out,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
        check_modality=not args.no_modality_check,
        progress=not args.no_progress,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai.cli_options import add_checkpoint, add_config, add_no_progress, add_out, add_set

    p = sub.add_parser(
        "predict",
        help="segment new scans (NIfTI files, DICOM series folders, or a folder of them) with a trained model",
        description=(
            "Segment every input with the model of --config/--set/--checkpoint (its preprocessing, input size and "
            "label map) and write OUT/CASE.nii.gz (uint8, each input's own geometry; nnU-Net's _0000 suffix dropped). "
            "Re-running continues an interrupted run: existing outputs are kept unless --overwrite."
        ),
    )
    add_config(
        p,
        "bundle config file the model was trained with, a path (e.g. bundles/synapse/train.json); repeat for overlays",
        required=True,
    )
    add_set(p, "bundle override the model was trained with, e.g. --set hu_window=[-160,240]; repeat")
    add_checkpoint(p, "trained weights: runs/NAME/models/model.pt (its model.json must agree with the config)")
    p.add_argument(
        "--input", required=True, metavar="FILE|DIR", help="a NIfTI file, a DICOM series folder, or a folder of them"
    )
    add_out(p, "output folder of the label maps")
    add_no_progress(p)
    p.add_argument("--overwrite", action="store_true", help="redo outputs that exist (default: keep them)")
    p.add_argument("--no-modality-check", action="store_true", help="skip the raw-intensity check of the modality")
    p.add_argument("--device", default=None, help="torch device (default cuda when available)")
    p.add_argument("--batch-size", type=int, default=None, help="slices per forward pass (default the bundle's)")
    p.set_defaults(func=_predict)
