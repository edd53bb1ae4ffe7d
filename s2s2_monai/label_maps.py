"""Every label map of the project, in one place.

A :class:`LabelMap` names the classes a network predicts (ids 1..K, 0 = background); prompts,
report columns and the MONAI Label app take their organ names from here. A :class:`LabelRemap`
turns the ids of a *source* annotation (raw BTCV, TotalSegmentator ``total`` / ``total_mr``)
into a target map; ids it does not list become background.

Synapse ids follow the TransUNet / SAMed preprocessing: raw BTCV {1,2,3,4,6,7,8,11} ->
1..8 = spleen, right kidney, left kidney, gallbladder, liver, stomach, aorta, pancreas.
Papers print their tables in alphabetical order (:data:`SYNAPSE_PAPER_ORDER`); that is a
column order, not a label order.

A dataset of one's own declares its map in the datalist: :func:`parse_label_map` reads a registry
name, a ``{"1": "liver", ...}`` dict (nnU-Net style) or the full :meth:`LabelMap.to_dict` form.
Torch-free leaf module (the CLI parser imports it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

__all__ = [
    "LabelMap",
    "LabelRemap",
    "LABEL_MAPS",
    "LABEL_REMAPS",
    "SYNAPSE",
    "SYNAPSE_PAPER_ORDER",
    "MODALITIES",
    "get_label_map",
    "get_label_remap",
    "parse_label_map",
    "normalize_modality",
    "with_modality",
]


@dataclass(frozen=True)
class LabelMap:
    """Classes a network predicts.

    Args:
        name: registry name, e.g. ``"synapse"``.
        classes: ``{id: organ name}`` for the foreground ids (background 0 is implicit).
        modality: ``"CT"`` or ``"MRI"``; selects the intensity transform.
        anatomy: words used in prompts, e.g. ``"abdomen CT scan"``.
    """

    name: str
    classes: dict[int, str]
    modality: str
    anatomy: str

    @property
    def num_classes(self) -> int:
        """Number of output channels including background."""
        return max(self.classes) + 1

    @property
    def ids(self) -> list[int]:
        """Foreground ids in ascending order."""
        return sorted(self.classes)

    def name_of(self, class_id: int) -> str:
        """Organ name of ``class_id`` (``"background"`` for 0)."""
        return "background" if class_id == 0 else self.classes[int(class_id)]

    def valid_ids(self) -> set[int]:
        """Ids that may appear in a label file of this map (background included)."""
        return {0, *self.classes}

    def to_dict(self) -> dict:
        """JSON-safe form (string ids in ascending order); :func:`parse_label_map` reads it back."""
        return {
            "name": self.name,
            "classes": {str(k): self.classes[k] for k in sorted(self.classes)},
            "modality": self.modality,
            "anatomy": self.anatomy,
        }


@dataclass(frozen=True)
class LabelRemap:
    """Source ids -> target map ids; every id not in ``mapping`` becomes 0.

    Args:
        name: registry name, e.g. ``"totalseg_to_synapse"``.
        target: name of the target :class:`LabelMap`.
        mapping: ``{source id: target id}``.
        max_source_id: largest id the source annotation defines; larger ids are invalid input.
    """

    name: str
    target: str
    mapping: dict[int, int]
    max_source_id: int
    description: str = field(default="")

    def valid_ids(self) -> set[int]:
        """Ids that may appear in a source label file."""
        return set(range(self.max_source_id + 1))


SYNAPSE = LabelMap(
    name="synapse",
    classes={
        1: "spleen",
        2: "right kidney",
        3: "left kidney",
        4: "gallbladder",
        5: "liver",
        6: "stomach",
        7: "aorta",
        8: "pancreas",
    },
    modality="CT",
    anatomy="abdomen CT scan",
)

#: Column order of the paper tables (Aorta, Gallbladder, Kidney L, Kidney R, Liver, Pancreas, Spleen, Stomach).
SYNAPSE_PAPER_ORDER: tuple[int, ...] = (7, 4, 3, 2, 5, 8, 1, 6)

CHAOS_T2SPIR = LabelMap(
    name="chaos_t2spir",
    classes={1: "liver", 2: "right kidney", 3: "left kidney", 4: "spleen"},
    modality="MRI",
    anatomy="abdominal T2-SPIR MRI scan",
)

ACDC = LabelMap(
    name="acdc",
    classes={1: "right ventricle", 2: "myocardium", 3: "left ventricle"},
    modality="MRI",
    anatomy="cardiac MRI scan",
)

MSCMR_LGE = LabelMap(
    name="mscmr_lge",
    classes={1: "left ventricle", 2: "myocardium", 3: "right ventricle"},
    modality="MRI",
    anatomy="cardiac LGE MRI scan",
)

LABEL_MAPS: dict[str, LabelMap] = {m.name: m for m in (SYNAPSE, CHAOS_T2SPIR, ACDC, MSCMR_LGE)}

LABEL_REMAPS: dict[str, LabelRemap] = {
    r.name: r
    for r in (
        LabelRemap(
            "btcv_to_synapse",
            "synapse",
            {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8},
            max_source_id=13,
            description="raw BTCV 13 organs -> TransUNet Synapse 8 organs",
        ),
        LabelRemap(
            "totalseg_to_synapse",
            "synapse",
            {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 52: 7, 7: 8},
            max_source_id=117,
            description="TotalSegmentator v2 'total' classes -> Synapse",
        ),
        LabelRemap(
            "totalseg_mr_to_synapse",
            "synapse",
            {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 23: 7, 7: 8},
            max_source_id=56,
            description="TotalSegmentator v2 'total_mr' classes -> Synapse",
        ),
        LabelRemap(
            "chaos_intensity_to_chaos",
            "chaos_t2spir",
            {63: 1, 126: 2, 189: 3, 252: 4},
            max_source_id=255,
            description="CHAOS PNG grey values (63/126/189/252) -> liver, R kidney, L kidney, spleen",
        ),
        LabelRemap(
            "totalseg_mr_to_chaos",
            "chaos_t2spir",
            {5: 1, 2: 2, 3: 3, 1: 4},
            max_source_id=56,
            description="TotalSegmentator v2 'total_mr' classes -> CHAOS 4 organs",
        ),
    )
}


#: Accepted modality spellings (upper case) -> the canonical one.
MODALITIES: dict[str, str] = {"CT": "CT", "MRI": "MRI", "MR": "MRI"}

#: Prompt words of a custom map per modality ("A 2D slice of a CT scan showing ...").
_ANATOMY = {"CT": "CT scan", "MRI": "MRI scan"}
_FULL_KEYS = ("name", "classes", "modality", "anatomy")
_ID = re.compile(r"[+-]?[0-9]+")
_MAX_ID = 255  # label files are stored as uint8


def normalize_modality(value: object) -> str:
    """``"CT"`` or ``"MRI"`` for a modality spelling (any case; ``"MR"`` is MRI).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, str) and value.strip().upper() in MODALITIES:
        return MODALITIES[value.strip().upper()]
    raise ValueError(f"unknown modality {value!r} (use CT or MRI)")


