"""The ControlNet conditioning image: a label map rendered as a colour image, and the grid changes.

Colours come from a fixed table, the PASCAL VOC segmentation palette (bit-interleaved class id:
1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), ...; background 0 = black), so a class id
always has the same colour whatever the dataset or the process. Rendered images are float32
``(B, 3, R, R)`` in ``[0, 1]`` (the range the diffusers ControlNet pipeline and training expect
for the conditioning image, without normalisation).

Grid changes keep the label and the image pixel-aligned: masks go to the generation grid with
nearest-neighbour (``nearest-exact``, pixel centres), generated images come back to the mask's own
``H x W`` with bilinear interpolation (``align_corners=False``, antialiased when shrinking). Both
use the same pixel-centre convention, so a structure stays where the mask put it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["voc_palette", "render_label_map", "resize_masks", "resize_images"]


@lru_cache(maxsize=1)
def _palette_table() -> np.ndarray:
    table = np.zeros((256, 3), np.uint8)
    for cid in range(256):
        c, r, g, b = cid, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        table[cid] = (r, g, b)
    table.setflags(write=False)
    return table


def voc_palette(num_ids: int = 256) -> np.ndarray:
    """uint8 ``(num_ids, 3)`` RGB colours of class ids ``0..num_ids-1`` (PASCAL VOC palette)."""
    if not 1 <= num_ids <= 256:
        raise ValueError(f"num_ids must be in 1..256, got {num_ids}")
    return _palette_table()[:num_ids]


def _as_mask_tensor(masks) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(masks)) if not isinstance(masks, torch.Tensor) else masks
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"masks must be (H, W) or (B, H, W), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("masks must hold integer class ids")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) > 255):
        raise ValueError("mask ids must be in 0..255")
    return t.long()


def resize_masks(masks, size: int | tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour (pixel-centre) resize of ``(B, H, W)`` id masks to ``size``; returns int64."""
    t = _as_mask_tensor(masks)
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def render_label_map(masks, resolution: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Render id masks as colour images.

    Args:
        masks: ``(H, W)`` or ``(B, H, W)`` integer class ids (numpy or torch), 0..255.
        resolution: output size (int for square); ``None`` keeps ``H x W``.

    Returns:
        float32 ``(B, 3, R, R)`` in ``[0, 1]``: VOC palette colour of each id / 255.
    """
    t = _as_mask_tensor(masks)
    if resolution is not None:
        t = resize_masks(t, resolution)
    lut = torch.from_numpy(voc_palette().astype(np.float32) / 255.0).to(t.device)
    return lut[t].permute(0, 3, 1, 2).contiguous()


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, C, h, w)`` images to ``size`` (antialiased when shrinking)."""
    size = tuple(int(s) for s in size)
    if tuple(images.shape[-2:]) == size:
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)
