"""ControlNet fine-tuning on the training slices of a datalist (paper App. C), with diffusers.

Stable Diffusion (UNet, VAE, text encoder) is frozen; the ControlNet starts as
``ControlNetModel.from_unet(unet)`` and learns to predict, through the UNet, the noise added to
the VAE latent of a real slice (MSE on epsilon, or on v for v-prediction SD folders), using a
``DDPMScheduler`` built from the SD folder's scheduler config.

Training examples (:class:`ControlNetSliceDataset`):

- image: the slice in the stack's unit space ``[0, 1]`` (:class:`~s2s2_monai.stack.base.UnitIntensity`),
  bilinear-resized to ``resolution``, replicated to RGB and mapped to ``[-1, 1]`` for the VAE;
- conditioning: the mask rendered by :func:`~s2s2_monai.stack.conditioning.render_label_map` (``[0, 1]``);
- prompt: :func:`~s2s2_monai.stack.prompts.build_prompt` of the mask, exactly as generation builds it.

Ranges are diffusers' conventions, not the reference's: here the hint is in ``[0, 1]`` and the target
in ``[-1, 1]``; the reference (lllyasviel's ControlNet code in ymp5078/Semantic-Stacking,
``ControlNet/datasets/dataset_synapse.py``) feeds the hint as palette colours in ``[0, 255]`` (its ``/ 255``
is commented out) and the target slice in ``[0, 1]`` unmapped. Generation
(:mod:`~s2s2_monai.stack.diffusion`) reads the output in the range fine-tuning taught, so the two stay
consistent with each other.

Precision: float32 by default, as the reference (``pl.Trainer(precision=32)``).
``ControlNetTrainConfig(mixed_precision=True)`` is the named alternative: on CUDA the frozen UNet, VAE
and text encoder are loaded in float16, the ControlNet keeps float32 weights and runs under
``torch.autocast(float16)`` with a ``GradScaler``; on the CPU it changes nothing. The CLI's precision
flag and its default: ``s2s2 controlnet train --help``.

Determinism and resume: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``; VAE
sampling, noise and timesteps come from one CPU ``torch.Generator`` whose state is checkpointed.
A checkpoint (every ``checkpoint_every`` optimizer steps and at the end) holds the ControlNet
(``save_pretrained``), the optimizer, LR scheduler and grad-scaler states, all RNG states and the
step; it is written to a temporary folder and renamed, so a kill leaves either the previous or
the new checkpoint, never half of one. ``resume=True`` continues from the newest checkpoint and
gives the same weights as an uninterrupted run (on the CPU bit for bit).
"""

from __future__ import annotations

import math
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from s2s2_monai.atomic import write_folder, write_json
from s2s2_monai.checkpoints import STEP_DIR, newest_readable, numbered_checkpoints, torch_load
from s2s2_monai.data.datalist import Datalist, load_datalist
from s2s2_monai.data.slices import SliceDataset, VolumeCache
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LabelMap
from s2s2_monai.stack.base import UnitIntensity
from s2s2_monai.stack.conditioning import render_label_map, resize_images
from s2s2_monai.stack.prompts import build_prompt
from s2s2_monai.stack.sd_folder import (
    CONTROLNET_RECORD,
    SDComponents,
    folder_digest,
    load_controlnet,
    load_sd_components,
)

__all__ = [
    "ControlNetTrainConfig",
    "ControlNetSliceDataset",
    "TrainResult",
    "controlnet_from_unet",
    "controlnet_loss",
    "latest_checkpoint",
    "train_controlnet",
]

#: config fields that must not change when resuming
_RESUME_FIXED = (
    "batch_size",
    "grad_accum",
    "lr",
    "resolution",
    "seed",
    "weight_decay",
    "lr_warmup_steps",
    "labelled_only",
    "max_grad_norm",
)


