"""The paper's generator: Stable Diffusion + a fine-tuned ControlNet, DDIM sampling (paper App. C).

``StableDiffusionControlNetPipeline`` with a ``DDIMScheduler`` built from the SD folder's scheduler
config, 50 steps, guidance 9.0, eta 0, full denoising from noise (strength 1.0), in float32 (the
reference samples in fp32; ``dtype="float16"`` is the named alternative, used on CUDA only). Masks are
batched, but every image has its own ``torch.Generator`` (on the CPU, so CPU and GPU start from the same
latents) seeded from ``(mask seed, member index)``; with eta 0 DDIM draws no further noise, so an image
depends only on its mask, prompt and seed, not on the batch it was made in or on the process that made it
(up to floating-point reduction order of the accelerator's kernels, see :meth:`DiffusionGenerator.generate`).

Ranges (diffusers' conventions, not the reference's): the conditioning image (hint) is the rendered label
map in ``[0, 1]``, the pipeline's output image is in ``[0, 1]`` (the VAE decodes to ``[-1, 1]``; fine-tuning
maps its targets, the unit-space slices in ``[0, 1]``, to ``[-1, 1]``). The reference (lllyasviel ControlNet
code in ymp5078/Semantic-Stacking) feeds the hint in ``[0, 255]`` and the target slice in ``[0, 1]`` as is.

Output: the RGB image in ``[0, 1]`` -> mean of the three channels (the model was fine-tuned on grey slices
replicated to RGB) -> resized to the mask's own ``H x W`` with ``resize_mode`` -> float32 unit space:

- ``"nearest"`` (default, the paper's: the reference resizes generated images with ``scipy.ndimage.zoom``
  ``order=0``): nearest neighbour on pixel centres (torch ``nearest-exact``, the convention of the masks'
  resize, so members stay aligned with their labels); a resized member holds only values of the generated one;
- ``"bilinear"``: bilinear, antialiased when shrinking (what this project did before; a stack built that
  way is reused with ``resize_mode="bilinear"``, and ``dtype="float16"`` if it was built on CUDA);
- ``"bicubic"``: bicubic, antialiased when shrinking, clamped to ``[0, 1]``.

The mode is part of :meth:`DiffusionGenerator.settings` (its ``render`` version, read back by
:func:`resize_mode_of`), hence of the manifest and of every entry key, so a stack made one way is never
reused the other way. When the generation resolution equals the slice grid
(Synapse: 512 x 512 slices at 512 px) no resize happens whatever the mode. The weight-free appearance
generator draws its images on the slice grid itself: it resizes nothing. (The reference's order-0 zoom
takes the generated image straight to the network input, 512 -> 224 for Synapse, in its training loader;
here that step is the training transform's resize of ``image_stack``, not this module's.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LabelMap, get_label_map
from s2s2_monai.stack.base import StackGenerator
from s2s2_monai.stack.conditioning import render_label_map, resize_images
from s2s2_monai.stack.sd_folder import (
    CONTROLNET_RECORD,
    check_controlnet_folder,
    check_sd_folder,
    controlnet_record,
    folder_digest,
    load_controlnet,
    load_sd_components,
)

__all__ = ["DTYPES", "RESIZE_MODES", "DiffusionGenerator", "member_seed", "resize_members", "resize_mode_of"]

#: resize of a generated image back to the mask grid: name -> token of the ``render`` version in ``settings()``
RESIZE_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}
#: default resize: order 0, the reference's (``zoom(gen_image, ..., order=0)``)
DEFAULT_RESIZE_MODE = "nearest"
#: generation precisions; float32 is the reference's, float16 a named alternative (CUDA only)
DTYPES = ("float32", "float16")
logger = logging.getLogger(__name__)

#: generation size of a ControlNet folder that records no training resolution (SD 2.x base, the paper's)
DEFAULT_RESOLUTION = 512


def _render_version(resize_mode: str) -> str:
    """Version of the conditioning rendering + output conversion (``settings()["render"]``).

    ``"bilinear"`` gives the string this project wrote before the resize became a setting, so such stacks
    keep their identity (and their entry keys) under ``resize_mode="bilinear"``.
    """
    return f"voc-palette/nearest-exact/rgb-mean/{RESIZE_MODES[resize_mode]}-v1"


def resize_mode_of(settings: dict) -> str | None:
    """The ``resize_mode`` a diffusion stack was made with, from its manifest ``settings`` (``None``: unknown)."""
    render = str((settings or {}).get("render", ""))
    return next((mode for mode in RESIZE_MODES if render == _render_version(mode)), None)


def _check_choice(value, choices, what: str, option: str):
    if not isinstance(value, str) or value not in choices:
        raise S2S2InputError(
            None,
            f"{option}: got {value!r}, expected one of {', '.join(choices)} ({what})",
            f"pass one of {', '.join(choices)}",
        )
    return value


def resize_members(images: torch.Tensor, size: tuple[int, int], mode: str = DEFAULT_RESIZE_MODE) -> torch.Tensor:
    """Resize generated ``(B, C, h, w)`` images in ``[0, 1]`` to ``size`` with ``mode`` (see module doc).

    ``"nearest"`` samples pixel centres (``nearest-exact``): every output value is an input value.
    ``"bilinear"`` and ``"bicubic"`` are antialiased when shrinking; the result is clamped to ``[0, 1]``.
    """
    _check_choice(mode, RESIZE_MODES, "resize of generated members to the slice grid", "resize_mode")
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size:
        return images
    if mode == "nearest":
        return F.interpolate(images, size=size, mode="nearest-exact")
    if mode == "bilinear":
        return resize_images(images, size).clamp_(0.0, 1.0)  # the former behaviour, bit for bit
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp_(0.0, 1.0)


def member_seed(seed: int, member: int) -> int:
    """Seed of member ``member`` of the stack of a mask with seed ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1, np.uint64)[0] >> 1)


