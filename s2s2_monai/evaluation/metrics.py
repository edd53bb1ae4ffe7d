"""Dice, HD95 and average surface distance (mm) per class of one case, all classes in one pass.

Three HD95 definitions are in use and they disagree by a factor of two on real organs
(see DESIGN.md section 3); each is offered by name and matches its reference library:

``"medpy"`` (``medpy.metric.binary.hd95`` / ``assd``)
    Surface = mask XOR its 6-connected erosion. HD95 = 95th percentile (linear) of the *pooled*
    pred->gt and gt->pred surface-voxel distances. ASSD = mean of the pooled distances.
``"surface-distance"`` (DeepMind ``compute_robust_hausdorff`` / ``compute_average_surface_distance``)
    Surface elements on the lattice between voxels (2x2x2 neighbourhood codes) weighted by their
    area. HD95 = max of the two directed area-weighted 95th percentiles. ASSD = mean of the two
    area-weighted directed averages.
``"monai"`` (``monai.metrics.compute_hausdorff_distance(percentile=95)`` /
``compute_average_surface_distance(symmetric=True)``)
    Same surfaces as medpy. HD95 = max of the two directed 95th percentiles (linear). ASSD = mean
    of the pooled distances. HD95 is computed like MONAI, in float32 (its quantile position is
    rounded to float32, which moves HD95 by up to ~1e-5 relative against float64); ASSD in float64.

Empty masks (:data:`EMPTY_POLICY`): a class absent from both prediction and ground truth gets
NaN for all three numbers (it is left out of means). A class present in only one of them gets
Dice 0 and, for HD95 and ASSD, the diagonal of the volume in mm (the largest distance the grid
can hold), so that missing an organ is never better than finding it badly.

Everything runs in torch on the prediction's device; on CPU the nearest-surface search uses a
KD-tree (:func:`~s2s2_monai.evaluation.surface.nearest_distances`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from s2s2_monai.evaluation.names import DEFAULT_HD95, HD95_DEFINITIONS, check_hd95
from s2s2_monai.evaluation.surface import (
    class_boxes,
    crop_padded,
    edge_voxels,
    nearest_distances,
    neighbour_codes,
    surfel_area_table,
)

__all__ = [
    "HD95_DEFINITIONS",
    "DEFAULT_HD95",
    "METRIC_KEYS",
    "EMPTY_POLICY",
    "as_label_tensor",
    "check_hd95",
    "compute_case_metrics",
    "dice_per_class",
]

METRIC_KEYS: tuple[str, ...] = ("dice", "hd95_mm", "assd_mm")
EMPTY_POLICY = {
    "both_empty": "dice, hd95_mm and assd_mm are NaN (class absent; left out of means)",
    "one_empty": "dice = 0; hd95_mm = assd_mm = diagonal of the volume in mm (largest distance on the grid)",
}


def as_volume_tensor(x, what: str = "volume") -> torch.Tensor:
    """(X, Y, Z) or (1, X, Y, Z) ndarray/tensor/MetaTensor -> plain (X, Y, Z) tensor (no copy when possible)."""
    t = (
        x.as_tensor()
        if hasattr(x, "as_tensor")
        else torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    )
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) or (1, X, Y, Z) {what}, got shape {tuple(t.shape)}")
    return t


def as_label_tensor(x, device: torch.device | str | None = None) -> torch.Tensor:
    """(X, Y, Z) or (1, X, Y, Z) ndarray/tensor/MetaTensor -> plain integer (X, Y, Z) tensor."""
    t = as_volume_tensor(x, "label volume")
    if t.is_floating_point():
        t = t.round().to(torch.int64)
    if t.dtype != torch.uint8 and (t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < 256)):
        t = t.to(torch.uint8)  # label ids fit a byte: 8x less memory traffic
    return t if device is None else t.to(device)


def dice_per_class(
    pred: torch.Tensor, gt: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Voxel counts of every class from one ``bincount``: (intersection, pred count, gt count), int64 (K,)."""
    k = int(num_classes)
    dtype = torch.uint8 if k * k <= 256 else torch.int64  # small codes: no 8-byte copy of the volume
    code = gt.to(dtype) * k + pred.to(dtype)
    conf = torch.bincount(code.reshape(-1), minlength=k * k).view(k, k)
    return conf.diagonal(), conf.sum(0), conf.sum(1)


