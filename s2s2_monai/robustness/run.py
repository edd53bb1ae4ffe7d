"""Robustness evaluation: a network on clean and corrupted copies of a datalist section, one report.

Every labelled case of the section is segmented clean and in ``copies`` seeded corrupted copies
per corruption and severity level (:mod:`s2s2_monai.robustness.corruptions`; all levels of a copy
share its seed, so they are one corruption at growing strength), with the project's slice inference
(:func:`~s2s2_monai.evaluation.inference.predict_volume`) and scored by the project's
:class:`~s2s2_monai.evaluation.metric_table.MetricTable`. The output folder holds the standard
evaluation report (``metrics.csv``, ``summary.json``, ``report.html``, ``figures/``: each
corruption level ``name@s`` is a *method* next to ``clean``, its copies of a case averaged per case,
and compared with ``clean`` case by case) plus:

- ``robustness.csv``: one row per corruption x severity x copy x case (seed, mean Dice, Dice per class);
- ``robustness.json``: the parameters of every level; ``dice``: the clean score and, per corruption
  and severity, mean Dice and its degradation (clean - corrupted, positive = worse); ``scores``: mean Dice per severity (over
  corruptions) and the degradation (:func:`~s2s2_monai.robustness.scores.degradation`);
- ``figures/robustness_dice.png``: Dice vs severity, one line per corruption, the clean score
  dashed; linked from a "Robustness" section of ``report.html``.

All files are staged in a temporary folder and moved in at the end (``report.html`` last).
"""

from __future__ import annotations

import csv
import html
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from s2s2_monai.atomic import json_safe, publish, stage_dir, write_json
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.robustness.corruptions import CORRUPTIONS
from s2s2_monai.robustness.names import DEFAULT_SEVERITY, SEVERITIES
from s2s2_monai.robustness.scores import degradation

__all__ = ["ROBUSTNESS_FILES", "method_name", "robustness_evaluation"]

ROBUSTNESS_FILES = ("robustness.csv", "robustness.json", "figures/robustness_dice.png")


def _mean_dice(metrics: dict) -> float:
    vals = [m["dice"] for m in metrics.values() if np.isfinite(m["dice"])]
    return float(np.mean(vals)) if vals else float("nan")


def _plot(path: Path, clean: float, curve: dict[str, dict[int, float]]) -> dict:
    """Dice vs severity, one line per corruption, the clean score dashed; the legend right of the axes.

    At most 1000 x 420 px (100 dpi) whatever the number of corruptions; integer severity ticks (the
    levels of :data:`SEVERITIES`), Dice on [0, 1]. Returns what was drawn (x ticks, y limits, size in px).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
    markers = "osD^vP*X"
    fig = Figure(figsize=(8.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.12, 0.62, 0.78))
    for i, (name, levels) in enumerate(curve.items()):
        sev = sorted(levels)
        ax.plot(
            sev,
            [levels[s] for s in sev],
            marker=markers[i % len(markers)],
            color=colors[i % len(colors)],
            label=name,
        )
    ax.axhline(clean, color="black", linestyle="--", linewidth=1, label="clean")
    ax.set_xticks(list(SEVERITIES), [str(s) for s in SEVERITIES])
    ax.set_xlim(SEVERITIES[0] - 0.3, SEVERITIES[-1] + 0.3)
    ax.set_xlabel("severity level")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title("Dice vs corruption severity")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False, borderaxespad=0)
    fig.savefig(path, metadata={"Software": None})
    return {
        "xticks": [float(t) for t in ax.get_xticks()],
        "ylim": tuple(float(v) for v in ax.get_ylim()),
        "size_px": tuple(int(v) for v in fig.canvas.get_width_height()),
    }


def _html_section(robustness: dict) -> str:
    e = html.escape
    sev = robustness["severities"]
    clean = robustness["dice"]["clean"]

    def degradation_of(level: dict) -> float:  # clean - corrupted: positive = worse
        return clean["mean_dice"] - level["mean_dice"]

    rows = [
        "<h2>Robustness</h2>",
        f"<p>Mean Dice (mean over cases of the per-case class mean) on clean volumes and on {robustness['copies']} "
        f"seeded corrupted copies per case, corruption and severity (base seed {robustness['seed']}; all severities "
        "of a copy share its seed). Cell: mean Dice (degradation = clean − corrupted; positive = worse than clean). "
        "Per copy: robustness.csv; the parameters of each level: robustness.json.</p>",
        f"<p>Clean: {clean['mean_dice']:.4g} (n = {clean['n']}).</p>",
        "<table><tr><th>corruption</th>" + "".join(f"<th>severity {s}</th>" for s in sev) + "</tr>",
    ]
    for name, levels in robustness["dice"].items():
        if name == "clean":
            continue
        cells = "".join(
            f"<td>{levels[str(s)]['mean_dice']:.4g} ({degradation_of(levels[str(s)]):+.3f})</td>" for s in sev
        )
        rows.append(f"<tr><td class='l'>{e(name)}</td>{cells}</tr>")
    means = robustness["scores"]["mean_dice_per_severity"]
    rows.append(
        "<tr><td class='l'>mean</td>"
        + "".join(f"<td>{means[str(s)]:.4g} ({clean['mean_dice'] - means[str(s)]:+.3f})</td>" for s in sev)
        + "</tr></table>"
    )
    rows.append(
        f"<p>Mean degradation (clean − corrupted, over corruptions and severities; positive = worse): "
        f"{robustness['scores']['mean_degradation']:+.4g}.</p>"
    )
    rows.append("<img src='figures/robustness_dice.png' alt='Dice vs severity per corruption'>")
    return "\n".join(rows)


def method_name(corruption: str, severity: int) -> str:
    """The report's method name of one corruption level, e.g. ``gamma@3``."""
    return f"{corruption}@{int(severity)}"


