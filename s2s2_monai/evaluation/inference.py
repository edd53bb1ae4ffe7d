"""Run a 2D network over every axial slice of a volume and reassemble the 3D prediction.

Slices (last axis, RAS) go through the network in batches on the network's device; each batch
is resized to the network's input size when one is given, the logits are resized back to the
slice size, and the argmax lands straight in a preallocated (X, Y, Z) tensor on the same device
(no round trip through the host).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["predict_volume", "network_device", "first_output", "as_volume_tensor"]


def as_volume_tensor(x, what: str = "volume") -> torch.Tensor:
    """(X, Y, Z) or (1, X, Y, Z) ndarray/tensor/MetaTensor -> plain (X, Y, Z) tensor (no copy when possible)."""
    t = (
        x.as_tensor()
        if hasattr(x, "as_tensor")
        else x
        if isinstance(x, torch.Tensor)
        else torch.as_tensor(np.asarray(x))
    )
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) or (1, X, Y, Z) {what}, got shape {tuple(t.shape)}")
    return t


def network_device(network: torch.nn.Module, fallback: torch.device | str | None = None) -> torch.device:
    """Device of the network's first parameter or buffer (``fallback`` or CPU when it has none)."""
    for t in network.parameters():
        return t.device
    for t in network.buffers():
        return t.device
    return torch.device(fallback or "cpu")


def first_output(out) -> torch.Tensor:
    """Logits tensor of a network output: the tensor itself, the first of a tuple/list, or ``out["pred"]``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return first_output(out[0])
    if isinstance(out, dict):
        for key in ("pred", "logits", "out"):
            if key in out:
                return first_output(out[key])
    raise TypeError(f"cannot find the logits in a network output of type {type(out).__name__}")


def _resize(x: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(x, size=tuple(int(s) for s in size), mode=mode, align_corners=align)


@torch.inference_mode()
def predict_volume(
    network: torch.nn.Module,
    image,
    input_size: Sequence[int] | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    mode: str = "bilinear",
    return_logits: bool = False,
) -> torch.Tensor:
    """Segment a volume slice by slice with a 2D network.

    Args:
        network: 2D network mapping (B, 1, H, W) to logits (B, C, H, W); put in eval mode here.
        image: (X, Y, Z) or (1, X, Y, Z) tensor/ndarray, already intensity-transformed, RAS.
        input_size: (H, W) the network expects; slices are resized to it (``mode``) and the
            logits resized back (bilinear). ``None`` feeds slices at their own size.
        batch_size: slices per forward pass.
        device: where to run; default the network's device.
        mode: interpolation of the image slices (``"bilinear"``, ``"bicubic"``, ``"nearest"``, ...).
        return_logits: return float (C, X, Y, Z) logits instead of the label volume.

    Returns:
        int64 (X, Y, Z) labels (argmax over classes), or (C, X, Y, Z) logits, on ``device``.
    """
    device = torch.device(device) if device is not None else network_device(network)
    vol = as_volume_tensor(image)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = network.training
    network.eval()
    x_size, y_size, z_size = vol.shape
    slices = vol.to(device=device, dtype=torch.float32).permute(2, 0, 1).unsqueeze(1)  # (Z, 1, X, Y)
    labels = None if return_logits else torch.empty((x_size, y_size, z_size), dtype=torch.int64, device=device)
    logits_out = None
    try:
        for start in range(0, z_size, batch_size):
            batch = slices[start : start + batch_size]
            if input_size is not None:
                batch = _resize(batch, input_size, mode)
            logits = first_output(network(batch)).float()
            logits = _resize(logits, (x_size, y_size), "bilinear")
            stop = start + batch.shape[0]
            if return_logits:
                if logits_out is None:
                    logits_out = torch.empty(
                        (logits.shape[1], x_size, y_size, z_size), dtype=torch.float32, device=device
                    )
                logits_out[..., start:stop] = logits.permute(1, 2, 3, 0)
            else:
                labels[..., start:stop] = logits.argmax(1).permute(1, 2, 0)
    finally:
        network.train(was_training)
    return logits_out if return_logits else labels
