"""FTN + STN of cooperative training (Chen et al., MICCAI 2021), built from MONAI blocks.

FTN (fast task network)
    a shared image encoder maps the image to the *image code* ``z_i``; a *decoupler* (two 3x3
    conv layers, the last followed by ReLU) maps ``z_i`` to the *shape code* ``z_s``; a
    segmentation decoder maps ``z_s`` to logits and an image decoder maps ``z_i`` back to the image.
STN (shape correction network)
    a denoising shape autoencoder: class probabilities (or the one-hot ground truth) -> shape
    code -> refined logits.

Encoders are a stem conv and ``len(channels) - 1`` stride-2 MONAI ``ResidualUnit`` s, then a 1x1
conv + norm + ReLU (the code is non-negative, as upstream); decoders are nearest (segmentation,
shape) or transposed-conv (image) upsampling, each followed by a ``ResidualUnit``, and a 1x1 head.
The default channels ``(16, 32, 64, 128, 128)`` are the upstream ``FCN_16_standard`` sizes
(512 // 4 latent channels at 1/16 of the input size).

:class:`CooperativeNet` is an ordinary ``nn.Module`` whose ``forward(x)`` returns segmentation
logits ``(B, K, H, W)`` (FTN, then STN when ``refine=True``), so MONAI inferers,
:func:`s2s2_monai.evaluation.inference.predict_volume` and checkpoints work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit, UpSample
from torch import nn

__all__ = ["CodeEncoder", "CodeDecoder", "Decoupler", "FTN", "STN", "CooperativeNet", "to_shape_input"]

_ACT = ("leakyrelu", {"negative_slope": 0.2})


class CodeEncoder(nn.Module):
    """Image (or shape map) -> non-negative latent code at ``1 / 2 ** (len(channels) - 1)`` resolution.

    Args:
        in_channels: input channels (1 for images, K for shape maps).
        channels: stem channels then one entry per stride-2 level.
        latent_channels: channels of the code (default ``channels[-1]``).
        norm: MONAI norm name of every block.
    """

    def __init__(
        self, in_channels: int, channels: Sequence[int], latent_channels: int | None = None, norm: str | tuple = "batch"
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"channels needs a stem and at least one level, got {tuple(channels)}")
        latent_channels = int(latent_channels or channels[-1])
        self.stem = ResidualUnit(2, in_channels, channels[0], strides=1, subunits=2, act=_ACT, norm=norm)
        self.down = nn.Sequential(
            *[
                ResidualUnit(2, channels[i], channels[i + 1], strides=2, subunits=2, act=_ACT, norm=norm)
                for i in range(len(channels) - 1)
            ]
        )
        self.head = Convolution(2, channels[-1], latent_channels, kernel_size=1, act="relu", norm=norm)
        self.factor = 2 ** (len(channels) - 1)
        self.latent_channels = latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.factor or x.shape[-1] % self.factor:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} must be divisible by {self.factor} (resize it, e.g. input_size)"
            )
        return self.head(self.down(self.stem(x)))


class Decoupler(nn.Module):
    """The FTN's code decoupler ``z_i -> z_s``: conv3x3-norm-LeakyReLU, conv3x3-norm-ReLU."""

    def __init__(self, in_channels: int, out_channels: int | None = None, norm: str | tuple = "batch") -> None:
        super().__init__()
        out_channels = int(out_channels or in_channels)
        self.layers = nn.Sequential(
            Convolution(2, in_channels, out_channels, kernel_size=3, act=_ACT, norm=norm),
            Convolution(2, out_channels, out_channels, kernel_size=3, act="relu", norm=norm),
        )

    def forward(self, z_i: torch.Tensor) -> torch.Tensor:
        return self.layers(z_i)


