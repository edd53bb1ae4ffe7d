"""Surfaces of binary masks and nearest-surface distances: numpy on CPU, torch on a GPU.

Building blocks of :mod:`s2s2_monai.evaluation.metrics`. Each function takes numpy arrays (the CPU
path, which imports no torch) or torch tensors on a device (the GPU path) and returns the same kind:

- :func:`class_boxes`: bounding box of every class of a label volume (one ``scipy.ndimage.find_objects``
  pass per volume on CPU; two ``torch.bincount`` passes over projections on a device), so each class
  is then handled on its own crop.
- :func:`edge_voxels`: mask XOR its erosion by the 6-connected cross, with zeros outside the
  volume (``scipy.ndimage.binary_erosion`` defaults; what medpy and MONAI use).
- :func:`neighbour_codes`: 2x2x2 neighbourhood codes of the DeepMind ``surface-distance``
  package (surface elements between voxels) and :func:`surfel_area_table` (their areas in mm^2,
  in float64, from MONAI's copy of the DeepMind marching-cubes normals, held in
  :mod:`.surfel_normals`).
- :func:`nearest_distances`: exact Euclidean distance (mm) from each point of one set to the
  nearest point of another: a KD-tree on CPU, chunked brute force on a GPU.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from s2s2_monai.arrays import is_torch

if TYPE_CHECKING:
    import torch

__all__ = [
    "class_boxes",
    "crop_padded",
    "edge_voxels",
    "neighbour_codes",
    "surfel_area_table",
    "nearest_distances",
]


def class_boxes(labels: Sequence, num_classes: int) -> dict[int, tuple[slice, slice, slice]]:
    """Bounding box of each class id present in any of ``labels`` (union over the volumes).

    Args:
        labels: integer (X, Y, Z) numpy arrays or torch tensors of one shape, on one device.
        num_classes: ids are in ``[0, num_classes)`` (used on a device only).

    Returns:
        ``{class_id: (slice_x, slice_y, slice_z)}`` for every id > 0 found.

    On CPU one ``scipy.ndimage.find_objects`` pass per volume; elsewhere two ``torch.bincount``
    passes over projections, on the device.
    """
    per_volume = [
        _boxes_torch(lab, num_classes) if is_torch(lab) and lab.device.type != "cpu" else _boxes_cpu(lab)
        for lab in labels
    ]
    boxes: dict[int, tuple[slice, slice, slice]] = {}
    for found in per_volume:
        for c, box in found.items():
            if c in boxes:
                box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(boxes[c], box))
            boxes[c] = box
    return boxes


def _boxes_cpu(lab) -> dict[int, tuple[slice, slice, slice]]:
    from scipy.ndimage import find_objects

    arr = lab.numpy() if is_torch(lab) else np.asarray(lab)
    if arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)
    if arr.flags.f_contiguous and not arr.flags.c_contiguous:  # find_objects walks C order: 3x faster on the .T view
        return {i + 1: box[::-1] for i, box in enumerate(find_objects(arr.T)) if box is not None}
    return {i + 1: box for i, box in enumerate(find_objects(arr)) if box is not None}


def _boxes_torch(lab: torch.Tensor, num_classes: int) -> dict[int, tuple[slice, slice, slice]]:
    import torch

    shape, k, dev = lab.shape, int(num_classes), lab.device
    off_xz = (
        k * (torch.arange(shape[0], device=dev)[:, None] * shape[2] + torch.arange(shape[2], device=dev)[None, :])
    )[:, None, :]
    off_y = (k * torch.arange(shape[1], device=dev))[None, :, None]
    lab = lab.to(torch.int64)
    xz = torch.bincount((lab + off_xz).reshape(-1), minlength=shape[0] * shape[2] * k).view(shape[0], shape[2], k) > 0
    on_y = (torch.bincount((lab + off_y).reshape(-1), minlength=shape[1] * k).view(shape[1], k) > 0).cpu().numpy()
    on_x, on_z = xz.any(1).cpu().numpy(), xz.any(0).cpu().numpy()
    boxes = {}
    for c in range(1, k):
        if on_x[:, c].any():
            box = []
            for on in (on_x[:, c], on_y[:, c], on_z[:, c]):
                idx = np.flatnonzero(on)
                box.append(slice(int(idx[0]), int(idx[-1]) + 1))
            boxes[c] = tuple(box)
    return boxes


def crop_padded(label, box: tuple[slice, slice, slice], class_id: int):
    """``label[box] == class_id`` with one layer of ``False`` around it (outside the volume is background)."""
    shape = tuple(sl.stop - sl.start + 2 for sl in box)
    if not is_torch(label):
        out = np.zeros(shape, dtype=bool)
        np.equal(label[box], class_id, out=out[1:-1, 1:-1, 1:-1])
        return out
    import torch

    out = torch.zeros(shape, dtype=torch.bool, device=label.device)
    out[1:-1, 1:-1, 1:-1] = label[box] == class_id
    return out


def edge_voxels(padded):
    """Voxels of a mask with a 6-neighbour outside it, for a mask padded by :func:`crop_padded`.

    Equals ``m ^ scipy.ndimage.binary_erosion(m)`` (cross structure, border value 0) on the
    unpadded mask; returns the unpadded shape (numpy or torch, as given).
    """
    m = padded
    core = m[1:-1, 1:-1, 1:-1]
    eroded = core & m[:-2, 1:-1, 1:-1]
    for nb in (m[2:, 1:-1, 1:-1], m[1:-1, :-2, 1:-1], m[1:-1, 2:, 1:-1], m[1:-1, 1:-1, :-2], m[1:-1, 1:-1, 2:]):
        eroded &= nb
    eroded ^= core  # core & ~eroded, as eroded is a subset of core
    return eroded


def neighbour_codes(padded):
    """DeepMind 2x2x2 neighbourhood codes (0..255, uint8) on the lattice between voxels.

    For a mask of shape ``n`` padded by :func:`crop_padded` (shape ``n + 2``) the result has
    shape ``n + 1``; entry ``i`` encodes voxels ``i - 1`` and ``i`` along each axis with the
    weights ``[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]``, as
    ``surface_distance.compute_surface_distances`` does on its crop.
    """
    if is_torch(padded):
        import torch

        m = padded.to(torch.uint8)
        codes = torch.zeros([s - 1 for s in m.shape], dtype=torch.uint8, device=m.device)
    else:
        m = padded.view(np.uint8)
        codes = np.zeros([s - 1 for s in m.shape], np.uint8)
    n0, n1, n2 = codes.shape
    for a in range(2):
        for b in range(2):
            for c in range(2):
                codes |= m[a : a + n0, b : b + n1, c : c + n2] << (7 - (4 * a + 2 * b + c))
    return codes


def surfel_area_table(spacing: Sequence[float]) -> np.ndarray:
    """Area in mm^2 of the surface inside each of the 256 neighbourhood codes (float64 (256,)).

    Same formula as ``surface_distance.lookup_tables.create_table_neighbour_code_to_surface_area``;
    the normals are MONAI's copy of the DeepMind table (exact: multiples of 1/8), held in
    :mod:`~s2s2_monai.evaluation.surfel_normals` so that no MONAI import is needed.
    """
    normals = _normals_table()
    s = [float(v) for v in spacing]
    scale = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]], dtype=np.float64)
    return np.linalg.norm(normals * scale, axis=-1).sum(-1)


@functools.cache
def _normals_table() -> np.ndarray:
    """(256, 4, 3) float64 surface normals per neighbourhood code (zero rows pad to 4 triangles)."""
    from s2s2_monai.evaluation.surfel_normals import MAX_NORMALS, NORMALS_X8

    table = np.zeros((len(NORMALS_X8), MAX_NORMALS, 3), dtype=np.float64)
    for code, normals in enumerate(NORMALS_X8):
        if normals:
            table[code, : len(normals)] = np.asarray(normals, dtype=np.float64) / 8.0
    table.flags.writeable = False  # cached: shared by every caller
    return table


def nearest_distances(src, dst, spacing: Sequence[float], chunk_bytes: int = 1 << 28, backend: str | None = None):
    """Euclidean distance (mm, float64) from each voxel index in ``src`` to the nearest one in ``dst``.

    Args:
        src / dst: integer (N, 3) / (M, 3) voxel indices, numpy arrays or torch tensors on one
            device; ``dst`` non-empty. The result is of the same kind (and device).
        spacing: voxel size in mm per axis.
        chunk_bytes: memory of one distance block on a GPU.
        backend: ``"kdtree"`` or ``"torch"``; default the KD-tree for numpy and CPU tensors, torch
            for tensors on another device.

    The KD-tree (``scipy.spatial.cKDTree``, all cores) is exact, as is the torch backend (blocks
    of pairwise distances computed from differences, without the matrix-product shortcut).
    Values agree with ``scipy.ndimage.distance_transform_edt(sampling=spacing)`` to ~1e-15.
    """
    tensors = is_torch(src)
    backend = backend or ("torch" if tensors and src.device.type != "cpu" else "kdtree")
    if backend == "kdtree":
        from scipy.spatial import cKDTree

        scale = np.asarray([float(v) for v in spacing], dtype=np.float64)
        a = (src.cpu().numpy() if tensors else np.asarray(src)) * scale
        b = (dst.cpu().numpy() if tensors else np.asarray(dst)) * scale
        if len(a) == 0:
            dist = np.zeros(0, dtype=np.float64)
        else:
            tree = cKDTree(b, leafsize=32, balanced_tree=False, compact_nodes=False)
            dist, _ = tree.query(a, k=1, workers=-1 if len(a) > 20000 else 1)
        dist = np.asarray(dist, dtype=np.float64)
        return sys.modules["torch"].from_numpy(dist).to(src.device) if tensors else dist
    import torch

    src, dst = torch.as_tensor(src), torch.as_tensor(dst)
    if src.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=src.device)
    scale = torch.as_tensor([float(v) for v in spacing], dtype=torch.float64, device=src.device)
    a = src.to(torch.float64) * scale
    b = dst.to(torch.float64) * scale
    rows = max(1, chunk_bytes // (8 * max(1, b.shape[0])))
    return torch.cat(
        [
            torch.cdist(a[i : i + rows], b, compute_mode="donot_use_mm_for_euclid_dist").amin(dim=1)
            for i in range(0, a.shape[0], rows)
        ]
    )
