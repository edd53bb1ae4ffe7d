"""Robustness suite: seeded scanner-artefact corruptions of test volumes and a Dice report vs clean.

Modules: :mod:`.corruptions` (bias field, ghosting, motion, spike via TorchIO),
:mod:`.run` (clean + corrupted inference, report), :mod:`.commands` (``s2s2 robustness``).
"""

from __future__ import annotations

from s2s2_monai.robustness.corruptions import CORRUPTIONS, copy_seed, corrupt_volume
from s2s2_monai.robustness.run import load_bundle_network, robustness_evaluation

__all__ = ["CORRUPTIONS", "copy_seed", "corrupt_volume", "load_bundle_network", "robustness_evaluation"]
