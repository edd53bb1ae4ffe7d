"""Intervals a reviewer can trust: the ablation's bootstrap over a crossed seed x case design covers a known
difference at its nominal rate, one case / one seed gives a labelled range (not a CI), and ``s2s2 evaluate``
warns when an A/B comparison rests on fewer than 5 paired cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from s2s2_monai.ablation.report import _html, table_rows
from s2s2_monai.ablation.summary import paired_bootstrap, summarize_ablation
from s2s2_monai.cli import main
from s2s2_monai.evaluation.compare import MIN_PAIRS, few_pairs_warning, paired_comparison

SEEDS, CASES, TRUTH = 3, 12, 0.02
CASE_SD, NOISE_SD = 0.05, 0.01
REPEATS, N_BOOT = 400, 500


def _crossed(rng: np.random.Generator) -> np.ndarray:
    """Seed x case paired differences: the truth + a case effect shared by every seed + per-cell noise."""
    return TRUTH + rng.normal(0.0, CASE_SD, CASES)[None, :] + rng.normal(0.0, NOISE_SD, (SEEDS, CASES))


def _within_seed_interval(d: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """The old resampling, for reference: seeds with replacement, then cases independently within each seed."""
    s, c = d.shape
    seeds = rng.integers(0, s, (N_BOOT, s))
    cases = rng.integers(0, c, (N_BOOT, s, c))
    stats = d[seeds[..., None], cases].mean(axis=(1, 2))
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def test_joint_bootstrap_covers_a_known_difference_and_within_seed_did_not():
    rng = np.random.default_rng(20)
    joint = within = 0
    for r in range(REPEATS):
        d = _crossed(rng)
        res = paired_bootstrap({s: {f"case{c}": d[s, c] for c in range(CASES)} for s in range(SEEDS)}, N_BOOT, seed=r)
        assert (res["n_seeds"], res["n_cases"], res["n_pairs"]) == (SEEDS, CASES, SEEDS * CASES)
        assert res["interval"] == "bootstrap 95% CI over seeds x cases (joint)"
        assert res["mean"] == pytest.approx(d.mean())
        joint += res["ci_low"] <= TRUTH <= res["ci_high"]
        lo, hi = _within_seed_interval(d, rng)
        within += lo <= TRUTH <= hi
    joint, within = joint / REPEATS, within / REPEATS
    # nominal 95 %: the joint resampling (expanded percentile) covers ~0.95, the old within-seed one ~0.71
    assert joint >= 0.90, f"joint bootstrap covered the truth in {joint:.3f} of {REPEATS} simulations"
    assert within < 0.85, f"the within-seed reference covered {within:.3f}: the simulation lost its case effect"


def test_bootstrap_is_seeded_and_handles_a_missing_cell():
    rng = np.random.default_rng(1)
    d = _crossed(rng)
    diffs = {s: {f"case{c}": d[s, c] for c in range(CASES)} for s in range(SEEDS)}
    assert paired_bootstrap(diffs, 300, seed=5) == paired_bootstrap(diffs, 300, seed=5)
    assert paired_bootstrap(diffs, 300, seed=5)["ci_low"] != paired_bootstrap(diffs, 300, seed=6)["ci_low"]
    del diffs[1]["case3"]  # seed 1 lacks a case: the pairs that exist still count, the cell is left out
    res = paired_bootstrap(diffs, 300, seed=5)
    assert (res["n_seeds"], res["n_cases"], res["n_pairs"]) == (SEEDS, CASES, SEEDS * CASES - 1)
    assert res["mean"] == pytest.approx(np.delete(d.ravel(), CASES + 3).mean())
    assert res["ci_low"] < res["mean"] < res["ci_high"]


def _rows(seeds: int, cases: int, effect: float = 0.02) -> list[dict]:
    rng = np.random.default_rng(seeds * 100 + cases)
    rows = []
    for arm, shift in (("baseline", 0.0), ("enc+dec", effect)):
        for s in range(seeds):
            for c in range(cases):
                rows.append(dict(arm=arm, seed=s, domain="test", corruption="none", severity=0, case=f"c{c}",
                                 class_name="liver", dice=0.5 + shift + rng.normal(0, 0.03), hd95_mm=1.0))  # fmt: skip
    return rows


@pytest.mark.parametrize(
    "seeds, cases, interval, tag",
    [
        (3, 1, "range over seeds (one case: not a confidence interval)", "range over seeds"),
        (1, 4, "range over cases (one seed)", "range over cases"),
    ],
)
def test_one_case_or_one_seed_gives_the_labelled_range(seeds, cases, interval, tag):
    rows = _rows(seeds, cases)
    s = summarize_ablation(rows, ["baseline", "enc+dec"], n_boot=200)
    d = s["arms"]["enc+dec"]["domains"]["test"]["dice_vs_baseline"]
    by = {(r["arm"], r["seed"], r["case"]): r["dice"] for r in rows}
    diffs = [by[("enc+dec", sd, f"c{c}")] - by[("baseline", sd, f"c{c}")] for sd in range(seeds) for c in range(cases)]
    assert d["interval"] == interval and d["percentiles"] is None
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(min(diffs)), pytest.approx(max(diffs)))
    assert (d["n_seeds"], d["n_cases"]) == (seeds, cases)
    json.dumps(d)  # what ablation.json holds
    header, table = table_rows(s)
    assert f"test ΔDice vs baseline [{tag}]" in header and not any("CI" in h for h in header)
    cell = table[1][header.index(f"test ΔDice vs baseline [{tag}]")]
    n = f"{seeds} seed{'s' if seeds > 1 else ''} x {cases} case{'s' if cases > 1 else ''}"
    assert cell == f"{d['mean']:+.4f} [{min(diffs):+.4f}, {max(diffs):+.4f}] ({n})"
    s["settings"] = {"seeds": list(range(seeds))}
    page = _html(s)
    assert f"[{tag}]" in page and "a range is not a confidence interval" in page


def test_several_seeds_and_cases_say_ci_and_a_single_pair_says_no_interval():
    s = summarize_ablation(_rows(3, 4), ["baseline", "enc+dec"], n_boot=200)
    header, table = table_rows(s)
    assert "test ΔDice vs baseline [95% CI]" in header
    assert table[1][2].endswith("(3 seeds x 4 cases)")
    one = summarize_ablation(_rows(1, 1), ["baseline", "enc+dec"], n_boot=200)
    d = one["arms"]["enc+dec"]["domains"]["test"]["dice_vs_baseline"]
    assert d["interval"].startswith("single pair") and d["ci_low"] == d["ci_high"] == pytest.approx(d["mean"])
    assert table_rows(one)[1][1][2] == f"{d['mean']:+.4f} (1 seed x 1 case, no interval)"


def test_few_pairs_warning_wording():
    assert few_pairs_warning("b", "a", MIN_PAIRS) is None
    assert few_pairs_warning("b", "a", 2).startswith("b vs a: only 2 paired cases (fewer than 5)")
    organs = few_pairs_warning("b", "a", 9, {"liver": 9, "gallbladder": 3, "pancreas": 0})
    assert "1 organ(s)" in organs and "gallbladder n=3" in organs and "pancreas" not in organs
    assert paired_comparison([0.5, 0.6], [0.6, 0.65])["warning"].startswith("only 2 pairs")
    assert paired_comparison([0.5] * 5, [0.6] * 5)["warning"] is None


def _save(arr, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 0.8, 2.5, 1.0])), str(path))


def test_evaluate_warns_on_fewer_than_five_pairs(tmp_path, capsys):
    for i in range(2):
        lab = np.zeros((16, 14, 4), np.uint8)
        lab[2 + i : 8 + i, 2:7, 1:3] = 1
        _save(lab, tmp_path / "labels" / f"case{i}.nii.gz")
        _save(np.roll(lab, 2, axis=0), tmp_path / "base" / f"case{i}.nii.gz")
        _save(np.roll(lab, 1, axis=0), tmp_path / "s2s2" / f"case{i}.nii.gz")
    out = tmp_path / "out"
    argv = ["evaluate", "--no-progress", "--bootstrap", "200", "--num-classes", "2", "--label-dir",
            str(tmp_path / "labels"), "--out", str(out), "--pred-dir", f"base={tmp_path / 'base'}",
            "--pred-dir", f"s2s2={tmp_path / 's2s2'}"]  # fmt: skip
    assert main(argv) == 0
    cap = capsys.readouterr()
    line = [x for x in cap.out.splitlines() if x.startswith("s2s2 vs base: ΔDice")]
    assert len(line) == 1 and "[95% CI " in line[0] and "n=2 pairs" in line[0]
    warnings = [x for x in cap.err.splitlines() if x.startswith("warning:")]
    assert warnings == ["warning: s2s2 vs base: only 2 paired cases (fewer than 5): its 95% CIs and Wilcoxon "
                        "p-values rest on too few cases to be trusted; score more cases"]  # fmt: skip
    comp = json.loads((out / "summary.json").read_text())["comparisons"][0]
    assert comp["n_pairs"] == 2 and comp["warning"] == warnings[0].removeprefix("warning: ")
    assert comp["overall"]["dice"]["warning"].startswith("only 2 pairs")
    page = (out / "report.html").read_text()
    assert "(n = 2 paired cases)" in page and "<b>warning:</b> s2s2 vs base: only 2 paired cases" in page
    assert "(n=2)" in page
