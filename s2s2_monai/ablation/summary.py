"""Summaries of the ablation rows: per-arm means over seeds, paired bootstrap differences, robustness scores.

Rows are dicts with ``arm, seed, domain, corruption, severity, case, class_name, dice, hd95_mm``
(clean rows: corruption ``none``, severity 0). A *case score* is the mean over the classes of one case
(NaN classes, absent from both prediction and ground truth, left out); a *seed score* the mean of the
case scores of one seed. Torch-free.
"""

from __future__ import annotations

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


def paired_bootstrap(
    diffs: Mapping[int, Mapping[str, float]], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Mean paired difference and its percentile bootstrap CI, resampling seeds, then cases within each seed.

    Args:
        diffs: ``{seed: {case: arm score - baseline score}}`` (same seed, same case).
        n_boot: resamples.
        seed: RNG seed of the resampling.
        level: CI coverage.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n_seeds", "n_cases", "n_boot"}``; the mean is over all pairs.
    """
    groups = [np.asarray([v for v in d.values() if np.isfinite(v)], dtype=np.float64) for d in diffs.values()]
    groups = [g for g in groups if g.size]
    if not groups:
        return {"mean": None, "ci_low": None, "ci_high": None, "n_seeds": 0, "n_cases": 0, "n_boot": n_boot}
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        picked = rng.integers(0, len(groups), len(groups))
        stats[b] = np.concatenate([groups[i][rng.integers(0, groups[i].size, groups[i].size)] for i in picked]).mean()
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return {
        "mean": float(np.concatenate(groups).mean()),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n_seeds": len(groups),
        "n_cases": int(max(g.size for g in groups)),
        "n_boot": int(n_boot),
    }


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
    95 % bootstrap CI over cases and seeds; per arm: Dice per corruption and severity, degradation and mCE."""
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
