"""``s2s2 check-data``: verify every datalist entry before a long job trips over it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from s2s2_monai.data.datalist import SECTIONS, load_datalist
from s2s2_monai.data.volumes import case_id_of, load_case
from s2s2_monai.errors import S2S2InputError

__all__ = ["CaseCheck", "check_datalist", "format_table"]


@dataclass
class CaseCheck:
    """Result of checking one entry."""

    section: str
    case_id: str
    ok: bool
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    labels: tuple[int, ...] | None = None
    problem: str = ""


def check_datalist(datalist_path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> list[CaseCheck]:
    """Load every entry of every section; one :class:`CaseCheck` per entry (errors caught per case).

    Raises:
        S2S2InputError: the datalist itself is unusable (missing, invalid, empty).
    """
    dl = load_datalist(datalist_path, data_root)
    from s2s2_monai.transforms import RemapLabels  # MONAI: only once the datalist itself is fine

    remap = RemapLabels(dl.label_remap) if dl.label_remap else None
    results = []
    for section in SECTIONS:
        for entry in dl.items(section):
            cid = entry.get("case_id") or case_id_of(entry["image"])
            try:
                case = load_case(entry["image"], entry.get("label"), remap=remap, valid_label_ids=dl.valid_label_ids())
            except S2S2InputError as exc:
                results.append(CaseCheck(section, cid, False, problem=str(exc)))
                continue
            labels = None if case.label is None else tuple(int(v) for v in np.unique(case.label))
            results.append(
                CaseCheck(section, cid, True, tuple(case.image.shape), tuple(round(float(s), 3) for s in case.spacing), labels)
            )
    return results


def format_table(results: list[CaseCheck]) -> str:
    """Per-case table for the terminal."""
    rows = [("section", "case", "status", "shape", "spacing mm", "label ids (after remap) / problem")]
    for r in results:
        detail = r.problem if not r.ok else ("-" if r.labels is None else " ".join(map(str, r.labels)))
        rows.append(
            (r.section, r.case_id, "ok" if r.ok else "FAIL", "x".join(map(str, r.shape or ())) or "-",
             "x".join(map(str, r.spacing or ())) or "-", detail)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    bad = sum(not r.ok for r in results)
    lines.append(f"{len(results) - bad} ok, {bad} failed")
    return "\n".join(lines)
