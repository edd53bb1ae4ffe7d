"""Every label map of the project, in one place.

A :class:`LabelMap` names the classes a network predicts (ids 1..K, 0 = background); prompts,
report columns and the MONAI Label app take their organ names from here. A :class:`LabelRemap`
turns the ids of a *source* annotation (raw BTCV, TotalSegmentator ``total`` / ``total_mr``)
into a target map; ids it does not list become background.

Synapse ids follow the TransUNet / SAMed preprocessing: raw BTCV {1,2,3,4,6,7,8,11} ->
1..8 = spleen, right kidney, left kidney, gallbladder, liver, stomach, aorta, pancreas.
Papers print their tables in alphabetical order (:data:`SYNAPSE_PAPER_ORDER`); that is a
column order, not a label order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "LabelMap",
    "LabelRemap",
    "LABEL_MAPS",
    "LABEL_REMAPS",
    "SYNAPSE",
    "SYNAPSE_PAPER_ORDER",
    "get_label_map",
    "get_label_remap",
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


def get_label_map(name: str | LabelMap) -> LabelMap:
    """Label map by registry name (a :class:`LabelMap` is returned as it is); a clear ``KeyError`` lists the known names."""
    if isinstance(name, LabelMap):
        return name
    try:
        return LABEL_MAPS[name]
    except KeyError:
        raise KeyError(f"unknown label map {name!r}; known: {sorted(LABEL_MAPS)}") from None


def get_label_remap(name: str) -> LabelRemap:
    """Label remap by registry name; a clear ``KeyError`` lists the known names."""
    try:
        return LABEL_REMAPS[name]
    except KeyError:
        raise KeyError(f"unknown label remap {name!r}; known: {sorted(LABEL_REMAPS)}") from None
