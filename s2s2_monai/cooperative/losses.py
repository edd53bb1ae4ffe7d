"""Loss of one cooperative-training step: standard terms + the same terms on latent-masked hard examples.

With FTN = (encode, segment, reconstruct), STN = shape autoencoder, image ``x`` (clean), its noisy
copy ``x~ = x + 0.05 N(0, 1)`` (the FTN is a denoising network, as upstream) and label ``y``:

Standard terms (:func:`standard_terms`)
    ``seg``        = CE(segment(z_s(x~)), y)
    ``recon``      = 0.5 * MSE(reconstruct(z_i(x~)), x)
    ``shape_pred`` = CE(STN(softmax(segment(z_s(x~)))), y)
    ``shape_gt``   = CE(STN(onehot(y)), y)
Hard examples (:func:`hard_examples`), decoders frozen, one mask kind for the step:
    ``x_hard`` = image_decoder(mask(z_i)), mask targeted by MSE(image_decoder(z_i), x)
    ``s_hard`` = seg_decoder(mask(z_s)),   mask targeted by CE(seg_decoder(z_s), y)
    both constants (no gradient flows through their generation).
Hard terms (:func:`hard_terms`)
    ``hard_seg``, ``hard_recon``, ``hard_shape_pred``: the first three standard terms with
    ``x_hard`` as the input; ``hard_shape_corrupt`` = CE(STN(softmax(s_hard)), y).

The total is the plain sum, and the step makes one backward pass (:func:`cooperative_loss`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from s2s2_monai.cooperative.masks import LatentMasker, frozen
from s2s2_monai.cooperative.networks import CooperativeNet

__all__ = [
    "label_ce",
    "LabelCELoss",
    "ftn_pass",
    "STANDARD_TERMS",
    "HARD_TERMS",
    "standard_terms",
    "hard_examples",
    "hard_terms",
    "cooperative_loss",
]

STANDARD_TERMS: tuple[str, ...] = ("seg", "recon", "shape_pred", "shape_gt")
HARD_TERMS: tuple[str, ...] = ("hard_seg", "hard_recon", "hard_shape_pred", "hard_shape_corrupt")

SegLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def label_ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Pixel-mean cross-entropy of logits (B, K, H, W) and a label map (B, 1, H, W) or (B, H, W) of ids."""
    target = label[:, 0] if label.ndim == logits.ndim else label
    target = target.round().long() if target.is_floating_point() else target.long()
    return F.cross_entropy(logits, target)


class LabelCELoss(nn.Module):
    """Module form of :func:`label_ce` (a bundle ``loss`` with a ``_target_``)."""

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return label_ce(logits, label)


