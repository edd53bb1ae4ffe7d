"""Decathlon-style datalists (``data_lists/*.json``) with paths relative to a data root.

A datalist is ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...],
"test": [...]}`` plus optional project keys:

- ``"label_map"``: the target :class:`~s2s2_monai.label_maps.LabelMap`: a registry name (default
  synapse) or a dict (``{"1": "liver", ...}`` or the full ``LabelMap.to_dict()`` form),
- ``"labels"``: nnU-Net style ``{"1": "liver", "2": "left kidney"}``, a map of one's own (instead of ``label_map``),
- ``"label_remap"``: name of a :class:`~s2s2_monai.label_maps.LabelRemap` applied to the label files,
- ``"modality"``: ``"CT"`` / ``"MRI"`` (default: the label map's; a custom map's default is CT).

:func:`datalist_label_map` reads only these keys (no entry paths, no file checks).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import (
    LabelMap,
    LabelRemap,
    get_label_remap,
    normalize_modality,
    parse_label_map,
    with_modality,
)

__all__ = ["Datalist", "load_datalist", "datalist_label_map"]

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


def _read_json(path: Path) -> dict:
    """The datalist's JSON object; :class:`S2S2InputError` for a missing file, bad JSON or another JSON type."""
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
    return raw


def _declared_maps(raw: dict, path: Path) -> tuple[LabelMap, LabelRemap | None, str]:
    """``(label map, label remap or None, modality)`` a datalist declares; one :class:`S2S2InputError` naming it.

    The label map carries the datalist's modality (a registry map's anatomy words follow it).
    """
    fix = 'write "labels": {"1": "liver", "2": "left kidney", ...} (ids 1..255, distinct names) or a known "label_map" name'
    if "labels" in raw and "label_map" in raw:
        raise S2S2InputError(path, "declares both 'labels' and 'label_map'", "keep one of them")
    modality = raw.get("modality")
    if modality is not None:
        try:
            modality = normalize_modality(modality)
        except ValueError as exc:
            raise S2S2InputError(path, f"'modality': {exc}", 'write "modality": "CT" or "MRI"') from None
    key = "labels" if "labels" in raw else "label_map"
    remap_name = raw.get("label_remap")
    if remap_name is not None and not isinstance(remap_name, str):
        raise S2S2InputError(path, f"'label_remap' must be a name, got {remap_name!r}", "use one of the known names")
    try:
        label_map = parse_label_map(raw.get(key, "synapse"), modality=modality)
        remap = get_label_remap(remap_name) if remap_name else None
    except KeyError as exc:
        raise S2S2InputError(path, str(exc.args[0]), "use one of the known names") from None
    except ValueError as exc:
        raise S2S2InputError(path, f"unusable '{key}': {exc}", fix) from None
    label_map = with_modality(label_map, modality)
    target = parse_label_map(remap.target) if remap is not None else None
    if target is not None and (target.name != label_map.name or target.classes != label_map.classes):
        raise S2S2InputError(
            path,
            f"label_remap {remap.name!r} maps to {remap.target!r}, not to label_map {label_map.name!r}",
            "make them agree",
        )
    return label_map, remap, label_map.modality


def datalist_label_map(path: str | os.PathLike) -> LabelMap:
    """The label map a datalist declares (default synapse), with the datalist's modality.

    Reads only the JSON keys: entry paths are neither resolved nor checked, so it is cheap and
    pure (the training bundle calls it on ``@datalist``).

    Raises:
        S2S2InputError: missing or invalid file, unknown or unusable label map / remap / modality.
    """
    path = Path(path)
    return _declared_maps(_read_json(path), path)[0]


def load_datalist(path: str | os.PathLike, data_root: str | os.PathLike | None = None, sections=SECTIONS) -> Datalist:
    """Read and validate a datalist; entry paths become absolute under ``data_root``.

    ``data_root`` defaults to the datalist's own folder.

    Raises:
        S2S2InputError: missing/invalid JSON, no entries, entries without ``image``, unknown or unusable label map.
    """
    path = Path(path)
    raw = _read_json(path)
    root = Path(data_root) if data_root is not None else path.parent
    label_map, remap, modality = _declared_maps(raw, path)
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
        modality=modality,
    )
