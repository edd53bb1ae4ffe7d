"""Cooperative training with latent-space augmentation (FTN + STN, Chen et al., MICCAI 2021).

Modules: :mod:`.networks` (FTN, STN, :class:`CooperativeNet`), :mod:`.masks` (latent-code masks),
:mod:`.losses` (the terms of one step), :mod:`.trainer` (:class:`CooperativeTrainer`, a MONAI
``SupervisedTrainer``). Select it in a bundle with ``bundles/synapse/cooperative.json``.
"""

from __future__ import annotations

from s2s2_monai.cooperative.losses import cooperative_loss, label_ce
from s2s2_monai.cooperative.masks import MASK_KINDS, LatentMasker
from s2s2_monai.cooperative.networks import FTN, STN, CooperativeNet
from s2s2_monai.cooperative.trainer import CooperativeTrainer

__all__ = [
    "CooperativeNet",
    "FTN",
    "STN",
    "LatentMasker",
    "MASK_KINDS",
    "cooperative_loss",
    "label_ce",
    "CooperativeTrainer",
]
