"""CLI commands of the stack: ``stack build``, ``stack info``, ``stack verify``."""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "format_info"]


def format_info(info: dict) -> str:
    """Human-readable summary of :meth:`StackCache.info`."""
    qc = "n/a" if info["qc_pass_rate"] is None else f"{100 * info['qc_pass_rate']:.1f}% ({info['qc_flagged']} flagged)"
    lines = [
        f"stack cache      {info['root']}",
        f"generator        {info['generator']} (settings {info['settings_digest'][:12]}, n={info['n']}, seed={info['seed']})",
        f"slices           {info['slices']}",
        f"entries          {info['present']}/{info['entries']} present, {len(info['missing'])} missing, {len(info['corrupt'])} corrupt, {info['orphans']} orphaned",
        f"members          {info['members']}",
        f"bytes on disk    {info['bytes_on_disk']:,} ({info['bytes_per_member']:,.0f} B/member, {info['bytes_per_pixel']:.3f} B/pixel)",
        f"QC pass rate     {qc}",
        f"temp files       {info['temp_files']}",
        f"checksums        {'all verified' if info['verified'] else 'headers and sizes only (run `s2s2 stack verify`)'}",
        f"digest           {info['digest'] or '(incomplete)'}",
    ]
    return "\n".join(lines)


def _build(args: argparse.Namespace) -> int:
    from s2s2_monai.cli_options import bundle_preprocessing, options_for
    from s2s2_monai.stack.build import build_stack

    preprocessing = bundle_preprocessing(args)
    summary = build_stack(
        **options_for(build_stack, args, out_dir=args.out, qc=not args.no_qc, preprocessing=preprocessing)
    )
    if summary["rank"] == 0:
        print(
            f"stack {args.out}: {summary['entries']} entries for {summary['slices']} slices "
            f"({summary['generated']} generated, {summary['skipped']} reused, {summary['rebuilt']} rebuilt) "
            f"in {summary['seconds']:.1f} s; digest {summary['digest']}"
        )
    return 0


def _info(args: argparse.Namespace) -> int:
    from s2s2_monai.stack.cache import StackCache

    info = StackCache(args.dir).info(full=args.full)
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from s2s2_monai.stack.cache import StackCache

    info = StackCache(args.dir).verify()
    bad = len(info["missing"]) + len(info["corrupt"])
    if bad:
        for key in info["corrupt"]:
            print(f"corrupt: {key}")
        for key in info["missing"]:
            print(f"missing: {key}")
        print(
            f"FAILED: {len(info['corrupt'])} corrupt, {len(info['missing'])} missing of {info['entries']} entries; re-run `s2s2 stack build` to rebuild them"
        )
        return 1
    print(f"OK: {info['entries']} entries, {info['members']} members verified; digest {info['digest']}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from s2s2_monai import cli_options as o

    ssub = o.add_command_group(sub, "stack", "build and inspect semantic stack caches")

    p = ssub.add_parser(
        "build", help="generate the stacks of every training slice (resumable; run under torchrun to shard)"
    )
    o.add_datalist(p, "datalist JSON (its 'training' section)")
    o.add_bundle_preprocessing(p)
    p.add_argument(
        "--generator",
        choices=("appearance", "diffusion"),
        default="appearance",
        help="diffusion = SD + ControlNet (the paper); appearance = weight-free substitute",
    )
    p.add_argument(
        "--n",
        "--members",
        dest="n",
        type=int,
        default=16,
        help="members per mask (default 16); under torchrun write --members (torchrun's own parser mistakes --n for a prefix of its options)",
    )
    o.add_out(p, "cache folder")
    p.add_argument(
        "--sd-dir",
        metavar="DIR",
        default=None,
        help="Stable Diffusion folder (diffusers layout), for --generator diffusion",
    )
    p.add_argument(
        "--controlnet-dir", metavar="DIR", default=None, help="fine-tuned ControlNet folder, for --generator diffusion"
    )
    o.add_seed(p, "global seed")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="diffusion generation resolution (default: the ControlNet's training resolution, else 512; another one is refused); stacks are stored at the slice grid",
    )
    p.add_argument(
        "--resize-mode",
        choices=("nearest", "bilinear", "bicubic"),
        default="nearest",
        help="diffusion: resize of each generated image back to its slice's grid: nearest (default; order 0, the "
        "paper's), bilinear (antialiased; this project's former default) or bicubic; recorded in the stack's settings. "
        "The appearance generator draws on the slice grid and resizes nothing",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="diffusion: sampling precision, float32 (default, the paper's) or float16 (half precision, CUDA only); "
        "recorded in the stack's settings",
    )
    p.add_argument("--batch-size", type=int, default=8, help="masks per generator call (default 8)")
    p.add_argument(
        "--no-qc",
        action="store_true",
        help="skip the per-organ intensity quality check. The paper has no such filter: --no-qc is the paper's "
        "protocol and what the training bundle builds (stack_qc: false); without it this command filters (QC on), "
        "and training refuses such a stack unless the bundle sets --stack_qc True",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="the --out folder holds a stack of other settings: delete it and build this one (default: stop, untouched)",
    )
    o.add_no_progress(p)
    p.set_defaults(func=_build)

    p = ssub.add_parser("info", help="entries, members, bytes, missing/corrupt, QC pass rate and digest of a cache")
    p.add_argument("dir", help="cache folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--full", action="store_true", help="verify every checksum (as `stack verify`)")
    p.set_defaults(func=_info)

    p = ssub.add_parser("verify", help="check every member checksum; exit 1 on missing or corrupt entries")
    p.add_argument("dir", help="cache folder")
    p.set_defaults(func=_verify)
