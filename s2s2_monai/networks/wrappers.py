"""The user's network inside the wrappers that training adds (DDP, DataParallel, ``torch.compile``)."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap_network"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The user's network inside DistributedDataParallel / DataParallel / ``torch.compile`` wrappers."""
    while True:
        if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            network = network.module
        elif hasattr(network, "_orig_mod") and isinstance(network._orig_mod, nn.Module):
            network = network._orig_mod
        else:
            return network
