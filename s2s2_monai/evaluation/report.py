"""Write an evaluation report: ``metrics.csv``, ``summary.json``, ``report.html`` + ``figures/*.png``.

Everything is first written into a temporary folder next to ``out_dir`` (:func:`~s2s2_monai.atomic.stage_dir`,
which also removes what a killed earlier run left there) and moved into place only when complete, so an
error never leaves a partial report; a read-only or full disk is one error naming ``out_dir``. The HTML references its PNGs by
relative path (box plots per organ, overlays of the worst slices), so it opens offline.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import platform
import shutil
from pathlib import Path

import numpy as np

from s2s2_monai.atomic import json_safe, publish, stage_dir, write_json
from s2s2_monai.errors import file_system_errors
from s2s2_monai.evaluation.compare import few_pairs_warning, paired_comparison
from s2s2_monai.evaluation.metric_table import MetricTable

__all__ = ["summarize", "write_report", "REPORT_FILES"]

REPORT_FILES = ("metrics.csv", "summary.json", "report.html", "figures")


def _stats(values) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=0)),
        "median": float(np.median(arr)),
        "n": int(arr.size),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import version  # not `import monai`: that loads every MONAI submodule (~10 s)

    import scipy
    import torch

    from s2s2_monai import __version__

    return {
        "s2s2_monai": __version__,
        "monai": version("monai"),
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def summarize(ev: MetricTable, n_boot: int = 10000, seed: int = 0) -> dict:
    """Per class and overall mean/std/median per method, settings, versions and A/B comparisons.

    The first method is the baseline; every other method is compared with it case by case.
    """
    if not ev.rows:
        raise ValueError("no cases were evaluated")
    keys = ev.metric_keys
    methods = {}
    for m in ev.methods:
        per_class = {
            ev.class_names[c]: {"class_id": c, **{k: _stats(ev.values(m, k, c).values()) for k in keys}}
            for c in ev.class_names
        }
        if ev.legacy_transunet:  # mean over cases per class, then over classes
            overall = {k: float(np.mean([per_class[n][k]["mean"] for n in per_class])) for k in keys}
        else:
            overall = {k: _stats(ev.values(m, k).values()) for k in keys}
        methods[m] = {"num_cases": len(ev.cases(m)), "per_class": per_class, "overall": overall}
    comparisons = []
    base = ev.methods[0]
    for m in ev.methods[1:]:
        cases = [c for c in ev.cases(base) if c in set(ev.cases(m))]

        def paired(key, class_id=None, m=m, cases=cases):
            a, b = ev.values(base, key, class_id), ev.values(m, key, class_id)
            return paired_comparison([a[c] for c in cases], [b[c] for c in cases], n_boot=n_boot, seed=seed)

        comp = {
            "baseline": base,
            "method": m,
            "difference": "method - baseline, paired over cases",
            "ci": f"95% percentile bootstrap ({n_boot} resamples, seed {seed})",
            "test": "Wilcoxon signed-rank, two-sided",
            "per_class": {ev.class_names[c]: {k: paired(k, c) for k in keys} for c in ev.class_names},
            "overall": {k: paired(k) for k in keys},
        }
        comp["n_pairs"] = comp["overall"][keys[0]]["n"]
        per_class_n = {n: min((r[k]["n"] for k in keys if r[k]["n"]), default=0) for n, r in comp["per_class"].items()}
        comp["warning"] = few_pairs_warning(m, base, comp["n_pairs"], per_class_n)
        comparisons.append(comp)
    return {"settings": ev.settings(), "methods": methods, "comparisons": comparisons, "versions": _versions()}


def _write_csv(path: Path, ev: MetricTable) -> None:
    several = len(ev.methods) > 1
    cols = (["method"] if several else []) + ["case", "class_id", "class_name", *ev.metric_keys]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in ev.rows:
            w.writerow(
                [
                    r[c] if not isinstance(r[c], float) else ("nan" if not math.isfinite(r[c]) else repr(r[c]))
                    for c in cols
                ]
            )


def _box_plots(fig_dir: Path, ev: MetricTable) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = []
    for key in ev.metric_keys:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(ev.class_names) * len(ev.methods)), 4.0), dpi=100)
        width = 0.8 / len(ev.methods)
        for j, m in enumerate(ev.methods):
            data, pos = [], []
            for i, c in enumerate(ev.class_names):
                v = np.asarray(list(ev.values(m, key, c).values()), dtype=np.float64)
                data.append(v[np.isfinite(v)])
                pos.append(i + (j - (len(ev.methods) - 1) / 2) * width)
            bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, manage_ticks=False)
            for patch in bp["boxes"]:
                patch.set_facecolor(plt.cm.tab10(j % 10))
            ax.plot([], [], color=plt.cm.tab10(j % 10), lw=8, label=m)
        ax.set_xticks(range(len(ev.class_names)), list(ev.class_names.values()), rotation=30, ha="right")
        ax.set_ylabel(key)
        ax.set_title(f"{key} per organ ({ev.settings()['hd95_definition']})" if "hd95" in key else f"{key} per organ")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        name = f"box_{key}.png"
        fig.savefig(fig_dir / name, metadata={"Software": None})
        plt.close(fig)
        names.append(name)
    return names


def _overlays(fig_dir: Path, ev: MetricTable) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = []
    for (m, c), w in sorted(ev.worst.items(), key=lambda kv: (ev.methods.index(kv[0][0]), kv[0][1])):
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        back = w.image if w.image is not None else np.zeros(w.gt.shape, dtype=np.float32)
        ax.imshow(back.T, cmap="gray", origin="lower")  # RAS: x to the right, y up
        for mask, color in ((w.gt, "lime"), (w.pred, "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.T.astype(float), levels=[0.5], colors=[color], linewidths=1.0, origin="lower")
        ax.invert_xaxis()  # radiological view: patient's right on the left, anterior up
        ax.set_title(f"{m}: {ev.class_names[c]}, {w.case} z={w.z}, dice {w.dice:.3f}", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        name = f"worst_{_slug(m)}_{c}.png"
        fig.savefig(fig_dir / name, metadata={"Software": None})
        plt.close(fig)
        out.append(
            (
                name,
                f"{m} / {ev.class_names[c]}: case {w.case}, slice z={w.z}, Dice {w.dice:.3f} (green: ground truth, red: prediction)",
            )
        )
    return out


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def _fmt(v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def _describe_model(model: dict | None) -> str:
    """One line naming the evaluated weights: file, which epoch and why it was chosen."""
    if not model:
        return "not recorded (weights given directly)"
    parts = [str(model.get("checkpoint")), str(model.get("selection"))]
    if model.get("epoch") is not None:
        parts.append(f"epoch {model['epoch']} of {model.get('max_epochs')}")
    if model.get("metric") is not None:
        parts.append(f"{model.get('metric_name')} {model['metric']:.4f} on validation")
    return ", ".join(parts)


def _html(summary: dict, ev: MetricTable, boxes: list[str], overlays: list[tuple[str, str]]) -> str:
    s = summary["settings"]
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>s2s2 evaluation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}td.l{text-align:left}img{margin:4px}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p>Protocol <b>{e(s['protocol'])}</b>, HD95 definition <b>{e(s['hd95_definition'])}</b>, units <b>{e(s['units'])}</b>, "
        f"label map {e(str(s['label_map']))}. Averaging: {e(s['averaging'])}.</p>",
        f"<p>Empty masks: {e(json.dumps(s['empty_policy']))}</p>",
        f"<p>Model: {e(_describe_model(s.get('model')))}</p>",
    ]
    keys = ev.metric_keys
    for m, res in summary["methods"].items():
        parts.append(f"<h2>{e(m)} ({res['num_cases']} cases)</h2><table><tr><th>organ</th>")
        parts += [f"<th>{e(k)} mean ± std</th><th>{e(k)} median</th>" for k in keys]
        parts.append("</tr>")
        for name, st in res["per_class"].items():
            parts.append(f"<tr><td class='l'>{e(name)}</td>")
            parts += [
                f"<td>{_fmt(st[k]['mean'])} ± {_fmt(st[k]['std'])}</td><td>{_fmt(st[k]['median'])}</td>" for k in keys
            ]
            parts.append("</tr>")
        ov = res["overall"]
        parts.append("<tr><td class='l'><b>overall</b></td>")
        for k in keys:
            if isinstance(ov[k], dict):
                parts.append(
                    f"<td><b>{_fmt(ov[k]['mean'])}</b> ± {_fmt(ov[k]['std'])}</td><td>{_fmt(ov[k]['median'])}</td>"
                )
            else:
                parts.append(f"<td><b>{_fmt(ov[k])}</b></td><td></td>")
        parts.append("</tr></table>")
    for comp in summary["comparisons"]:
        n_pairs = comp.get("n_pairs", comp["overall"][keys[0]]["n"])
        parts.append(
            f"<h2>{e(comp['method'])} vs {e(comp['baseline'])} (n = {n_pairs} paired cases)</h2><p>{e(comp['difference'])}; "
            f"CI {e(comp['ci'])}; {e(comp['test'])}; n: the pairs each difference rests on.</p>"
        )
        if comp.get("warning"):
            parts.append(f"<p style='color:#b00'><b>warning:</b> {e(comp['warning'])}</p>")
        parts.append(
            "<table><tr><th>organ</th>" + "".join(f"<th>Δ {e(k)} [95% CI] (n)</th><th>p</th>" for k in keys) + "</tr>"
        )
        for name, per in [*comp["per_class"].items(), ("overall", comp["overall"])]:
            parts.append(f"<tr><td class='l'>{e(name)}</td>")
            parts += [
                f"<td>{_fmt(per[k]['mean_diff'])} [{_fmt(per[k]['ci_low'])}, {_fmt(per[k]['ci_high'])}] (n={per[k]['n']})</td>"
                f"<td>{_fmt(per[k]['p_wilcoxon'])}</td>"
                for k in keys
            ]
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("<h2>Per organ</h2>")
    parts += [f"<img src='figures/{b}' alt='{e(b)}'>" for b in boxes]
    parts.append(
        "<h2>Worst slices</h2><p>For each method and organ: the case with the lowest Dice, at the axial slice with the most disagreeing voxels.</p>"
    )
    parts += [
        f"<figure style='display:inline-block'><img src='figures/{n}' alt='{e(cap)}'><figcaption style='max-width:400px;font-size:small'>{e(cap)}</figcaption></figure>"
        for n, cap in overlays
    ]
    parts.append(f"<p style='font-size:small'>versions: {e(json.dumps(summary['versions']))}</p></body></html>")
    return "\n".join(parts)


def write_report(out_dir: str | os.PathLike, ev: MetricTable, n_boot: int = 10000, seed: int = 0) -> dict:
    """Write ``metrics.csv``, ``summary.json``, ``report.html`` and ``figures/`` into ``out_dir``.

    The files appear all at once (temporary folder, then ``os.replace``); files of an older
    report in ``out_dir`` are replaced, other files there are left alone.

    Returns:
        The summary (as written to ``summary.json``).

    Raises:
        S2S2InputError: ``out_dir`` cannot be written (read-only, full, no permission); nothing is left.
    """
    out_dir = Path(out_dir)
    summary = json_safe(summarize(ev, n_boot=n_boot, seed=seed))
    with file_system_errors(out_dir):
        _stage_and_publish(out_dir, ev, summary)
    return summary


def _stage_and_publish(out_dir: Path, ev: MetricTable, summary: dict) -> None:
    tmp = stage_dir(out_dir)
    try:
        fig_dir = tmp / "figures"
        fig_dir.mkdir()
        _write_csv(tmp / "metrics.csv", ev)
        write_json(tmp / "summary.json", summary)
        boxes = _box_plots(fig_dir, ev)
        overlays = _overlays(fig_dir, ev)
        (tmp / "report.html").write_text(_html(summary, ev, boxes, overlays))
        publish(
            tmp, out_dir, ("figures", "metrics.csv", "summary.json", "report.html")
        )  # html last: marks a complete report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
