"""Networks not in MONAI: TransUNet (R50-ViT-B/16 hybrid) and its pretrained-weight loaders."""

from __future__ import annotations

from .transunet import TRANSUNET_TAPS, TransUNet
from .transunet_weights import load_pretrained, load_r50_vit_npz, load_timm_weights, resize_position_embedding

__all__ = [
    "TRANSUNET_TAPS",
    "TransUNet",
    "load_pretrained",
    "load_r50_vit_npz",
    "load_timm_weights",
    "resize_position_embedding",
]