@dataclass
class ControlNetTrainConfig:
    """Fine-tuning settings (paper: lr 1e-5, batch 16, 100 epochs, 512 px for Synapse)."""

    epochs: int = 100
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-5
    resolution: int = 512
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    max_steps: int | None = None
    weight_decay: float = 1e-2
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    labelled_only: bool = False
    #: float16 frozen SD + autocast for the ControlNet on CUDA; False (float32) is the paper's
    mixed_precision: bool = False
    num_workers: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "resolution", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise S2S2InputError(
                    None, f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", "pass a positive value"
                )
        if self.max_steps is not None and self.max_steps < 0:
            raise S2S2InputError(None, f"--max-steps must be >= 0, got {self.max_steps}", "pass a non-negative value")
        if not self.lr > 0:
            raise S2S2InputError(None, f"--lr must be > 0, got {self.lr}", "pass a positive learning rate")


@dataclass
class TrainResult:
    """What :func:`train_controlnet` produced."""

    controlnet_dir: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    resumed_from: int | None = None


class ControlNetSliceDataset(Dataset):
    """Training slices as ControlNet examples.

    Each item: ``pixel_values`` float32 (3, R, R) in ``[-1, 1]`` (unit-space slice, RGB-replicated),
    ``conditioning`` float32 (3, R, R) in ``[0, 1]``, ``prompt`` str, ``case_id``, ``slice_index``.

    Args:
        slices: a :class:`SliceDataset` with labels.
        label_map: label map of the masks (prompt names).
        unit: network intensities -> unit space map.
        resolution: square training size.
    """

    def __init__(self, slices: SliceDataset, label_map: LabelMap, unit: UnitIntensity, resolution: int) -> None:
        self.slices, self.label_map, self.unit, self.resolution = slices, label_map, unit, int(resolution)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, i: int) -> dict:
        item = self.slices.slice_item(i)
        if "label" not in item:
            raise S2S2InputError(
                None,
                f"case {item['case_id']} has no label",
                "every training case needs a label to fine-tune a ControlNet",
            )
        mask = item["label"][0].numpy().astype(np.uint8)
        unit = torch.from_numpy(self.unit.to_unit(item["image"].numpy()))[None]  # (1, 1, X, Y)
        unit = resize_images(unit, (self.resolution, self.resolution)).clamp(0.0, 1.0)[0]
        return {
            "pixel_values": unit.expand(3, -1, -1) * 2.0 - 1.0,
            "conditioning": render_label_map(mask, self.resolution)[0],
            "prompt": build_prompt(mask, self.label_map),
            "case_id": item["case_id"],
            "slice_index": item["slice_index"],
        }


def controlnet_from_unet(unet, vae):
    """``ControlNetModel.from_unet`` with a conditioning embedding that downsamples like the VAE."""
    from diffusers import ControlNetModel

    levels = len(vae.config.block_out_channels) - 1
    if levels > 3:
        raise ValueError(f"VAE downsamples by 2**{levels}; the ControlNet conditioning embedding supports at most 8")
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[: levels + 1])


def controlnet_loss(
    parts: SDComponents, controlnet, noise_scheduler, batch: dict, generator: torch.Generator, autocast: bool = False
) -> torch.Tensor:
    """Noise-prediction MSE of the frozen UNet steered by ``controlnet`` on one batch.

    ``generator`` (CPU) draws the VAE latent sample, the noise and the timesteps, in that order.
    """
    from diffusers.utils.torch_utils import randn_tensor

    device, wdtype = parts.unet.device, parts.unet.dtype
    pixels = batch["pixel_values"].to(device, wdtype)
    cond = batch["conditioning"].to(device, wdtype)
    ids = parts.tokenizer(
        list(batch["prompt"]),
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    with torch.no_grad():
        latents = parts.vae.encode(pixels).latent_dist.sample(generator=generator) * parts.vae.config.scaling_factor
        text = parts.text_encoder(ids)[0]
    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(
        device
    )
    noisy = noise_scheduler.add_noise(latents, noise, t)
    with torch.autocast(device.type, dtype=torch.float16, enabled=autocast):
        down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=cond, return_dict=False)
        pred = parts.unet(
            noisy,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=[r.to(wdtype) for r in down],
            mid_block_additional_residual=mid.to(wdtype),
            return_dict=False,
        )[0]
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, t)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r} in the SD scheduler config")
    return F.mse_loss(pred.float(), target.float())


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    """Newest checkpoint folder ``out/checkpoints/step-XXXXXXXX`` (or ``None``); not read, see :func:`_read_checkpoint`."""
    found = numbered_checkpoints(Path(out) / "checkpoints", STEP_DIR)
    return found[0] if found else None


