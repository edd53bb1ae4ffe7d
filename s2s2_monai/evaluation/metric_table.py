"""Collect per case x class metrics of one or several methods, plus the worst slice per organ.

:class:`MetricTable` is the one place where a prediction meets its ground truth: the CLI
(folders), :func:`~s2s2_monai.evaluation.run.evaluate_datalist` (bundle) and validation during
training all call :meth:`MetricTable.add`, so they report the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from s2s2_monai.arrays import is_torch
from s2s2_monai.evaluation.metrics import DEFAULT_HD95, EMPTY_POLICY, as_label_array, check_hd95, compute_case_metrics
from s2s2_monai.evaluation.surface import class_boxes

__all__ = ["WorstSlice", "MetricTable"]


@dataclass
class WorstSlice:
    """The axial slice where a method disagrees most with the ground truth, for its worst case of an organ."""

    method: str
    class_id: int
    case: str
    dice: float
    z: int
    pred: np.ndarray  # bool (X, Y)
    gt: np.ndarray  # bool (X, Y)
    image: np.ndarray | None = None  # float (X, Y)


@dataclass
class MetricTable:
    """Accumulates metrics case by case.

    Args:
        class_names: ``{class_id: organ name}`` of the foreground classes to report.
        hd95: HD95 definition (``"medpy"``, ``"surface-distance"``, ``"monai"``).
        legacy_transunet: use TransUNet's protocol (Dice and HD95 in voxels, its empty rule).
        label_map: name written into the settings.
        model: which weights were evaluated (``{"checkpoint": path, "selection": "last", "epoch": ...}``),
            written into the settings and the report.
        extra_settings: more entries of :meth:`settings` (e.g. the missing predictions of ``--allow-missing``).
    """

    class_names: Mapping[int, str]
    hd95: str = DEFAULT_HD95
    legacy_transunet: bool = False
    label_map: str | None = None
    model: dict | None = None
    extra_settings: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    worst: dict[tuple[str, int], WorstSlice] = field(default_factory=dict)
    methods: list[str] = field(default_factory=list)
    _case_boxes: dict | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_hd95(self.hd95)
        self.class_names = {int(k): str(v) for k, v in sorted(self.class_names.items())}

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Columns of a row after ``case, class_id, class_name``."""
        return ("dice", "hd95_vox") if self.legacy_transunet else ("dice", "hd95_mm", "assd_mm")

    def settings(self) -> dict:
        """What was measured and how (written into ``summary.json``)."""
        if self.legacy_transunet:
            return {
                "protocol": "legacy-transunet",
                "hd95_definition": "medpy (no voxel spacing)",
                "units": "voxels",
                "empty_policy": {
                    "pred_and_gt": "medpy dc, hd95",
                    "pred_only": "dice=1, hd95=0",
                    "otherwise": "dice=0, hd95=0",
                },
                "averaging": "mean over cases per class, then over classes",
                "label_map": self.label_map,
                "model": self.model,
                **self.extra_settings,
            }
        return {
            "protocol": "default",
            "hd95_definition": self.hd95,
            "units": "mm",
            "empty_policy": dict(EMPTY_POLICY),
            "averaging": "per class: mean over cases with the class in prediction or ground truth; overall: mean over cases of the per-case class mean",
            "label_map": self.label_map,
            "model": self.model,
            **self.extra_settings,
        }

    def add(
        self, case: str, pred, gt, spacing: Sequence[float], method: str = "prediction", image=None
    ) -> dict[int, dict[str, float]]:
        """Score one case of one method and keep its rows; returns the per-class metrics.

        Args:
            case: case name.
            pred / gt: integer (X, Y, Z) label volumes on one grid (numpy or torch, any device).
            spacing: voxel size in mm.
            method: name of the method (one per prediction folder).
            image: optional (X, Y, Z) image for the worst-slice overlays.
        """
        pred_t = as_label_array(pred)  # numpy on CPU, a tensor on its GPU
        gt_t = as_label_array(gt, like=pred_t)
        if method not in self.methods:
            self.methods.append(method)
        ids = list(self.class_names)
        self._case_boxes = None  # this case's class boxes: found once, for the metrics and the worst slices
        if self.legacy_transunet:
            from s2s2_monai.evaluation.legacy import legacy_case_metrics

            metrics = legacy_case_metrics(pred_t, gt_t, ids)
        else:
            if not is_torch(pred_t) and pred_t.shape == gt_t.shape:
                self._case_boxes = class_boxes([pred_t, gt_t], 0)  # num_classes is only used on a GPU
            metrics = compute_case_metrics(pred_t, gt_t, spacing, ids, hd95=self.hd95, boxes=self._case_boxes)
        for c in ids:
            self.rows.append(
                {"method": method, "case": case, "class_id": c, "class_name": self.class_names[c], **metrics[c]}
            )
            self._track_worst(method, case, c, metrics[c]["dice"], pred_t, gt_t, image)
        return metrics

    def _track_worst(self, method, case, c, dice, pred_t, gt_t, image) -> None:
        if not np.isfinite(dice):
            return
        key = (method, c)
        if key in self.worst and self.worst[key].dice <= dice:
            return
        if is_torch(pred_t):  # on the GPU: whole-volume passes there
            p, g = pred_t == c, gt_t == c
            z = int((p ^ g).sum(dim=(0, 1)).argmax())
            p, g = p[:, :, z].cpu().numpy(), g[:, :, z].cpu().numpy()
        else:  # numpy on the class's bounding box
            box = self._box_of(pred_t, gt_t, c)
            per_z = np.count_nonzero((pred_t[box] == c) ^ (gt_t[box] == c), axis=(0, 1)) if box else np.zeros(1)
            z = int(np.argmax(per_z)) + box[2].start if box and per_z.max() > 0 else 0  # argmax of zeros: 0
            p, g = pred_t[:, :, z] == c, gt_t[:, :, z] == c
        img = None
        if image is not None:
            vol = image.as_tensor() if hasattr(image, "as_tensor") else image
            vol = vol[0] if vol.ndim == 4 else vol
            sl = vol[:, :, z]
            img = (sl.detach().float().cpu().numpy() if is_torch(sl) else np.asarray(sl, dtype=np.float32)).copy()
        self.worst[key] = WorstSlice(method, c, case, float(dice), z, p, g, img)

    def _box_of(self, pn: np.ndarray, gn: np.ndarray, c: int):
        """Bounding box of class ``c`` in prediction or ground truth (``None`` if absent); one
        ``find_objects`` pass per volume per case, shared with the metrics and the classes of that case."""
        if self._case_boxes is None:
            self._case_boxes = class_boxes([pn, gn], 0)
        return self._case_boxes.get(c)

    def empty_copy(self) -> MetricTable:
        """A table with the same settings and no rows (to score cases elsewhere and :meth:`merge` them)."""
        return MetricTable(
            self.class_names, self.hd95, self.legacy_transunet, self.label_map, self.model, self.extra_settings
        )

    def merge(self, other: MetricTable) -> None:
        """Append ``other``'s rows and worst slices, as if its cases had been added here after ours."""
        for m in other.methods:
            if m not in self.methods:
                self.methods.append(m)
        self.rows += other.rows
        for key, w in other.worst.items():
            if key not in self.worst or w.dice < self.worst[key].dice:
                self.worst[key] = w

    def cases(self, method: str) -> list[str]:
        """Case names of a method, in the order they were added."""
        return list(dict.fromkeys(r["case"] for r in self.rows if r["method"] == method))

    def values(self, method: str, key: str, class_id: int | None = None) -> dict[str, float]:
        """``{case: value}`` of one metric for one class, or of the per-case class mean when ``class_id`` is None."""
        out: dict[str, list[float]] = {}
        for r in self.rows:
            if r["method"] == method and (class_id is None or r["class_id"] == class_id):
                out.setdefault(r["case"], []).append(r[key])
        return {case: _nanmean(v) for case, v in out.items()}


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")
