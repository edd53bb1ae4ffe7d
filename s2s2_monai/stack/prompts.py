"""Text prompts for mask-conditioned generation (paper Table 7), derived from the label map.

"A 2D slice of an <anatomy> showing " + the names of the classes present in the mask, in
ascending id order. Upstream lists "background" first; ``include_background`` keeps that.
ControlNet fine-tuning and stack generation both call :func:`build_prompt`, so they always agree.
"""

from __future__ import annotations

import numpy as np

from s2s2_monai.label_maps import LabelMap

__all__ = ["prompt_prefix", "build_prompt"]


def prompt_prefix(label_map: LabelMap) -> str:
    """``"A 2D slice of an abdomen CT scan showing "`` for Synapse, and so on per dataset family."""
    first = label_map.anatomy.split(" ")[0]
    # by sound: "an abdomen", "an MRI scan" (em-), "a CT scan" (see-)
    vowel = first[:1] in "AEFHILMNORSX" if first.isupper() else first[:1].lower() in "aeiou"
    article = "an" if vowel else "a"
    return f"A 2D slice of {article} {label_map.anatomy} showing "


def build_prompt(mask: np.ndarray, label_map: LabelMap, include_background: bool = True) -> str:
    """Prompt for one 2D mask of ``label_map`` ids (ids outside the map raise ``ValueError``)."""
    present = [int(v) for v in np.unique(np.asarray(mask))]
    unknown = [v for v in present if v != 0 and v not in label_map.classes]
    if unknown:
        raise ValueError(f"mask holds ids {unknown} that label map {label_map.name!r} does not define")
    names = [label_map.name_of(v) for v in present if v != 0]
    if include_background:
        names = ["background", *names]
    return prompt_prefix(label_map) + (", ".join(names) if names else "background")
