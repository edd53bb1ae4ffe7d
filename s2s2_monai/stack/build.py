"""Build (or complete) the stack cache of a datalist's training slices: resumable and distributed.

Every axial slice of the ``training`` section gets a stack, *including background-only slices*:
training samples those too (``SliceDataset(labelled_only=False)``). Slices with identical masks
(typically the empty ones of a case size) share one content-keyed entry, so this costs little.

Properties:

- **content-keyed**: entry keys hash mask, prompt, generator name + settings, n, seed and QC
  settings (:func:`~s2s2_monai.stack.cache.entry_key`); changed settings never reuse old images;
- **order-free seeds**: each mask's seed is derived from the global seed and the mask content
  (:func:`~s2s2_monai.stack.cache.slice_seed`), never from its position, batch or rank;
- **resumable**: entries already present and valid are skipped (so the build doubles as "ensure
  the stack exists"); corrupt ones are rebuilt; a ``kill -9`` at any moment leaves only whole
  entries (temp + fsync + rename), and re-running gives a bit-identical cache;
- **paper-faithful by name**: the diffusion generator samples in float32 (``dtype``) and resizes its
  images back to the slice grid with order 0 (``resize_mode="nearest"``), as the reference does; the QC
  filter (not in the paper) is on here by default (``qc``, the CLI's ``--no-qc``) and off in the training
  bundle (``stack_qc: false``, :func:`ensure_stack`'s default). Each is part of the stack's identity;
- **distributed**: under ``torchrun`` (``RANK``/``WORLD_SIZE`` set), ``torch.distributed`` is
  initialised (gloo on CPU, nccl on GPU), rank r builds keys ``r::world_size`` of the sorted keys,
  and after a barrier rank 0 verifies that the cache is complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.stack.base import StackGenerator, UnitIntensity
from s2s2_monai.stack.cache import (
    StackCache,
    atomic_write_bytes,
    canonical_json,
    entry_key,
    mask_digest,
    slice_seed,
    to_uint8,
)
from s2s2_monai.stack.prompts import build_prompt
from s2s2_monai.stack.quality import QualityBounds, check_and_regenerate

__all__ = ["build_command", "build_stack", "ensure_stack", "make_generator", "slice_jobs", "write_contact_sheet"]

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- distributed
def _init_distributed() -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, initialised_here) from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0, False
    import torch
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # shards can take hours with the diffusion generator: do not let the barrier time out
    dist.init_process_group(backend, timeout=timedelta(days=2))
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------------- pieces
def make_generator(
    generator: str | StackGenerator,
    volumes,
    sd_dir: str | os.PathLike | None = None,
    controlnet_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    batch_size: int = 8,
    device: str | None = None,
    resize_mode: str = "nearest",
    dtype: str = "float32",
) -> StackGenerator:
    """A generator by name (``"appearance"`` fitted on ``volumes``, or ``"diffusion"``) or as given.

    ``resolution``, ``resize_mode`` and ``dtype`` are the diffusion generator's (see
    :class:`~s2s2_monai.stack.diffusion.DiffusionGenerator`); the appearance generator draws on the slice
    grid in float32 and ignores them.
    """
    if isinstance(generator, StackGenerator):
        return generator
    if generator == "appearance":
        from s2s2_monai.stack.appearance import AppearanceGenerator

        return AppearanceGenerator.fit(volumes)
    if generator == "diffusion":
        if sd_dir is None or controlnet_dir is None:
            raise S2S2InputError(
                None,
                "--generator diffusion needs both --sd-dir and --controlnet-dir",
                "pass the Stable Diffusion folder and the fine-tuned ControlNet folder (see `s2s2 controlnet train`)",
            )
        from s2s2_monai.stack.diffusion import DiffusionGenerator

        kwargs = {"resolution": int(resolution)} if resolution else {}
        return DiffusionGenerator(
            sd_dir,
            controlnet_dir,
            batch_size=batch_size,
            device=device,
            label_map=volumes.datalist.label_map,
            resize_mode=resize_mode,
            dtype=dtype,
            **kwargs,
        )
    raise S2S2InputError(None, f"unknown stack generator {generator!r}", "use 'appearance' or 'diffusion'")


def _require_labels(volumes) -> None:
    for case in volumes.cases:
        if case.label is None:
            raise S2S2InputError(
                case.image_path,
                "training case has no label; a semantic stack is generated from masks",
                "add a 'label' to every training entry of the datalist",
            )


def slice_jobs(volumes, spec: dict) -> tuple[list[list], dict[str, dict]]:
    """The slice index and the distinct jobs of a :class:`~s2s2_monai.data.slices.VolumeCache`.

    Returns:
        ``slices`` = ``[[case_id, z, key], ...]`` in datalist order, and ``jobs`` =
        ``{key: {"case": i, "z": z, "mask_sha256", "prompt", "seed"}}`` (first slice of each key).
    """
    label_map = volumes.datalist.label_map
    _require_labels(volumes)
    slices, jobs = [], {}
    for ci, case in enumerate(volumes.cases):
        for z in range(case.num_slices):
            mask = case.label[:, :, z]
            digest = mask_digest(mask)
            prompt = build_prompt(mask, label_map)
            key = entry_key(digest, prompt, spec)
            slices.append([case.case_id, z, key])
            if key not in jobs:
                jobs[key] = {
                    "case": ci,
                    "z": z,
                    "mask_sha256": digest,
                    "prompt": prompt,
                    "seed": slice_seed(spec["seed"], digest, prompt),
                }
    return slices, jobs


def write_contact_sheet(cache: StackCache, volumes, path: Path, rows: int = 4, cols: int = 6) -> Path | None:
    """PNG of a few masks (most classes first) with their real slice and first ``cols`` members.

    Shown as the evaluation report's overlays show slices (radiological view: the patient's right on the
    left, anterior up), at most 8 columns of 1.6 in (1280 px); the masks' colours are named in a legend of
    the organs from the datalist's label map.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    manifest = cache.manifest
    picks, seen = [], set()
    for case_id, z, key in manifest["slices"]:
        if key in seen or not cache.has(key):
            continue
        seen.add(key)
        ci = next(i for i, c in enumerate(volumes.cases) if c.case_id == case_id)
        n_cls = len(np.unique(volumes.cases[ci].label[:, :, z]))
        picks.append((-n_cls, key, ci, z))
    if not picks:
        return None
    picks = sorted(picks)[:rows]
    unit = UnitIntensity(*manifest["unit"])
    label_map = getattr(getattr(volumes, "datalist", None), "label_map", None)
    names = dict(label_map.classes) if label_map is not None else {}
    shown = sorted(
        {int(v) for _, _, ci, z in picks for v in np.unique(np.asarray(volumes.cases[ci].label[:, :, z]))} - {0}
    )
    top_id = max([*shown, *names, 1])
    palette = ["#000000"] + [
        c
        for _ in range(top_id // 8 + 1)
        for c in ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FFFFFF")
    ]
    cmap = ListedColormap(palette[: top_id + 1])
    ncol = 2 + min(cols, int(manifest["n"]))
    legend_h = 0.15 + 0.22 * -(-len(shown or names) // 6)
    fig = Figure(figsize=(1.6 * ncol, 1.7 * len(picks) + 0.35 + legend_h), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(picks), ncol, squeeze=False)
    for r, (_, key, ci, z) in enumerate(picks):
        case = volumes.cases[ci]
        panels = [("real x0", unit.to_unit(case.image[:, :, z]), "gray"), ("mask", case.label[:, :, z], cmap)]
        panels += [(f"member {m}", cache.read_member(key, m), "gray") for m in range(ncol - 2)]
        for c, (title, img, cm) in enumerate(panels):
            ax = axes[r, c]
            img = np.asarray(img)
            if cm == "gray":
                kw = {"vmin": 0, "vmax": 255 if img.dtype == np.uint8 else 1}
            else:
                kw = {"vmin": -0.5, "vmax": top_id + 0.5}
            # the report overlays' view: arrays (X, Y) in RAS, y up, x inverted (patient's right on the left)
            ax.imshow(img.T, cmap=cm, origin="lower", interpolation="nearest", **kw)
            ax.invert_xaxis()
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if r == 0 else "", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{case.case_id}\nz={z}", fontsize=7)
    height = fig.get_figheight()
    fig.suptitle(
        f"stack: {manifest['generator']} (n={manifest['n']}, seed={manifest['seed']}); radiological view",
        fontsize=9,
        y=1 - 0.05 / height,
        va="top",
    )
    handles = [
        Patch(facecolor=cmap(i), edgecolor="black", label=names.get(i, f"class {i}")) for i in (shown or sorted(names))
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.subplots_adjust(
        left=0.35 / fig.get_figwidth(),
        right=1 - 0.05 / fig.get_figwidth(),
        top=1 - 0.4 / height,
        bottom=(legend_h + 0.05) / height,
        wspace=0.05,
        hspace=0.15,
    )
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------- build
def build_stack(
    datalist,
    out_dir: str | os.PathLike,
    generator: str | StackGenerator = "appearance",
    n: int = 16,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 8,
    sd_dir: str | os.PathLike | None = None,
    controlnet_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    progress: bool = True,
    qc: bool = True,
    verify_existing: bool = True,
    contact_sheet: bool = True,
    replace: bool = False,
    preprocessing=None,
    resize_mode: str = "nearest",
    dtype: str = "float32",
) -> dict:
    """Build the stacks of every training slice of ``datalist`` into ``out_dir`` (see module doc).

    Args:
        datalist: a datalist path or :class:`~s2s2_monai.data.datalist.Datalist` (its ``training`` section).
        out_dir: the cache folder (created if needed).
        generator: ``"appearance"`` (weight-free, fitted on the training images), ``"diffusion"``
            (needs ``sd_dir`` and ``controlnet_dir``) or a :class:`StackGenerator` instance.
        n: members per mask.
        seed: global seed (per-mask seeds derive from it and the mask content).
        batch_size: masks per ``generate`` call.
        resolution: generation resolution of the diffusion generator (images are stored at the
            slice's own grid whatever it is).
        qc: learn per-organ bounds from the real images, regenerate failing members, record results. Not in
            the paper (which filters nothing): ``False`` is the paper's protocol, and the training bundle's
            default (``stack_qc: false``); on by default here and in ``s2s2 stack build`` (``--no-qc``).
        resize_mode: diffusion only: resize of a generated image (at ``resolution``) back to its slice's grid,
            ``"nearest"`` (order 0, the paper's), ``"bilinear"`` (this project's former default) or ``"bicubic"``;
            recorded in the manifest's generator settings. The appearance generator resizes nothing.
        dtype: diffusion only: ``"float32"`` (the paper's) or ``"float16"`` (half precision on CUDA).
        verify_existing: check every member checksum of existing entries (else header + size only).
        contact_sheet: write ``out_dir/contact_sheet.png``.
        replace: rebuild a folder that holds a stack of other settings (its entries are deleted);
            without it such a folder stops the build and is left untouched (one folder, one stack).
        preprocessing: the training bundle's ``train#deterministic_transforms`` (what the network sees;
            :meth:`~s2s2_monai.model.BundleModel.preprocessing_from_configs`); default the paper's for the
            datalist's modality. Ignored when ``datalist`` is already a ``VolumeCache``.

    Returns:
        summary dict: ``slices``, ``entries``, ``generated``, ``skipped``, ``rebuilt`` (corrupt
        entries regenerated), ``rank``/``world_size``, ``seconds``, and on rank 0 the cache
        :meth:`~s2s2_monai.stack.cache.StackCache.info` fields (``digest``, ``qc_pass_rate``, ...).
    """
    if int(n) < 1:
        raise S2S2InputError(None, f"--n must be >= 1, got {n}", "ask for at least one member per mask")
    if int(batch_size) < 1:
        raise S2S2InputError(None, f"--batch-size must be >= 1, got {batch_size}", "use a positive batch size")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise S2S2InputError(out_dir, "exists and is not a folder", "give --out a new or existing stack cache folder")
    if isinstance(
        datalist, (str, os.PathLike)
    ):  # the datalist's own errors before the imaging stack (MONAI) is imported
        from s2s2_monai.data.datalist import load_datalist

        datalist = load_datalist(datalist, data_root)
        if not datalist.items("training"):
            raise S2S2InputError(
                datalist.path, "datalist has no 'training' entries", "list the training cases whose masks get stacks"
            )
    from s2s2_monai.data.slices import VolumeCache

    t0 = time.perf_counter()
    rank, world, local_rank, init_here = _init_distributed()
    try:
        volumes = (
            datalist
            if isinstance(datalist, VolumeCache)
            else VolumeCache(datalist, "training", data_root, progress=progress and rank == 0, transform=preprocessing)
        )
        if not volumes.cases:
            raise S2S2InputError(
                volumes.datalist.path,
                "datalist has no 'training' entries",
                "list the training cases whose masks get stacks",
            )
        _require_labels(volumes)
        device = f"cuda:{local_rank}" if world > 1 and _cuda() else None
        gen = make_generator(
            generator, volumes, sd_dir, controlnet_dir, resolution, batch_size, device, resize_mode, dtype
        )
        bounds = QualityBounds.fit_volumes(volumes) if qc else None
        spec = {
            "generator": gen.name,
            "settings": gen.settings(),
            "n": int(n),
            "seed": int(seed),
            "qc": bounds.to_dict() if bounds else None,
        }
        try:
            canonical_json(spec)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"generator {gen.name!r} settings are not JSON-serialisable: {exc}") from None
        slices, jobs = slice_jobs(volumes, spec)
        modality = volumes.datalist.modality
        unit = UnitIntensity.for_modality(modality)
        cache = StackCache(out_dir)
        manifest = {
            **spec,
            "label_map": volumes.datalist.label_map.name,
            "modality": modality,
            "unit": [unit.lo, unit.hi],
            "datalist": str(volumes.datalist.path),
            "slices": slices,
        }
        held = _held_manifest(cache)
        changed = stack_differences(held, manifest) if held else []
        if changed and not replace:
            raise S2S2InputError(
                out_dir,
                f"holds another stack ({'; '.join(changed)})",
                "build into another folder (--out), or pass --replace to delete this stack and rebuild; the folder was "
                "left untouched",
            )
        _barrier(world)
        if rank == 0:
            if changed:
                logger.warning("replacing the stack in %s (%s)", out_dir, "; ".join(changed))
                cache.clear()
            cache.clean_temp()
            cache.write_manifest(manifest)
        _barrier(world)
        keys = sorted(jobs)[rank::world]
        todo, skipped, rebuilt = [], 0, 0
        for key in tqdm(
            keys, desc="checking stack", disable=not progress or rank != 0 or not keys, unit="entry", leave=False
        ):
            status = cache.check_entry(key, full=verify_existing)
            if status == "ok":
                skipped += 1
                continue
            if status == "corrupt":
                logger.warning("corrupt stack entry %s (checksum or size), rebuilding it", cache.entry_path(key))
                cache.remove_entry(key)
                rebuilt += 1
            todo.append(key)
        # Fixed batches over *all* of this rank's keys (same-shape masks together), so a batch holds
        # the same masks whether or not the build was interrupted: batched generators (diffusion)
        # round identically, and a resumed build stays bit-identical. A batch with any missing
        # entry is regenerated whole; only the missing entries are written.
        todo_set = set(todo)
        bar = tqdm(total=len(todo), desc=f"stack {gen.name}", disable=not progress or rank != 0, unit="mask")
        for batch in _fixed_batches(keys, lambda k: volumes.cases[jobs[k]["case"]].label.shape[:2], batch_size):
            missing = [k for k in batch if k in todo_set]
            if missing:
                _generate_batch(gen, cache, volumes, jobs, batch, int(n), bounds, write=set(missing))
                bar.update(len(missing))
        bar.close()
        _barrier(world)
        summary = {
            "out_dir": str(out_dir),
            "generator": gen.name,
            "slices": len(slices),
            "entries": len(jobs),
            "generated": len(todo),
            "skipped": skipped,
            "rebuilt": rebuilt,
            "rank": rank,
            "world_size": world,
        }
        if rank == 0:
            info = cache.info(full=True)
            if not info["complete"]:
                raise RuntimeError(
                    f"stack cache {out_dir} incomplete after build: {len(info['missing'])} missing, {len(info['corrupt'])} corrupt entries"
                )
            sheet = write_contact_sheet(cache, volumes, Path(out_dir) / "contact_sheet.png") if contact_sheet else None
            summary.update(
                {
                    k: info[k]
                    for k in (
                        "members",
                        "bytes_on_disk",
                        "bytes_per_member",
                        "bytes_per_pixel",
                        "qc_pass_rate",
                        "qc_flagged",
                        "digest",
                    )
                }
            )
            summary["contact_sheet"] = str(sheet) if sheet else None
        _barrier(world)
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        return summary
    finally:
        if init_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _fixed_batches(keys: list[str], shape_of, batch_size: int) -> list[list[str]]:
    """Split keys into batches of at most ``batch_size`` same-shape masks, in (shape, key) order."""
    batches: list[list[str]] = []
    for key in sorted(keys, key=lambda k: (shape_of(k), k)):
        if batches and len(batches[-1]) < batch_size and shape_of(batches[-1][0]) == shape_of(key):
            batches[-1].append(key)
        else:
            batches.append([key])
    return batches


def _generate_batch(
    gen: StackGenerator,
    cache: StackCache,
    volumes,
    jobs: dict,
    batch: list[str],
    n: int,
    bounds: QualityBounds | None,
    write: set[str],
) -> None:
    """Generate one batch of same-shape masks; check, quantise and store the entries in ``write``."""
    masks = np.stack([volumes.cases[jobs[k]["case"]].label[:, :, jobs[k]["z"]] for k in batch]).astype(np.uint8)
    prompts = [jobs[k]["prompt"] for k in batch]
    seeds = [jobs[k]["seed"] for k in batch]
    images = np.asarray(gen.generate(masks, prompts, seeds, n))
    if images.shape != (len(batch), n, *masks.shape[1:]):
        raise ValueError(
            f"generator {gen.name!r} returned shape {images.shape}, expected {(len(batch), n, *masks.shape[1:])} (stacks must be aligned with the masks)"
        )
    for b, key in enumerate(batch):
        if key not in write:
            continue
        imgs, records = images[b], None
        if bounds is not None:
            imgs, records = check_and_regenerate(gen, masks[b], prompts[b], seeds[b], imgs, bounds)
        job = jobs[key]
        meta = {
            "generator": gen.name,
            "prompt": job["prompt"],
            "seed": job["seed"],
            "mask_sha256": job["mask_sha256"],
            "qc": records,
        }
        cache.write_entry(key, to_uint8(imgs), meta)


#: Manifest fields that make a stack: another value is another stack (``unit``/``datalist`` follow from them).
STACK_IDENTITY = ("generator", "settings", "n", "seed", "qc", "label_map", "modality", "slices")


def _held_manifest(cache: StackCache) -> dict | None:
    return cache.manifest if cache.manifest_path.is_file() else None


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def stack_differences(held: dict, wanted: dict) -> list[str]:
    """``"field: held -> wanted"`` for every :data:`STACK_IDENTITY` field (and generator setting) that differs."""
    out = []
    for field in STACK_IDENTITY:
        a, b = held.get(field), wanted.get(field)
        if a == b:
            continue
        if field == "settings" and isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"settings.{k}: {_short(a.get(k))} -> {_short(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif field == "slices":  # entry keys follow from the settings: other masks only when they agree
            if not out:
                out.append(f"training masks: {len(a or [])} other slices -> {len(b or [])} of {wanted.get('datalist')}")
        else:
            out.append(f"{field}: {_short(a)} -> {_short(b)}")
    return out


#: bundle option of each stack setting (for the messages of :func:`ensure_stack`)
_BUNDLE_OPTION = {
    "generator": "--stack_generator",
    "n": "--stack_n",
    "seed": "--stack_seed",
    "qc": "--stack_qc",
    "resize_mode": "--stack_resize_mode",
}


def build_command(
    datalist,
    out,
    generator: str = "appearance",
    n: int = 16,
    seed: int = 0,
    qc: bool = True,
    resize_mode: str | None = None,
    dtype: str | None = None,
    config: str | None = None,
) -> str:
    """The ``s2s2 stack build`` command line that builds (or completes) this stack: every stack setting spelled out.

    ``qc`` false adds ``--no-qc`` (the CLI's QC is on by default); a diffusion stack adds its model folders
    (``SD``/``CN`` placeholders), ``--resize-mode`` and ``--dtype`` (when known).
    """
    parts = ["s2s2 stack build", f"--datalist {_datalist_path(datalist)}"]
    if config:
        parts.append(f"--config {config}")
    parts += [f"--out {out}", f"--generator {generator}", f"--n {int(n)}", f"--seed {int(seed)}"]
    if not qc:
        parts.append("--no-qc")
    if generator == "diffusion":
        parts.append("--sd-dir SD --controlnet-dir CN")
        if resize_mode:
            parts.append(f"--resize-mode {resize_mode}")
        if dtype:
            parts.append(f"--dtype {dtype}")
    return " ".join(parts)


def manifest_build_command(manifest: dict, datalist, out) -> str:
    """:func:`build_command` for the stack a cache ``manifest`` describes (to complete or repair it)."""
    from s2s2_monai.stack.diffusion import resize_mode_of

    settings = manifest.get("settings") or {}
    diffusion = manifest.get("generator") == "diffusion"
    return build_command(
        datalist,
        out,
        generator=manifest.get("generator", "appearance"),
        n=manifest.get("n", 16),
        seed=manifest.get("seed", 0),
        qc=manifest.get("qc") is not None,
        resize_mode=resize_mode_of(settings) if diffusion else None,
        dtype=settings.get("dtype") if diffusion else None,
    )


def _check_stack_request(
    stack_dir: Path,
    generator,
    n,
    seed,
    build_if_missing,
    sd_dir,
    controlnet_dir,
    qc: bool = False,
    resize_mode: str = "nearest",
) -> None:
    """Refuse a cache built with other settings, and a diffusion build without its model folders.

    Compared here, without building anything: generator, n, seed, QC on/off and (diffusion) the resize mode.
    The full generator settings (model digests, resolution, dtype, QC bounds) are compared by
    :func:`build_stack` when the stack can be built here.
    """
    manifest = stack_dir / "manifest.json"
    if manifest.is_file():
        from s2s2_monai.stack.diffusion import resize_mode_of

        held = json.loads(manifest.read_text())
        recorded = {"generator": held.get("generator"), "n": held.get("n"), "seed": held.get("seed")}
        wanted = {"generator": generator, "n": int(n), "seed": int(seed)}
        extra_held, extra_wanted = {"qc": held.get("qc") is not None}, {"qc": bool(qc)}
        if generator == "diffusion" and held.get("generator") == "diffusion":
            extra_held["resize_mode"] = resize_mode_of(held.get("settings") or {})
            extra_wanted["resize_mode"] = resize_mode
        differ = [k for k in extra_held if extra_held[k] != extra_wanted[k]]
        if recorded != wanted or differ:
            recorded.update({k: extra_held[k] for k in differ})
            wanted.update({k: extra_wanted[k] for k in differ})
            show = lambda d: ", ".join(f"{k}={v!r}" for k, v in d.items())  # noqa: E731
            back = " ".join(
                f"{_BUNDLE_OPTION[k]} {recorded[k]}"
                for k in recorded
                if recorded[k] != wanted[k] and recorded[k] is not None
            )
            raise S2S2InputError(
                stack_dir,
                f"holds a stack with {show(recorded)}; this training asks for {show(wanted)}",
                "point stack_dir at another folder (e.g. --stack_dir runs/stacks/other), or set the config to the "
                f"stack's settings{f' ({back})' if back else ''}; the folder was left untouched",
            )
        return
    if generator == "diffusion" and build_if_missing:
        missing = [str(p) for p in (sd_dir, controlnet_dir) if p is None or not Path(p).is_dir()]
        if missing:
            raise S2S2InputError(
                ", ".join(missing),
                "the diffusion stack (the paper's) needs a Stable Diffusion 2.x folder and a fine-tuned ControlNet, not found",
                "build them (`s2s2 controlnet train ...`, then --sd_dir DIR --controlnet_dir DIR, or `s2s2 stack build "
                "--generator diffusion ...`), or choose the weight-free stack explicitly: --stack_generator appearance",
            )


def _check_stack_options(qc, resize_mode, dtype) -> None:
    """The bundle's stack options, as python-fire hands them over (``--stack_qc true`` is the string 'true')."""
    from s2s2_monai.stack.diffusion import DTYPES, RESIZE_MODES

    if not isinstance(qc, bool):
        raise S2S2InputError(
            None,
            f"--stack_qc: got {qc!r}, expected True or False",
            "pass --stack_qc False (the paper's: no quality filter) or --stack_qc True (capitalised: python-fire "
            "reads lower-case true/false as text)",
        )
    for option, value, choices in (
        ("--stack_resize_mode", resize_mode, tuple(RESIZE_MODES)),
        ("--stack_dtype", dtype, DTYPES),
    ):
        if not isinstance(value, str) or value not in choices:
            raise S2S2InputError(
                None,
                f"{option}: got {value!r}, expected one of {', '.join(choices)}",
                f"pass e.g. {option} {choices[0]} (the paper's)",
            )


def _datalist_path(datalist) -> str:
    """The JSON path behind a datalist path, :class:`Datalist` or :class:`VolumeCache`."""
    dl = getattr(datalist, "datalist", datalist)
    return str(getattr(dl, "path", dl))


def ensure_stack(
    datalist,
    stack_dir: str | os.PathLike,
    use_stack: bool = True,
    build_if_missing: bool = True,
    generator: str = "appearance",
    n: int = 16,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    sd_dir: str | os.PathLike | None = None,
    controlnet_dir: str | os.PathLike | None = None,
    resolution: int | None = None,
    exit_on_error: bool = False,
    qc: bool = False,
    resize_mode: str = "nearest",
    dtype: str = "float32",
    **build_kwargs: Any,
) -> str | None:
    """The stack cache folder for training (``None`` for the baseline), checked before the first step.

    ``datalist`` is the training bundle's ``@train#volumes`` (the volumes preprocessed by
    ``train#deterministic_transforms``, so the stack, its QC bounds and its appearance statistics see
    the intensities the network sees), or a datalist path (default preprocessing of its modality).

    An existing cache must hold the stack the config asks for (generator, members, seed, QC on/off, the
    diffusion resize mode): another one stops the run, naming both. With ``build_if_missing``,
    :func:`build_stack` completes the cache (existing valid entries are skipped, so a complete cache costs
    one check) and compares every generator setting; a diffusion stack then needs the SD and ControlNet
    folders. Otherwise the cache must exist.

    The defaults are the paper's (the bundle's ``stack_qc``, ``stack_resize_mode``, ``stack_dtype``):
    ``qc=False`` (no quality filter; :func:`build_stack` and the CLI default to QC on),
    ``resize_mode="nearest"`` (generated images back to the slice grid with order 0) and ``dtype="float32"``.
    ``resize_mode`` and ``dtype`` are the diffusion generator's; the appearance generator ignores them.

    Raises:
        S2S2InputError: a cache of other settings, no cache and ``build_if_missing`` false, or a diffusion
            build without its model folders (one line with both ways out).
    """
    from s2s2_monai.errors import exit_or_raise

    if not use_stack:
        return None
    stack_dir = Path(stack_dir)
    if generator == "diffusion":
        build_kwargs.update(sd_dir=sd_dir, controlnet_dir=controlnet_dir, resolution=resolution)
    held = stack_dir / "manifest.json"
    models_here = all(p is not None and Path(p).is_dir() for p in (sd_dir, controlnet_dir))
    try:
        _check_stack_options(qc, resize_mode, dtype)
        _check_stack_request(
            stack_dir, generator, n, seed, build_if_missing, sd_dir, controlnet_dir, qc=qc, resize_mode=resize_mode
        )
        if build_if_missing and (generator != "diffusion" or models_here):
            # completes the cache; also refuses a stack of other generator settings (resolution, model digests)
            build_kwargs.setdefault("verify_existing", False)
            build_stack(
                datalist,
                stack_dir,
                generator=generator,
                n=n,
                seed=seed,
                data_root=data_root,
                qc=qc,
                resize_mode=resize_mode,
                dtype=dtype,
                **build_kwargs,
            )
        elif not held.is_file():
            command = build_command(
                datalist, stack_dir, generator, n, seed, qc, resize_mode, dtype, config="TRAIN.json"
            )
            raise S2S2InputError(
                stack_dir,
                "no stack cache here",
                f"build it with `{command}` or set build_stack_if_missing true",
            )
        elif build_if_missing:  # a diffusion stack built elsewhere, without its model folders here: it must be complete
            from s2s2_monai.stack.cache import StackCache

            info = StackCache(stack_dir).info()
            if not info["complete"]:
                raise S2S2InputError(
                    stack_dir,
                    f"stack incomplete ({len(info['missing'])} missing, {len(info['corrupt'])} corrupt entries) and "
                    "it cannot be completed here",
                    "pass --sd_dir and --controlnet_dir to complete it, or rebuild it where they are",
                )
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return str(stack_dir)
