"""``s2s2 datalist``: a datalist for a dataset of one's own, from an nnU-Net style folder pair.

Images ``CASE_0000.nii.gz`` (or ``CASE.nii.gz`` / ``.nii``, or a DICOM series folder ``CASE/``)
pair with labels ``CASE.nii.gz`` / ``.nii`` by case name. A seeded split (cases sorted by name,
shuffled with ``numpy.random.default_rng(seed)``) fills ``test`` (a fraction or a list of cases),
then ``validation``; the rest trains. Every label's ids are checked against the label map before
anything is written. The decathlon-style JSON holds paths relative to its own folder, so
:func:`~s2s2_monai.data.datalist.load_datalist`'s default data root (the datalist's folder) works.
Same inputs and seed give the same bytes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.label_maps import LABEL_MAPS, LabelMap, normalize_modality, parse_label_map, with_modality

__all__ = [
    "CasePair",
    "image_case",
    "pair_cases",
    "split_cases",
    "read_label_names",
    "read_test_list",
    "check_label_ids",
    "make_datalist",
    "summary_line",
]

_SUFFIXES = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>[0-9]{4})$")


@dataclass(frozen=True)
class CasePair:
    """One case: its image (NIfTI file or DICOM folder) and label file."""

    case_id: str
    image: Path
    label: Path


def _stem(name: str) -> str | None:
    """File name without ``.nii.gz`` / ``.nii``; ``None`` for another kind of file."""
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def image_case(path: Path, option: str = "--images") -> str:
    """Case name of an image file, nnU-Net style: ``CASE_0000.nii.gz`` / ``CASE.nii.gz`` / ``CASE.nii`` -> ``CASE``.

    Raises:
        S2S2InputError: not a NIfTI file, or another channel than ``_0000`` (single-channel models only).
    """
    stem = _stem(path.name)
    if stem is None:
        raise S2S2InputError(
            path,
            "is neither a NIfTI file (.nii.gz / .nii) nor a DICOM series folder",
            f"convert it to NIfTI or move it out of {option}",
        )
    m = _CHANNEL.match(stem)
    if m and m["channel"] != "0000":
        raise S2S2InputError(
            path,
            f"is channel {int(m['channel'])} of case {m['case']!r}; only single-channel images are supported",
            f"keep one channel per case ({m['case']}_0000) and move the others out of {option}",
        )
    return m["case"] if m else stem


def _entries(folder: Path, role: str, option: str) -> list[Path]:
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "folder not found"
        raise S2S2InputError(folder, f"{role} {what}", f"give {option} an existing folder of {role}")
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _images(folder: Path) -> dict[str, Path]:
    """``{case: image file or DICOM folder}`` of ``--images``."""
    found: dict[str, Path] = {}
    entries = _entries(folder, "images", "--images")
    if not entries:
        raise S2S2InputError(
            folder,
            "the images folder is empty",
            "put the images CASE_0000.nii.gz (or DICOM series folders CASE/) in it",
        )
    for path in entries:
        if path.is_dir():
            if not any(not p.name.startswith(".") and p.is_file() for p in path.iterdir()):
                raise S2S2InputError(
                    path,
                    "folder holds no files (expected one DICOM series)",
                    "remove it or put the series' files in it",
                )
            case = path.name
        else:
            case = image_case(path)
        if case in found:
            raise S2S2InputError(
                path, f"second image of case {case!r} (the first is {found[case]})", "keep one image per case"
            )
        found[case] = path
    return found


def _labels(folder: Path) -> dict[str, Path]:
    """``{file name without suffix: label file}`` of ``--labels``."""
    found: dict[str, Path] = {}
    for path in _entries(folder, "labels", "--labels"):
        stem = _stem(path.name) if path.is_file() else None
        if stem is None:
            raise S2S2InputError(
                path, "is not a NIfTI label file (.nii.gz / .nii)", "convert it to NIfTI or move it out of --labels"
            )
        if stem in found:
            raise S2S2InputError(
                path, f"second label of case {stem!r} (the first is {found[stem]})", "keep one label file per case"
            )
        found[stem] = path
    return found


def pair_cases(images: str | os.PathLike, labels: str | os.PathLike) -> list[CasePair]:
    """Pair images with labels by case name, sorted by case (nnU-Net naming).

    ``CASE_0000.nii.gz``, ``CASE.nii.gz`` / ``.nii`` or a DICOM folder ``CASE/`` pairs with
    ``CASE.nii.gz`` / ``.nii`` (a label named exactly like the image file is accepted too).

    Raises:
        S2S2InputError: missing or empty folder, an image without label or a label without image
            (the first one named, the others counted), a second channel ``CASE_0001``, a file of
            another kind, two images or labels of one case.
    """
    image_of = _images(Path(images))
    label_of = _labels(Path(labels))
    pairs, lonely, used = [], [], set()
    for case, image in image_of.items():
        key = case if case in label_of else _stem(image.name)
        if key not in label_of:
            lonely.append(image)
            continue
        used.add(key)
        pairs.append(CasePair(case, image, label_of[key]))
    if lonely:
        more = f" ({len(lonely) - 1} more images lack a label)" if len(lonely) > 1 else ""
        case = next(c for c, p in image_of.items() if p == lonely[0])
        raise S2S2InputError(
            lonely[0],
            f"image has no label (expected {Path(labels) / (case + '.nii.gz')}){more}",
            "add the label files, or move the unlabelled images out of --images",
        )
    extra = [label_of[k] for k in sorted(label_of) if k not in used]
    if extra:
        more = f" ({len(extra) - 1} more labels lack an image)" if len(extra) > 1 else ""
        raise S2S2InputError(
            extra[0],
            f"label has no image in {images}{more}",
            f"add its image ({_stem(extra[0].name)}_0000.nii.gz), or move the label out of --labels",
        )
    return sorted(pairs, key=lambda p: p.case_id)


def _check_fraction(value: float, option: str) -> None:
    if not 0.0 <= value < 1.0:
        raise S2S2InputError(option, f"got {value}, expected a fraction in [0, 1)", f"pass e.g. {option} 0.2")


def split_cases(
    cases: list[str],
    seed: int = 0,
    test_fraction: float = 0.0,
    val_fraction: float = 0.0,
    test_list: list[str] | None = None,
) -> dict[str, list[str]]:
    """Seeded split ``{"training", "validation", "test"}`` of case names, each sorted by name.

    Cases are sorted, shuffled with ``numpy.random.default_rng(seed)``; the first
    ``round(test_fraction * n)`` are the test set (or exactly ``test_list``), then
    ``round(val_fraction * rest)`` of the rest validate, the others train.

    Raises:
        S2S2InputError: a fraction outside [0, 1), an unknown case in ``test_list``, no training case left.
    """
    import numpy as np

    _check_fraction(test_fraction, "--test-fraction")
    _check_fraction(val_fraction, "--val-fraction")
    order = sorted(cases)
    np.random.default_rng(seed).shuffle(order)
    if test_list is not None:
        unknown = sorted(set(test_list) - set(order))
        if unknown:
            raise S2S2InputError(
                "--test-list",
                f"unknown case {unknown[0]!r}" + (f" ({len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                f"list case names of the paired images, e.g. {sorted(order)[0]!r}",
            )
        test = set(test_list)
    else:
        test = set(order[: round(test_fraction * len(order))])
    rest = [c for c in order if c not in test]
    val = set(rest[: round(val_fraction * len(rest))])
    train = [c for c in rest if c not in val]
    if not train:
        option = "--val-fraction" if rest else ("--test-list" if test_list is not None else "--test-fraction")
        raise S2S2InputError(
            option,
            f"the split leaves no training case ({len(order)} cases: {len(test)} test, {len(val)} validation)",
            "lower --test-fraction / --val-fraction, or list fewer test cases",
        )
    return {"training": sorted(train), "validation": sorted(val), "test": sorted(test)}


def _read_json_option(value: str, option: str):
    """JSON given inline (starts with ``{`` or ``[``) or as a file path; ``(data, where)``."""
    text, where = value, option
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value)
        if not path.is_file():
            raise S2S2InputError(path, f"{option} file not found", f"give inline JSON or an existing file to {option}")
        text, where = path.read_text(), str(path)
    try:
        return json.loads(text), where
    except json.JSONDecodeError as exc:
        raise S2S2InputError(where, f"not valid JSON ({exc})", "fix the JSON syntax") from None


def read_label_names(value: str, modality: str | None = None) -> LabelMap:
    """The custom map of ``--label-names``: inline JSON or a JSON file.

    Accepts ``{"1": "liver", ...}``, the full ``LabelMap.to_dict()`` form, and an nnU-Net
    ``dataset.json`` (its ``"labels"``: ``{"1": "liver"}`` or v2 ``{"background": 0, "liver": 1}``).

    Raises:
        S2S2InputError: bad JSON, missing file, unusable map (the reason).
    """
    data, where = _read_json_option(value, "--label-names")
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):  # an nnU-Net dataset.json
        labels = data["labels"]
        if labels and all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # v2: name -> id
            labels = {str(v): k for k, v in labels.items()}
        data = {k: v for k, v in labels.items() if not (str(k).strip() == "0" and str(v).lower() == "background")}
    try:
        return parse_label_map(data, modality=modality)
    except ValueError as exc:
        raise S2S2InputError(
            where,
            f"unusable label map: {exc}",
            'write {"1": "liver", "2": "left kidney", ...} (ids 1..255, distinct names)',
        ) from None


def read_test_list(path: str | os.PathLike) -> list[str]:
    """Case names of ``--test-list``: one per line (``#`` comments) or a JSON list; image file names work too."""
    path = Path(path)
    if not path.is_file():
        raise S2S2InputError(path, "--test-list file not found", "give a file with one case name per line")
    text = path.read_text()
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as exc:
            raise S2S2InputError(
                path, f"not valid JSON ({exc})", "fix the JSON syntax, or write one case per line"
            ) from None
        if not all(isinstance(n, str) for n in names):
            raise S2S2InputError(path, "the JSON list holds non-strings", 'write ["case_a", "case_b"]')
    else:
        names = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    out = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        stem = _stem(name) or name
        m = _CHANNEL.match(stem)
        case = m["case"] if m and m["channel"] == "0000" else stem
        if case not in out:
            out.append(case)
    if not out:
        raise S2S2InputError(path, "lists no case", "write one case name per line, or drop --test-list")
    return out


def _describe(label_map: LabelMap) -> str:
    return ", ".join(f"{i} {label_map.classes[i]}" for i in label_map.ids)


def check_label_ids(pairs: list[CasePair], label_map: LabelMap, progress: bool = True) -> None:
    """Read every label (nibabel) and refuse ids outside ``label_map``.

    Raises:
        S2S2InputError: an unreadable label file, non-integer values, ids outside the map.
    """
    import nibabel as nib
    import numpy as np
    from tqdm.auto import tqdm

    valid = label_map.valid_ids()
    for pair in tqdm(pairs, desc="checking labels", unit="case", disable=not progress):
        try:
            values = np.unique(np.asanyarray(nib.load(str(pair.label)).dataobj))
        except Exception as exc:  # nibabel raises many kinds on a damaged file
            raise S2S2InputError(
                pair.label, f"cannot read this NIfTI file ({type(exc).__name__}: {exc})", "re-export or re-download it"
            ) from None
        if values.dtype.kind not in "iub" and not np.all(np.isfinite(values) & (values == np.round(values))):
            raise S2S2InputError(pair.label, "label holds non-integer values", "store labels as integer ids (uint8)")
        bad = sorted(int(v) for v in values if int(v) not in valid)
        if bad:
            raise S2S2InputError(
                pair.label,
                f"label ids {bad} are not in the label map ({label_map.name}: {_describe(label_map)})",
                "choose the matching --label-map, or give every id a name with --label-names",
            )


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies inside it, else absolute (``..`` would leave the data root)."""
    path = Path(os.path.abspath(path))
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive
        return path.as_posix()
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return path.as_posix()
    return Path(rel).as_posix()


def make_datalist(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    modality: str | None = None,
    label_map: str | None = None,
    label_names: str | None = None,
    test_fraction: float = 0.0,
    test_list: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> tuple[Path, dict, LabelMap]:
    """Pair, split, check and write a decathlon-style datalist (nothing is written on bad input).

    Args:
        images: folder of images (``CASE_0000.nii.gz``, ``CASE.nii.gz`` or DICOM folders ``CASE/``).
        labels: folder of labels ``CASE.nii.gz``.
        out: datalist file to write; entry paths are relative to its folder.
        modality: ``"CT"`` / ``"MRI"`` (default: the registry map's, CT for a custom map).
        label_map: registry name (default synapse); excludes ``label_names``.
        label_names: custom map as inline JSON or a JSON file (see :func:`read_label_names`).
        test_fraction: fraction of the cases for ``test`` (excludes ``test_list``).
        test_list: file of test case names.
        val_fraction: fraction of the non-test cases for ``validation``.
        seed: split seed.
        force: replace an existing ``out``.
        progress: progress bar while the labels are checked.

    Returns:
        ``(out path, the datalist written, its label map)``.
    """
    out = Path(out)
    if out.is_dir():
        raise S2S2InputError(out, "is a folder", "give --out a file name, e.g. DIR/datalist.json")
    if out.exists() and not force:
        raise S2S2InputError(out, "already exists", "pass --force to replace it, or choose another --out")
    if label_map is not None and label_names is not None:
        raise S2S2InputError("--label-names", "given together with --label-map", "choose one of them")
    if modality is not None:
        try:
            modality = normalize_modality(modality)
        except ValueError as exc:
            raise S2S2InputError("--modality", str(exc), "pass --modality CT or --modality MRI") from None
    if label_names is not None:
        lm = read_label_names(label_names, modality)
    else:
        try:
            lm = with_modality(parse_label_map(label_map or "synapse"), modality)
        except KeyError as exc:
            raise S2S2InputError("--label-map", str(exc.args[0]), "use one of the known names") from None
    _check_fraction(test_fraction, "--test-fraction")
    _check_fraction(val_fraction, "--val-fraction")
    if test_list is not None and test_fraction:
        raise S2S2InputError("--test-list", "given together with --test-fraction", "choose one of them")
    tests = read_test_list(test_list) if test_list is not None else None
    pairs = pair_cases(images, labels)
    split = split_cases([p.case_id for p in pairs], seed, test_fraction, val_fraction, tests)
    check_label_ids(pairs, lm, progress)

    base = Path(os.path.abspath(out.parent))
    by_case = {p.case_id: p for p in pairs}
    how = f"test list {Path(test_list).name}" if tests is not None else f"test fraction {test_fraction:g}"
    data: dict = {
        "description": (
            f"s2s2 datalist: {len(pairs)} cases, images {_rel(Path(images), base)}, labels {_rel(Path(labels), base)}; "
            f"split seed {seed}, {how}, validation fraction {val_fraction:g}"
        ),
        "modality": lm.modality,
    }
    registry = LABEL_MAPS.get(lm.name)
    if registry is not None and registry.classes == lm.classes:
        data["label_map"] = lm.name
    elif parse_label_map(lm.to_dict()["classes"], lm.modality) == lm:  # name "custom", the default anatomy words
        data["labels"] = lm.to_dict()["classes"]
    else:
        data["label_map"] = {k: v for k, v in lm.to_dict().items() if k != "modality"}
    for section in ("training", "validation", "test"):
        data[section] = [
            {
                "image": _rel(by_case[c].image, base),
                "label": _rel(by_case[c].label, base),
                "case_id": c,
            }
            for c in split[section]
        ]
    from s2s2_monai.atomic import write_json

    write_json(out, data)
    return out, data, lm


def summary_line(out: Path, data: dict, label_map: LabelMap) -> str:
    """``wrote FILE: N training, M validation, K test cases (label map NAME, CT: liver, ...)``."""
    counts = ", ".join(f"{len(data[s])} {s}" for s in ("training", "validation", "test"))
    names = ", ".join(label_map.classes[i] for i in label_map.ids)
    return f"wrote {out}: {counts} cases (label map {label_map.name}, {label_map.modality}: {names})"
