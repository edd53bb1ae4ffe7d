"""numpy / torch interplay without importing torch: the CPU evaluation path never loads it (~1 s)."""

from __future__ import annotations

import sys

__all__ = ["is_torch", "to_numpy"]


def is_torch(x) -> bool:
    """Whether ``x`` is a torch tensor (MetaTensor included), without importing torch: if torch is
    not loaded, nothing is one."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(x):
    """A numpy view (CPU tensors, arrays) or copy (tensors on a device) of an array, tensor or MetaTensor."""
    if hasattr(x, "as_tensor"):  # MetaTensor: its plain tensor
        x = x.as_tensor()
    if is_torch(x):
        return x.detach().cpu().numpy()
    import numpy as np

    return np.asarray(x)
