"""Build small example reports from the demo phantoms and render them as a person would see them.

    python benchmarks/render_reports.py [--out runs/render_reports] [--no-chromium] [--timing]

Writes, without training anything (fake predictions: each phantom's labels shifted, eroded or with an organ
dropped):

- ``evaluation/``: ``s2s2 evaluate``'s report with 8 methods x 8 organs;
- ``robustness/``: the robustness report of a fixed thresholding "network" (clean + 2 corruptions x 3
  severities = 7 methods; the model carries a checkpoint name, so the report names it);
- ``ablation/``: the ablation report of a hand-made set of rows (4 arms, 8 corruptions, severities 1-5);
- ``stack/contact_sheet.png``: the contact sheet of a copy-generator stack of the training phantoms.

Then renders each ``report.html`` to a PNG at a 1280 px wide window with Debian's headless ``chromium``
when it is installed (else prints the report paths) and prints every figure's pixel width.
``--timing`` also times the evaluation figure step (box plots, overlays) on two 500x400x110 phantoms
and 2 methods, as ``s2s2 evaluate`` draws them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    head = Path(path).read_bytes()[:24]
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _fake_predictions(label: np.ndarray, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` plausible wrong segmentations of ``label`` (shifted, eroded, an organ dropped)."""
    from scipy import ndimage

    out = []
    for k in range(n):
        pred = np.roll(label, shift=((k + 1) % 3, ((k + 1) // 3) % 3, 0), axis=(0, 1, 2)).copy()
        if k % 2:  # eroded in plane (slice by slice)
            fg = ndimage.binary_erosion(pred > 0, structure=np.ones((3, 3, 1), bool), iterations=1 + k % 3)
            pred = np.where(fg, pred, 0)
        ids = [i for i in np.unique(label) if i]
        if ids and k % 4 == 3:
            pred[pred == ids[int(rng.integers(len(ids)))]] = 0
        out.append(pred.astype(label.dtype))
    return out


def _table(datalist: Path, n_methods: int, seed: int = 0):
    """A MetricTable of the datalist's test + validation cases and ``n_methods`` fake methods."""
    from s2s2_monai.data.cases import as_datalist, iter_cases
    from s2s2_monai.evaluation.metric_table import MetricTable

    dl = as_datalist(datalist)
    lm = dl.label_map
    ev = MetricTable(
        lm.classes, label_map=lm.name, model={"checkpoint": "runs/demo/models/model.pt", "selection": "last"}
    )
    rng = np.random.default_rng(seed)
    for section in ("validation", "test"):
        for case in iter_cases(dl, section, progress=False):
            label = np.asarray(case.label)
            label = label[0] if label.ndim == 4 else label
            image = np.asarray(case.image)
            image = image[0] if image.ndim == 4 else image
            for j, pred in enumerate(_fake_predictions(label, n_methods, rng)):
                name = ["baseline", "s2s2", "synthetic", "enc", "enc+dec", "cooperative", "nnunet", "transunet"][
                    j % 8
                ] + ("" if j < 8 else str(j))
                ev.add(case.case_id, pred, label, case.spacing, method=name, image=image)
    return ev


def evaluation_report(demo: Path, out: Path) -> Path:
    from s2s2_monai.evaluation.report import write_report

    write_report(out, _table(demo, 8), n_boot=200)
    return out / "report.html"


def robustness_report(demo: Path, out: Path) -> Path:
    import torch

    from s2s2_monai.model import BundleModel
    from s2s2_monai.robustness import robustness_evaluation
    from s2s2_monai.transforms import CTWindowd

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.zeros(x.shape[0], 9, *x.shape[2:])
            # the phantoms' windowed intensities: liver ~0.39, spleen ~0.62 (noise breaks the thresholds)
            logits[:, 6] = (0.06 - (x[:, 0] - 0.39).abs()) * 100
            logits[:, 1] = (0.03 - (x[:, 0] - 0.62).abs()) * 100
            return logits

    model = BundleModel(Net(), [CTWindowd("image")], "synapse")
    model.checkpoint = Path("runs/demo/models/model.pt")  # a name for the report; no weights are read
    robustness_evaluation(
        model,
        demo,
        out,
        section="test",
        corruptions=["gaussian_noise", "gamma"],
        severities=[1, 3, 5],
        copies=1,
        n_boot=100,
        progress=False,
    )
    return out / "report.html"


def ablation_report(out: Path) -> Path:
    from s2s2_monai.ablation.report import write_ablation_report
    from s2s2_monai.ablation.summary import summarize_ablation
    from s2s2_monai.robustness.corruptions import CORRUPTIONS

    rng = np.random.default_rng(0)
    arms = ["baseline", "synthetic", "enc", "enc+dec"]
    rows = []
    for a, arm in enumerate(arms):
        for seed in range(2):
            for case in ("c1", "c2", "c3"):
                for cls in ("liver", "spleen", "left kidney"):
                    clean = 0.7 + 0.04 * a + 0.03 * rng.standard_normal()
                    rows.append(dict(arm=arm, seed=seed, domain="test", corruption="none", severity=0, case=case,
                                     class_name=cls, dice=clean, hd95_mm=5.0))  # fmt: skip
                    for corr in CORRUPTIONS:
                        for sev in range(1, 6):
                            d = max(0.0, clean - (0.06 - 0.01 * a) * sev + 0.02 * rng.standard_normal())
                            rows.append(dict(arm=arm, seed=seed, domain="test", corruption=corr, severity=sev,
                                             case=case, class_name=cls, dice=d, hd95_mm=6.0))  # fmt: skip
    summary = summarize_ablation(rows, arms, n_boot=100)
    summary["settings"] = {"seeds": [0, 1], "max_epochs": 2, "network_name": "BasicUNet", "arms": arms}
    write_ablation_report(out, rows, summary)
    return out / "report.html"


def contact_sheet(demo: Path, out: Path) -> Path | None:
    from s2s2_monai.stack.build import build_stack

    summary = build_stack(demo, out, n=4, seed=0, progress=False, qc=False)
    return Path(summary["contact_sheet"]) if summary.get("contact_sheet") else None


def render(html: Path, png: Path, chromium: str) -> bool:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               f"--screenshot={png}", "--window-size=1280,2000", html.resolve().as_uri()]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return res.returncode == 0 and png.exists()


def timing(report=None) -> dict[str, float]:
    """Seconds of the evaluation figure step on two 500x400x110 phantoms, 2 methods (as ``s2s2 evaluate``).

    ``report``: the module whose ``_box_plots`` and ``_overlays`` are timed (default
    :mod:`s2s2_monai.evaluation.report`; another version of it to compare).
    """
    import matplotlib

    matplotlib.use("Agg")
    from s2s2_monai.data.phantom import _phantoms
    from s2s2_monai.evaluation.metric_table import MetricTable
    from s2s2_monai.label_maps import get_label_map

    if report is None:
        from s2s2_monai.evaluation import report

    lm = get_label_map("synapse")
    ev = MetricTable(lm.classes, label_map=lm.name)
    rng = np.random.default_rng(0)
    for i, image, label, affine in _phantoms(2, 0, (500, 400, 110), False):
        spacing = tuple(float(np.linalg.norm(affine[:3, k])) for k in range(3))
        for m, pred in zip(("baseline", "s2s2"), _fake_predictions(label, 2, rng)):
            ev.add(f"case{i}", pred, label, spacing, method=m, image=image)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report._box_plots(Path(tmp), ev)
        t1 = time.perf_counter()
        report._overlays(Path(tmp), ev)
        t2 = time.perf_counter()
    return {"box_plots_s": t1 - t0, "overlays_s": t2 - t1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/render_reports", type=Path)
    p.add_argument("--no-chromium", action="store_true", help="only build the reports")
    p.add_argument("--timing", action="store_true", help="also time the evaluation figure step (500x400x110)")
    args = p.parse_args(argv)

    from s2s2_monai.data.phantom import write_demo_data

    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    demo = write_demo_data(out / "demo", cases=6, seed=0, shape=(96, 80, 24), progress=False)
    t0 = time.perf_counter()
    reports = {
        "evaluation": evaluation_report(demo, out / "evaluation"),
        "robustness": robustness_report(demo, out / "robustness"),
        "ablation": ablation_report(out / "ablation"),
    }
    sheet = contact_sheet(demo, out / "stack")
    print(f"built the reports in {time.perf_counter() - t0:.1f} s")
    for name, html in reports.items():
        print(f"{name}: {html}")
        figs = sorted((html.parent / "figures").glob("*.png")) if (html.parent / "figures").exists() else []
        for fig in [f for f in figs if not f.name.startswith("worst_")]:
            w, h = _png_size(fig)
            print(f"  {fig}: {w} x {h} px")
        worst = [_png_size(f) for f in figs if f.name.startswith("worst_")]
        if worst:
            print(
                f"  {len(worst)} overlays worst_*.png: {max(w for w, _ in worst)} x {max(h for _, h in worst)} px at most"
            )
        if name == "ablation":
            import base64
            import re

            for k, b64 in enumerate(re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html.read_text())):
                png = out / f"ablation_plot_{k}.png"
                png.write_bytes(base64.b64decode(b64))
                w, h = _png_size(png)
                print(f"  inline plot {k} (saved as {png}): {w} x {h} px")
    if sheet:
        w, h = _png_size(sheet)
        print(f"contact sheet: {sheet} ({w} x {h} px)")
    chromium = None if args.no_chromium else (shutil.which("chromium") or shutil.which("chromium-browser"))
    if chromium:
        for name, html in reports.items():
            png = out / f"{name}.png"
            print(f"rendered {name}: {png}" if render(html, png, chromium) else f"chromium failed on {html}")
    elif not args.no_chromium:
        print("no chromium found (apt-get install -y chromium): open the report.html files above in a browser")
    if args.timing:
        t = timing()
        print(f"evaluation figures, 2 cases 500x400x110, 2 methods: box plots {t['box_plots_s']:.2f} s, "
              f"overlays {t['overlays_s']:.2f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
