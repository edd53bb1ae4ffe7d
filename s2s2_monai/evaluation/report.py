"""Write an evaluation report: ``metrics.csv``, ``summary.json``, ``report.html`` + ``figures/*.png``.

Everything is first written into a temporary folder next to ``out_dir`` (:func:`~s2s2_monai.atomic.stage_dir`,
which also removes what a killed earlier run left there) and moved into place only when complete, so an
error never leaves a partial report; a read-only or full disk is one error naming ``out_dir``. The HTML references its PNGs by
relative path (per metric one figure of box plots, a panel per organ wrapped into rows, never wider than
:data:`MAX_WIDTH_PX`; a small overlay per method and organ of its worst slice, cyan ground truth and magenta
prediction), so it opens offline and fits a 1280 px screen.
"""

from __future__ import annotations

import csv
import html
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

    from s2s2_monai import __version__

    return {
        "s2s2_monai": __version__,
        "monai": version("monai"),
        "torch": version("torch"),
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
            "difference": "method - baseline, paired over cases (Dice: positive = method better; HD95, ASSD: negative = method better)",
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


#: Figures are drawn at this dpi and never wider than this many pixels (a 1280 px screen, any number of
#: methods and organs: the box plots wrap their organ panels into rows instead of growing sideways).
DPI = 100
MAX_WIDTH_PX = 1300
#: Colour-blind-safe overlay colours (ground truth, prediction, both) and their legend labels.
OVERLAY_COLORS = {"ground truth": (0.0, 1.0, 1.0), "prediction": (1.0, 0.0, 1.0), "both": (1.0, 1.0, 1.0)}
_OVERLAY_PX = 256  # the longer side of an overlay's image after resampling


def preload_figures() -> None:
    """Import what the figures need (matplotlib, ~0.3 s) ahead of time, e.g. while cases are scored elsewhere."""
    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import matplotlib.lines  # noqa: F401
    import matplotlib.patches  # noqa: F401
    import scipy.ndimage  # noqa: F401


def _figure(width_in: float, height_in: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(min(width_in, MAX_WIDTH_PX / DPI), height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def method_colors(n: int) -> list:
    """``n`` distinguishable colours: Okabe-Ito (colour-blind safe) for up to 8 methods, then tab20."""
    okabe_ito = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
    if n <= len(okabe_ito):
        return okabe_ito[:n]
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [cmap(i % 20) for i in range(n)]


def _box_plots(fig_dir: Path, ev: MetricTable) -> list[str]:
    """One PNG per metric: organs side by side, one box per method in each organ's group; the groups wrap into
    further rows (one axes each) instead of widening the figure past :data:`MAX_WIDTH_PX`."""
    from matplotlib.patches import Patch

    organs = list(ev.class_names)
    n_m = len(ev.methods)
    colors = method_colors(n_m)
    width = MAX_WIDTH_PX / DPI
    plot_w = width - 0.75  # inches of the axes
    group_w = (0.17 * n_m + 0.25) if n_m > 1 else 0.6  # inches per organ group
    nrows = math.ceil(len(organs) / max(1, min(len(organs), int(plot_w // group_w))))
    per_row = math.ceil(len(organs) / nrows)  # rows of (nearly) equal length
    legend_cols = max(1, min(n_m, int(width // 1.5)))
    head = 0.4 + 0.22 * math.ceil(n_m / legend_cols)  # title + legend band above the axes, in inches
    row_h = 2.3
    height = head + row_h * nrows
    names = []
    for key in ev.metric_keys:
        fig = _figure(width, height)
        for r in range(nrows):
            row = organs[r * per_row : (r + 1) * per_row]
            top = height - head - r * row_h
            ax = fig.add_axes((0.6 / width, (top - row_h + 0.55) / height, plot_w / width, (row_h - 0.75) / height))
            data, pos = [], []
            for i, c in enumerate(row):
                for j, m in enumerate(ev.methods):
                    v = np.asarray(list(ev.values(m, key, c).values()), dtype=np.float64)
                    data.append(v[np.isfinite(v)])
                    pos.append(i + (j - (n_m - 1) / 2) * (0.8 / n_m))
            bp = ax.boxplot(
                data,
                positions=pos,
                widths=0.8 / n_m * 0.85,
                patch_artist=True,
                manage_ticks=False,
                flierprops={"markersize": 2},
                medianprops={"color": "black"},
            )
            for k, patch in enumerate(bp["boxes"]):
                patch.set_facecolor(colors[k % n_m])
            ax.set_xticks(range(len(row)), [ev.class_names[c] for c in row], fontsize=8)
            ax.set_xlim(-0.5, per_row - 0.5)
            for i in range(1, len(row)):
                ax.axvline(i - 0.5, color="#dddddd", linewidth=0.8)
            ax.tick_params(axis="y", labelsize=7)
            ax.grid(axis="y", alpha=0.3)
            ax.set_ylabel(key, fontsize=8)
            if key == "dice":
                ax.set_ylim(-0.02, 1.02)
        title = f"{key} per organ" + (f" ({ev.settings()['hd95_definition']})" if "hd95" in key else "")
        fig.text(0.5, 1 - 0.06 / height, title, ha="center", va="top", fontsize=10)
        handles = [Patch(facecolor=col, edgecolor="black", label=m) for m, col in zip(ev.methods, colors)]
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 1 - 0.3 / height),
            ncol=legend_cols,
            fontsize=8,
            frameon=False,
        )
        name = f"box_{key}.png"
        fig.savefig(fig_dir / name, metadata={"Software": None})
        names.append(name)
    return names


def _resample(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D array to ``shape``."""
    ix = np.minimum((np.arange(shape[0]) + 0.5) * arr.shape[0] / shape[0], arr.shape[0] - 1).astype(int)
    iy = np.minimum((np.arange(shape[1]) + 0.5) * arr.shape[1] / shape[1], arr.shape[1] - 1).astype(int)
    return arr[np.ix_(ix, iy)]


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` on its border, two pixels wide."""
    from scipy import ndimage

    if not mask.any() or mask.all():
        return np.zeros_like(mask)
    return mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=1)


def overlay_rgb(image: np.ndarray | None, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The overlay as shown in the report: (rows, cols, 3) float RGB, radiological view.

    Arrays are (X, Y) in RAS; the display puts x to the left (the patient's right on the viewer's left)
    and y (anterior) up, as ``imshow(a.T, origin="lower")`` with an inverted x axis would. Ground-truth
    outline cyan, prediction outline magenta, both white (:data:`OVERLAY_COLORS`).
    """
    scale = _OVERLAY_PX / max(gt.shape)
    shape = (max(1, round(gt.shape[0] * scale)), max(1, round(gt.shape[1] * scale)))
    back = np.zeros(gt.shape, dtype=np.float32) if image is None else np.asarray(image, dtype=np.float32)
    back = _resample(back, shape)
    lo, hi = np.percentile(back, (1, 99)) if back.size else (0.0, 1.0)
    back = np.clip((back - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(back)
    rgb = np.repeat(back[..., None] * 0.85, 3, axis=-1)
    g, p = _outline(_resample(np.asarray(gt, bool), shape)), _outline(_resample(np.asarray(pred, bool), shape))
    rgb[g & ~p] = OVERLAY_COLORS["ground truth"]
    rgb[p & ~g] = OVERLAY_COLORS["prediction"]
    rgb[g & p] = OVERLAY_COLORS["both"]
    return rgb.transpose(1, 0, 2)[::-1, ::-1]  # rows: y from top (anterior) down; columns: x from right to left


def _overlays(fig_dir: Path, ev: MetricTable) -> list[tuple[str, str]]:
    """One small PNG per method and organ (the worst case's worst slice); one figure reused for all."""
    from matplotlib.lines import Line2D

    out = []
    items = sorted(ev.worst.items(), key=lambda kv: (ev.methods.index(kv[0][0]), kv[0][1]))
    if not items:
        return out
    fig = _figure(2.9, 3.35)
    ax = fig.add_axes((0.02, 0.13, 0.96, 0.76))
    ax.axis("off")
    im = ax.imshow(np.zeros((2, 2, 3)), interpolation="nearest", origin="upper")
    title = fig.text(0.5, 0.985, "", ha="center", va="top", fontsize=7.5)
    handles = [Line2D([], [], color=col, lw=2.5, label=lab) for lab, col in OVERLAY_COLORS.items()]
    leg = fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=True, facecolor="#333333",
                     edgecolor="#333333", handlelength=1.4, columnspacing=0.8, borderpad=0.3)  # fmt: skip
    for text in leg.get_texts():
        text.set_color("white")
    fig.patch.set_facecolor("white")
    for (m, c), w in items:
        rgb = overlay_rgb(w.image, w.gt, w.pred)
        im.set_data(rgb)
        im.set_extent((-0.5, rgb.shape[1] - 0.5, rgb.shape[0] - 0.5, -0.5))
        ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
        ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
        title.set_text(f"{m}: {ev.class_names[c]}\n{w.case} z={w.z}, Dice {w.dice:.3f}")
        name = f"worst_{_slug(m)}_{c}.png"
        fig.savefig(fig_dir / name, metadata={"Software": None})
        out.append(
            (
                name,
                f"{m} / {ev.class_names[c]}: case {w.case}, slice z={w.z}, Dice {w.dice:.3f} "
                "(cyan: ground truth, magenta: prediction, white: both; patient's right on the left)",
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


_EMPTY_CASES = {
    "both_empty": "organ absent from prediction and ground truth",
    "one_empty": "organ in only one of them",
    "pred_and_gt": "organ in both",
    "pred_only": "organ only in the prediction",
    "otherwise": "any other case",
}


def _kv_table(rows, header: tuple[str, str] | None = None) -> str:
    """A two-column HTML table of (name, value) text pairs."""
    e = html.escape
    head = f"<tr><th>{e(header[0])}</th><th>{e(header[1])}</th></tr>" if header else ""
    body = "".join(f"<tr><th class='l'>{e(str(k))}</th><td class='l'>{e(str(v))}</td></tr>" for k, v in rows)
    return f"<table class='kv'>{head}{body}</table>"


def settings_html(settings: dict) -> str:
    """The settings, the weights evaluated and the empty-mask rule as HTML tables (no raw JSON)."""
    rows = [
        ("model", _describe_model(settings.get("model"))),
        ("protocol", settings.get("protocol")),
        ("HD95 definition", settings.get("hd95_definition")),
        ("units", settings.get("units")),
        ("label map", settings.get("label_map") or "not recorded"),
        ("averaging", settings.get("averaging")),
    ]
    empty = [(_EMPTY_CASES.get(k, k.replace("_", " ")), v) for k, v in (settings.get("empty_policy") or {}).items()]
    return "<h2>Settings</h2>" + _kv_table(rows) + "<h3>Empty masks</h3>" + _kv_table(empty, ("case", "what is scored"))


_CSS = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1240px}table{border-collapse:collapse;margin-bottom:.6em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#eee}td.l,th.l{text-align:left}"
    "table.kv th{width:12em}img{margin:4px;max-width:100%;height:auto}figure{margin:4px}"
    "figcaption{max-width:290px;font-size:small}.overlays{display:flex;flex-wrap:wrap}"
)


def _html(summary: dict, ev: MetricTable, boxes: list[str], overlays: list[tuple[str, str]]) -> str:
    s = summary["settings"]
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>s2s2 evaluation</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p>Protocol <b>{e(s['protocol'])}</b>, HD95 definition <b>{e(s['hd95_definition'])}</b>, units <b>{e(s['units'])}</b>; "
        f"model: <b>{e(_describe_model(s.get('model')))}</b>.</p>",
        settings_html(s),
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
        "<h2>Worst slices</h2><p>For each method and organ: the case with the lowest Dice, at the axial slice with the "
        "most disagreeing voxels. Outlines: <b style='color:#00a0a0'>cyan</b> ground truth, "
        "<b style='color:#c000c0'>magenta</b> prediction, white both; radiological view (the patient's right on "
        "the left, anterior up).</p><div class='overlays'>"
    )
    parts += [
        f"<figure><img src='figures/{n}' alt='{e(cap)}'><figcaption>{e(cap)}</figcaption></figure>"
        for n, cap in overlays
    ]
    parts.append("</div>")
    versions = ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
    parts.append(f"<p style='font-size:small'>versions: {e(versions)}</p></body></html>")
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


def _figures(fig_dir: Path, ev: MetricTable) -> tuple[list[str], list[tuple[str, str]]]:
    """Box plots here and, with several CPUs, the overlays at the same time in a forked process."""
    from s2s2_monai.processes import can_fork, fork_pool

    if len(ev.worst) < 2 or (os.cpu_count() or 1) < 2 or not can_fork():
        return _box_plots(fig_dir, ev), _overlays(fig_dir, ev)
    with fork_pool(1) as pool:
        overlays = pool.submit(_overlays, fig_dir, ev)
        return _box_plots(fig_dir, ev), overlays.result()


def _stage_and_publish(out_dir: Path, ev: MetricTable, summary: dict) -> None:
    tmp = stage_dir(out_dir)
    try:
        fig_dir = tmp / "figures"
        fig_dir.mkdir()
        _write_csv(tmp / "metrics.csv", ev)
        write_json(tmp / "summary.json", summary)
        boxes, overlays = _figures(fig_dir, ev)
        (tmp / "report.html").write_text(_html(summary, ev, boxes, overlays))
        publish(
            tmp, out_dir, ("figures", "metrics.csv", "summary.json", "report.html")
        )  # html last: marks a complete report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