def with_modality(label_map: LabelMap, modality: str | None) -> LabelMap:
    """``label_map`` with another modality (its anatomy words follow: "abdomen CT scan" -> "abdomen MRI scan")."""
    if modality is None:
        return label_map
    modality = normalize_modality(modality)
    if modality == label_map.modality:
        return label_map
    anatomy = re.sub(r"\b(CT|MRI|MR)\b", modality, label_map.anatomy)
    return replace(label_map, modality=modality, anatomy=anatomy)


def _class_id(key: object) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        class_id = key
    elif isinstance(key, str) and _ID.fullmatch(key.strip()):
        class_id = int(key.strip())
    else:
        raise ValueError(f'key {key!r} is not a whole number (write {{id: name}}, e.g. {{"1": "liver"}})')
    if class_id == 0:
        raise ValueError("id 0 is the background, which is implicit (number the classes from 1)")
    if class_id < 0:
        raise ValueError(f"id {class_id} is negative (number the classes from 1)")
    if class_id > _MAX_ID:
        raise ValueError(f"id {class_id} is above {_MAX_ID} (labels are stored as uint8)")
    return class_id


def _classes(value: object) -> dict[int, str]:
    if not isinstance(value, dict):
        raise ValueError(f"classes must be an {{id: name}} dict, got {type(value).__name__}")
    if not value:
        raise ValueError("the label map has no classes")
    classes: dict[int, str] = {}
    seen: dict[str, int] = {}
    for key, name in value.items():
        class_id = _class_id(key)
        if class_id in classes:
            raise ValueError(f"id {class_id} is given twice")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"the name of id {class_id} must be a non-empty string, got {name!r}")
        name = name.strip()
        folded = name.casefold()
        if folded == "background":
            raise ValueError(f"id {class_id} is named 'background', the implicit name of id 0")
        if folded in seen:
            raise ValueError(f"the name {name!r} is given to ids {seen[folded]} and {class_id}")
        seen[folded] = class_id
        classes[class_id] = name
    return {k: classes[k] for k in sorted(classes)}


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value.strip()


