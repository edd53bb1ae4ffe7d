"""Corruptions (deterministic per seed, really change the image) and the robustness report / CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.model import BundleModel
from s2s2_monai.robustness import CORRUPTIONS, copy_seed, corrupt_volume, robustness_evaluation
from s2s2_monai.robustness.corruptions import corruption_transform

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "synapse"


def _volume():
    x, y, z = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), np.linspace(-1, 1, 8), indexing="ij")
    return (0.2 + 0.6 * ((x**2 + y**2) < 0.5) + 0.1 * x).astype(np.float32)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_is_deterministic_per_seed_and_changes_the_image(name):
    vol = _volume()
    a = corrupt_volume(vol, name, seed=7, spacing=(2.0, 2.0, 3.0))
    b = corrupt_volume(torch.from_numpy(vol)[None], name, seed=7, spacing=(2.0, 2.0, 3.0))
    c = corrupt_volume(vol, name, seed=8, spacing=(2.0, 2.0, 3.0))
    assert a.shape == vol.shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)  # same seed, same copy
    assert np.abs(a - c).max() > 1e-3  # another seed, another copy
    assert np.abs(a - vol).mean() > 0.005  # the image really changed
    if CORRUPTIONS[name].rescale:  # upstream min-max rescale: exactly the input range
        assert a.min() == pytest.approx(vol.min(), abs=1e-5) and a.max() == pytest.approx(vol.max(), abs=1e-5)
    else:  # CT corruptions clip to the window: inside the input range
        assert a.min() >= vol.min() - 1e-5 and a.max() <= vol.max() + 1e-5


def test_corruption_leaves_the_global_rng_alone_and_uses_upstream_settings():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    corrupt_volume(_volume(), "motion", seed=1)
    torch.testing.assert_close(torch.rand(3), expected)
    import torchio as tio

    motion = corruption_transform("motion")
    assert (
        isinstance(motion, tio.RandomMotion)
        and motion.degrees_range == (-30, 30)
        and motion.translation_range == (-10, 10)
    )
    assert isinstance(corruption_transform("bias_field"), tio.RandomBiasField)
    assert isinstance(corruption_transform("ghosting"), tio.RandomGhosting)
    assert isinstance(corruption_transform("spike"), tio.RandomSpike)
    with pytest.raises(S2S2InputError, match="unknown corruption"):
        corruption_transform("blur")


def test_bias_field_is_smooth_and_multiplicative():
    """The bias field scales intensities smoothly: on a constant volume the output varies slowly."""
    vol = np.full((32, 32, 8), 0.5, dtype=np.float32)
    vol[0, 0, 0] = 0.0  # keep a range for the min-max scaling
    out = corrupt_volume(vol, "bias_field", seed=3)
    inner = out[1:, 1:, 1:]
    assert inner.std() > 1e-3
    assert np.abs(np.diff(inner, axis=0)).max() < 0.2 * (inner.max() - inner.min() + 1e-6) + 0.05


def test_copy_seed_is_stable_and_distinct():
    s = copy_seed(0, "spike", "case_01", 2)
    assert s == copy_seed(0, "spike", "case_01", 2) and 0 <= s < 2**31
    assert len({copy_seed(0, n, "case_01", k) for n in CORRUPTIONS for k in range(3)}) == 3 * len(CORRUPTIONS)
    assert copy_seed(1, "spike", "case_01", 2) != s


class _ThresholdNet(torch.nn.Module):
    """Fixed 'network': class 6 (liver id of no importance) where the image is bright, else background."""

    def __init__(self, k=9):
        super().__init__()
        self.k = k
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.k, *x.shape[2:])
        logits[:, 5] = (x[:, 0] - 0.55) * 50
        return logits


def _threshold_model() -> BundleModel:
    """The fixed network as a model of the paper's CT preprocessing, native slices."""
    from s2s2_monai.transforms import CTWindowd

    return BundleModel(_ThresholdNet(), [CTWindowd("image")], "synapse")


