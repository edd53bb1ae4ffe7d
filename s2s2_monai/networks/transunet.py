"""2D TransUNet (Chen et al. 2021), R50-ViT-B/16 hybrid: the base model of the S2S2 paper's Table 6.

Follows the reference implementation (Beckschen/TransUNet ``networks/vit_seg_modeling.py`` and
``vit_seg_modeling_resnet_skip.py``, config ``R50-ViT-B_16`` with ``n_skip=3`` and the grid
``img_size / 16`` that its ``train.py`` sets). Submodule and parameter names are the reference's, so a
checkpoint saved by the reference code loads with ``load_state_dict`` and the parameter count is the
reference's (105,277,081 for 9 classes at 224x224):

- ``transformer.embeddings.hybrid_model``: ResNetV2 root (weight-standardised 7x7/2 conv, GroupNorm,
  ReLU, then a 3x3/2 max-pool without padding) and three stages of bottleneck units (``block_units``);
  the stage outputs give the skips 64ch @ H/2, 256 @ H/4, 512 @ H/8, zero-padded bottom/right to the
  exact size as in the reference.
- ``transformer.embeddings``: 1x1 patch conv on the 1024ch H/16 map, learned position embeddings, dropout.
- ``transformer.encoder``: ViT blocks (pre-norm, LayerNorm eps 1e-6, GELU MLP) and ``encoder_norm``.
- ``decoder`` (CUP): ``conv_more`` (3x3, 512ch) and four upsampling blocks (bilinear x2 with
  ``align_corners=True`` as ``nn.UpsamplingBilinear2d``, skip concat, two conv-BN-ReLU).
- ``segmentation_head``: 3x3 conv to ``out_channels``.

Feature taps (:data:`TRANSUNET_TAPS`): ``"transformer.encoder.encoder_norm"`` outputs the normed ViT
tokens (B, N, hidden), N = (H/16)(W/16); ``"decoder"`` outputs the decoder map (B, 16, H, W) before the head.

Generalisations that leave the reference configuration unchanged: non-square ``img_size``, skip channels
derived from the ResNet width (the reference hard-codes ``[512, 256, 64]``, its values at width 64), and
input channels other than 1/3 (the root conv then takes them). Pretrained encoder weights:
:mod:`s2s2_monai.networks.transunet_weights`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TRANSUNET_TAPS", "TransUNet"]

#: Module names of the encoder tap (normed ViT tokens, channel dim -1) and decoder tap (pre-head map).
TRANSUNET_TAPS: dict[str, str] = {"enc": "transformer.encoder.encoder_norm", "dec": "decoder"}


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (per output channel, eps 1e-5 as the reference)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, correction=0)
        w = (self.weight - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Bottleneck(nn.Module):
    """ResNet bottleneck unit, conv-GN(-ReLU) x3 plus a projected shortcut (reference ``PreActBottleneck``).

    Despite the reference's class name, each conv is followed by its norm (no pre-activation);
    the stride sits on the 3x3 conv. The projection norm ``gn_proj`` has one group per channel, as in the
    reference.
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv1 = StdConv2d(cin, cmid, 1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = StdConv2d(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.conv3 = StdConv2d(cmid, cout, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = StdConv2d(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2(nn.Module):
    """Three-stage R50 trunk of the hybrid; returns the H/16 map and the skips (deepest first).

    Args:
        in_channels: input channels of the root conv.
        block_units: units per stage (R50: (3, 4, 9)).
        width_factor: channel multiplier (width ``64 * width_factor``, a multiple of 32).
    """

    def __init__(self, in_channels: int, block_units: Sequence[int], width_factor: float) -> None:
        super().__init__()
        w = self.width = int(64 * width_factor)
        self.root = nn.Sequential(
            OrderedDict(
                conv=StdConv2d(in_channels, w, 7, stride=2, padding=3, bias=False),
                gn=nn.GroupNorm(32, w, eps=1e-6),
                relu=nn.ReLU(inplace=True),
            )
        )
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        stages = []  # (cin, cout, cmid, stride) of each stage's first unit
        for i, (cin, stride) in enumerate(((w, 1), (4 * w, 2), (8 * w, 2))):
            cout, cmid = 4 * w * 2**i, w * 2**i
            units = [Bottleneck(cin, cout, cmid, stride)] + [
                Bottleneck(cout, cout, cmid) for _ in range(block_units[i] - 1)
            ]
            stages.append(
                (f"block{i + 1}", nn.Sequential(OrderedDict((f"unit{j + 1}", u) for j, u in enumerate(units))))
            )
        self.body = nn.Sequential(OrderedDict(stages))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        height, width = x.shape[-2:]
        x = self.root(x)
        features = [x]
        x = self.pool(x)
        for i, stage in enumerate(self.body[:-1]):
            x = stage(x)
            # the un-padded max-pool leaves H/4 - 1: zero-pad bottom/right to H/4, H/8 as the reference
            h, w = height // (4 * 2**i), width // (4 * 2**i)
            features.append(F.pad(x, (0, w - x.shape[-1], 0, h - x.shape[-2])))
        return self.body[-1](x), features[::-1]


class Embeddings(nn.Module):
    """ResNet trunk, 1x1 patch embedding of its H/16 map, learned position embeddings and dropout."""

    def __init__(
        self,
        in_channels: int,
        grid: tuple[int, int],
        hidden_size: int,
        block_units: Sequence[int],
        width_factor: float,
        dropout_rate: float,
    ) -> None:
        super().__init__()
        self.hybrid_model = ResNetV2(in_channels, block_units, width_factor)
        self.patch_embeddings = nn.Conv2d(self.hybrid_model.width * 16, hidden_size, kernel_size=1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid[0] * grid[1], hidden_size))
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.hybrid_model(x)
        x = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        return self.dropout(x + self.position_embeddings), features


class Attention(nn.Module):
    """Multi-head self-attention with separate query/key/value/out projections (reference layout)."""

    def __init__(self, hidden_size: int, num_heads: int, attention_dropout_rate: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = nn.Dropout(attention_dropout_rate)  # on the attention probabilities
        self.proj_dropout = nn.Dropout(attention_dropout_rate)  # the reference uses the same rate here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (lin(x).view(b, n, self.num_heads, -1).transpose(1, 2) for lin in (self.query, self.key, self.value))
        p = self.attn_dropout.p if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=p).transpose(1, 2).reshape(b, n, c)
        return self.proj_dropout(self.out(context))


class Mlp(nn.Module):
    """ViT MLP: fc1, GELU, dropout, fc2, dropout (Xavier weights, ~zero biases as the reference)."""

    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_size)
        self.act_fn = nn.GELU()
        self.dropout = nn.Dropout(dropout_rate)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.normal_(fc.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(self.act_fn(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm ViT block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(
        self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float, attention_dropout_rate: float
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.ffn = Mlp(hidden_size, mlp_dim, dropout_rate)
        self.attn = Attention(hidden_size, num_heads, attention_dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """ViT blocks ``layer`` and the final LayerNorm ``encoder_norm`` (the encoder tap)."""

    def __init__(self, num_layers: int, hidden_size: int, **block_kwargs: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Block(hidden_size, **block_kwargs) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    """Hybrid embeddings and ViT encoder; returns the tokens (B, N, hidden) and the CNN skips."""

    def __init__(self, embeddings: Embeddings, encoder: Encoder) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, features = self.embeddings(x)
        return self.encoder(x), features


class Conv2dReLU(nn.Sequential):
    """3x3 conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (align_corners=True), optional skip concat, two :class:`Conv2dReLU`."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0) -> None:
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Cascaded upsampler: tokens to a (hidden, H/16, W/16) map, ``conv_more``, four :class:`DecoderBlock`."""

    def __init__(
        self,
        hidden_size: int,
        grid: tuple[int, int],
        decoder_channels: Sequence[int],
        skip_channels: Sequence[int],
        head_channels: int = 512,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.conv_more = Conv2dReLU(hidden_size, head_channels)
        ins = [head_channels, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skip_channels))
        self.n_skip = sum(1 for s in skip_channels if s)

    def forward(self, tokens: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        b, _, hidden = tokens.shape
        x = self.conv_more(tokens.transpose(1, 2).reshape(b, hidden, *self.grid))
        for i, block in enumerate(self.blocks):
            x = block(x, features[i] if i < self.n_skip else None)
        return x


class SegmentationHead(nn.Sequential):
    """3x3 conv to the class logits (the reference's upsampling factor 1 is an identity)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.Identity())


class TransUNet(nn.Module):
    """TransUNet R50-ViT-B/16 (defaults) or a smaller variant of the same structure.

    Args:
        in_channels: input channels; 1 is repeated to 3 for the 3-channel root conv, as the reference.
        out_channels: number of classes.
        img_size: input size (int or (H, W)), each a multiple of 16; the position embeddings fix it.
        hidden_size: ViT width.
        num_layers: ViT blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_dim: ViT MLP width.
        block_units: bottleneck units in the three ResNet stages.
        width_factor: ResNet width multiplier (width ``64 * width_factor``, a multiple of 32).
        decoder_channels: output channels of the four decoder blocks.
        n_skip: skips used (0-3), from the deepest (H/8) up.
        dropout_rate: dropout after the embeddings and in the MLPs.
        attention_dropout_rate: dropout on attention probabilities and the attention output.
        head_channels: channels of ``decoder.conv_more``.

    Raises:
        ValueError: a size not a multiple of 16 or another invalid setting.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 9,
        img_size: int | Sequence[int] = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        block_units: Sequence[int] = (3, 4, 9),
        width_factor: float = 1,
        decoder_channels: Sequence[int] = (256, 128, 64, 16),
        n_skip: int = 3,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        head_channels: int = 512,
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        if len(size) != 2 or any(s <= 0 or s % 16 for s in size):
            raise ValueError(
                f"TransUNet img_size must be a positive multiple of 16 (one or two values), got {img_size}"
            )
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if len(block_units) != 3 or min(block_units) < 1:
            raise ValueError(f"block_units must be three positive unit counts, got {tuple(block_units)}")
        width = int(64 * width_factor)
        if width < 32 or width % 32:
            raise ValueError(f"64 * width_factor must be a multiple of 32 (GroupNorm(32)), got {width}")
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels must have 4 entries, got {tuple(decoder_channels)}")
        if not 0 <= n_skip <= 3:
            raise ValueError(f"n_skip must be 0-3, got {n_skip}")
        self.in_channels, self.out_channels, self.img_size = in_channels, out_channels, size
        grid = (size[0] // 16, size[1] // 16)
        root_in = 3 if in_channels == 1 else in_channels
        skips = [c if i < n_skip else 0 for i, c in enumerate((8 * width, 4 * width, width, 0))]
        self.transformer = Transformer(
            Embeddings(root_in, grid, hidden_size, block_units, width_factor, dropout_rate),
            Encoder(
                num_layers,
                hidden_size,
                mlp_dim=mlp_dim,
                num_heads=num_heads,
                dropout_rate=dropout_rate,
                attention_dropout_rate=attention_dropout_rate,
            ),
        )
        self.decoder = DecoderCup(hidden_size, grid, decoder_channels, skips, head_channels)
        self.segmentation_head = SegmentationHead(decoder_channels[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, H, W) of a (B, in_channels, H, W) batch with (H, W) = ``img_size``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
            raise ValueError(
                f"TransUNet expects (B, {self.in_channels}, {self.img_size[0]}, {self.img_size[1]}) input, got "
                f"{tuple(x.shape)} (use sliding-window inference with roi_size = img_size for other sizes)"
            )
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        tokens, features = self.transformer(x)
        return self.segmentation_head(self.decoder(tokens, features))
