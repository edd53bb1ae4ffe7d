"""Robustness suite: seeded scanner-artefact corruptions of test volumes and a Dice report vs clean.

Modules: :mod:`.corruptions` (bias field, ghosting, motion, spike via TorchIO),
:mod:`.variants` (the clean + corrupted loop robustness and ablation share), :mod:`.run` (report), :mod:`.commands` (``s2s2 robustness``),
:mod:`.names` (corruption names and severities, torch-free, for the CLI parser).
The exports are imported lazily, so ``s2s2 --help`` (which imports :mod:`.commands`) loads no torch.
"""

from __future__ import annotations

__all__ = ["CORRUPTIONS", "copy_seed", "corrupt_volume", "robustness_evaluation", "segment_variants"]

_FROM = {
    "CORRUPTIONS": "corruptions",
    "copy_seed": "corruptions",
    "corrupt_volume": "corruptions",
    "robustness_evaluation": "run",
    "segment_variants": "variants",
}


def __getattr__(name: str):
    if name in _FROM:
        import importlib

        return getattr(importlib.import_module(f"s2s2_monai.robustness.{_FROM[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
