"""Volume-level evaluation: slice inference + reassembly, Dice/HD95/ASSD in mm, reports, A/B statistics.

Modules: :mod:`.inference` (2D network over axial slices -> 3D prediction), :mod:`.surface` and
:mod:`.metrics` (per case x class metrics, three HD95 definitions), :mod:`.legacy` (the TransUNet
protocol), :mod:`.compare` (paired statistics), :mod:`.folders` (prediction/label pairs),
:mod:`.report` (CSV/JSON/HTML), :mod:`.run` (network + datalist -> predictions + report).
Submodules are imported lazily so ``import s2s2_monai.evaluation`` stays light.
"""

from __future__ import annotations

__all__ = ["compute_case_metrics", "predict_volume", "DEFAULT_HD95", "HD95_DEFINITIONS"]


def __getattr__(name: str):
    if name in ("compute_case_metrics", "DEFAULT_HD95", "HD95_DEFINITIONS"):
        from s2s2_monai.evaluation import metrics

        return getattr(metrics, name)
    if name == "predict_volume":
        from s2s2_monai.evaluation.inference import predict_volume

        return predict_volume
    raise AttributeError(name)