def test_robustness_report_lists_every_corruption_at_every_severity(tiny_demo, tmp_path):
    out = tmp_path / "rob"
    res = robustness_evaluation(
        _threshold_model(),
        tiny_demo,
        out,
        section="test",
        copies=2,
        seed=0,
        severities=[4, 1],
        n_boot=50,
        progress=False,
    )
    methods = [f"{c}@{s}" for c in CORRUPTIONS for s in (1, 4)]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["clean", *methods]
    assert [c["method"] for c in summary["comparisons"]] == methods
    rob = json.loads((out / "robustness.json").read_text())
    assert rob == res["robustness"] and rob["severities"] == [1, 4]
    assert list(rob["dice"]) == ["clean", *CORRUPTIONS] and all(list(rob["dice"][c]) == ["1", "4"] for c in CORRUPTIONS)
    assert rob["corruptions"]["gamma"]["4"] == CORRUPTIONS["gamma"].record(4)
    rows = list(csv.DictReader(open(out / "robustness.csv")))
    assert len(rows) == len(CORRUPTIONS) * 2 * 2 * 1  # corruptions x severities x copies x test cases
    assert {r["severity"] for r in rows} == {"1", "4"} and {r["copy"] for r in rows} == {"0", "1"}
    clean = rob["dice"]["clean"]["mean_dice"]
    for name in CORRUPTIONS:  # the table's mean equals the mean of the copies, per level
        for level in ("1", "4"):
            vals = [float(r["mean_dice"]) for r in rows if r["corruption"] == name and r["severity"] == level]
            assert rob["dice"][name][level]["mean_dice"] == pytest.approx(np.mean(vals))
            assert rob["dice"][name][level]["degradation"] == pytest.approx(clean - np.mean(vals))  # positive = worse
    per_level = rob["scores"]["mean_dice_per_severity"]
    assert per_level["4"] == pytest.approx(np.mean([rob["dice"][c]["4"]["mean_dice"] for c in CORRUPTIONS]))
    drops = [clean - rob["dice"][c][v]["mean_dice"] for c in CORRUPTIONS for v in ("1", "4")]
    assert rob["scores"]["mean_degradation"] == pytest.approx(np.mean(drops))
    page = (out / "report.html").read_text()
    assert "<h2>Robustness</h2>" in page and "figures/robustness_dice.png" in page
    assert "<th>severity 1</th><th>severity 4</th>" in page
    for name in CORRUPTIONS:
        assert f"<td class='l'>{name}</td>" in page
    assert (out / "figures" / "robustness_dice.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left
    # the corrupted copies in the CSV can be regenerated from their seeds, at their level
    r = rows[-1]
    assert int(r["seed"]) == copy_seed(0, r["corruption"], r["case"], int(r["copy"]))


def test_robustness_bad_input(tiny_demo, tmp_path):
    with pytest.raises(S2S2InputError, match="unknown or no corruptions"):
        robustness_evaluation(_threshold_model(), tiny_demo, tmp_path / "o", corruptions=["blur"])
    with pytest.raises(S2S2InputError, match="severities must be levels of"):
        robustness_evaluation(_threshold_model(), tiny_demo, tmp_path / "o", severities=[0, 6])
    with pytest.raises(S2S2InputError, match="no labelled cases"):
        robustness_evaluation(_threshold_model(), tiny_demo, tmp_path / "o", section="nope")
    assert not (tmp_path / "o").exists()


def test_cli_runs_a_cooperative_bundle_checkpoint(tiny_demo, tmp_path, capsys):
    """`s2s2 robustness` builds network_def from train.json + cooperative.json and loads the weights."""
    from s2s2_monai.cli import main
    from s2s2_monai.cooperative import CooperativeNet

    torch.manual_seed(0)
    net = CooperativeNet(1, 9, channels=(4, 8, 8))
    ckpt = tmp_path / "model.pt"
    torch.save({"network": net.state_dict()}, ckpt)
    args = [
        "robustness",
        "--bundle",
        str(BUNDLE),
        "--config",
        "train.json",
        "--config",
        "cooperative.json",
        "--ckpt",
        str(ckpt),
        "--datalist",
        str(tiny_demo),
        "--out",
        str(tmp_path / "r"),
        "--copies",
        "1",
        "--corruption",
        "spike",
        "--corruption",
        "ghosting",
        "--severities",
        "5",
        "2",
        "--set",
        "cooperative_channels=[4,8,8]",
        "--input-size",
        "48",
        "48",
        "--bootstrap",
        "20",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "spike" in text and "ghosting" in text and "clean" in text
    assert "spike@2" in text and "ghosting@5" in text
    rob = json.loads((tmp_path / "r" / "robustness.json").read_text())
    assert list(rob["dice"]) == ["clean", "spike", "ghosting"] and rob["severities"] == [2, 5]
    assert rob and json.loads((tmp_path / "r" / "summary.json").read_text())["settings"]["model"]["checkpoint"] == str(
        ckpt
    )
    model = BundleModel.from_configs(
        [BUNDLE / "train.json", BUNDLE / "cooperative.json"],
        {"cooperative_channels": [4, 8, 8]},
        checkpoint=ckpt,
        device="cpu",
    )
    assert isinstance(model.network, CooperativeNet) and model.label_map.name == "synapse"
    assert model.input_size == (224, 224) and not model.network.training
    for k, v in net.state_dict().items():
        torch.testing.assert_close(model.network.state_dict()[k], v)
    # wrong architecture -> one error line, exit 2
    bad = [a for a in args if a not in ("--set", "cooperative_channels=[4,8,8]")]
    assert main(bad) == 2
    assert "do not fit the configured network" in capsys.readouterr().err
    assert (
        main(
            [
                "robustness",
                "--bundle",
                str(tmp_path / "nope"),
                "--ckpt",
                str(ckpt),
                "--datalist",
                str(tiny_demo),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_cli_help_lists_the_severities(capsys):
    from s2s2_monai.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["robustness", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--severities S [S ...]" in text and "of 1 2 3 4 5 (default 3" in text