def robustness_evaluation(
    model,
    datalist,
    out_dir: str | os.PathLike,
    section: str = "test",
    corruptions: Sequence[str] | None = None,
    copies: int = 3,
    seed: int = 0,
    severities: Sequence[int] = (DEFAULT_SEVERITY,),
    device=None,
    batch_size: int | None = None,
    data_root: str | os.PathLike | None = None,
    n_boot: int = 10000,
    progress: bool = True,
) -> dict:
    """Segment clean and corrupted copies of every labelled case of ``section`` and write the report.

    Args:
        model: a :class:`~s2s2_monai.model.BundleModel` with weights: its preprocessing, inference,
            label map, HD95 definition, and its checkpoint named in the report.
        datalist: :class:`~s2s2_monai.data.datalist.Datalist` or its JSON path.
        out_dir: report folder.
        section: datalist section (``"test"`` by default).
        corruptions: names from :data:`~s2s2_monai.robustness.corruptions.CORRUPTIONS` (default all).
        copies: corrupted copies per case and corruption.
        seed: base seed (see :func:`~s2s2_monai.robustness.corruptions.copy_seed`).
        severities: levels of :data:`~s2s2_monai.robustness.names.SEVERITIES` (default the upstream level 3).
        device: where the network runs (default its device).
        batch_size: slices per forward pass (default the model's).
        data_root: root of relative datalist paths.
        n_boot: bootstrap resamples of the clean-vs-corruption comparisons.
        progress: progress bar.

    Returns:
        ``{"summary": summary.json content, "robustness": robustness.json content}``.
    """
    from s2s2_monai.data.cases import as_datalist
    from s2s2_monai.evaluation.report import write_report
    from s2s2_monai.robustness.variants import count_variants, segment_variants

    corruptions = list(corruptions) if corruptions is not None else list(CORRUPTIONS)
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown or not corruptions:
        raise S2S2InputError(
            None, f"unknown or no corruptions {unknown or corruptions}", f"choose from {', '.join(CORRUPTIONS)}"
        )
    if copies < 1:
        raise S2S2InputError(None, f"copies must be >= 1, got {copies}", "use --copies 3 (the default)")
    severities = sorted({int(v) for v in severities})
    if not severities or any(v not in SEVERITIES for v in severities):
        raise S2S2InputError(
            None, f"severities must be levels of {list(SEVERITIES)}, got {severities}", "e.g. --severities 1 3 5"
        )
    dl = as_datalist(datalist, data_root)
    entries = [e for e in dl.items(section) if e.get("label")]
    if not entries:
        raise S2S2InputError(
            dl.path,
            f"datalist has no labelled cases in section {section!r}",
            "choose a section with labelled cases (--section validation)",
        )
    lm = model.label_map
    ev = model.metric_table()
    rows: list[dict] = []
    clean_scores: list[float] = []
    scores: dict[str, dict[int, list[float]]] = {c: {v: [] for v in severities} for c in corruptions}
    total = len(entries) * count_variants(corruptions, severities, copies)
    bar = tqdm(total=total, desc=f"robustness {section}", unit="volume", disable=not progress)
    for case in model.cases(dl, section, labelled_only=True):
        for v in segment_variants(model, case, corruptions, severities, copies, seed, device, batch_size):
            method = "clean" if v.corruption is None else method_name(v.corruption, v.severity)
            metrics = ev.add(case.case_id, v.pred, case.label, case.spacing, method=method, image=v.image)
            bar.update()
            if v.corruption is None:
                clean_scores.append(_mean_dice(metrics))
                continue
            scores[v.corruption][v.severity].append(_mean_dice(metrics))
            rows.append(
                {
                    "corruption": v.corruption,
                    "severity": v.severity,
                    "copy": v.copy,
                    "seed": v.seed,
                    "case": case.case_id,
                    "mean_dice": scores[v.corruption][v.severity][-1],
                    **{f"dice_{lm.name_of(c)}": metrics[c]["dice"] for c in lm.classes},
                }
            )
    bar.close()

    def stats(vals):
        a = np.asarray([v for v in vals if np.isfinite(v)], dtype=np.float64)
        return {
            "mean_dice": float(a.mean()) if a.size else float("nan"),
            "std": float(a.std()) if a.size else float("nan"),
            "n": int(a.size),
        }

    clean = stats(clean_scores)
    dice: dict = {"clean": clean}
    for name in corruptions:
        dice[name] = {}
        for level in severities:
            r = stats(scores[name][level])
            dice[name][str(level)] = {**r, "degradation": clean["mean_dice"] - r["mean_dice"]}  # positive = worse
    curve = {n: {v: dice[n][str(v)]["mean_dice"] for v in severities} for n in corruptions}
    robustness = {
        "section": section,
        "copies": copies,
        "seed": seed,
        "severities": severities,
        "corruptions": {n: {str(v): CORRUPTIONS[n].record(v) for v in severities} for n in corruptions},
        "space": "network input space (after the CT window / MRI normalisation), min-max scaled to [0, 1] around the corruption",
        "dice": dice,
        "scores": {
            "mean_dice_per_severity": {
                str(v): float(np.nanmean([curve[n][v] for n in corruptions])) for v in severities
            },
            "mean_degradation": degradation(clean["mean_dice"], curve)["mean"],
        },
    }

    out_dir = Path(out_dir)
    stage = stage_dir(out_dir, "robustness")  # a rerun removes the staging of a killed run
    try:
        summary = write_report(stage / "report", ev, n_boot=n_boot, seed=seed)
        rep = stage / "report"
        with open(rep / "robustness.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        write_json(rep / "robustness.json", robustness)
        _plot(rep / "figures" / "robustness_dice.png", clean["mean_dice"], curve)
        page = (rep / "report.html").read_text()
        cut = page.rfind("<h2>Per organ</h2>")
        section_html = _html_section(json_safe(robustness))
        page = (
            page[:cut] + section_html + "\n" + page[cut:]
            if cut >= 0
            else page.replace("</body>", section_html + "</body>")
        )
        (rep / "report.html").write_text(
            page.replace("<title>s2s2 evaluation</title>", "<title>s2s2 robustness</title>", 1)
        )
        publish(
            rep, out_dir, ("figures", "metrics.csv", "summary.json", "robustness.csv", "robustness.json", "report.html")
        )
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"summary": summary, "robustness": json_safe(robustness)}