class DiffusionGenerator(StackGenerator):
    """Stable Diffusion + ControlNet stack generator.

    Args:
        sd_dir: local Stable Diffusion folder (diffusers layout).
        controlnet_dir: ControlNet folder from ``s2s2 controlnet train`` (``save_pretrained``).
        resolution: square generation size; default the ControlNet's training resolution (its
            ``s2s2_controlnet.json``), else 512. Another value than the one it was trained at is refused.
            Must be a multiple of the VAE x UNet downsampling.
        steps: DDIM steps.
        guidance_scale: classifier-free guidance scale.
        eta: DDIM eta (0 = deterministic).
        batch_size: masks per pipeline call (each contributes ``n`` images).
        device: torch device; default CUDA when available.
        label_map: label map (or its name) the masks use; ids outside it are rejected.
        progress: show a progress bar over the batches.
        resize_mode: resize of the generated image back to each mask's grid: ``"nearest"`` (default,
            the paper's order 0), ``"bilinear"`` (the former default) or ``"bicubic"``.
        dtype: ``"float32"`` (default, the paper's) or ``"float16"`` (half precision on CUDA; on another
            device generation stays float32, and ``settings()["dtype"]`` records what was used).
    """

    name = "diffusion"

    def __init__(
        self,
        sd_dir: str | os.PathLike,
        controlnet_dir: str | os.PathLike,
        resolution: int | None = None,
        steps: int = 50,
        guidance_scale: float = 9.0,
        eta: float = 0.0,
        batch_size: int = 4,
        device: str | torch.device | None = None,
        label_map: LabelMap | str | None = "synapse",
        progress: bool = True,
        resize_mode: str = DEFAULT_RESIZE_MODE,
        dtype: str = "float32",
    ) -> None:
        from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

        self.resize_mode = _check_choice(
            resize_mode, RESIZE_MODES, "resize of generated members to the slice grid", "resize_mode"
        )
        _check_choice(dtype, DTYPES, "generation precision", "dtype")
        self.sd_dir = check_sd_folder(sd_dir)
        self.controlnet_dir = check_controlnet_folder(controlnet_dir, self.sd_dir)
        trained_at = (controlnet_record(self.controlnet_dir) or {}).get("resolution")
        if resolution is None:
            resolution = trained_at or DEFAULT_RESOLUTION
        elif trained_at and int(resolution) != int(trained_at):
            raise S2S2InputError(
                self.controlnet_dir / CONTROLNET_RECORD,
                f"this ControlNet was fine-tuned at {trained_at} px; generation at {resolution} px asked",
                f"leave the resolution unset (--resolution / stack_resolution) to generate at {trained_at}, or fine-tune "
                f"at {resolution} (s2s2 controlnet train --resolution {resolution})",
            )
        if steps < 1 or batch_size < 1 or resolution < 8:
            raise ValueError("steps and batch_size must be >= 1, resolution >= 8")
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float16 if dtype == "float16" and self.device.type == "cuda" else torch.float32
        if dtype == "float16" and self.dtype != torch.float16:
            logger.warning(
                "dtype float16 asked on %s: generating in float32 (half precision is CUDA only)", self.device
            )
        self.resolution, self.steps, self.guidance_scale, self.eta = (
            int(resolution),
            int(steps),
            float(guidance_scale),
            float(eta),
        )
        self.batch_size, self.progress = int(batch_size), progress
        self.label_map = get_label_map(label_map)
        parts = load_sd_components(self.sd_dir, torch_dtype=self.dtype)
        controlnet = load_controlnet(self.controlnet_dir, self.sd_dir, torch_dtype=self.dtype)
        factor = 2 ** (len(parts.vae.config.block_out_channels) - 1) * 2 ** (
            len(parts.unet.config.block_out_channels) - 1
        )
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {factor} for this model")
        self.pipe = StableDiffusionControlNetPipeline(
            vae=parts.vae,
            text_encoder=parts.text_encoder,
            tokenizer=parts.tokenizer,
            unet=parts.unet,
            controlnet=controlnet,
            scheduler=parts.scheduler(DDIMScheduler),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)

    def settings(self) -> dict:
        """Everything that changes the output: model contents, sampler, resolution, precision, resize back."""
        return {
            "generator": self.name,
            "sd_digest": folder_digest(self.sd_dir),
            "controlnet_digest": folder_digest(self.controlnet_dir),
            "scheduler": "DDIM",
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "eta": self.eta,
            "strength": 1.0,
            "resolution": self.resolution,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device_type": self.device.type,
            "render": _render_version(self.resize_mode),
        }

    def _check(self, masks: np.ndarray, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
        if len(prompts) != len(masks) or len(seeds) != len(masks):
            raise ValueError(
                f"need one prompt and one seed per mask: {len(masks)} masks, {len(prompts)} prompts, {len(seeds)} seeds"
            )
        if self.label_map is not None and masks.size:
            unknown = sorted(set(np.unique(masks).tolist()) - self.label_map.valid_ids())
            if unknown:
                raise ValueError(f"masks hold ids {unknown} that label map {self.label_map.name!r} does not define")
        return masks

    @torch.no_grad()
    def generate(self, masks: np.ndarray, prompts: list[str], seeds: list[int], n: int) -> np.ndarray:
        """Generate ``n`` members per mask: float32 ``(B, n, H, W)`` in ``[0, 1]`` on each mask's grid.

        Every image is seeded by :func:`member_seed` ``(seeds[b], j)``. On the CPU the result
        does not depend on ``batch_size`` (checked by the tests); on a GPU, kernels chosen per
        batch shape may change the last bits, so keep a fixed grouping where bit-identity matters.
        """
        masks = self._check(masks, prompts, seeds)
        b_total, h, w = masks.shape
        out = np.empty((b_total, n, h, w), np.float32)
        starts = range(0, b_total, self.batch_size)
        for s in tqdm(starts, desc="diffusion stacks", unit="batch", disable=not self.progress or len(starts) < 2):
            sl = slice(s, min(s + self.batch_size, b_total))
            cond = render_label_map(masks[sl], self.resolution).to(self.device, self.dtype)
            generators = [
                torch.Generator("cpu").manual_seed(member_seed(seed, j)) for seed in seeds[sl] for j in range(n)
            ]
            images = self.pipe(
                prompt=list(prompts[sl]),
                image=cond,
                height=self.resolution,
                width=self.resolution,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                eta=self.eta,
                num_images_per_prompt=n,
                generator=generators,
                output_type="pt",
            ).images  # (b*n, 3, R, R) in [0, 1], ordered mask-major
            grey = images.float().mean(dim=1, keepdim=True)
            grey = resize_members(grey, (h, w), self.resize_mode).clamp_(0.0, 1.0)
            out[sl] = grey.reshape(-1, n, h, w).cpu().numpy()
        return out