class CodeDecoder(nn.Module):
    """Latent code -> output map at full resolution (``levels`` x2 upsamplings, then a 1x1 head).

    Args:
        in_channels: code channels.
        out_channels: output channels (K logits, or 1 for the image).
        channels: encoder channels; level ``i`` outputs ``channels[max(levels - 2 - i, 0)]`` (at least
            ``channels[0]``), mirroring the encoder as upstream.
        up_mode: ``"nearest"`` (segmentation/shape decoders) or ``"deconv"`` (image decoder).
        norm: MONAI norm name.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        up_mode: str = "nearest",
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        levels = len(channels) - 1
        outs = [channels[max(levels - 2 - i, 0)] for i in range(levels)]
        blocks, prev = [], in_channels
        for c in outs:
            if up_mode == "deconv":
                up = UpSample(2, prev, prev, scale_factor=2, kernel_size=2, mode="deconv")
            elif up_mode == "nearest":
                up = UpSample(
                    2, prev, prev, scale_factor=2, mode="nontrainable", interp_mode="nearest", align_corners=None
                )
            else:
                raise ValueError(f"up_mode must be 'nearest' or 'deconv', got {up_mode!r}")
            blocks.append(nn.Sequential(up, ResidualUnit(2, prev, c, strides=1, subunits=2, act=_ACT, norm=norm)))
            prev = c
        self.up = nn.Sequential(*blocks)
        self.head = Convolution(2, prev, out_channels, kernel_size=1, conv_only=True)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Pre-head feature map (B, C, H, W) (the S2S2 decoder tap)."""
        return self.up(z)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(z))


class FTN(nn.Module):
    """Fast task network: ``encode -> (z_i, z_s)``, ``segment(z_s)``, ``reconstruct(z_i)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        latent_channels: int | None = None,
        norm: str | tuple = "batch",
    ) -> None:
        super().__init__()
        self.encoder = CodeEncoder(in_channels, channels, latent_channels, norm)
        lc = self.encoder.latent_channels
        self.decoupler = Decoupler(lc, lc, norm)
        self.seg_decoder = CodeDecoder(lc, out_channels, channels, "nearest", norm)
        self.image_decoder = CodeDecoder(lc, in_channels, channels, "deconv", norm)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image -> (image code ``z_i``, shape code ``z_s``)."""
        z_i = self.encoder(x)
        return z_i, self.decoupler(z_i)

    def segment(self, z_s: torch.Tensor) -> torch.Tensor:
        return self.seg_decoder(z_s)

    def reconstruct(self, z_i: torch.Tensor) -> torch.Tensor:
        return self.image_decoder(z_i)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(self.encode(x)[1])


def to_shape_input(seg: torch.Tensor, num_classes: int) -> torch.Tensor:
    """STN input: softmax of logits (B, K, H, W), or one-hot of a label map (B, H, W) / (B, 1, H, W)."""
    if seg.ndim == 4 and seg.shape[1] == num_classes and seg.is_floating_point() and num_classes > 1:
        return torch.softmax(seg, dim=1)
    labels = seg[:, 0] if seg.ndim == 4 else seg
    labels = labels.round().long() if labels.is_floating_point() else labels.long()
    return F.one_hot(labels.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2).float()


class STN(nn.Module):
    """Shape correction network: a denoising autoencoder on class-probability maps."""

    def __init__(
        self, num_classes: int, channels: Sequence[int], latent_channels: int | None = None, norm: str | tuple = "batch"
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.encoder = CodeEncoder(num_classes, channels, latent_channels, norm)
        self.decoder = CodeDecoder(self.encoder.latent_channels, num_classes, channels, "nearest", norm)

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        """Logits (softmaxed here) or a label map (one-hot here) -> refined logits (B, K, H, W)."""
        return self.decoder(self.encoder(to_shape_input(seg, self.num_classes)))


class CooperativeNet(nn.Module):
    """FTN + STN as one MONAI-compatible 2D segmentation network.

    Args:
        in_channels: image channels.
        out_channels: number of classes K (background included).
        channels: encoder channels (stem, then one per stride-2 level); the input H, W must be
            divisible by ``2 ** (len(channels) - 1)``.
        latent_channels: channels of ``z_i`` / ``z_s`` (default ``channels[-1]``).
        norm: MONAI norm name (``"batch"`` as upstream, ``"instance"``...).
        refine: ``forward`` returns ``STN(FTN(x))`` (True) or the FTN logits (False).
        spatial_dims: must be 2 (kept for MONAI-style configs).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        channels: Sequence[int] = (16, 32, 64, 128, 128),
        latent_channels: int | None = None,
        norm: str | tuple = "batch",
        refine: bool = True,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"CooperativeNet is a 2D network, got spatial_dims={spatial_dims}")
        self.num_classes = int(out_channels)
        self.refine = bool(refine)
        self.ftn = FTN(in_channels, out_channels, tuple(channels), latent_channels, norm)
        self.stn = STN(out_channels, tuple(channels), latent_channels, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.ftn(x)
        return self.stn(logits) if self.refine else logits
