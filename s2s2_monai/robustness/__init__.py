"""Robustness suite: seeded scanner-artefact corruptions of test volumes and a Dice report vs clean.

Modules: :mod:`.corruptions` (bias field, ghosting, motion, spike via TorchIO),
:mod:`.run` (clean + corrupted inference, report), :mod:`.commands` (``s2s2 robustness``),
:mod:`.names` (corruption names and severities, torch-free, for the CLI parser).
The exports are imported lazily, so ``s2s2 --help`` (which imports :mod:`.commands`) loads no torch.
"""

from __future__ import annotations

__all__ = ["CORRUPTIONS", "copy_seed", "corrupt_volume", "load_bundle_network", "robustness_evaluation"]

_FROM = {
    "CORRUPTIONS": "corruptions",
    "copy_seed": "corruptions",
    "corrupt_volume": "corruptions",
    "load_bundle_network": "run",
    "robustness_evaluation": "run",
}


def __getattr__(name: str):
    if name in _FROM:
        import importlib

        return getattr(importlib.import_module(f"s2s2_monai.robustness.{_FROM[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
