"""Decathlon-style datalists (``data_lists/*.json``) with paths relative to a data root.

A datalist is ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...],
"test": [...]}`` plus optional project keys:

- ``"label_map"``: name of the target :class:`~s2s2_monai.label_maps.LabelMap` (default synapse),
- ``"label_remap"``: name of a :class:`~s2s2_monai.label_maps.LabelRemap` applied to the label files,
- ``"modality"``: ``"CT"`` / ``"MRI"`` (default: the label map's).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LabelMap, LabelRemap, get_label_map, get_label_remap

__all__ = ["Datalist", "load_datalist"]

SECTIONS = ("training", "validation", "test")


@dataclass
class Datalist:
    """A parsed datalist with absolute paths."""

    path: str
    data_root: str
    sections: dict[str, list[dict]] = field(default_factory=dict)
    label_map: LabelMap | None = None
    label_remap: LabelRemap | None = None
    modality: str = "CT"

    def items(self, section: str) -> list[dict]:
        """Entries of one section (``[]`` when the datalist lacks it)."""
        return self.sections.get(section, [])

    def shared_images(self, section: str, other: str) -> list[str]:
        """Image paths listed in both sections (a test case in training or validation leaks the test set)."""
        theirs = {e["image"] for e in self.items(other)}
        return [e["image"] for e in self.items(section) if e["image"] in theirs]

    def valid_label_ids(self) -> set[int]:
        """Ids allowed in the label *files* (before remapping)."""
        return self.label_remap.valid_ids() if self.label_remap else self.label_map.valid_ids()


def _resolve(value: object, root: Path, datalist: Path, what: str) -> str:
    """Absolute path of an entry's ``image``/``label``; a relative path must stay inside ``root``.

    Absolute paths are taken as written (the user chose them); a relative path that climbs out of
    the data root with ``..`` (``../../etc/passwd``) is refused: the datalist would silently read
    files of another dataset, whatever root it is given.
    """
    if not isinstance(value, str) or not value.strip():
        raise S2S2InputError(
            datalist,
            f"{what} must be a path string, got {value!r}",
            "write each image/label as a path relative to the data root",
        )
    p = Path(os.path.expanduser(value))
    if p.is_absolute():
        return str(p)
    norm = os.path.normpath(p)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise S2S2InputError(
            datalist,
            f"{what} {value!r} points outside the data root {root}",
            "keep relative paths inside the data root (no leading '..'), or pass a --data-root / dataset_dir above the files, or write an absolute path",
        )
    return str(root / p)


def load_datalist(path: str | os.PathLike, data_root: str | os.PathLike | None = None, sections=SECTIONS) -> Datalist:
    """Read and validate a datalist; entry paths become absolute under ``data_root``.

    ``data_root`` defaults to the datalist's own folder.

    Raises:
        S2S2InputError: missing/invalid JSON, no entries, entries without ``image``, unknown label map.
    """
    path = Path(path)
    if not path.is_file():
        raise S2S2InputError(path, "datalist not found", "give the path of a datalist JSON (see data_lists/)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise S2S2InputError(path, f"not valid JSON ({exc})", "fix the JSON syntax") from None
    if not isinstance(raw, dict):
        raise S2S2InputError(
            path, "datalist must be a JSON object with 'training'/'validation'/'test' lists", "see data_lists/demo.json"
        )
    root = Path(data_root) if data_root is not None else path.parent
    try:
        label_map = get_label_map(raw.get("label_map", "synapse"))
        remap = get_label_remap(raw["label_remap"]) if raw.get("label_remap") else None
    except KeyError as exc:
        raise S2S2InputError(path, str(exc.args[0]), "use one of the known names") from None
    if remap is not None and remap.target != label_map.name:
        raise S2S2InputError(
            path,
            f"label_remap {remap.name!r} maps to {remap.target!r}, not to label_map {label_map.name!r}",
            "make them agree",
        )
    parsed: dict[str, list[dict]] = {}
    for section in sections:
        entries = raw.get(section, [])
        if not isinstance(entries, list):
            raise S2S2InputError(path, f"'{section}' must be a list of entries", "see data_lists/demo.json")
        out = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise S2S2InputError(
                    path, f"entry {i} of '{section}' has no 'image'", "each entry needs an 'image' path"
                )
            item = {
                k: _resolve(v, root, path, f"entry {i} of '{section}': {k}") if k in ("image", "label") else v
                for k, v in entry.items()
            }
            out.append(item)
        parsed[section] = out
    if not any(parsed.values()):
        raise S2S2InputError(path, f"datalist has no entries in {list(sections)}", "add at least one image entry")
    return Datalist(
        path=str(path),
        data_root=str(root),
        sections=parsed,
        label_map=label_map,
        label_remap=remap,
        modality=raw.get("modality", label_map.modality),
    )
