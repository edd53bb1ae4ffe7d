"""Validation during training: per-volume Dice (and HD95) of whole validation cases.

:class:`VolumeEvaluator` is a MONAI :class:`~monai.engines.Evaluator` whose iterations are *cases*:
each predicts a whole volume slice by slice with
:func:`s2s2_monai.evaluation.inference.predict_volume` and scores it with
:func:`s2s2_monai.evaluation.metrics.compute_case_metrics` (the project's one implementation, also
used by ``evaluate.json``). :class:`VolumeMetric` averages a per-class number over cases (ignite
metric, all-reduced across ranks), so the usual MONAI handlers apply: ``ValidationHandler``,
``StatsHandler``, ``TensorBoardStatsHandler``, ``MetricsSaver``, ``CheckpointSaver(save_key_metric=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.engines.utils import IterationEvents
from torch.utils.data import DataLoader, Dataset

from s2s2_monai.data.slices import VolumeCache
from s2s2_monai.label_maps import LabelMap, get_label_map
from s2s2_monai.networks.wrappers import unwrap_network

__all__ = ["VolumeDataset", "volume_loader", "first_item", "VolumeMetric", "volume_metrics", "VolumeEvaluator"]


class VolumeDataset(Dataset):
    """Whole cases of a :class:`VolumeCache` as dicts ``image`` (X, Y, Z) float32, ``label`` (X, Y, Z)
    uint8, ``spacing`` (3,), ``case_id``, ``case_index`` (position in the dataset).

    Args:
        volumes: the cached cases (or a datalist path, loaded with ``section``/``data_root``).
        section: datalist section when ``volumes`` is a path.
        data_root: root for relative datalist paths.
    """

    def __init__(self, volumes: VolumeCache | Any, section: str = "validation", data_root: Any = None) -> None:
        self.volumes = (
            volumes if isinstance(volumes, VolumeCache) else VolumeCache(volumes, section, data_root, progress=False)
        )

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict:
        case = self.volumes[i]
        item = {
            "image": torch.from_numpy(case.image),
            "spacing": tuple(float(s) for s in case.spacing),
            "case_id": case.case_id,
            "case_index": i,
        }
        if case.label is not None:
            item["label"] = torch.from_numpy(case.label)
        return item


def first_item(batch: Sequence[dict]) -> dict:
    """Collate function for batches of one case: the case itself (volumes differ in size)."""
    if len(batch) != 1:
        raise ValueError(f"volume loaders use batch_size=1, got a batch of {len(batch)}")
    return batch[0]


def volume_loader(dataset: Dataset, distributed: bool = False, num_workers: int = 0) -> DataLoader:
    """DataLoader of whole cases; ``distributed=True`` shards cases across ranks (padded so every
    rank gets the same number; :class:`VolumeMetric` counts a repeated case once)."""
    sampler = None
    if distributed:
        from monai.data import DistributedSampler

        sampler = DistributedSampler(dataset, even_divisible=True, shuffle=False)
    return DataLoader(
        dataset, batch_size=1, shuffle=False, sampler=sampler, num_workers=num_workers, collate_fn=first_item
    )


class VolumeMetric(Metric):
    """Mean of one per-class case metric over validation cases, then over classes (NaN skipped).

    Reads ``engine.state.output["metrics"]`` = ``{class_id: {"dice": ..., "hd95_mm": ...}}`` and
    ``engine.state.output["case_index"]`` (the case's position in the validation dataset). Values
    are kept per (case, class), so under DDP the sums are all-reduced and a case that the sampler
    gave to two ranks (padding) still counts once.

    Args:
        key: ``"dice"``, ``"hd95_mm"`` or ``"assd_mm"``.
        class_id: one class; ``None`` averages the per-class means over ``class_ids``.
        class_ids: classes to average (default: every class seen; give them under DDP).
    """

    required_output_keys = ("metrics", "case_index")

    def __init__(
        self,
        key: str = "dice",
        class_id: int | None = None,
        class_ids: Iterable[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.key = key
        self.class_id = None if class_id is None else int(class_id)
        self.class_ids = None if class_ids is None else [int(c) for c in class_ids]
        super().__init__(device=device)

    def reset(self) -> None:
        self._values: dict[tuple[int, int], float] = {}

    def update(self, output: Any) -> None:
        metrics, case_index = output if isinstance(output, (tuple, list)) else (output, len(self._values))
        for c, values in metrics.items():
            v = float(values[self.key])
            if not math.isnan(v):
                self._values[(int(case_index), int(c))] = v

    def compute(self) -> float:
        import ignite.distributed as idist

        ids = [self.class_id] if self.class_id is not None else (self.class_ids or sorted({c for _, c in self._values}))
        col = {c: j for j, c in enumerate(ids)}
        n = max((i for i, _ in self._values), default=-1) + 1
        distributed = idist.get_world_size() > 1
        if distributed:
            n = int(idist.all_reduce(torch.tensor(n), op="MAX"))
        sums = torch.zeros(max(n, 1), len(ids), dtype=torch.float64)
        counts = torch.zeros_like(sums)
        for (i, c), v in self._values.items():
            if c in col:
                sums[i, col[c]] += v
                counts[i, col[c]] += 1
        if distributed:
            sums, counts = idist.all_reduce(sums), idist.all_reduce(counts)
        per_case = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)  # duplicates averaged away
        class_means = torch.nanmean(per_case, dim=0)
        class_means = class_means[~torch.isnan(class_means)]
        return float(class_means.mean()) if class_means.numel() else float("nan")


def volume_metrics(label_map: LabelMap | str, per_class: bool = True, hd95: bool = True) -> dict[str, VolumeMetric]:
    """Additional metrics ``val_dice_<organ>`` (and ``val_mean_hd95_mm``) for a label map."""
    lm = get_label_map(label_map)
    out: dict[str, VolumeMetric] = {}
    if hd95:
        out["val_mean_hd95_mm"] = VolumeMetric("hd95_mm", class_ids=lm.ids)
    if per_class:
        for c in lm.ids:
            out[f"val_dice_{lm.name_of(c).replace(' ', '_')}"] = VolumeMetric("dice", class_id=c)
    return out


class VolumeEvaluator(Evaluator):
    """Evaluator over whole cases: slice-wise prediction, reassembly, per-case metrics.

    Args:
        device: device of the prediction and the metrics.
        val_data_loader: iterable of case dicts (see :class:`VolumeDataset` / :func:`volume_loader`).
        network: the network (DDP wrappers are removed for validation, so ranks may see different
            numbers of cases).
        label_map: the classes to score (a :class:`LabelMap` or its name).
        input_size: network input (H, W); slices are resized to it and back (``None``: native).
        batch_size: slices per forward pass.
        inferer: the volume prediction; default
            :class:`~s2s2_monai.evaluation.inferer.SliceVolumeInferer` ``(input_size, batch_size)``.
        hd95: HD95 definition of :func:`~s2s2_monai.evaluation.metrics.compute_case_metrics`.
        key_val_metric: default ``{"val_mean_dice": VolumeMetric("dice", class_ids=label_map ids)}``.
        kwargs: other :class:`~monai.engines.Evaluator` arguments (``val_handlers``,
            ``additional_metrics``, ``amp``, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        label_map: LabelMap | str,
        input_size: Sequence[int] | None = None,
        batch_size: int = 32,
        hd95: str = "monai",
        key_val_metric: dict | None = None,
        inferer=None,
        **kwargs: Any,
    ) -> None:
        from s2s2_monai.evaluation.inferer import SliceVolumeInferer

        self.label_map = get_label_map(label_map)
        if key_val_metric is None:
            key_val_metric = {"val_mean_dice": VolumeMetric("dice", class_ids=self.label_map.ids)}
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, val_data_loader=val_data_loader, key_val_metric=key_val_metric, **kwargs)
        self.inferer = inferer if inferer is not None else SliceVolumeInferer(input_size, batch_size)
        self.network = network
        self.hd95 = hd95

    def _iteration(self, engine: VolumeEvaluator, case: dict) -> dict:
        from s2s2_monai.evaluation.metrics import compute_case_metrics

        net = unwrap_network(engine.network)
        with engine.mode(net):
            pred = engine.inferer(case["image"], net, device=engine.state.device)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        output = {
            "case_id": case.get("case_id"),
            "case_index": case.get("case_index", engine.state.iteration - 1),
            "pred": pred,
        }
        if "label" in case:
            output["metrics"] = compute_case_metrics(
                pred, case["label"], case["spacing"], self.label_map.ids, hd95=engine.hd95
            )
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output