def parse_label_map(value: object, modality: str | None = None, name: str | None = None) -> LabelMap:
    """A :class:`LabelMap` from any of the forms a datalist or the CLI may give.

    Args:
        value: a :class:`LabelMap` (returned as it is), a registry name (``"synapse"``), a classes
            dict ``{"1": "liver", "2": "left kidney"}`` (keys ints or digit strings) or the full
            :meth:`LabelMap.to_dict` form.
        modality: modality of a custom map when the dict does not give one (default ``"CT"``; ``"MR"`` = MRI).
        name: name of a custom map when the dict does not give one (default ``"custom"``).

    Raises:
        KeyError: an unknown registry name (the message lists the known ones).
        ValueError: an unusable map, with the reason in one sentence: empty, a key that is not a
            whole number, id 0 or > 255, a name that is not a non-empty string, a name given twice,
            an unknown modality, or a registry name reused for other classes.
    """
    if isinstance(value, LabelMap):
        return value
    if isinstance(value, str):
        try:
            return LABEL_MAPS[value]
        except KeyError:
            raise KeyError(f"unknown label map {value!r}; known: {sorted(LABEL_MAPS)}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"a label map must be a registry name or an {{id: name}} dict, got {type(value).__name__} {value!r}"
        )
    if "classes" in value:  # the full to_dict() form
        unknown = sorted(str(k) for k in value if k not in _FULL_KEYS)
        if unknown:
            raise ValueError(f"unknown label map keys {unknown} (known: {list(_FULL_KEYS)})")
        classes = _classes(value["classes"])
        name = value.get("name", name)
        modality = value.get("modality", modality)
        anatomy = value.get("anatomy")
    else:
        classes, anatomy = _classes(value), None
    modality = normalize_modality("CT" if modality is None else modality)
    name = _text("custom" if name is None else name, "the label map name")
    anatomy = _text(_ANATOMY[modality] if anatomy is None else anatomy, "the anatomy words")
    known = LABEL_MAPS.get(name)
    if known is not None and known.classes != classes:
        raise ValueError(f"the name {name!r} is the registry map of other classes (rename the custom map)")
    return LabelMap(name=name, classes=classes, modality=modality, anatomy=anatomy)


def get_label_map(name: str | dict | LabelMap) -> LabelMap:
    """Label map by registry name, or any other form :func:`parse_label_map` reads.

    Raises:
        KeyError: an unknown registry name (the message lists the known names).
        ValueError: an unusable custom map (the reason in one sentence).
    """
    return parse_label_map(name)


def get_label_remap(name: str) -> LabelRemap:
    """Label remap by registry name; a clear ``KeyError`` lists the known names."""
    try:
        return LABEL_REMAPS[name]
    except KeyError:
        raise KeyError(f"unknown label remap {name!r}; known: {sorted(LABEL_REMAPS)}") from None
