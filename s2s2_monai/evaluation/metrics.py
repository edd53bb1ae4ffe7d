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

Prediction and ground truth on the CPU (numpy arrays or CPU tensors) are scored in numpy and scipy
(a KD-tree for the nearest-surface search, :func:`~s2s2_monai.evaluation.surface.nearest_distances`),
without importing torch; tensors on a GPU are scored in torch on that device. Both paths give the
same numbers (the ``"monai"`` HD95 on CPU reproduces ``torch.quantile``'s float32 arithmetic,
including its fused multiply-add in ``lerp``: :func:`quantile_float32`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from s2s2_monai.arrays import is_torch, to_numpy
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
    "as_label_array",
    "check_hd95",
    "compute_case_metrics",
    "dice_per_class",
    "quantile_float32",
]

METRIC_KEYS: tuple[str, ...] = ("dice", "hd95_mm", "assd_mm")
EMPTY_POLICY = {
    "both_empty": "dice, hd95_mm and assd_mm are NaN (class absent; left out of means)",
    "one_empty": "dice = 0; hd95_mm = assd_mm = diagonal of the volume in mm (largest distance on the grid)",
}


def as_label_array(x, like=None):
    """An integer (X, Y, Z) label volume from an (X, Y, Z) or (1, X, Y, Z) ndarray / tensor / MetaTensor.

    Numpy arrays and CPU tensors give a numpy array (no copy when possible); a tensor on another
    device stays a tensor there. ``like``: a volume already converted; the result goes where it is.
    Float volumes are rounded; ids that fit a byte become uint8 (8x less memory traffic).
    """
    if hasattr(x, "as_tensor"):  # MetaTensor
        x = x.as_tensor()
    on_device = is_torch(like) if like is not None else is_torch(x) and x.device.type != "cpu"
    if on_device:
        torch = _torch()
        t = (x.detach() if is_torch(x) else torch.as_tensor(np.asarray(x))).to(
            like.device if like is not None else x.device
        )
    else:
        t = to_numpy(x)
    t = t[0] if t.ndim == 4 and t.shape[0] == 1 else t
    if t.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) or (1, X, Y, Z) label volume, got shape {tuple(t.shape)}")
    if on_device:
        if t.is_floating_point():
            t = t.round().long()
        if t.dtype != torch.uint8 and (t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < 256)):
            t = t.to(torch.uint8)
        return t
    if t.dtype.kind == "f":
        t = np.round(t).astype(np.int64)
    elif t.dtype.kind == "b":
        t = t.view(np.uint8)
    if t.dtype != np.uint8 and (t.size == 0 or (int(t.min()) >= 0 and int(t.max()) < 256)):
        t = t.astype(np.uint8)
    return t


def _torch():
    """The torch module, imported on first use (the CPU path never needs it)."""
    import torch

    return torch


