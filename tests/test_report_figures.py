"""Report figures a person can read on a 1280 px screen: bounded widths, integer severity ticks,
colour-blind-safe overlays with their legend, the contact sheet's organ legend and orientation."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from s2s2_monai.evaluation.metric_table import MetricTable
from s2s2_monai.evaluation.report import OVERLAY_COLORS, overlay_rgb, write_report

MAX_PX = 1400
ORGANS = {i: f"organ {i}" for i in range(1, 9)}


def _png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _label() -> np.ndarray:
    lab = np.zeros((40, 32, 4), dtype=np.uint8)
    for c in ORGANS:  # 8 organs, 4 x 4 blocks in a row pattern
        x, y = 2 + 9 * ((c - 1) % 4), 4 + 14 * ((c - 1) // 4)
        lab[x : x + 6, y : y + 8, :] = c
    return lab


def _table(n_methods: int, methods=None) -> MetricTable:
    ev = MetricTable(ORGANS, model={"checkpoint": "runs/x/models/model.pt", "selection": "last"})
    lab = _label()
    img = lab.astype(np.float32) * 10
    for case in ("c1", "c2"):
        for k, m in enumerate(methods or [f"method_{k}" for k in range(n_methods)]):
            pred = np.roll(lab, k % 3, axis=0) if k else lab.copy()
            ev.add(case, pred, lab, (1.0, 1.0, 2.0), method=m, image=img)
    return ev


def test_evaluation_figures_fit_the_screen_with_8_methods_x_8_organs(tmp_path):
    write_report(tmp_path / "ev", _table(8), n_boot=20)
    figs = sorted((tmp_path / "ev" / "figures").glob("*.png"))
    assert any(f.name == "box_dice.png" for f in figs) and len([f for f in figs if f.name.startswith("worst_")]) == 64
    for f in figs:
        assert _png_size(f)[0] <= MAX_PX, f.name
    page = (tmp_path / "ev" / "report.html").read_text()
    assert "runs/x/models/model.pt" in page  # the model is named
    assert "{" not in page.split("<h2>Settings</h2>")[1].split("</table>")[0]  # settings: a table, not JSON
    assert "<h3>Empty masks</h3><table" in page and "organ in only one of them" in page
    assert "cyan" in page and "magenta" in page and "green" not in page


def test_robustness_figures_with_7_levels(tmp_path):
    from s2s2_monai.robustness.run import _html_section, _plot

    methods = ["clean"] + [f"{c}@{s}" for c in ("gamma", "gaussian_noise") for s in (1, 3, 5)]
    write_report(tmp_path / "rob", _table(7, methods), n_boot=20)
    for f in (tmp_path / "rob" / "figures").glob("*.png"):
        assert _png_size(f)[0] <= MAX_PX, f.name
    curve = {c: {1: 0.7, 3: 0.5, 5: 0.3} for c in ("gamma", "gaussian_noise", "motion", "spike", "ghosting")}
    drawn = _plot(tmp_path / "rob.png", 0.8, curve)
    assert _png_size(tmp_path / "rob.png")[0] <= MAX_PX
    assert drawn["xticks"] and all(float(t).is_integer() for t in drawn["xticks"])
    assert drawn["ylim"] == (0.0, 1.0)
    rob = {
        "severities": [1, 3],
        "copies": 1,
        "seed": 0,
        "dice": {
            "clean": {"mean_dice": 0.8, "n": 2},
            "gamma": {"1": {"mean_dice": 0.7, "degradation": 0.1}, "3": {"mean_dice": 0.5, "degradation": 0.3}},
        },  # fmt: skip
        "scores": {"mean_dice_per_severity": {"1": 0.7, "3": 0.5}, "mean_degradation": 0.2},
    }
    html = _html_section(rob)
    assert "(+0.100)" in html and "(+0.300)" in html and "drop" not in html  # degradation = clean - corrupted
    assert "degradation" in html


def test_overlay_colours_orientation_and_legend(tmp_path):
    gt = np.zeros((40, 30), bool)
    gt[28:36, 2:10] = True  # high x (RAS: towards the patient's left), low y
    pred = np.zeros((40, 30), bool)
    pred[4:10, 20:28] = True  # low x, high y
    rgb = overlay_rgb(None, gt, pred)
    cyan, magenta = np.array(OVERLAY_COLORS["ground truth"]), np.array(OVERLAY_COLORS["prediction"])
    assert tuple(cyan) == (0.0, 1.0, 1.0) and tuple(magenta) == (1.0, 0.0, 1.0)
    is_cyan = np.all(np.isclose(rgb, cyan), axis=-1)
    is_magenta = np.all(np.isclose(rgb, magenta), axis=-1)
    assert is_cyan.any() and is_magenta.any()
    rows, cols = rgb.shape[:2]
    cy, cx = np.argwhere(is_cyan).mean(axis=0)
    my, mx = np.argwhere(is_magenta).mean(axis=0)
    assert cx < cols / 2 < mx  # x inverted as in the overlays (imshow(a.T, origin="lower") + invert_xaxis)
    assert my < rows / 2 < cy  # high y (anterior) up

    ev = _table(2, ["base", "s2s2"])
    write_report(tmp_path / "ov", ev, n_boot=20)
    from matplotlib.image import imread

    png = imread(tmp_path / "ov" / "figures" / "worst_s2s2_1.png")[..., :3]
    band = png[int(png.shape[0] * 0.88) :]  # the legend below the image
    near = lambda c: (np.abs(band - c).sum(axis=-1) < 0.25).sum()  # noqa: E731
    assert near(cyan) > 10 and near(magenta) > 10


def test_contact_sheet_names_the_organs_and_matches_the_overlays(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from s2s2_monai.label_maps import get_label_map
    from s2s2_monai.stack.build import write_contact_sheet

    lab = _label()[:, :, :1].copy()
    lab[lab > 3] = 0  # organs 1-3 shown
    lm = get_label_map("synapse")
    case = SimpleNamespace(case_id="c1", image=lab.astype(np.float32), label=lab)
    volumes = SimpleNamespace(cases=[case], datalist=SimpleNamespace(label_map=lm))
    cache = SimpleNamespace(
        manifest={"slices": [("c1", 0, "k")], "unit": [0.0, 3.0], "n": 2, "generator": "copy", "seed": 0},
        has=lambda key: True,
        read_member=lambda key, m: (lab[:, :, 0] * 80).astype(np.uint8),
    )
    seen: dict = {}
    legend, savefig = Figure.legend, Figure.savefig

    def spy_legend(self, *args, **kwargs):
        seen["labels"] = [h.get_label() for h in kwargs.get("handles", [])]
        return legend(self, *args, **kwargs)

    def spy_savefig(self, *args, **kwargs):
        shown = [ax for ax in self.axes if ax.images]
        # the report overlays' view: (X, Y) arrays transposed, origin lower, x axis inverted
        seen["view"] = all(ax.xaxis_inverted() and ax.images[0].origin == "lower" for ax in shown) and bool(shown)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "legend", spy_legend)
    monkeypatch.setattr(Figure, "savefig", spy_savefig)
    path = write_contact_sheet(cache, volumes, tmp_path / "sheet.png")
    assert path and _png_size(path)[0] <= MAX_PX
    assert seen["labels"] == [lm.name_of(c) for c in (1, 2, 3)]
    assert seen["view"]


@pytest.mark.parametrize("n_methods", [1, 3, 12])
def test_box_plot_width_is_bounded_for_any_number_of_methods(tmp_path, n_methods):
    from s2s2_monai.evaluation.report import _box_plots

    names = _box_plots(tmp_path, _table(n_methods))
    assert all(_png_size(tmp_path / n)[0] <= MAX_PX for n in names)