def _read_checkpoint(folder: Path) -> tuple[dict, object]:
    """``(training state, ControlNet)`` of a checkpoint folder; raises when any part is unreadable."""
    state = torch_load(folder / "training_state.pt", "cpu")
    for key in ("step", "config", "optimizer", "lr_scheduler", "scaler", "rng"):
        if key not in state:
            raise KeyError(f"training_state.pt has no {key!r}")
    return state, load_controlnet(folder / "controlnet")


def _rng_states(generator: torch.Generator) -> dict:
    """All RNG states, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "python": random.getstate(),
    }


def _set_rng_states(states: dict, generator: torch.Generator) -> None:
    generator.set_state(states["generator"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def _save_checkpoint(out: Path, step: int, controlnet, state: dict, keep: int) -> Path:
    def write(tmp: Path) -> None:
        controlnet.save_pretrained(tmp / "controlnet")
        torch.save(state, tmp / "training_state.pt")

    root = out / "checkpoints"
    final = root / f"step-{step:08d}"
    write_folder(final, write)
    for old in numbered_checkpoints(root, STEP_DIR)[keep:]:  # moved-aside (.corrupt) folders are kept
        shutil.rmtree(old, ignore_errors=True)
    return final


def train_controlnet(
    sd_dir: str | os.PathLike,
    datalist: Datalist | str | os.PathLike,
    out: str | os.PathLike,
    config: ControlNetTrainConfig | None = None,
    resume: bool = False,
    device: str | torch.device | None = None,
    data_root: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    preprocessing: Callable | None = None,
) -> TrainResult:
    """Fine-tune a ControlNet on the training slices of ``datalist`` and save it to ``out/controlnet``.

    Args:
        sd_dir: local Stable Diffusion folder (diffusers layout), kept frozen.
        datalist: datalist (path); its ``training`` section (with labels) is used.
        out: output folder: ``checkpoints/``, ``controlnet/`` (final), ``train_config.json``, ``losses.json``.
        config: training settings.
        resume: continue from the newest checkpoint in ``out`` (starts fresh when there is none).
        device: torch device; default CUDA when available. float32 unless ``config.mixed_precision``
            (float16 frozen SD + autocast, CUDA only).
        data_root: root for relative datalist paths.
        progress: show progress bars.
        callback: called as ``callback(step, loss)`` after every optimizer step.
        preprocessing: the segmentation bundle's ``train#deterministic_transforms``, so the ControlNet
            learns the intensities the stack is generated in and the network sees; default the paper's
            for the datalist's modality.
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler

    config = config or ControlNetTrainConfig()
    config.validate()
    out = Path(out)
    ckpt = latest_checkpoint(out)  # existence only; resume reads it below (and skips a corrupt one)
    if ckpt is not None and not resume:
        raise S2S2InputError(
            out, f"already holds checkpoints (newest {ckpt.name})", "pass --resume to continue, or choose another --out"
        )
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = bool(config.mixed_precision and dev.type == "cuda")
    wdtype = torch.float16 if amp else torch.float32

    parts = load_sd_components(sd_dir, torch_dtype=wdtype, device=dev)
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1) * 2 ** (len(parts.unet.config.block_out_channels) - 1)
    if config.resolution % factor:
        raise S2S2InputError(
            None,
            f"--resolution {config.resolution} is not a multiple of {factor} (VAE x UNet downsampling)",
            f"use e.g. {max(factor, config.resolution // factor * factor)}",
        )
    for m in (parts.vae, parts.text_encoder, parts.unet):
        m.requires_grad_(False).eval()
    noise_scheduler = parts.scheduler(DDPMScheduler)

    dl = datalist if isinstance(datalist, Datalist) else load_datalist(datalist, data_root)
    if not dl.items("training"):
        raise S2S2InputError(dl.path, "has no training cases", "add a 'training' section with image and label entries")
    if any("label" not in e for e in dl.items("training")):
        raise S2S2InputError(
            dl.path, "has training cases without a label", "every training case needs a label to fine-tune a ControlNet"
        )
    volumes = VolumeCache(dl, "training", progress=progress, transform=preprocessing)
    slices = SliceDataset(volumes, labelled_only=config.labelled_only)
    data = ControlNetSliceDataset(slices, dl.label_map, UnitIntensity.for_modality(dl.modality), config.resolution)
    if len(data) == 0:
        raise S2S2InputError(dl.path, "has no training slices", "check the training cases")

    batches_per_epoch = math.ceil(len(data) / config.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accum)
    total = (
        config.epochs * steps_per_epoch
        if config.max_steps is None
        else min(config.max_steps, config.epochs * steps_per_epoch)
    )

    generator = torch.Generator("cpu").manual_seed(config.seed)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)
    state = None
    readable = (
        newest_readable(numbered_checkpoints(out / "checkpoints", STEP_DIR), _read_checkpoint) if resume else None
    )
    if readable is not None:
        ckpt, (state, controlnet) = readable
        changed = [k for k in _RESUME_FIXED if state["config"].get(k) != getattr(config, k)]
        if changed:
            raise S2S2InputError(
                ckpt,
                f"was written with different {', '.join(changed)}",
                "resume with the same settings, or start a new --out",
            )
    else:
        controlnet = controlnet_from_unet(parts.unet, parts.vae)
    controlnet.to(dev)
    if controlnet.dtype != torch.float32:
        controlnet.float()
    controlnet.train()

    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = get_scheduler(
        "constant_with_warmup" if config.lr_warmup_steps else "constant",
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=amp)
    step, losses = 0, []
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_states(state["rng"], generator)
        step, losses = int(state["step"]), list(state["losses"])

    out.mkdir(parents=True, exist_ok=True)
    for stale in [*(out / "checkpoints").glob(".tmp-*"), *(out / "checkpoints").glob(".old-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    run_info = {
        **asdict(config),
        "sd_dir": str(Path(sd_dir).resolve()),
        "sd_digest": folder_digest(sd_dir),
        "slices": len(data),
        "total_steps": total,
    }
    write_json(out / "train_config.json", run_info)

    def checkpoint() -> None:
        payload = {
            "step": step,
            "losses": losses,
            "config": asdict(config),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_states(generator),
        }
        _save_checkpoint(out, step, controlnet, payload, config.keep_checkpoints)

    resumed_from = step if state is not None else None
    bar = tqdm(total=total, initial=step, desc="controlnet", unit="step", disable=not progress)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        order = np.random.default_rng([config.seed, epoch]).permutation(len(data)).tolist()
        micro = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        loader = DataLoader(data, batch_sampler=micro[offset * config.grad_accum :], num_workers=config.num_workers)
        group: list[dict] = []
        for bi, batch in enumerate(loader):
            group.append(batch)
            last_of_epoch = offset * config.grad_accum + bi + 1 == batches_per_epoch
            if len(group) < config.grad_accum and not last_of_epoch:
                continue
            optimizer.zero_grad(set_to_none=True)
            total_loss = 0.0
            for b in group:
                loss = controlnet_loss(parts, controlnet, noise_scheduler, b, generator, autocast=amp)
                scaler.scale(loss / len(group)).backward()
                total_loss += float(loss.detach()) / len(group)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(controlnet.parameters(), config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            lr_scheduler.step()
            group = []
            step += 1
            losses.append(total_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss:.4f}", epoch=epoch)
            if callback is not None:
                callback(step, total_loss)
            if step % config.checkpoint_every == 0 or step == total:
                checkpoint()
            if step >= total:
                break
    bar.close()
    newest = latest_checkpoint(out)
    if newest is None or int(STEP_DIR.match(newest.name).group(1)) != step:
        checkpoint()  # e.g. resumed at the end already, or total == 0

    record = {
        "resolution": config.resolution,
        "base_model": {"sd_dir": run_info["sd_dir"], "sd_digest": run_info["sd_digest"]},
        "label_map": dl.label_map.name,
        "modality": dl.modality,
        "steps": step,
        "seed": config.seed,
    }

    def save(tmp: Path) -> None:
        controlnet.save_pretrained(tmp)
        write_json(tmp / CONTROLNET_RECORD, record)

    write_folder(out / "controlnet", save)
    write_json(out / "losses.json", losses)
    return TrainResult(controlnet_dir=out / "controlnet", steps=step, losses=losses, resumed_from=resumed_from)
