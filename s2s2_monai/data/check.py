"""``s2s2 check-data``: verify every datalist entry before a long job trips over it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from s2s2_monai.data.cases import load_entry
from s2s2_monai.data.datalist import SECTIONS, load_datalist
from s2s2_monai.data.volumes import case_id_of
from s2s2_monai.errors import S2S2InputError, exit_or_raise

__all__ = ["CaseCheck", "check_datalist", "format_table", "require_data", "DEMO_COMMAND"]

#: The demo command quoted by error messages.
DEMO_COMMAND = (
    "python -m monai.bundle run training --config_file \"['bundles/synapse/train.json','bundles/synapse/demo.json']\""
)


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

    Besides what loading checks (files, geometry, label ids, the datalist's modality), an entry
    fails when its image is a test image (a training/validation entry) or the image of an earlier
    entry of its section, compared by identity (:meth:`~s2s2_monai.data.datalist.Datalist.overlaps`):
    what training and ``stack build`` refuse.

    Raises:
        S2S2InputError: the datalist itself is unusable (missing, invalid, empty).
    """
    dl = load_datalist(datalist_path, data_root)
    overlaps: dict[tuple[str, int], list[str]] = {}
    for o in dl.overlaps(SECTIONS):
        overlaps.setdefault((o.section, o.index), []).append(o.describe())
    results = []
    for section in SECTIONS:
        for i, entry in enumerate(dl.items(section)):
            cid = entry.get("case_id") or case_id_of(entry["image"])
            listed = "; ".join(f"{entry['image']} {d}" for d in overlaps.get((section, i), []))
            try:
                case = load_entry(dl, entry)  # MONAI is imported here, once the datalist itself is fine
            except S2S2InputError as exc:
                results.append(CaseCheck(section, cid, False, problem="; ".join(filter(None, (str(exc), listed)))))
                continue
            if listed:
                results.append(CaseCheck(section, cid, False, problem=listed))
                continue
            labels = None if case.label is None else tuple(int(v) for v in np.unique(case.label))
            results.append(
                CaseCheck(
                    section, cid, True, tuple(case.image.shape), tuple(round(float(s), 3) for s in case.spacing), labels
                )
            )
    return results


def format_table(results: list[CaseCheck]) -> str:
    """Per-case table for the terminal."""
    rows = [("section", "case", "status", "shape", "spacing mm", "label ids (after remap) / problem")]
    for r in results:
        detail = r.problem if not r.ok else ("-" if r.labels is None else " ".join(map(str, r.labels)))
        rows.append(
            (
                r.section,
                r.case_id,
                "ok" if r.ok else "FAIL",
                "x".join(map(str, r.shape or ())) or "-",
                "x".join(map(str, r.spacing or ())) or "-",
                detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths)) + "  " + row[5] for row in rows]
    bad = sum(not r.ok for r in results)
    lines.append(f"{len(results) - bad} ok, {bad} failed")
    return "\n".join(lines)


def require_data(
    datalist: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    sections: tuple[str, ...] = ("training", "validation"),
    demo_command: str = DEMO_COMMAND,
    exit_on_error: bool = False,
    label_map=None,
) -> str:
    """Check that every image/label of ``datalist`` exists under ``dataset_dir``.

    Args:
        datalist: datalist JSON (paths relative to ``dataset_dir``).
        dataset_dir: the data root.
        sections: sections that must be complete.
        demo_command: quoted in the message as the alternative.
        exit_on_error: print ``error: ...`` and exit with status 2 instead of raising (bundle use:
            no traceback in front of the message).
        label_map: the bundle's label map (the network's classes); the datalist must declare the same organs.

    Returns:
        the datalist path.

    Raises:
        S2S2InputError: missing datalist or files (the message names the first missing files and
            says how to set ``dataset_dir`` or run the demo); a training/validation image that is a
            test image, or an image listed twice in one of ``sections`` (compared by identity:
            resolved real path, then bytes; a duplicated training case would silently double its
            weight), see :meth:`~s2s2_monai.data.datalist.Datalist.require_distinct`.
    """
    from s2s2_monai.data.datalist import load_datalist

    try:
        dl = load_datalist(datalist, dataset_dir)
        if label_map is not None:
            from s2s2_monai.label_maps import get_label_map

            dl.require_label_map(
                get_label_map(label_map),
                "the bundle's",
                "drop the --label_map override (the bundle takes the datalist's map), or remap the labels",
            )
        missing = [
            e[k]
            for s in sections
            for e in dl.items(s)
            for k in ("image", "label")
            if k in e and not Path(e[k]).exists()
        ]
        total = sum(len([k for k in ("image", "label") if k in e]) for s in sections for e in dl.items(s))
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise S2S2InputError(
                dataset_dir,
                f"{len(missing)} of {total} files listed in {os.path.normpath(datalist)} are missing (expected e.g. {shown})",
                f"point dataset_dir at the folder holding them (add --dataset_dir /path/to/data to the command), or run the demo on phantom data: {demo_command}",
            )
        dl.require_distinct(tuple(sections))  # by identity: real path, then bytes
    except S2S2InputError as exc:
        exit_or_raise(exc, exit_on_error)
    return str(datalist)
