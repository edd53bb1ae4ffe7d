"""Which study to annotate next: a model's disagreement with itself across its semantic stack.

- :mod:`.disagreement`: S2S2's own score (the model's prediction, then K appearance variants of the
  image painted from that prediction, each predicted again; the vote entropy of the K + 1 label maps,
  per volume and per axial slice).
- :mod:`.baselines`: the alternatives it is measured against (test-time-augmentation variance and
  MC-dropout entropy, as MONAI Label computes them).

The MONAI Label scoring method and strategy that use them live in :mod:`s2s2_monai.label_app.scoring`.
"""

from __future__ import annotations

__all__ = ["VolumeUncertainty", "stack_disagreement", "vote_entropy", "entropy_scores", "appearance_variants"]


def __getattr__(name: str):
    if name in __all__:
        from s2s2_monai.active_learning import disagreement

        return getattr(disagreement, name)
    raise AttributeError(name)