def ftn_pass(net: CooperativeNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """FTN on ``x``: ``{"z_i", "z_s", "feat" (pre-head decoder features), "logits"}``."""
    z_i, z_s = net.ftn.encode(x)
    feat = net.ftn.seg_decoder.features(z_s)
    return {"z_i": z_i, "z_s": z_s, "feat": feat, "logits": net.ftn.seg_decoder.head(feat)}


def standard_terms(
    net: CooperativeNet,
    image: torch.Tensor,
    label: torch.Tensor,
    seg_loss: SegLoss = label_ce,
    net_input: torch.Tensor | None = None,
    recon_weight: float = 0.5,
    gt_shape: bool = True,
    ftn: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Standard terms and the FTN pass (``z_i``, ``z_s``, ``feat``, ``logits``) on ``net_input``.

    Args:
        net: the FTN + STN.
        image: clean image (B, 1, H, W): the reconstruction target.
        label: label ids (B, 1, H, W).
        seg_loss: loss of logits vs ``label`` (segmentation and shape terms).
        net_input: what the FTN sees (default ``image``; the noisy or hard image).
        recon_weight: weight of the MSE (0.5 upstream).
        gt_shape: compute ``shape_gt`` (the STN on the ground truth).
        ftn: the FTN pass on ``net_input`` when the caller ran it already (see :func:`ftn_pass`).
    """
    out = ftn if ftn is not None else ftn_pass(net, image if net_input is None else net_input)
    terms = {
        "seg": seg_loss(out["logits"], label),
        "recon": recon_weight * F.mse_loss(net.ftn.reconstruct(out["z_i"]).float(), image.float()),
        "shape_pred": seg_loss(net.stn(out["logits"]), label),
    }
    if gt_shape:
        terms["shape_gt"] = seg_loss(net.stn(label), label)
    return terms, out


def hard_examples(
    net: CooperativeNet,
    z_i: torch.Tensor,
    z_s: torch.Tensor,
    image: torch.Tensor,
    label: torch.Tensor,
    masker: LatentMasker,
    kind: str | None = None,
) -> dict[str, torch.Tensor | str]:
    """Corrupted image and segmentation decoded from masked codes (decoders frozen; constants).

    Returns:
        ``{"image": x_hard (B, 1, H, W), "seg": s_hard logits (B, K, H, W), "kind": kind,
        "mask_i": mask of z_i, "mask_s": mask of z_s}``.
    """
    kind = kind or masker.draw_kind()
    img_dec, seg_dec = net.ftn.image_decoder, net.ftn.seg_decoder
    z_i_masked, mask_i = masker.mask(z_i, kind, img_dec, lambda out: F.mse_loss(out.float(), image.float()))
    z_s_masked, mask_s = masker.mask(z_s, kind, seg_dec, lambda out: label_ce(out.float(), label))
    with torch.no_grad(), frozen(img_dec), frozen(seg_dec):
        x_hard = img_dec(z_i_masked)
        s_hard = seg_dec(z_s_masked)
    return {"image": x_hard.detach(), "seg": s_hard.detach(), "kind": kind, "mask_i": mask_i, "mask_s": mask_s}


def hard_terms(
    net: CooperativeNet,
    hard: dict,
    image: torch.Tensor,
    label: torch.Tensor,
    seg_loss: SegLoss = label_ce,
    recon_weight: float = 0.5,
) -> dict[str, torch.Tensor]:
    """The standard terms on the hard image plus the STN's loss on the corrupted segmentation."""
    terms, _ = standard_terms(
        net, image, label, seg_loss, net_input=hard["image"].to(image.dtype), recon_weight=recon_weight, gt_shape=False
    )
    out = {f"hard_{k}": v for k, v in terms.items()}
    out["hard_shape_corrupt"] = seg_loss(net.stn(hard["seg"]), label)
    return out


def cooperative_loss(
    net: CooperativeNet,
    image: torch.Tensor,
    label: torch.Tensor,
    seg_loss: SegLoss = label_ce,
    masker: LatentMasker | None = None,
    input_noise: float = 0.05,
    recon_weight: float = 0.5,
    net_input: torch.Tensor | None = None,
    ftn: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """Total loss of one step (call ``.backward()`` once on it), its detached terms, and the FTN pass.

    Args:
        net: the FTN + STN (DDP wrappers removed).
        image: clean images (B, 1, H, W).
        label: label ids (B, 1, H, W).
        seg_loss: segmentation / shape loss (CE upstream).
        masker: latent masker; ``None`` trains on the standard terms only (no latent augmentation).
        input_noise: std of the Gaussian noise added to the FTN input (0 disables).
        recon_weight: weight of the reconstruction MSE.
        net_input: the noisy input, when the caller made it already (otherwise made here).
        ftn: the FTN pass on ``net_input`` when the caller ran it already.

    Returns:
        ``(total, {"loss_<term>": detached value, ...}, ftn_pass)``; ``ftn_pass`` holds
        ``z_i``, ``z_s``, ``feat``, ``logits`` of the standard pass and ``kind`` of the mask.
    """
    if net_input is None:
        net_input = image + input_noise * torch.randn_like(image) if input_noise > 0 else image
    terms, ftn = standard_terms(net, image, label, seg_loss, net_input=net_input, recon_weight=recon_weight, ftn=ftn)
    if masker is not None:
        hard = hard_examples(net, ftn["z_i"], ftn["z_s"], image, label, masker)
        terms.update(hard_terms(net, hard, image, label, seg_loss, recon_weight))
        ftn["kind"] = hard["kind"]
    total = torch.stack([t.float() for t in terms.values()]).sum()
    return total, {f"loss_{k}": v.detach() for k, v in terms.items()}, ftn