def dice_per_class(pred, gt, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts of every class: (intersection, pred count, gt count), int64 numpy (K,).

    One ``bincount`` of ``gt * K + pred`` (uint8 codes when ``K * K <= 256``: no 8-byte copy of the
    volume on a GPU; on CPU numpy counts chunks of the codes).
    """
    k = int(num_classes)
    if is_torch(pred):
        torch = _torch()
        dtype = torch.uint8 if k * k <= 256 else torch.int64
        code = gt.to(dtype) * k + pred.to(dtype)
        conf = torch.bincount(code.reshape(-1), minlength=k * k).view(k, k).cpu().numpy()
    else:
        dtype = np.uint8 if k * k <= 256 else np.int64
        code = (gt.astype(dtype, copy=False) * dtype(k) + pred.astype(dtype, copy=False)).ravel(order="K")
        conf = np.zeros(k * k, dtype=np.int64)
        step = 1 << 22  # bincount widens to int64: chunks keep that copy small and in cache
        for i in range(0, code.size, step):
            conf += np.bincount(code[i : i + step], minlength=k * k)
        conf = conf.reshape(k, k)
    return conf.diagonal().copy(), conf.sum(0), conf.sum(1)


def _quantile(x: np.ndarray, q: float) -> float:
    """Linear-interpolation quantile (``numpy.percentile`` default) in float64."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    pos = q * (x.size - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, x.size - 1)
    t = pos - lo
    a, b = float(x[lo]), float(x[hi])
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def quantile_float32(x: np.ndarray, q: float) -> float:
    """``torch.quantile(x.float(), q)`` (linear) in numpy, bit for bit on CPU.

    torch computes the rank ``q * (n - 1)`` in float32 and interpolates with ``lerp``, whose CPU
    kernel uses a fused multiply-add: ``a + w * (b - a)`` (``w < 0.5``) or ``b - (b - a) * (1 - w)``
    with one rounding. A float32 product is exact in float64, so the float64 sum rounded to float32
    is that fused result.
    """
    x = np.sort(np.asarray(x, dtype=np.float32))
    rank = np.float32(q) * np.float32(x.size - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    w = np.float32(rank - np.float32(lo))
    a, b = x[lo], x[hi]
    d = np.float64(np.float32(b - a))
    if abs(w) < 0.5:
        return float(np.float32(np.float64(a) + np.float64(w) * d))
    return float(np.float32(np.float64(b) - d * np.float64(np.float32(np.float32(1) - w))))


def _fortran(a: np.ndarray) -> bool:
    return a.flags.f_contiguous and not a.flags.c_contiguous


def _count(mask) -> int:
    """Set voxels of a boolean volume."""
    return int(mask.sum()) if is_torch(mask) else int(np.count_nonzero(mask))


def _flat_points(mask) -> np.ndarray:
    """Flat indices of the set voxels of a boolean volume."""
    if is_torch(mask):
        return _torch().nonzero(mask.reshape(-1)).reshape(-1)
    return np.flatnonzero(mask)


def _unravel(flat, shape: Sequence[int]):
    """(N, 3) voxel indices of flat indices."""
    if is_torch(flat):
        torch = _torch()
        return torch.stack(torch.unravel_index(flat, tuple(shape)), dim=1)
    return np.stack(np.unravel_index(flat, tuple(shape)), axis=1)


def _directed_distances(src_flat, dst, dst_flat, spacing: Sequence[float]) -> np.ndarray:
    """Distance (mm, float64 numpy) of every ``src`` surface point, in ``src_flat`` order, to the ``dst``
    surface: 0 where the point is on both surfaces, else a nearest-neighbour search."""
    far = ~dst.reshape(-1)[src_flat]
    if is_torch(src_flat):
        d = _torch().zeros(src_flat.numel(), dtype=_torch().float64, device=src_flat.device)
        if bool(far.any()):
            d[far] = nearest_distances(_unravel(src_flat[far], dst.shape), _unravel(dst_flat, dst.shape), spacing)
        return d.cpu().numpy()
    d = np.zeros(src_flat.size, dtype=np.float64)
    if far.any():
        d[far] = nearest_distances(_unravel(src_flat[far], dst.shape), _unravel(dst_flat, dst.shape), spacing)
    return d


def _voxel_edges_metrics(p, g, spacing: Sequence[float], hd95: str) -> tuple[float, float]:
    ep, eg = edge_voxels(p), edge_voxels(g)
    fp, fg = _flat_points(ep), _flat_points(eg)
    d_pg = _directed_distances(fp, eg, fg, spacing)
    d_gp = _directed_distances(fg, ep, fp, spacing)
    both = np.concatenate([d_pg, d_gp])
    if hd95 == "medpy":
        return _quantile(both, 0.95), float(both.mean())
    # monai: float32 distances and torch.quantile's float32 arithmetic, as MONAI computes them
    if max(d_pg.size, d_gp.size) < (1 << 24):  # torch.quantile's input limit
        hd = max(quantile_float32(d, 0.95) for d in (d_pg, d_gp))
    else:
        hd = max(_quantile(d_pg, 0.95), _quantile(d_gp, 0.95))
    return hd, float(both.mean())  # float64: MONAI's float32 sum differs by ~1e-7


def _surfel_metrics(p, g, spacing: Sequence[float], table: np.ndarray) -> tuple[float, float]:
    cp, cg = neighbour_codes(p), neighbour_codes(g)
    bp, bg = (cp != 0) & (cp != 255), (cg != 0) & (cg != 255)
    fp, fg = _flat_points(bp), _flat_points(bg)
    hd, assd = [], []
    for src_flat, dst, dst_flat, codes in ((fg, bp, fp, cg), (fp, bg, fg, cp)):
        d_np = _directed_distances(src_flat, dst, dst_flat, spacing)
        c = codes.reshape(-1)[src_flat]
        a_np = table[c.cpu().numpy() if is_torch(c) else c]
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
            and grid; a tensor on a GPU is scored there in torch (``gt`` is moved to it), anything
            on the CPU in numpy.
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
    pred_t = as_label_array(pred)
    gt_t = as_label_array(gt, like=pred_t)
    if pred_t.shape != gt_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} differs from ground truth shape {tuple(gt_t.shape)}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != 3:
        raise ValueError(f"spacing needs 3 values, got {spacing}")
    class_ids = [int(c) for c in class_ids]
    if not is_torch(pred_t) and _fortran(pred_t) and _fortran(gt_t):
        # nibabel's Fortran order: work on the C-ordered transposed views (axes and spacing reversed; the
        # distances are the same, the crops contiguous, ~3x faster box search and cropping)
        pred_t, gt_t, spacing = pred_t.T, gt_t.T, spacing[::-1]
        boxes = None if boxes is None else {c: box[::-1] for c, box in boxes.items()}
    if boxes is None:  # on a device, the box pass needs the number of ids
        k = max([*class_ids, int(pred_t.max()), int(gt_t.max())]) + 1 if is_torch(pred_t) else 0
        boxes = class_boxes([pred_t, gt_t], k)
    diagonal = float(np.sqrt(np.sum((np.asarray(pred_t.shape) * np.asarray(spacing)) ** 2)))
    table = surfel_area_table(spacing) if hd95 == "surface-distance" else None
    nan = float("nan")
    out: dict[int, dict[str, float]] = {}
    for c in class_ids:
        if c not in boxes:  # in neither volume
            out[c] = {"dice": nan, "hd95_mm": nan, "assd_mm": nan}
            continue
        pm, gm = crop_padded(pred_t, boxes[c], c), crop_padded(gt_t, boxes[c], c)  # the class lies inside its box
        p, g, inter = _count(pm), _count(gm), _count(pm & gm)
        if p == 0 or g == 0:
            out[c] = {"dice": 0.0, "hd95_mm": diagonal, "assd_mm": diagonal}
            continue
        if hd95 == "surface-distance":
            hd, assd = _surfel_metrics(pm, gm, spacing, table)
        else:
            hd, assd = _voxel_edges_metrics(pm, gm, spacing, hd95)
        out[c] = {"dice": 2.0 * inter / (p + g), "hd95_mm": hd, "assd_mm": assd}
    return out
