"""Feature taps: read intermediate features of any network by module name, via forward hooks.

A tap never changes the network: it registers a forward hook on one named submodule
(``network.get_submodule(name)``) and, while *armed*, records what that module returns. The S2S2
consistency handlers arm a tap at the start of each training iteration and read one feature per
forward pass (x0, then x1).

:data:`TAP_PRESETS` gives encoder/decoder taps for MONAI 2D networks:

- ``basic_unet`` (:class:`monai.networks.nets.BasicUNet`): bottleneck ``down_4``, pre-head ``upcat_1``.
- ``unetr`` (:class:`monai.networks.nets.UNETR`, ViT encoder + CNN decoder, TransUNet spirit):
  ViT tokens ``vit`` output 0 (B, N, hidden) with cosine over the hidden dim, pre-head ``decoder2``.
- ``swin_unetr`` (:class:`monai.networks.nets.SwinUNETR`): deepest Swin stage ``swinViT`` output -1,
  pre-head ``decoder1``.
- ``segresnet`` (:class:`monai.networks.nets.SegResNet`, default 3 up-blocks): ``down_layers.3``,
  pre-head ``up_layers.2``.
- ``transunet`` (:class:`s2s2_monai.networks.TransUNet`, the paper's Table 6 base model): the normed ViT
  tokens ``transformer.encoder.encoder_norm`` (B, 196, 768), cosine over the hidden dim; pre-head ``decoder``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from s2s2_monai.networks.wrappers import unwrap_network

__all__ = [
    "TapSpec",
    "FeatureTap",
    "TAP_PRESETS",
    "get_tap_preset",
    "preset_for_network",
    "unwrap_network",
    "resolve_module",
]


@dataclass(frozen=True)
class TapSpec:
    """Where to read a feature.

    Args:
        module: dotted submodule name, as in ``network.named_modules()`` (e.g. ``"vit"``, ``"down_4"``).
        channel_dim: dimension of the recorded tensor that holds channels / hidden features
            (1 for (B, C, H, W) maps, -1 for (B, N, C) tokens); the cosine is taken over it.
        output_index: element to take when the module returns a tuple/list (``None``: the output itself).
    """

    module: str
    channel_dim: int = 1
    output_index: int | None = None

    @classmethod
    def of(cls, spec: TapSpec | dict | str) -> TapSpec:
        """A :class:`TapSpec` from a spec, a dict of its fields (bundle configs) or a module name."""
        if isinstance(spec, TapSpec):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict):
            return cls(**spec)
        raise TypeError(f"tap must be a TapSpec, a dict or a module name, got {type(spec).__name__}")


#: Encoder ("enc") and decoder ("dec") taps of MONAI 2D networks.
TAP_PRESETS: dict[str, dict[str, TapSpec]] = {
    "basic_unet": {"enc": TapSpec("down_4"), "dec": TapSpec("upcat_1")},
    "unetr": {"enc": TapSpec("vit", channel_dim=-1, output_index=0), "dec": TapSpec("decoder2")},
    "swin_unetr": {"enc": TapSpec("swinViT", output_index=-1), "dec": TapSpec("decoder1")},
    "segresnet": {"enc": TapSpec("down_layers.3"), "dec": TapSpec("up_layers.2")},
    "transunet": {"enc": TapSpec("transformer.encoder.encoder_norm", channel_dim=-1), "dec": TapSpec("decoder")},
}

_PRESET_OF_CLASS = {
    "BasicUNet": "basic_unet",
    "BasicUnet": "basic_unet",
    "UNETR": "unetr",
    "SwinUNETR": "swin_unetr",
    "SegResNet": "segresnet",
    "TransUNet": "transunet",
}


def get_tap_preset(name: str) -> dict[str, TapSpec]:
    """The ``{"enc": TapSpec, "dec": TapSpec}`` preset called ``name``.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    try:
        return TAP_PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown tap preset {name!r}; known: {sorted(TAP_PRESETS)}") from None


def preset_for_network(network: nn.Module) -> dict[str, TapSpec]:
    """The tap preset matching the class of ``network`` (wrappers removed).

    Raises:
        KeyError: no preset for this class.
    """
    cls = type(unwrap_network(network)).__name__
    if cls not in _PRESET_OF_CLASS:
        raise KeyError(
            f"no tap preset for {cls}; give TapSpec(module=...) names explicitly (presets: {sorted(TAP_PRESETS)})"
        )
    return TAP_PRESETS[_PRESET_OF_CLASS[cls]]


def resolve_module(network: nn.Module, name: str) -> nn.Module:
    """Submodule ``name`` of ``network`` (wrappers removed).

    Raises:
        ValueError: no such submodule; the message suggests close names.
    """
    net = unwrap_network(network)
    try:
        return net.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5)
        raise ValueError(
            f"{type(net).__name__} has no submodule {name!r}; close names: {close or names[:10]}"
        ) from None


def _select(output: Any, index: int | None) -> torch.Tensor:
    if index is not None:
        output = output[index]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"tapped output is {type(output).__name__}, not a tensor; set TapSpec.output_index")
    return output


class FeatureTap:
    """A forward hook on one submodule that records its output while armed.

    Args:
        network: the network (may be wrapped in DDP / DataParallel / ``torch.compile``).
        spec: what to tap (:class:`TapSpec`, dict or module name).

    Example::

        tap = FeatureTap(net, TapSpec("vit", channel_dim=-1, output_index=0))
        with tap:
            net(x0); net(x1)
        f0, f1 = tap.features
    """

    def __init__(self, network: nn.Module, spec: TapSpec | dict | str) -> None:
        self.spec = TapSpec.of(spec)
        self.module = resolve_module(network, self.spec.module)
        self.features: list[torch.Tensor] = []
        self.armed = False
        self._handle = self.module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.armed:
            self.features.append(_select(output, self.spec.output_index))

    def arm(self) -> None:
        """Start recording (clears earlier records)."""
        self.features = []
        self.armed = True

    def disarm(self) -> None:
        """Stop recording and drop the records (and the graphs they hold)."""
        self.armed = False
        self.features = []

    def remove(self) -> None:
        """Remove the hook from the network."""
        self.disarm()
        self._handle.remove()

    def __enter__(self) -> FeatureTap:
        self.arm()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.armed = False