def _quantile(x: torch.Tensor, q: float) -> float:
    """Linear-interpolation quantile (``numpy.percentile`` default) in float64."""
    x = torch.sort(x.to(torch.float64)).values
    pos = q * (x.numel() - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, x.numel() - 1)
    t = pos - lo
    a, b = float(x[lo]), float(x[hi])
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def _flat_points(mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the set voxels of a boolean volume (numpy's kernel on CPU: much faster)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask.reshape(-1)).reshape(-1)


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(N, 3) voxel indices of flat indices."""
    if flat.device.type == "cpu":
        return torch.from_numpy(np.stack(np.unravel_index(flat.numpy(), tuple(shape)), axis=1))
    return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=1)


def _directed_distances(
    src_flat: torch.Tensor, dst: torch.Tensor, dst_flat: torch.Tensor, spacing: Sequence[float]
) -> torch.Tensor:
    """Distance (mm, float64) of every ``src`` surface point, in ``src_flat`` order, to the ``dst`` surface:
    0 where the point is on both surfaces, else a nearest-neighbour search."""
    if src_flat.device.type == "cpu":  # numpy's boolean indexing is several times faster than torch's on CPU
        sf = src_flat.numpy()
        rest_np = ~dst.numpy().reshape(-1)[sf]
        d_np = np.zeros(sf.size, dtype=np.float64)
        if rest_np.any():
            far = torch.from_numpy(sf[rest_np])
            d_np[rest_np] = nearest_distances(_unravel(far, dst.shape), _unravel(dst_flat, dst.shape), spacing).numpy()
        return torch.from_numpy(d_np)
    on_dst = dst.reshape(-1)[src_flat]
    d = torch.zeros(src_flat.numel(), dtype=torch.float64, device=src_flat.device)
    rest = ~on_dst
    if bool(rest.any()):
        d[rest] = nearest_distances(_unravel(src_flat[rest], dst.shape), _unravel(dst_flat, dst.shape), spacing).to(
            d.device
        )
    return d


def _voxel_edges_metrics(p: torch.Tensor, g: torch.Tensor, spacing: Sequence[float], hd95: str) -> tuple[float, float]:
    ep, eg = edge_voxels(p), edge_voxels(g)
    fp, fg = _flat_points(ep), _flat_points(eg)
    d_pg = _directed_distances(fp, eg, fg, spacing)
    d_gp = _directed_distances(fg, ep, fp, spacing)
    if hd95 == "medpy":
        hd = _quantile(torch.cat([d_pg, d_gp]), 0.95)
        return hd, float(torch.cat([d_pg, d_gp]).mean())
    # monai: float32 distances and torch.quantile in float32, as MONAI computes them
    d32 = [d.to(torch.float32) for d in (d_pg, d_gp)]
    if max(d.numel() for d in d32) < (1 << 24):  # torch.quantile's input limit
        hd = max(float(torch.quantile(d, 0.95)) for d in d32)
    else:
        hd = max(_quantile(d_pg, 0.95), _quantile(d_gp, 0.95))
    return hd, float(torch.cat([d_pg, d_gp]).mean())  # float64: MONAI's float32 sum differs by ~1e-7


def _surfel_metrics(
    p: torch.Tensor, g: torch.Tensor, spacing: Sequence[float], table: torch.Tensor
) -> tuple[float, float]:
    cp, cg = neighbour_codes(p), neighbour_codes(g)
    if p.device.type == "cpu":
        bp, bg = (torch.from_numpy((c.numpy() != 0) & (c.numpy() != 255)) for c in (cp, cg))
    else:
        bp, bg = (cp != 0) & (cp != 255), (cg != 0) & (cg != 255)
    fp, fg = _flat_points(bp), _flat_points(bg)
    hd, assd = [], []
    for src_flat, dst, dst_flat, codes in ((fg, bp, fp, cg), (fp, bg, fg, cp)):
        d_np = _directed_distances(src_flat, dst, dst_flat, spacing).cpu().numpy()
        a_np = table.to(codes.device)[codes.reshape(-1)[src_flat].to(torch.int64)].cpu().numpy()
        order = np.lexsort((a_np, d_np))  # as sorted(zip(distances, areas)) in surface_distance
        d_np, a_np = d_np[order], a_np[order]
        cum = np.cumsum(a_np) / np.sum(a_np)
        idx = int(np.searchsorted(cum, 0.95))
        hd.append(float(d_np[min(idx, len(d_np) - 1)]))
        assd.append(float(np.sum(d_np * a_np) / np.sum(a_np)))
    return max(hd), 0.5 * (assd[0] + assd[1])


def compute_case_metrics(
    pred,
    gt,
    spacing: Sequence[float],
    class_ids: Iterable[int],
    hd95: str = DEFAULT_HD95,
    boxes: dict[int, tuple[slice, slice, slice]] | None = None,
) -> dict[int, dict[str, float]]:
    """Dice, HD95 (mm) and ASSD (mm) of each class of one case.

    Args:
        pred / gt: integer label volumes (X, Y, Z) or (1, X, Y, Z), numpy or torch, same shape
            and grid; the work runs on ``pred``'s device (``gt`` is moved there).
        spacing: voxel size in mm along X, Y, Z (use ``(1, 1, 1)`` for voxel units).
        class_ids: foreground ids to report.
        hd95: ``"medpy"``, ``"surface-distance"`` or ``"monai"`` (see the module docstring);
            the ASSD follows the same library.
        boxes: the classes' bounding boxes (:func:`~s2s2_monai.evaluation.surface.class_boxes` of
            ``[pred, gt]``) when the caller has them already; found here otherwise.

    Returns:
        ``{class_id: {"dice": ..., "hd95_mm": ..., "assd_mm": ...}}`` as Python floats, with the
        empty-mask policy :data:`EMPTY_POLICY`.
    """
    check_hd95(hd95)
    pred_t = as_label_tensor(pred)
    gt_t = as_label_tensor(gt, device=pred_t.device)
    if pred_t.shape != gt_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} differs from ground truth shape {tuple(gt_t.shape)}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3:
        raise ValueError(f"spacing needs 3 values, got {spacing}")
    class_ids = [int(c) for c in class_ids]
    k = max([*class_ids, int(pred_t.max()), int(gt_t.max())]) + 1
    inter, n_pred, n_gt = (v.cpu() for v in dice_per_class(pred_t, gt_t, k))
    wanted = [c for c in class_ids if n_pred[c] > 0 and n_gt[c] > 0]
    if boxes is None:
        boxes = class_boxes([pred_t, gt_t], k) if wanted else {}
    diagonal = float(np.sqrt(np.sum((np.asarray(pred_t.shape) * np.asarray(spacing)) ** 2)))
    table = surfel_area_table(spacing) if hd95 == "surface-distance" else None
    nan = float("nan")
    out: dict[int, dict[str, float]] = {}
    for c in class_ids:
        p, g = int(n_pred[c]), int(n_gt[c])
        if p == 0 and g == 0:
            out[c] = {"dice": nan, "hd95_mm": nan, "assd_mm": nan}
            continue
        if p == 0 or g == 0:
            out[c] = {"dice": 0.0, "hd95_mm": diagonal, "assd_mm": diagonal}
            continue
        pm, gm = crop_padded(pred_t, boxes[c], c), crop_padded(gt_t, boxes[c], c)
        if hd95 == "surface-distance":
            hd, assd = _surfel_metrics(pm, gm, spacing, table)
        else:
            hd, assd = _voxel_edges_metrics(pm, gm, spacing, hd95)
        out[c] = {"dice": 2.0 * int(inter[c]) / (p + g), "hd95_mm": hd, "assd_mm": assd}
    return out
