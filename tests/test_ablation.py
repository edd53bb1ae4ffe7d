"""`s2s2 ablation`: arms, the paired bootstrap against hand-computed cases, and a tiny run end to end through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from s2s2_monai.ablation.arms import ARMS, DEFAULT_ARMS, parse_arms
from s2s2_monai.ablation.summary import case_scores, paired_bootstrap, summarize_ablation
from s2s2_monai.cli import main
from s2s2_monai.errors import S2S2InputError

REPO = Path(__file__).resolve().parents[1]


def test_arms_are_the_papers_table_6():
    assert DEFAULT_ARMS == ("baseline", "synthetic", "enc", "enc+dec")
    assert ARMS["baseline"].overrides == {"use_stack": False}
    assert ARMS["synthetic"].overrides == {"use_stack": True, "alpha_enc": 0.0, "alpha_dec": 0.0}
    assert ARMS["enc"].overrides["alpha_dec"] == 0.0 and "alpha_enc" not in ARMS["enc"].overrides
    assert [a.name for a in parse_arms("enc+dec,baseline")] == ["enc+dec", "baseline"]
    with pytest.raises(S2S2InputError, match="--arms"):
        parse_arms("baseline,nope")


def test_paired_bootstrap_hand_computed():
    # one seed, two cases with differences 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4),
    # so the 2.5 % / 97.5 % percentiles are exactly 0 and 1 and the mean of the pairs is 0.5
    r = paired_bootstrap({0: {"a": 0.0, "b": 1.0}}, n_boot=4000, seed=1)
    assert r["mean"] == 0.5 and r["ci_low"] == 0.0 and r["ci_high"] == 1.0
    assert (r["n_seeds"], r["n_cases"]) == (1, 2)
    # identical differences everywhere: a zero-width interval at that value
    r = paired_bootstrap({0: {"a": 0.2, "b": 0.2}, 1: {"a": 0.2, "b": 0.2}}, n_boot=200)
    assert r["ci_low"] == pytest.approx(0.2) and r["ci_high"] == pytest.approx(0.2)
    # two seeds whose cases differ by 0 and by 1: seeds are resampled too, so the CI spans [0, 1]
    r = paired_bootstrap({0: {"a": 0.0, "b": 0.0}, 1: {"a": 1.0, "b": 1.0}}, n_boot=4000, seed=2)
    assert r["mean"] == 0.5 and r["ci_low"] == 0.0 and r["ci_high"] == 1.0
    assert paired_bootstrap({}, n_boot=10)["mean"] is None


def _row(arm, seed, case, cls, dice, domain="test", corruption="none", severity=0, hd=1.0):
    return dict(arm=arm, seed=seed, domain=domain, corruption=corruption, severity=severity, case=case,
                class_name=cls, dice=dice, hd95_mm=hd)  # fmt: skip


def test_summary_means_and_differences_by_hand():
    rows = [
        _row("baseline", 0, "c1", "liver", 0.8), _row("baseline", 0, "c1", "spleen", float("nan")),
        _row("baseline", 0, "c2", "liver", 0.6), _row("baseline", 1, "c1", "liver", 0.7),
        _row("baseline", 1, "c2", "liver", 0.5),
        _row("enc+dec", 0, "c1", "liver", 0.9), _row("enc+dec", 0, "c2", "liver", 0.6),
        _row("enc+dec", 1, "c1", "liver", 0.8), _row("enc+dec", 1, "c2", "liver", 0.6),
    ]  # fmt: skip
    scores = case_scores(rows)
    assert scores[("baseline", 0, "test", "none", 0, "c1")] == pytest.approx(0.8)  # the NaN class is left out
    s = summarize_ablation(rows, ["baseline", "enc+dec"], n_boot=500)
    base = s["arms"]["baseline"]["domains"]["test"]["dice"]
    assert base["mean"] == pytest.approx((0.7 + 0.6) / 2) and base["sd"] == pytest.approx(np.std([0.7, 0.6], ddof=1))
    diff = s["arms"]["enc+dec"]["domains"]["test"]["dice_vs_baseline"]
    assert diff["mean"] == pytest.approx((0.1 + 0.0 + 0.1 + 0.1) / 4)
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert "dice_vs_baseline" not in s["arms"]["baseline"]["domains"]["test"]


def test_corrupted_scores_by_hand():
    def row(arm, seed, case, corr, sev, dice):
        return {**_row(arm, seed, case, "liver", dice), "corruption": corr, "severity": sev}

    rows = []
    for arm, clean, noise in (("baseline", 0.8, (0.6, 0.4)), ("enc+dec", 0.8, (0.7, 0.6))):
        for seed in (0, 1):
            rows.append(row(arm, seed, "c1", "none", 0, clean))
            rows += [row(arm, seed, "c1", "gaussian_noise", sev, d) for sev, d in zip((1, 5), noise)]
            rows.append(row(arm, seed, "c1", "gamma", 1, noise[0] + 0.1))
    s = summarize_ablation(rows, ["baseline", "enc+dec"], n_boot=200)
    rob = s["arms"]["enc+dec"]["robustness"]
    # per severity: mean over the corruptions that have it (gamma only at 1)
    assert rob["mean_dice_per_severity"] == {1: pytest.approx((0.7 + 0.8) / 2), 5: pytest.approx(0.6)}
    # a case's corrupted score = its mean over the three conditions; paired to the baseline's
    mine, base = (0.7 + 0.6 + 0.8) / 3, (0.6 + 0.4 + 0.7) / 3
    assert rob["corrupted"]["dice"]["mean"] == pytest.approx(mine) and rob["corrupted"]["dice"]["sd"] == 0
    assert rob["corrupted"]["dice_vs_baseline"]["mean"] == pytest.approx(mine - base)
    assert "dice_vs_baseline" not in s["arms"]["baseline"]["robustness"]["corrupted"]
    assert rob["degradation"]["per_level"]["gaussian_noise"][5] == pytest.approx(0.8 - 0.6)


def _tiny_sets(tiny_demo: Path) -> list[str]:
    sets = {
        "datalist": str(tiny_demo),
        "dataset_dir": str(tiny_demo.parent),
        "input_size": [32, 32],
        "max_epochs": 1,
        "batch_size": 4,
        "num_workers": 0,
        "val_interval": 1,
        "stack_n": 2,
        "stack_generator": "appearance",
        "stack_dir": "$@output_dir + '/stack_' + @stack_generator",  # under OUT, not the working folder
        "network_name": "basic_unet",
        "networks#basic_unet#features": [4, 4, 8, 8, 16, 4],
        "amp": False,
        "device": "$torch.device('cpu')",
    }
    out = []
    for k, v in sets.items():
        out += ["--set", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    return out


def test_tiny_ablation_end_to_end_and_resume(tiny_demo, tmp_path, capsys):
    out = tmp_path / "ablation"
    ood = json.loads(tiny_demo.read_text())
    ood["test"] = ood["validation"]  # stands in for another site (its own test section)
    ood_path = tiny_demo.parent / "ood_site.json"
    ood_path.write_text(json.dumps(ood))
    argv = ["ablation", "--config", str(REPO / "bundles/synapse/train.json"), "--out", str(out), "--arms", "baseline,enc+dec",
            "--seeds", "1", "--corruptions", "gaussian_noise", "--severities", "1", "3", "--ood-datalist", str(ood_path),
            "--bootstrap", "200", "--no-progress", *_tiny_sets(tiny_demo)]  # fmt: skip
    assert main(argv) == 0
    assert "enc+dec" in capsys.readouterr().out
    with open(out / "ablation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["arm", "seed", "domain", "corruption", "severity", "case", "class_name", "dice", "hd95_mm"]
    keys = {(r["arm"], r["domain"], r["corruption"], r["severity"]) for r in rows}
    for arm in ("baseline", "enc+dec"):
        assert {(arm, "test", "none", "0"), (arm, "ood_site", "none", "0")} <= keys
        assert {(arm, "test", "gaussian_noise", "1"), (arm, "test", "gaussian_noise", "3")} <= keys
    assert len(rows) == 2 * (1 + 1 + 2) * 8  # arms x (clean test, ood, 2 levels) x 1 case x 8 organs
    summary = json.loads((out / "ablation.json").read_text())
    assert set(summary["arms"]) == {"baseline", "enc+dec"}
    assert summary["arms"]["enc+dec"]["domains"]["test"]["dice_vs_baseline"]["n_boot"] == 200
    assert summary["settings"]["stack"]["generator"] == "appearance" and summary["settings"]["stack"]["digest"]
    assert summary["settings"]["corruptions"]["gaussian_noise"]["3"]
    assert set(summary["arms"]["enc+dec"]["robustness"]["dice"]["gaussian_noise"]) == {"1", "3"}
    page = (out / "report.html").read_text()
    assert "ΔDice vs baseline" in page and "data:image/png;base64," in page
    assert not list(out.rglob(".tmp-*"))

    model = out / "runs" / "enc+dec" / "seed0" / "models" / "model.pt"
    before = (model.stat().st_mtime_ns, (model.parent.parent / "scores.csv").stat().st_mtime_ns)
    assert main(argv) == 0  # a finished arm x seed is neither retrained nor rescored
    assert (model.stat().st_mtime_ns, (model.parent.parent / "scores.csv").stat().st_mtime_ns) == before
    with open(out / "ablation.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == rows


def test_corruption_errors_hand_computed():
    from s2s2_monai.robustness.scores import corruption_errors, degradation

    model = {"noise": {1: 0.8, 3: 0.6}}
    base = {"noise": {1: 0.7, 3: 0.5}}
    r = corruption_errors(model, base, clean_model=0.9, clean_baseline=0.8)
    assert r["ce"]["noise"] == pytest.approx((0.2 + 0.4) / (0.3 + 0.5))
    assert r["relative_ce"]["noise"] == pytest.approx(((0.2 - 0.1) + (0.4 - 0.1)) / ((0.3 - 0.2) + (0.5 - 0.2)))
    assert r["mce"] == pytest.approx(0.75)
    d = degradation(0.9, model)
    assert d["per_level"]["noise"][3] == pytest.approx(0.3) and d["mean"] == pytest.approx(0.2)
    assert np.isnan(corruption_errors({"x": {1: 0.5}}, {"x": {1: 1.0}})["ce"]["x"])
