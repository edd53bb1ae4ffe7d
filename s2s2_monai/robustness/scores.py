"""Robustness scores from Dice-vs-severity curves (torch-free).

A *curve* is ``{corruption: {severity: mean Dice}}``. Errors are ``1 - Dice``. Following Hendrycks &
Dietterich (ICLR 2019, ImageNet-C):

- corruption error  ``CE_c = sum_s E_model(c, s) / sum_s E_base(c, s)``, ``mCE = mean_c CE_c``;
- relative CE  ``sum_s (E_model(c, s) - E_model(clean)) / sum_s (E_base(c, s) - E_base(clean))``;
- degradation  ``clean Dice - Dice(c, s)``.

A zero denominator gives NaN (the baseline lost nothing under that corruption).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["degradation", "corruption_errors"]


def degradation(clean: float, curve: Mapping[str, Mapping[int, float]]) -> dict:
    """``{"per_level": {c: {s: clean - dice}}, "mean": mean over all (c, s)}``."""
    per = {c: {s: float(clean - d) for s, d in levels.items()} for c, levels in curve.items()}
    values = [v for levels in per.values() for v in levels.values()]
    return {"per_level": per, "mean": float(np.mean(values)) if values else None}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def corruption_errors(
    curve_model: Mapping[str, Mapping[int, float]],
    curve_baseline: Mapping[str, Mapping[int, float]],
    clean_model: float | None = None,
    clean_baseline: float | None = None,
) -> dict:
    """``{"ce": {c: CE_c}, "mce", "relative_ce": {c: ...}, "relative_mce"}`` over the levels both curves have."""
    ce, rel = {}, {}
    for c, levels in curve_model.items():
        base = curve_baseline.get(c, {})
        common = [s for s in levels if s in base]
        if not common:
            continue
        ce[c] = _ratio(sum(1 - levels[s] for s in common), sum(1 - base[s] for s in common))
        if clean_model is not None and clean_baseline is not None:
            rel[c] = _ratio(
                sum((1 - levels[s]) - (1 - clean_model) for s in common),
                sum((1 - base[s]) - (1 - clean_baseline) for s in common),
            )

    def mean(d):
        v = [x for x in d.values() if np.isfinite(x)]
        return float(np.mean(v)) if v else None

    return {"ce": ce, "mce": mean(ce), "relative_ce": rel, "relative_mce": mean(rel)}
