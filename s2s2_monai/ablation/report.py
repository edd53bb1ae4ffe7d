"""``ablation.csv``, ``ablation.json`` and an offline ``report.html`` (Table-6-style table, Dice-vs-severity plots)."""

from __future__ import annotations

import base64
import csv
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["write_ablation_report", "table_rows"]


def _fmt(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _tag(d: Mapping | None) -> str | None:
    """The interval's short name: ``95% CI``, ``range over seeds``, ``range over cases`` or ``single pair``."""
    if not d or d.get("mean") is None:
        return None
    interval = d.get("interval") or "bootstrap 95% CI"  # summaries written before the interval was named
    if interval.startswith("bootstrap "):
        return interval.removeprefix("bootstrap ").split(" over ")[0]
    if interval.startswith("range over "):
        return interval.split(" (")[0]
    return "single pair"


def _ci(d: Mapping | None, with_tag: bool = False) -> str:
    """``+0.0200 [+0.0100, +0.0300] (3 seeds x 12 cases)``; ``with_tag`` names the interval in the cell too."""
    tag = _tag(d)
    if tag is None:
        return "–"
    n_s, n_c = d.get("n_seeds"), d.get("n_cases")
    n = f"{n_s} seed{'s' if n_s != 1 else ''} x {n_c} case{'s' if n_c != 1 else ''}" if n_s is not None else ""
    if tag == "single pair":
        return f"{d['mean']:+.4f} ({n}, no interval)" if n else f"{d['mean']:+.4f} (no interval)"
    label = "; ".join(x for x in (tag if with_tag else "", n) if x)
    return f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" + (f" ({label})" if label else "")


def _column(diffs: Sequence[Mapping | None]) -> tuple[str, list[str]]:
    """Header bracket and cells of one difference column: the interval's name in the header when every
    cell has the same kind, else ``95% CI or range`` and the kind in each cell."""
    tags = {t for t in map(_tag, diffs) if t is not None}
    if len(tags) <= 1:  # none: no baseline, every cell "–"
        return next(iter(tags), "95% CI"), [_ci(d) for d in diffs]
    bootstrap = [t for t in sorted(tags) if t.endswith(" CI")]
    return f"{bootstrap[0] if bootstrap else 'interval'} or range", [_ci(d, with_tag=True) for d in diffs]


def table_rows(summary: Mapping) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the Table-6-style table: per arm, Dice (mean ± sd over seeds) and the paired
    difference to the baseline per domain with its interval (95 % CI over seeds x cases, or the range with one
    seed or one case: the header names which) and the seeds x cases it rests on, HD95 in-domain, and mCE."""
    arms = summary["arms"]
    domains: list[str] = []
    for entry in arms.values():
        domains += [d for d in entry["domains"] if d not in domains]
    corrupted = any("corrupted" in e.get("robustness", {}) for e in arms.values())
    columns: list[tuple[str, list[str], list[str]]] = []  # (name, Dice cells, [Δ header, *Δ cells])
    for name, parts in [
        *((d, [e["domains"].get(d, {}) for e in arms.values()]) for d in domains),
        *([("corrupted", [e.get("robustness", {}).get("corrupted", {}) for e in arms.values()])] if corrupted else []),
    ]:
        dice = [f"{_fmt(p.get('dice', {}).get('mean'))} ± {_fmt(p.get('dice', {}).get('sd'))}" for p in parts]
        bracket, cells = _column([p.get("dice_vs_baseline") for p in parts])
        columns.append((name, dice, [f"{name} ΔDice vs baseline [{bracket}]", *cells]))
    header = ["arm"]
    for name, _, diff in columns:
        header += [f"{name} Dice", diff[0]]
    header += ["test HD95 (mm)", "mCE", "relative mCE"]
    rows = []
    for i, (arm, entry) in enumerate(arms.items()):
        row = [arm]
        for _, dice, diff in columns:
            row += [dice[i], diff[i + 1]]
        hd = entry["domains"].get("test", {}).get("hd95_mm", {})
        row.append(f"{_fmt(hd.get('mean'), 2)} ± {_fmt(hd.get('sd'), 2)}")
        ce = entry.get("robustness", {}).get("corruption_error", {})
        row += [_fmt(ce.get("mce"), 3), _fmt(ce.get("relative_mce"), 3)]
        rows.append(row)
    return header, rows


#: The plots are drawn at this dpi and never wider than this many pixels (a 1280 px screen).
DPI = 100
MAX_WIDTH_PX = 1300


def _plots(summary: Mapping) -> list[tuple[str, str]]:
    """[(title, base64 PNG)]: one figure of Dice vs severity, a panel per corruption (wrapped, at most 4 per row,
    at most :data:`MAX_WIDTH_PX` wide), one line per arm (severity 0 = clean), the legend above the panels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    corruptions: list[str] = []
    for entry in summary["arms"].values():
        corruptions += [c for c in entry.get("robustness", {}).get("dice", {}) if c not in corruptions]
    if not corruptions:
        return []
    arms = list(summary["arms"])
    colors = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
    markers = "osD^vP*X"
    ncols = min(4, len(corruptions))
    nrows = -(-len(corruptions) // ncols)
    width = min(MAX_WIDTH_PX / DPI, 0.6 + 3.1 * ncols)
    head = 0.6  # legend band, inches
    height = head + 2.6 * nrows
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(
        left=0.55 / width, right=1 - 0.15 / width, top=1 - head / height, bottom=0.5 / height, wspace=0.08, hspace=0.3
    )
    max_sev = 0
    for k, corr in enumerate(corruptions):
        ax = axes[k // ncols][k % ncols]
        for i, (arm, entry) in enumerate(summary["arms"].items()):
            rob = entry.get("robustness", {})
            curve = rob.get("dice", {}).get(corr, {})
            if not curve:
                continue
            levels = sorted(int(s) for s in curve)
            max_sev = max(max_sev, *levels)
            ys = [rob.get("clean_dice")] + [curve[s] if s in curve else curve[str(s)] for s in levels]
            ax.plot(
                [0, *levels],
                [float("nan") if y is None else y for y in ys],
                marker=markers[i % len(markers)],
                markersize=4,
                color=colors[i % len(colors)],
                label=arm,
            )
        ax.set_title(corr, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if k % ncols == 0:
            ax.set_ylabel("mean Dice", fontsize=8)
        if k // ncols == nrows - 1 or k + ncols >= len(corruptions):
            ax.set_xlabel("severity (0 = clean)", fontsize=8)
            ax.tick_params(labelbottom=True)
    for k in range(len(corruptions), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    ticks = list(range(0, max_sev + 1))
    axes[0][0].set_xticks(ticks, [str(t) for t in ticks])
    axes[0][0].set_xlim(-0.3, max_sev + 0.3)
    axes[0][0].set_ylim(0, 1)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.08 / height), ncol=len(arms), fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return [("Dice vs corruption severity, one panel per corruption", base64.b64encode(buf.getvalue()).decode())]


def settings_html(settings: Mapping) -> str:
    """The run's settings as an HTML table (lists and maps as short text, not JSON)."""
    e = html.escape

    def text(v) -> str:
        if isinstance(v, Mapping):
            return "; ".join(f"{k}: {text(x)}" for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return ", ".join(text(x) for x in v)
        return "–" if v is None else str(v)

    rows = "".join(
        f"<tr><th class='l'>{e(str(k))}</th><td class='l'>{e(text(v))}</td></tr>" for k, v in settings.items()
    )
    return f"<table class='kv'>{rows}</table>"


def _html(summary: Mapping) -> str:
    e = html.escape
    s = summary.get("settings", {})
    header, rows = table_rows(summary)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>s2s2 ablation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#eee}td.l,th.l{text-align:left}img{margin:4px;max-width:100%;"
        "height:auto}</style></head><body>",
        "<h1>S2S2 ablation</h1>",
        f"<p>{len(s.get('seeds', []))} seed(s) {e(str(s.get('seeds')))}, {e(str(s.get('max_epochs')))} epochs, network "
        f"{e(str(s.get('network_name')))}, model = last epoch. Dice: mean ± sd over seeds of the mean over cases of the "
        "per-case mean over organs; Δ: paired difference to the baseline (same seed, same case), in brackets "
        "its interval, named in the column header: 95% CI = expanded percentile bootstrap resampling seeds and "
        "case indices jointly (the same drawn cases under every drawn seed); with one case (per domain) the "
        "range (min–max) of the differences over seeds, with one seed their range over cases: a range is not a "
        "confidence interval. Beside each: the seeds x cases the difference rests on. Corrupted: the in-domain "
        "test cases under every corruption and severity, a case's score being its mean over them. mCE: ImageNet-C corruption error relative to the baseline "
        "arm (below 1: fewer errors under corruption than the baseline).</p>",
        "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>",
    ]
    for row in rows:
        parts.append(
            "<tr>" + f"<td class='l'>{e(row[0])}</td>" + "".join(f"<td>{e(c)}</td>" for c in row[1:]) + "</tr>"
        )
    parts.append("</table>")
    plots = _plots(summary)
    if plots:
        parts.append("<h2>Dice vs corruption severity (in-domain test)</h2>")
        parts += [f"<img alt='{e(c)}' src='data:image/png;base64,{b}'>" for c, b in plots]
    parts.append("<h2>Settings</h2>" + settings_html(s) + "</body></html>")
    return "\n".join(parts)


def write_ablation_report(out: str | Path, rows: Sequence[Mapping], summary: Mapping) -> None:
    """Write the three files atomically (each via a temporary name and a rename)."""
    from s2s2_monai.ablation.run import FIELDS
    from s2s2_monai.atomic import json_safe, write_json, write_text

    out = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "ablation.csv", buf.getvalue())
    write_json(out / "ablation.json", json_safe(summary))
    write_text(out / "report.html", _html(summary))
