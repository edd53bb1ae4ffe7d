"""CLI commands of ControlNet fine-tuning: ``s2s2 controlnet train``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def _train(args: argparse.Namespace) -> int:
    from s2s2_monai.cli_options import bundle_preprocessing, options_for
    from s2s2_monai.stack.finetune import ControlNetTrainConfig, train_controlnet

    config = ControlNetTrainConfig(**options_for(ControlNetTrainConfig, args, mixed_precision=args.mixed_precision))
    preprocessing = bundle_preprocessing(args)
    result = train_controlnet(**options_for(train_controlnet, args, config=config, preprocessing=preprocessing))
    start = f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else ""
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    print(f"trained {result.steps} steps{start}{last}; ControlNet written to {result.controlnet_dir}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai import cli_options as o

    csub = o.add_command_group(sub, "controlnet", "ControlNet fine-tuning on a datalist (Stable Diffusion frozen)")
    t = csub.add_parser("train", help="fine-tune a ControlNet on the training slices (resumable)")
    t.add_argument("--sd-dir", metavar="DIR", required=True, help="local Stable Diffusion folder (diffusers layout)")
    o.add_datalist(t, "datalist JSON; its training section (with labels) is used")
    o.add_bundle_preprocessing(t)
    o.add_out(t, "output folder (checkpoints/, controlnet/, train_config.json, losses.json)")
    t.add_argument("--epochs", type=int, default=100, help="epochs over the training slices (default 100)")
    t.add_argument("--batch-size", type=int, default=16, help="slices per micro-batch (default 16)")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    t.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate (default 1e-5)")
    t.add_argument(
        "--resolution", type=int, default=512, help="square training size (default 512; 192 for the 4-class sets)"
    )
    o.add_seed(t, "random seed (data order, noise, timesteps)")
    t.add_argument(
        "--checkpoint-every", type=int, default=500, help="optimizer steps between checkpoints (default 500)"
    )
    t.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints kept (default 2)")
    t.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    t.add_argument("--labelled-only", action="store_true", help="train only on slices with foreground")
    t.add_argument(
        "--mixed-precision",
        action="store_true",
        help="fp16 mixed precision on CUDA (default fp32, the reference's)",
    )
    t.add_argument(
        "--no-mixed-precision", action="store_true", help=argparse.SUPPRESS
    )  # former opt-out, now the default
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default 0)")
    t.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    o.add_no_progress(t)
    t.set_defaults(func=_train)
