"""Pretrained encoder weights for :class:`~s2s2_monai.networks.transunet.TransUNet` from local files.

Nothing is downloaded; both loaders fill the encoder (``transformer.*``: ResNet trunk, patch and
position embeddings, ViT blocks, ``encoder_norm``) and leave the decoder and head as initialised.

- :func:`load_r50_vit_npz`: Google's ``R50+ViT-B_16.npz`` (ImageNet-21k), with the key layout and
  transposes of the reference ``VisionTransformer.load_from`` (HWIO to OIHW for convs, transposed Dense
  kernels, attention kernels reshaped to (hidden, hidden) and transposed), and its position-embedding
  resize (class token dropped, grid zoomed with ``scipy.ndimage.zoom(order=1)``).
- :func:`load_timm_weights`: a timm state dict of ``vit_base_r50_s16_224`` / ``vit_base_r50_s16_384``
  (``.pth``/``.bin``/``.safetensors``); the fused ``attn.qkv`` is split into query/key/value.

timm's hybrid has the same parameters but computes slightly differently from TransUNet, which keeps
the reference's arithmetic: timm pads every conv and the stem max-pool TF-"SAME" (TransUNet: symmetric
padding 3 for the 7x7 stem, 1 for 3x3, max-pool without padding), standardises conv weights with eps
1e-8 (TransUNet 1e-5), uses GroupNorm eps 1e-5 (TransUNet 1e-6) and 32 groups in the shortcut norm
(TransUNet ``gn_proj``: one group per channel). Both are post-norm bottlenecks (timm ``preact=False``).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from s2s2_monai.errors import S2S2InputError

__all__ = ["load_pretrained", "load_r50_vit_npz", "load_timm_weights", "resize_position_embedding"]

logger = logging.getLogger(__name__)

Plan = dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]  # our parameter -> (file key, transform)

#: Classification parts of the pretrained files that TransUNet has no use for.
_NPZ_IGNORED = ("cls", "head/", "pre_logits/")
_TIMM_IGNORED = ("cls_token", "reg_token", "head.", "pre_logits.", "fc_norm.")


def resize_position_embedding(posemb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Position embeddings (1, T, C) for a (gh, gw) token grid, as the reference ``load_from``.

    Same length: unchanged; one token more: the class token is dropped; otherwise the class token
    (if T - 1 is a square) is dropped and the square grid zoomed bilinearly (``ndimage.zoom``, order 1).
    """
    n_new = grid[0] * grid[1]
    if posemb.shape[1] == n_new:
        return posemb
    if posemb.shape[1] - 1 == n_new:
        return posemb[:, 1:]
    from scipy import ndimage

    tokens = posemb[0].float().numpy()
    side = round(len(tokens) ** 0.5)
    if side * side != len(tokens):  # the reference's case: a class token first
        tokens, side = tokens[1:], round((len(tokens) - 1) ** 0.5)
    if side * side != len(tokens):
        raise ValueError(f"position embeddings of {posemb.shape[1]} tokens are not a square grid (+ class token)")
    zoomed = ndimage.zoom(tokens.reshape(side, side, -1), (grid[0] / side, grid[1] / side, 1), order=1)
    return torch.from_numpy(np.ascontiguousarray(zoomed)).reshape(1, n_new, -1)


