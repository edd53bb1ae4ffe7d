"""Paired A/B statistics over cases: did method B beat baseline A on the same volumes?

For one metric and organ, each case gives a pair (a_i, b_i); cases where either is NaN are
dropped. Reported: the mean paired difference ``b - a``, a seeded percentile-bootstrap
confidence interval of that mean, and the two-sided Wilcoxon signed-rank p-value
(``scipy.stats.wilcoxon``, zero differences dropped as in Wilcoxon's original test).

With fewer than :data:`MIN_PAIRS` pairs neither number can be trusted: the bootstrap of n values has at most
``n**n`` resamples and its 2.5 / 97.5 % percentiles sit at or near the extremes of the differences, and the
signed-rank test has too few orderings to reach a small p (the exact test never goes below 2 / 2**n: 0.5 with 2
pairs, 0.125 with 4).
Each result then carries a ``warning``; :func:`few_pairs_warning` words the one of a whole comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_PAIRS", "paired_comparison", "few_pairs_warning"]

MIN_PAIRS = 5


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
        ``{"n", "mean_baseline", "mean_method", "mean_diff", "ci_low", "ci_high", "p_wilcoxon", "warning"}``;
        NaN where undefined (no complete pair; p is 1.0 when every difference is zero); ``warning`` is None,
        or says why the interval and p are not to be trusted (fewer than :data:`MIN_PAIRS` pairs).
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
        "warning": _pairs_warning(int(a.size)),
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


def _pairs_warning(n: int) -> str | None:
    if n >= MIN_PAIRS:
        return None
    if n == 0:
        return "no complete pair: no difference, interval or p"
    return (
        f"only {n} pair{'s' if n != 1 else ''} (fewer than {MIN_PAIRS}): the bootstrap CI and the Wilcoxon p "
        "rest on too few cases to be trusted"
    )


def few_pairs_warning(
    method: str, baseline: str, n_pairs: int, per_class_n: dict[str, int] | None = None
) -> str | None:
    """One line on a comparison with fewer than :data:`MIN_PAIRS` paired cases, or None.

    Args:
        method / baseline: the compared methods.
        n_pairs: paired cases of the comparison (overall).
        per_class_n: ``{organ: pairs}``; organs with 1 to ``MIN_PAIRS - 1`` pairs (present in too few
            cases) are named when the comparison as a whole has enough.
    """
    if n_pairs < MIN_PAIRS:
        return (
            f"{method} vs {baseline}: only {n_pairs} paired case{'s' if n_pairs != 1 else ''} (fewer than "
            f"{MIN_PAIRS}): its 95% CIs and Wilcoxon p-values rest on too few cases to be trusted; score more cases"
        )
    few = {k: n for k, n in (per_class_n or {}).items() if 0 < n < MIN_PAIRS}
    if not few:
        return None
    listed = ", ".join(f"{k} n={n}" for k, n in few.items())
    return (
        f"{method} vs {baseline}: {len(few)} organ(s) have fewer than {MIN_PAIRS} paired cases ({listed}): "
        "their 95% CIs and Wilcoxon p-values are not to be trusted"
    )
