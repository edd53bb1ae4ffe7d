"""``ablation.csv``, ``ablation.json`` and an offline ``report.html`` (Table-6-style table, Dice-vs-severity plots)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
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


def _plots(summary: Mapping) -> list[tuple[str, str]]:
    """(corruption, base64 PNG) of Dice vs severity, one line per arm (severity 0 = clean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    corruptions: list[str] = []
    for entry in summary["arms"].values():
        corruptions += [c for c in entry.get("robustness", {}).get("dice", {}) if c not in corruptions]
    out = []
    for corr in corruptions:
        fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=100)
        for arm, entry in summary["arms"].items():
            rob = entry.get("robustness", {})
            curve = rob.get("dice", {}).get(corr, {})
            if not curve:
                continue
            xs = [0] + sorted(int(s) for s in curve)
            ys = [rob.get("clean_dice")] + [curve[s] if s in curve else curve[str(s)] for s in sorted(curve, key=int)]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=arm)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel("mean Dice")
        ax.set_title(corr)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((corr, base64.b64encode(buf.getvalue()).decode()))
    return out


def _html(summary: Mapping) -> str:
    e = html.escape
    s = summary.get("settings", {})
    header, rows = table_rows(summary)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>s2s2 ablation</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#eee}td.l{text-align:left}img{margin:4px}</style></head><body>",
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
    parts.append("<h2>Settings</h2><pre>" + e(json.dumps(s, indent=1, default=str)) + "</pre></body></html>")
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
