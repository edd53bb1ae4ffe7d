"""Cooperative training as a MONAI :class:`~monai.engines.SupervisedTrainer`.

:class:`CooperativeTrainer` is a :class:`~s2s2_monai.training.trainer.PairedTrainer` variant (MONAI's
``prepare_batch``, AMP, gradient accumulation, ``IterationEvents``, one backward pass): its ``forward``
runs the FTN on the noisy image and its ``loss`` adds the STN, reconstruction and hard-example terms of
:func:`~s2s2_monai.cooperative.losses.cooperative_loss`. ``loss_function`` is the segmentation
loss of every segmentation/shape term (cross-entropy upstream; see
:func:`~s2s2_monai.cooperative.losses.label_ce`).

S2S2 combination: when the batch holds a stack member ``image_stack`` (x1) and ``use_stack`` is
on, the FTN also runs on x1 and the step adds ``Lseg(FTN(x1), y) + alpha_enc * D(z_s(x0), z_s(x1))
+ alpha_dec * D(f(x0), f(x1))`` with ``f`` the segmentation decoder's pre-head features and
``D = 1 - cos`` over channels (:func:`s2s2_monai.training.consistency.consistency_distance`).

``engine.state.output`` holds ``pred`` (FTN logits of the noisy x0), ``loss`` and every detached
term as ``loss_<term>`` (log them with ``s2s2_monai.training.handlers.loss_terms``), plus
``mask_kind``.

Resume: with per-epoch seeding (:class:`~s2s2_monai.training.seeding.EpochSeeding`) the masker's
generator is re-derived from ``mask_seed`` and the epoch's seed (:meth:`CooperativeTrainer.reseed`) and the
input noise comes from torch's global generator, seeded per epoch; a non-finite loss stops the run as in
:class:`~s2s2_monai.training.trainer.PairedTrainer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from s2s2_monai.cooperative.losses import cooperative_loss, ftn_pass, label_ce
from s2s2_monai.cooperative.masks import MASK_KINDS, LatentMasker
from s2s2_monai.cooperative.networks import CooperativeNet
from s2s2_monai.networks.wrappers import unwrap_network
from s2s2_monai.training.consistency import consistency_distance
from s2s2_monai.training.trainer import PairedTrainer

__all__ = ["CooperativeTrainer", "cooperative_network"]


def cooperative_network(network: torch.nn.Module) -> CooperativeNet:
    """The :class:`CooperativeNet` inside DDP / ``torch.compile`` wrappers (``TypeError`` otherwise)."""
    net = unwrap_network(network)
    if not isinstance(net, CooperativeNet):
        raise TypeError(f"cooperative training needs a s2s2_monai.cooperative.CooperativeNet, got {type(net).__name__}")
    return net


class CooperativeTrainer(PairedTrainer):
    """:class:`~monai.engines.SupervisedTrainer` for FTN + STN cooperative training with latent masks.

    Takes every argument of ``SupervisedTrainer`` (``network`` must be a
    :class:`~s2s2_monai.cooperative.networks.CooperativeNet`; ``loss_function`` defaults to
    cross-entropy) plus:

    Args:
        latent_da: add the hard-example terms (latent-space augmentation).
        mask_kinds: pool of mask kinds, one drawn per step.
        max_p: targeted masks mask the top ``p ~ U(0, max_p)`` channels / locations.
        soft: soft masks (factor ``U(0, 0.5)``) instead of zeros.
        dropout_p: rate of the random channel dropout.
        mask_seed: seed of the masker's generator.
        input_noise: std of the Gaussian noise on the FTN input.
        recon_weight: weight of the reconstruction MSE.
        use_stack: add the S2S2 terms when the batch has ``stack_key``.
        stack_key: batch key of the stack member x1.
        alpha_enc: weight of the shape-code consistency term.
        alpha_dec: weight of the decoder-feature consistency term.
    """

    def __init__(
        self,
        *args: Any,
        loss_function: Callable | None = None,
        latent_da: bool = True,
        mask_kinds: tuple[str, ...] | list[str] = MASK_KINDS,
        max_p: float = 0.5,
        soft: bool = True,
        dropout_p: float = 0.5,
        mask_seed: int | None = 0,
        input_noise: float = 0.05,
        recon_weight: float = 0.5,
        use_stack: bool = False,
        stack_key: str = "image_stack",
        alpha_enc: float = 1.0,
        alpha_dec: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args, loss_function=loss_function or label_ce, use_stack=use_stack, stack_key=stack_key, **kwargs
        )
        cooperative_network(self.network)
        self.mask_seed = mask_seed
        self.masker = LatentMasker(mask_kinds, max_p, soft, dropout_p, mask_seed) if latent_da else None
        self.input_noise = float(input_noise)
        self.recon_weight = float(recon_weight)
        self.alpha_enc = float(alpha_enc)
        self.alpha_dec = float(alpha_dec)

    def reseed(self, seed: int) -> None:
        """A fresh masker generator for the epoch, from ``SeedSequence([mask_seed, seed])`` (none: unseeded)."""
        if self.masker is None or self.mask_seed is None:
            return
        import numpy as np

        derived = int(
            np.random.SeedSequence([int(self.mask_seed) & (2**63 - 1), int(seed)]).generate_state(1, dtype=np.uint64)[0]
        )
        m = self.masker
        self.masker = LatentMasker(m.kinds, m.max_p, m.soft, m.dropout_p, derived >> 1)

    def forward(self, engine, x0, x1, args, kwargs) -> dict:
        """The FTN on the noisy x0; the clean x0 and x1 are kept for the loss."""
        noisy = x0 + self.input_noise * torch.randn_like(x0) if self.input_noise > 0 else x0
        ftn = ftn_pass(cooperative_network(engine.network), noisy)
        return {"pred": ftn["logits"], "_clean": x0, "_noisy": noisy, "_ftn": ftn, "_stack": x1}

    def loss(self, engine, passes, y) -> tuple[torch.Tensor, dict]:
        """All cooperative terms, plus the S2S2 terms when there is a stack member."""
        net = cooperative_network(engine.network)

        def seg_loss(p, t):
            return engine.loss_function(p, t).mean()

        total, terms, ftn = cooperative_loss(
            net,
            passes["_clean"],
            y,
            seg_loss,
            self.masker,
            self.input_noise,
            self.recon_weight,
            net_input=passes["_noisy"],
            ftn=passes["_ftn"],
        )
        if passes["_stack"] is not None:
            other = ftn_pass(net, passes["_stack"])
            seg_stack = seg_loss(other["logits"], y)
            enc = consistency_distance(ftn["z_s"], other["z_s"], 1)
            dec = consistency_distance(ftn["feat"], other["feat"], 1)
            total = total + seg_stack + self.alpha_enc * enc + self.alpha_dec * dec
            terms.update(loss_seg_stack=seg_stack.detach(), loss_enc=enc.detach(), loss_dec=dec.detach())
        return total, {**terms, "mask_kind": ftn.get("kind")}
