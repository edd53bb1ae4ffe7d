"""Summaries of the ablation rows: per-arm means over seeds, paired bootstrap differences, robustness scores.

Rows are dicts with ``arm, seed, domain, corruption, severity, case, class_name, dice, hd95_mm``
(clean rows: corruption ``none``, severity 0). A *case score* is the mean over the classes of one case
(NaN classes, absent from both prediction and ground truth, left out); a *seed score* the mean of the
case scores of one seed. Torch-free.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["case_scores", "seed_means", "paired_bootstrap", "summarize_ablation"]

CLEAN = ("none", 0)


def case_scores(rows: Iterable[Mapping], metric: str = "dice") -> dict[tuple, float]:
    """``{(arm, seed, domain, corruption, severity, case): mean over classes of metric}`` (NaN-aware)."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        key = (r["arm"], int(r["seed"]), r["domain"], r["corruption"], int(r["severity"]), r["case"])
        acc[key].append(float(r[metric]))
    out = {}
    for key, values in acc.items():
        a = np.asarray(values, dtype=np.float64)
        a = a[np.isfinite(a)]
        out[key] = float(a.mean()) if a.size else float("nan")
    return out


def seed_means(scores: Mapping[tuple, float], arm: str, domain: str, condition=CLEAN) -> dict[int, float]:
    """``{seed: mean case score}`` of one arm, domain and (corruption, severity)."""
    acc: dict[int, list[float]] = defaultdict(list)
    for (a, seed, d, corr, sev, _case), v in scores.items():
        if a == arm and d == domain and (corr, sev) == tuple(condition) and np.isfinite(v):
            acc[seed].append(v)
    return {s: float(np.mean(v)) for s, v in sorted(acc.items())}


def _interval_label(level: float, n_seeds: int, n_cases: int) -> str:
    if n_seeds == 1 and n_cases == 1:
        return "single pair (one seed, one case: no interval)"
    if n_cases == 1:
        return "range over seeds (one case: not a confidence interval)"
    if n_seeds == 1:
        return "range over cases (one seed)"
    return f"bootstrap {level * 100:g}% CI over seeds x cases (joint)"


def _expanded_alpha(matrix: np.ndarray, level: float) -> float:
    """Lower tail of the expanded percentile interval (Hesterberg 2015) for the mean of a seed x case matrix.

    The percentile bootstrap of a mean from n units is too narrow for small n (it estimates the variance
    with divisor n and uses normal quantiles). The expanded interval takes the bootstrap percentiles at the
    tail probability ``Phi(-sqrt((df + 1) / df) * t_df(1 - (1 - level) / 2))`` instead of ``(1 - level) / 2``
    (``df = n - 1`` gives Hesterberg's ``sqrt(n / (n - 1))``). ``df`` is Welch-Satterthwaite's for the two
    sources the mean varies with, seeds (``var(seed means) / n_seeds``, ``n_seeds - 1`` df) and cases
    (``var(case means) / n_cases``, ``n_cases - 1`` df): close to ``n_cases - 1`` when cases dominate, to
    ``n_seeds - 1`` when seeds do (3 seeds: a wide interval, as it should be).
    """
    from scipy.stats import norm, t

    tail = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        parts = []
        for axis in (1, 0):  # seed means (one per row), case means (one per column)
            means = np.nanmean(matrix, axis=axis)
            means = means[np.isfinite(means)]
            parts.append((means.var(ddof=1) / means.size if means.size > 1 else 0.0, means.size - 1))
    total = sum(v for v, _ in parts)
    if not total > 0:
        return tail
    df = total**2 / sum(v**2 / k for v, k in parts if k > 0 and v > 0)
    return float(norm.cdf(-np.sqrt((df + 1.0) / df) * t.ppf(1.0 - tail, df)))


