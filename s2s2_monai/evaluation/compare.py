"""Paired A/B statistics over cases: did method B beat baseline A on the same volumes?

For one metric and organ, each case gives a pair (a_i, b_i); cases where either is NaN are
dropped. Reported: the mean paired difference ``b - a``, a seeded percentile-bootstrap
confidence interval of that mean, and the two-sided Wilcoxon signed-rank p-value
(``scipy.stats.wilcoxon``, zero differences dropped as in Wilcoxon's original test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_comparison"]


def paired_comparison(
    baseline: Sequence[float],
    method: Sequence[float],
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Paired difference ``method - baseline`` over cases.

    Args:
        baseline / method: per-case values of one metric, in the same case order.
        n_boot: bootstrap resamples of the cases.
        confidence: coverage of the interval.
        seed: bootstrap seed (same inputs and seed, same interval).

    Returns:
        ``{"n", "mean_baseline", "mean_method", "mean_diff", "ci_low", "ci_high", "p_wilcoxon"}``;
        NaN where undefined (no complete pair; p is 1.0 when every difference is zero).
    """
    a = np.asarray(baseline, dtype=np.float64)
    b = np.asarray(method, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need two 1D sequences of one length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    nan = float("nan")
    result = {
        "n": int(a.size),
        "mean_baseline": nan,
        "mean_method": nan,
        "mean_diff": nan,
        "ci_low": nan,
        "ci_high": nan,
        "p_wilcoxon": nan,
    }
    if a.size == 0:
        return result
    d = b - a
    result.update(mean_baseline=float(a.mean()), mean_method=float(b.mean()), mean_diff=float(d.mean()))
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(int(n_boot), d.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    result["ci_low"], result["ci_high"] = (float(v) for v in np.quantile(means, [alpha, 1.0 - alpha]))
    if np.all(d == 0):
        result["p_wilcoxon"] = 1.0
    else:
        from scipy.stats import wilcoxon

        result["p_wilcoxon"] = float(wilcoxon(b, a, zero_method="wilcox", alternative="two-sided").pvalue)
    return result