def _units(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(stage name, unit name, unit) of the ResNet trunk, e.g. ("block1", "unit1", unit)."""
    body = model.transformer.embeddings.hybrid_model.body
    return [(b, u, unit) for b, block in body.named_children() for u, unit in block.named_children()]


def _npz_plan(model: nn.Module) -> Plan:
    t, emb, res = "transformer.", "transformer.embeddings.", "transformer.embeddings.hybrid_model."
    hidden = model.transformer.encoder.encoder_norm.normalized_shape[0]
    grid = model.decoder.grid

    def conv(a):  # HWIO -> OIHW
        return a.permute(3, 2, 0, 1)

    def flat(a):
        return a.reshape(-1)

    def dense(a):
        return a.T

    def attn(a):  # (in, heads, dim) or (heads, dim, out) -> (out, in)
        return a.reshape(hidden, hidden).T

    plan: Plan = {
        emb + "patch_embeddings.weight": ("embedding/kernel", conv),
        emb + "patch_embeddings.bias": ("embedding/bias", flat),
        emb + "position_embeddings": (
            "Transformer/posembed_input/pos_embedding",
            lambda a: resize_position_embedding(a, grid),
        ),
        t + "encoder.encoder_norm.weight": ("Transformer/encoder_norm/scale", flat),
        t + "encoder.encoder_norm.bias": ("Transformer/encoder_norm/bias", flat),
        res + "root.conv.weight": ("conv_root/kernel", conv),
        res + "root.gn.weight": ("gn_root/scale", flat),
        res + "root.gn.bias": ("gn_root/bias", flat),
    }
    for i in range(len(model.transformer.encoder.layer)):
        src, dst = f"Transformer/encoderblock_{i}/", f"{t}encoder.layer.{i}."
        for name in ("query", "key", "value", "out"):
            plan[f"{dst}attn.{name}.weight"] = (f"{src}MultiHeadDotProductAttention_1/{name}/kernel", attn)
            plan[f"{dst}attn.{name}.bias"] = (f"{src}MultiHeadDotProductAttention_1/{name}/bias", flat)
        for ours, theirs in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            plan[f"{dst}ffn.{ours}.weight"] = (f"{src}MlpBlock_3/{theirs}/kernel", dense)
            plan[f"{dst}ffn.{ours}.bias"] = (f"{src}MlpBlock_3/{theirs}/bias", flat)
        for ours, theirs in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
            plan[f"{dst}{ours}.weight"] = (f"{src}{theirs}/scale", flat)
            plan[f"{dst}{ours}.bias"] = (f"{src}{theirs}/bias", flat)
    for b, u, unit in _units(model):
        dst = f"{res}body.{b}.{u}."
        for k in (1, 2, 3):
            plan[f"{dst}conv{k}.weight"] = (f"{b}/{u}/conv{k}/kernel", conv)
            plan[f"{dst}gn{k}.weight"] = (f"{b}/{u}/gn{k}/scale", flat)
            plan[f"{dst}gn{k}.bias"] = (f"{b}/{u}/gn{k}/bias", flat)
        if unit.downsample is not None:
            plan[f"{dst}downsample.weight"] = (f"{b}/{u}/conv_proj/kernel", conv)
            plan[f"{dst}gn_proj.weight"] = (f"{b}/{u}/gn_proj/scale", flat)
            plan[f"{dst}gn_proj.bias"] = (f"{b}/{u}/gn_proj/bias", flat)
    return plan


def _timm_plan(model: nn.Module) -> Plan:
    t, emb, res = "transformer.", "transformer.embeddings.", "transformer.embeddings.hybrid_model."
    hidden = model.transformer.encoder.encoder_norm.normalized_shape[0]
    grid = model.decoder.grid

    def same(a):
        return a

    def qkv_part(j):  # rows [q; k; v] of the fused (3 * hidden, ...) projection
        return lambda a: a[j * hidden : (j + 1) * hidden]

    bb = "patch_embed.backbone."
    plan: Plan = {
        res + "root.conv.weight": (bb + "stem.conv.weight", same),
        res + "root.gn.weight": (bb + "stem.norm.weight", same),
        res + "root.gn.bias": (bb + "stem.norm.bias", same),
        emb + "patch_embeddings.weight": ("patch_embed.proj.weight", same),
        emb + "patch_embeddings.bias": ("patch_embed.proj.bias", same),
        emb + "position_embeddings": ("pos_embed", lambda a: resize_position_embedding(a, grid)),
        t + "encoder.encoder_norm.weight": ("norm.weight", same),
        t + "encoder.encoder_norm.bias": ("norm.bias", same),
    }
    stages = {b: s for s, b in enumerate(dict.fromkeys(b for b, _, _ in _units(model)))}
    for b, u, unit in _units(model):
        src, dst = f"{bb}stages.{stages[b]}.blocks.{int(u[4:]) - 1}.", f"{res}body.{b}.{u}."
        pairs = [(f"conv{k}.weight", f"conv{k}.weight") for k in (1, 2, 3)]
        pairs += [(f"gn{k}.{p}", f"norm{k}.{p}") for k in (1, 2, 3) for p in ("weight", "bias")]
        if unit.downsample is not None:
            pairs += [("downsample.weight", "downsample.conv.weight"), ("gn_proj.weight", "downsample.norm.weight")]
            pairs += [("gn_proj.bias", "downsample.norm.bias")]
        plan.update({dst + ours: (src + theirs, same) for ours, theirs in pairs})
    for i in range(len(model.transformer.encoder.layer)):
        src, dst = f"blocks.{i}.", f"{t}encoder.layer.{i}."
        for p in ("weight", "bias"):
            for j, name in enumerate(("query", "key", "value")):
                plan[f"{dst}attn.{name}.{p}"] = (f"{src}attn.qkv.{p}", qkv_part(j))
            for ours, theirs in (("attn.out", "attn.proj"), ("attention_norm", "norm1"), ("ffn_norm", "norm2")):
                plan[f"{dst}{ours}.{p}"] = (f"{src}{theirs}.{p}", same)
            for fc in ("fc1", "fc2"):
                plan[f"{dst}ffn.{fc}.{p}"] = (f"{src}mlp.{fc}.{p}", same)
    return plan


def _apply(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    plan: Plan,
    path: Path,
    ignored: tuple[str, ...],
    strict: bool,
) -> list[str]:
    used = {key for key, _ in plan.values()}
    if missing := sorted(used - set(tensors)):
        raise S2S2InputError(
            path,
            f"{len(missing)} expected key(s) missing, e.g. {missing[:5]}",
            "give the file of the matching model (R50+ViT-B/16 hybrid) or build TransUNet to match it",
        )
    unknown = sorted(k for k in set(tensors) - used if not k.startswith(ignored))
    if unknown and strict:
        raise S2S2InputError(
            path, f"{len(unknown)} unknown key(s), e.g. {unknown[:5]}", "pass strict=False to skip them"
        )
    nonfinite = sorted(
        k
        for k in used
        if torch.is_tensor(tensors[k]) and tensors[k].is_floating_point() and not bool(tensors[k].isfinite().all())
    )
    if nonfinite:
        raise S2S2InputError(
            path,
            f"holds NaN/inf values in {len(nonfinite)} array(s) (first: {nonfinite[0]}); the file is damaged",
            "download it again (or pass --pretrained_weights null to train from scratch)",
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, (key, transform) in plan.items():
            try:
                value = transform(tensors[key])
            except (RuntimeError, ValueError):  # a reshape that does not fit
                value = None
            if value is None or tuple(value.shape) != tuple(params[name].shape):
                raise S2S2InputError(
                    path,
                    f"{key} of shape {tuple(tensors[key].shape)} does not fit {name} {tuple(params[name].shape)}",
                    "build TransUNet with the file's hidden_size / num_layers / block_units / width_factor",
                )
            params[name].copy_(value)
    return list(plan)


def load_r50_vit_npz(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Load Google's ``R50+ViT-B_16.npz`` (keys as the reference ``load_from``) into a TransUNet encoder.

    Args:
        model: a :class:`~s2s2_monai.networks.transunet.TransUNet`.
        path: the local ``.npz`` file.
        strict: fail on keys that are neither used nor classification parts (``cls``, ``head/``, ``pre_logits/``).

    Returns:
        The names of the loaded parameters (all of ``model.transformer``).

    Raises:
        S2S2InputError: unreadable file, missing/unknown keys, NaN/inf values or shapes that do not fit (names
            the file).
    """
    path = Path(path)
    try:
        with np.load(path) as npz:
            tensors = {k: torch.from_numpy(np.asarray(npz[k])) for k in npz.files}
    except (OSError, ValueError) as err:
        raise S2S2InputError(path, f"cannot read as .npz ({err})", "give the local R50+ViT-B_16.npz file") from None
    return _apply(model, tensors, _npz_plan(model), path, _NPZ_IGNORED, strict)


def load_timm_weights(model: nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    """Like :func:`load_r50_vit_npz`, for a timm ``vit_base_r50_s16_{224,384}`` state dict (``.pth``, ``.bin`` or
    ``.safetensors``; a ``{"state_dict": ...}`` / ``{"model": ...}`` wrapper is unwrapped; ``cls_token``, ``head.``
    and the like are the ignored classification parts)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as err:
        raise S2S2InputError(
            path, f"cannot read as a state dict ({err})", "give a local timm .pth/.bin/.safetensors file"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(tensors, Mapping) and isinstance(tensors.get(wrapper), Mapping):
            tensors = tensors[wrapper]
    if not isinstance(tensors, Mapping):
        raise S2S2InputError(path, f"holds a {type(tensors).__name__}, not a state dict", "save model.state_dict()")
    return _apply(model, tensors, _timm_plan(model), path, _TIMM_IGNORED, strict)


#: Where Google's ImageNet-21k R50-ViT-B/16 checkpoint (the file TransUNet loads) is published.
R50_VIT_URL = "https://storage.googleapis.com/vit_models/imagenet21k/R50%2BViT-B_16.npz"


def load_pretrained(network: nn.Module, path: str | Path | None, exit_on_error: bool = False) -> list[str]:
    """The bundles' pretrained-encoder step: ``path`` (``.npz`` or a timm state dict) into a TransUNet.

    ``None`` trains from scratch (logged; not the paper's setting for TransUNet). Nothing is downloaded:
    a missing file stops with the address to fetch it from and the explicit way to train from scratch.

    Raises:
        S2S2InputError: missing or unreadable file, NaN/inf values in it, or a network that is not a TransUNet.
    """
    from s2s2_monai.errors import exit_or_raise
    from s2s2_monai.networks.transunet import TransUNet
    from s2s2_monai.networks.wrappers import unwrap_network

    if path is None:
        logger.info("pretrained_weights is null: the encoder starts from random weights")
        return []
    path = Path(path)
    model = unwrap_network(network)
    try:
        if not isinstance(model, TransUNet):
            raise S2S2InputError(
                path,
                f"pretrained_weights are for TransUNet, the network is {type(model).__name__}",
                "set --pretrained_weights null for this network",
            )
        if not path.is_file():
            raise S2S2InputError(
                path,
                "pretrained TransUNet encoder weights not found (the paper starts from ImageNet-21k R50-ViT-B/16)",
                f"download {R50_VIT_URL} to this path (or pass --pretrained_weights FILE), "
                "or train from scratch with --pretrained_weights null (not the paper's setting)",
            )
        loader = load_r50_vit_npz if path.suffix == ".npz" else load_timm_weights
        loaded = loader(model, path)
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    logger.info("loaded %d pretrained encoder tensors from %s", len(loaded), path)
    return loaded