def paired_bootstrap(
    diffs: Mapping[int, Mapping[str, float]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean paired difference and its bootstrap CI, resampling seeds and cases jointly (crossed design).

    The same cases are scored under every seed, so a case that is hard for the arm is hard under every
    seed: the differences form a seed x case matrix whose rows *and* columns are correlated. Each bootstrap
    draw picks seeds with replacement and case indices with replacement, the same case indices for every
    drawn seed, and averages the matrix over the drawn seed x case cells (a missing cell, a case that one
    seed lacks, is left out of the average). Resampling cases independently within each seed, as this
    function did before, treats the case effect as independent per seed and makes the interval too narrow
    (about 70 % coverage for a nominal 95 % with 3 seeds x 12 cases and a case effect shared by the seeds;
    this one: about 95 %, see tests/test_bootstrap_coverage.py). The interval is the expanded percentile
    interval (:func:`_expanded_alpha`), which corrects the percentile bootstrap's narrowness with few seeds
    or cases (the plain 2.5 / 97.5 % percentiles of the joint resampling covered about 91 % there).

    With one case (or one seed) the bootstrap has only one axis with few values and its percentiles are
    just the extremes, so no CI is claimed: ``ci_low`` / ``ci_high`` are then the min and max of the
    differences and ``interval`` says "range over seeds" / "range over cases".

    Args:
        diffs: ``{seed: {case: arm score - baseline score}}`` (same seed, same case).
        n_boot: resamples (recorded but unused for a range).
        seed: RNG seed of the resampling (same inputs and seed, same numbers).
        level: CI coverage.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n_seeds", "n_cases", "n_pairs", "n_boot", "interval", "percentiles"}``;
        the mean is over all pairs; ``percentiles`` are the bootstrap percentiles taken (None for a range).
    """
    cells = {(s, c): float(v) for s, d in diffs.items() for c, v in d.items() if np.isfinite(v)}
    seeds = sorted({s for s, _ in cells})
    cases = sorted({c for _, c in cells}, key=str)
    out = {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": len(seeds), "n_cases": len(cases)}
    out.update(n_pairs=len(cells), n_boot=int(n_boot), interval=None, percentiles=None)
    if not cells:
        return out
    values = np.fromiter(cells.values(), dtype=np.float64, count=len(cells))
    out["mean"] = float(values.mean())
    out["interval"] = _interval_label(level, len(seeds), len(cases))
    if len(seeds) == 1 or len(cases) == 1:
        out["ci_low"], out["ci_high"] = float(values.min()), float(values.max())
        return out
    row = {s: i for i, s in enumerate(seeds)}
    col = {c: j for j, c in enumerate(cases)}
    matrix = np.full((len(seeds), len(cases)), np.nan)
    for (s, c), v in cells.items():
        matrix[row[s], col[c]] = v
    present = np.isfinite(matrix).astype(np.float64)
    filled = np.where(present > 0, matrix, 0.0)
    rng = np.random.default_rng(seed)
    n_s, n_c = matrix.shape
    stats = np.empty(int(n_boot))
    for lo in range(0, int(n_boot), 4096):  # chunks bound the memory of the draw counts
        size = min(4096, int(n_boot) - lo)
        w = rng.multinomial(n_s, np.full(n_s, 1.0 / n_s), size=size).astype(np.float64)  # times each seed is drawn
        u = rng.multinomial(n_c, np.full(n_c, 1.0 / n_c), size=size).astype(np.float64)  # times each case is drawn
        total = np.einsum("bs,sc,bc->b", w, filled, u)
        count = np.einsum("bs,sc,bc->b", w, present, u)
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[lo : lo + size] = np.where(count > 0, total / count, np.nan)
    alpha = _expanded_alpha(matrix, level)
    pct = [alpha * 100.0, (1.0 - alpha) * 100.0]
    lo_v, hi_v = np.nanpercentile(stats, pct)
    out.update(ci_low=float(lo_v), ci_high=float(hi_v), percentiles=[float(p) for p in pct])
    return out


def _mean_sd(values: Sequence[float]) -> dict:
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return {
        "mean": float(a.mean()) if a.size else None,
        "sd": float(a.std(ddof=1)) if a.size > 1 else (0.0 if a.size else None),
        "n_seeds": int(a.size),
    }


def _diffs(scores, arm, base, domain, condition=CLEAN) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for (a, seed, d, corr, sev, case), v in scores.items():
        if a == arm and d == domain and (corr, sev) == tuple(condition):
            ref = scores.get((base, seed, d, corr, sev, case))
            if ref is not None:
                out[seed][case] = v - ref
    return dict(out)


def _corrupted(dice, arm, baseline, conditions, n_boot: int, seed: int) -> dict:
    """Dice over all corruption levels (mean ± sd over seeds) and its paired difference to the baseline.

    A case's corrupted score is its mean over the (corruption, severity) conditions; the difference is
    paired per seed and case, with the same bootstrap as the clean scores.
    """

    def per_case(a):
        acc: dict[tuple, list[float]] = defaultdict(list)
        for cond in conditions:
            for (ar, sd, d, corr, sev, case), v in dice.items():
                if ar == a and d == "test" and (corr, sev) == cond and np.isfinite(v):
                    acc[(sd, case)].append(v)
        return {k: float(np.mean(v)) for k, v in acc.items()}

    mine = per_case(arm)
    by_seed: dict[int, list[float]] = defaultdict(list)
    for (sd, _case), v in mine.items():
        by_seed[sd].append(v)
    out = {"dice": _mean_sd([float(np.mean(v)) for _, v in sorted(by_seed.items())])}
    if baseline and arm != baseline:
        base = per_case(baseline)
        diffs: dict[int, dict[str, float]] = defaultdict(dict)
        for (sd, case), v in mine.items():
            if (sd, case) in base:
                diffs[sd][case] = v - base[(sd, case)]
        out["dice_vs_baseline"] = paired_bootstrap(dict(diffs), n_boot=n_boot, seed=seed)
    return out


def summarize_ablation(
    rows: Sequence[Mapping], arms: Sequence[str], baseline: str = "baseline", n_boot: int = 2000, seed: int = 0
) -> dict:
    """Per arm and domain: Dice and HD95 mean ± sd over seeds, the paired Dice difference to ``baseline`` with a
    95 % bootstrap CI resampling seeds and cases jointly (:func:`paired_bootstrap`; with one seed or one case the
    range instead, labelled in its ``interval``); per arm: Dice per corruption and severity, degradation and mCE."""
    dice = case_scores(rows, "dice")
    hd95 = case_scores(rows, "hd95_mm")
    domains = sorted({r["domain"] for r in rows}, key=lambda d: (d != "test", d))
    conditions = sorted({(r["corruption"], int(r["severity"])) for r in rows if r["corruption"] != "none"})
    out: dict = {"arms": {}, "baseline": baseline if baseline in arms else None}
    curves: dict[str, dict] = {}
    for arm in arms:
        entry: dict = {"domains": {}}
        for domain in domains:
            per_seed = seed_means(dice, arm, domain)
            if not per_seed:
                continue
            d = {
                "dice": _mean_sd(list(per_seed.values())),
                "hd95_mm": _mean_sd(list(seed_means(hd95, arm, domain).values())),
            }
            d["dice"]["per_seed"] = per_seed
            if out["baseline"] and arm != baseline:
                d["dice_vs_baseline"] = paired_bootstrap(_diffs(dice, arm, baseline, domain), n_boot=n_boot, seed=seed)
            entry["domains"][domain] = d
        if conditions:
            curve: dict[str, dict[int, float]] = defaultdict(dict)
            for corr, sev in conditions:
                per_seed = seed_means(dice, arm, "test", (corr, sev))
                if per_seed:
                    curve[corr][sev] = float(np.mean(list(per_seed.values())))
            clean = entry["domains"].get("test", {}).get("dice", {}).get("mean")
            curves[arm] = {"clean": clean, "curve": dict(curve)}
            entry["robustness"] = {
                "clean_dice": clean,
                "dice": dict(curve),
                "mean_dice_per_severity": {
                    sev: float(np.mean([curve[c][sev] for c in curve if sev in curve[c]]))
                    for sev in sorted({sev for _, sev in conditions})
                    if any(sev in curve[c] for c in curve)
                },
                "corrupted": _corrupted(dice, arm, out["baseline"], conditions, n_boot, seed),
            }
            if clean is not None:
                from s2s2_monai.robustness.scores import degradation

                entry["robustness"]["degradation"] = degradation(clean, dict(curve))
        out["arms"][arm] = entry
    if conditions and out["baseline"] in curves:
        from s2s2_monai.robustness.scores import corruption_errors

        base = curves[out["baseline"]]
        for arm in arms:
            if arm in curves:
                out["arms"][arm]["robustness"]["corruption_error"] = corruption_errors(
                    curves[arm]["curve"], base["curve"], clean_model=curves[arm]["clean"], clean_baseline=base["clean"]
                )
    return out
