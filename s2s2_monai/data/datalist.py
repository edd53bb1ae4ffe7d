"""Decathlon-style datalists (``data_lists/*.json``) with paths relative to a data root.

A datalist is ``{"training": [{"image": ..., "label": ...}, ...], "validation": [...],
"test": [...]}`` plus optional project keys:

- ``"label_map"``: the target :class:`~s2s2_monai.label_maps.LabelMap`: a registry name (default
  synapse) or a dict (``{"1": "liver", ...}`` or the full ``LabelMap.to_dict()`` form),
- ``"labels"``: nnU-Net style ``{"1": "liver", "2": "left kidney"}``, a map of one's own (instead of ``label_map``),
- ``"label_remap"``: name of a :class:`~s2s2_monai.label_maps.LabelRemap` applied to the label files,
- ``"modality"``: ``"CT"`` / ``"MRI"`` (default: the label map's; a custom map's default is CT).

:func:`datalist_label_map` reads only these keys (no entry paths, no file checks).

Entries are compared by identity, never by spelling (:class:`FileIdentity`): ``sub/../img.nii.gz``,
a symlink, an absolute path and a byte-identical copy are all the same image. A training or
validation image that is a test image leaks the test set; an image listed twice in one section
counts twice (a duplicated training case silently doubles its weight, a duplicated test case its
weight in the reported means), so both are refused (:meth:`Datalist.require_distinct`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
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

__all__ = ["Datalist", "FileIdentity", "Overlap", "load_datalist", "datalist_label_map"]

SECTIONS = ("training", "validation", "test")


class FileIdentity:
    """Which paths name the same image: same resolved real path, or the same bytes.

    The real path (``os.path.realpath``: symlinks and ``..`` resolved) decides first. Different
    real paths are the same image when their contents are byte-identical: a SHA-256 of the file,
    or for a DICOM folder of its files (sorted digests of the non-hidden files, so names do not
    matter). Reading is lazy and staged, each stage cached: sizes (a folder: its sorted file
    sizes) first; only paths whose sizes collide have their head and tail sampled (1 MiB each,
    64 KiB per file of a folder); only paths whose samples collide too are hashed in full. So a
    dataset of distinct scans is not read twice, even uncompressed ones of one shape (equal
    sizes). Missing or unreadable paths match by real path only.
    """

    #: bytes sampled at each end of a file (of each file of a folder)
    SAMPLE = 1 << 20
    FOLDER_SAMPLE = 1 << 16

    def __init__(self) -> None:
        self._size: dict[str, tuple | None] = {}
        self._sample: dict[str, str | None] = {}
        self._digest: dict[str, str | None] = {}

    @staticmethod
    def real(path: str | os.PathLike) -> str:
        """The resolved real path."""
        return os.path.realpath(os.fspath(path))

    @staticmethod
    def _folder_files(real: str) -> list[Path]:
        return sorted(p for p in Path(real).iterdir() if p.is_file() and not p.name.startswith("."))

    @staticmethod
    def _hash_file(path: str | os.PathLike, sample: int | None = None) -> str:
        """SHA-256 of the whole file, or of its first and last ``sample`` bytes."""
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            if sample is None:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            else:
                h.update(fh.read(sample))
                size = os.fstat(fh.fileno()).st_size
                fh.seek(max(size - sample, 0))
                h.update(fh.read(sample))
        return h.hexdigest()

    def _cached(self, cache: dict, real: str, compute) -> object:
        if real not in cache:
            try:
                cache[real] = compute(real)
            except OSError:
                cache[real] = None
        return cache[real]

    def size_key(self, real: str) -> tuple | None:
        """What two identical contents must share: a file's size, a folder's sorted file sizes (``None``: absent)."""

        def compute(r: str) -> tuple:
            if os.path.isdir(r):
                return ("folder", tuple(sorted(p.stat().st_size for p in self._folder_files(r))))
            return ("file", os.stat(r).st_size)

        return self._cached(self._size, real, compute)

    def _content(self, real: str, sample: int | None) -> str:
        if os.path.isdir(real):
            parts = sorted(self._hash_file(p, sample) for p in self._folder_files(real))
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()
        return self._hash_file(real, sample)

    def sample(self, real: str) -> str | None:
        """SHA-256 of the head and tail of the content (``None``: unreadable)."""
        size = self.FOLDER_SAMPLE if os.path.isdir(real) else self.SAMPLE
        return self._cached(self._sample, real, lambda r: self._content(r, size))

    def digest(self, real: str) -> str | None:
        """SHA-256 of the content (``None``: unreadable)."""
        return self._cached(self._digest, real, lambda r: self._content(r, None))

    def _collide(self, reals, key) -> list[list[str]]:
        """Groups (two or more) of ``reals`` sharing a non-``None`` ``key``."""
        groups: dict[object, list[str]] = defaultdict(list)
        for r in reals:
            k = key(r)
            if k is not None:
                groups[k].append(r)
        return [g for g in groups.values() if len(g) > 1]

    def keys(self, paths: list[str]) -> list[tuple[str, str]]:
        """``(identity, how)`` per path: equal identities name the same image.

        ``how`` says why a path shares the identity of the first path that has it: ``""`` (spelled
        the same), ``"the same file"`` (same real path) or ``"a byte-identical copy"``.
        """
        reals = [self.real(p) for p in paths]
        canon = {r: r for r in reals}
        for same_size in self._collide(dict.fromkeys(reals), self.size_key):
            for same_sample in self._collide(same_size, self.sample):
                first: dict[str, str] = {}
                for r in same_sample:
                    d = self.digest(r)
                    if d is not None:
                        canon[r] = first.setdefault(d, r)
        out, first_path, first_real = [], {}, {}
        for p, r in zip(paths, reals):
            ident = canon[r]
            if ident not in first_path:
                first_path[ident], first_real[ident] = p, r
                out.append((ident, ""))
            elif first_path[ident] == p:
                out.append((ident, ""))
            else:
                out.append((ident, "the same file" if first_real[ident] == r else "a byte-identical copy"))
        return out


@dataclass(frozen=True)
class Overlap:
    """One image listed where it must not be.

    ``kind`` ``"duplicate"``: entry ``index`` of ``section`` is the image of entry ``other_index``
    of the same section (its first listing); ``"leak"``: entry ``index`` of ``section`` (training or
    validation) is test entry ``other_index``. ``how``: ``""``, ``"the same file"`` or ``"a byte-identical copy"``.
    """

    kind: str
    section: str
    index: int
    path: str
    other_section: str
    other_index: int
    other_path: str
    how: str = ""

    def describe(self) -> str:
        """One phrase for a table row."""
        via = f" ({self.how})" if self.how else ""
        if self.kind == "leak":
            return f"is test entry {self.other_index} {self.other_path}{via}: the test set would leak"
        return (
            f"same image as entry {self.other_index} of {self.section!r} {self.other_path}{via}: "
            "a case listed twice counts twice"
        )


@dataclass
class Datalist:
    """A parsed datalist with absolute paths."""

    path: str
    data_root: str
    sections: dict[str, list[dict]] = field(default_factory=dict)
    label_map: LabelMap | None = None
    label_remap: LabelRemap | None = None
    modality: str = "CT"
    identity: FileIdentity = field(default_factory=FileIdentity, repr=False, compare=False)

    def items(self, section: str) -> list[dict]:
        """Entries of one section (``[]`` when the datalist lacks it)."""
        return self.sections.get(section, [])

    def overlaps(self, sections=SECTIONS, test: str = "test") -> list[Overlap]:
        """Images listed twice within one of ``sections``, and training/validation images that are test images.

        Compared by identity (:class:`FileIdentity`), not by spelling. Duplicates come first (one
        :class:`Overlap` per later listing, pointing at the first), then leaks, in datalist order.
        """
        found: list[Overlap] = []
        for section in sections:
            paths = [e["image"] for e in self.items(section)]
            first: dict[str, int] = {}
            for i, (ident, _) in enumerate(self.identity.keys(paths)):
                if ident in first:
                    j = first[ident]
                    how = self.identity.keys([paths[j], paths[i]])[1][1]
                    found.append(Overlap("duplicate", section, i, paths[i], section, j, paths[j], how))
                else:
                    first[ident] = i
        for section in sections:
            if section == test:
                continue
            mine = [e["image"] for e in self.items(section)]
            theirs = [e["image"] for e in self.items(test)]
            if not mine or not theirs:
                continue
            keys = self.identity.keys(theirs + mine)
            where: dict[str, int] = {}
            for j, (ident, _) in enumerate(keys[: len(theirs)]):
                where.setdefault(ident, j)
            for i, (ident, _) in enumerate(keys[len(theirs) :]):
                if ident in where:
                    j = where[ident]
                    how = self.identity.keys([mine[i], theirs[j]])[1][1]
                    found.append(Overlap("leak", section, i, mine[i], test, j, theirs[j], how))
        return found

    def require_label_map(self, expected: LabelMap, whose: str, fix: str) -> None:
        """Refuse this datalist when it declares other organs (ids or names) than ``expected``, ``whose`` map.

        Raises:
            S2S2InputError: one line naming the datalist and both maps.
        """
        if self.label_map is not None and dict(self.label_map.classes) != dict(expected.classes):
            raise S2S2InputError(
                self.path,
                f"declares the organs {dict(self.label_map.classes)}, {whose} label map {expected.name!r} is "
                f"{dict(expected.classes)}",
                fix,
            )

    def shared_images(self, section: str, other: str) -> list[str]:
        """Image paths of ``section`` that are images of ``other`` too (by identity: real path, then bytes).

        A test case in training or validation leaks the test set.
        """
        return [o.path for o in self.overlaps((section,), test=other) if o.kind == "leak"]

    def require_distinct(self, sections=SECTIONS, test: str = "test") -> None:
        """Refuse a test image in training/validation, or an image listed twice in one of ``sections``.

        A duplicate is refused rather than dropped: a duplicated training case silently doubles its
        weight, a duplicated test case its weight in the reported means.

        Raises:
            S2S2InputError: one line naming the datalist, the entries and both paths.
        """
        found = self.overlaps(sections, test)
        leaks = [o for o in found if o.kind == "leak"]
        if leaks:
            o = leaks[0]
            n = sum(1 for x in leaks if x.section == o.section)
            via = f" ({o.how})" if o.how else ""
            raise S2S2InputError(
                self.path,
                f"{n} {o.section} case(s) are also test cases (e.g. {o.section} entry {o.index} {o.path} is test "
                f"entry {o.other_index} {o.other_path}{via}): the test set would "
                f"{'train' if o.section == 'training' else 'select'} the model",
                f"remove them from {o.section!r} (hold out training cases for validation, or leave validation empty)",
            )
        dups = [o for o in found if o.kind == "duplicate"]
        if dups:
            o = dups[0]
            group = sorted(
                {o.other_index} | {x.index for x in dups if x.section == o.section and x.other_index == o.other_index}
            )
            times = "twice" if len(group) == 2 else f"{len(group)} times"
            entries = ", ".join(map(str, group[:-1])) + f" and {group[-1]}"
            via = f"; entry {o.index} {o.path} is {o.how}" if o.how else ""
            weight = "its weight" if o.section == "training" else "its weight in the reported means"
            raise S2S2InputError(
                self.path,
                f"{o.other_path} is listed {times} in {o.section!r} (entries {entries}{via}): "
                f"a duplicated case silently doubles {weight}",
                f"list each case once (remove entr{'y' if len(group) == 2 else 'ies'} "
                f"{', '.join(map(str, group[1:]))} of {o.section!r})",
            )

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
