"""Surfaces of binary masks and nearest-surface distances, in torch on the masks' device.

Building blocks of :mod:`s2s2_monai.evaluation.metrics`:

- :func:`class_boxes`: bounding box of every class of a label volume in two passes
  (``torch.bincount`` over projections), so each class is then handled on its own crop.
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
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "class_boxes",
    "crop_padded",
    "edge_voxels",
    "neighbour_codes",
    "surfel_area_table",
    "nearest_distances",
]


def class_boxes(labels: Sequence[torch.Tensor], num_classes: int) -> dict[int, tuple[slice, slice, slice]]:
    """Bounding box of each class id present in any of ``labels`` (union over the volumes).

    Args:
        labels: integer (X, Y, Z) tensors of one shape, on one device.
        num_classes: ids are in ``[0, num_classes)``.

    Returns:
        ``{class_id: (slice_x, slice_y, slice_z)}`` for every id > 0 found.

    On CPU one ``scipy.ndimage.find_objects`` pass per volume; elsewhere two ``torch.bincount``
    passes over projections, on the device.
    """
    per_volume = [_boxes_cpu(lab) if lab.device.type == "cpu" else _boxes_torch(lab, num_classes) for lab in labels]
    boxes: dict[int, tuple[slice, slice, slice]] = {}
    for found in per_volume:
        for c, box in found.items():
            if c in boxes:
                box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(boxes[c], box))
            boxes[c] = box
    return boxes


def _boxes_cpu(lab: torch.Tensor) -> dict[int, tuple[slice, slice, slice]]:
    from scipy.ndimage import find_objects

    arr = lab.numpy()
    if arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)
    return {i + 1: box for i, box in enumerate(find_objects(arr)) if box is not None}


def _boxes_torch(lab: torch.Tensor, num_classes: int) -> dict[int, tuple[slice, slice, slice]]:
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


def crop_padded(label: torch.Tensor, box: tuple[slice, slice, slice], class_id: int) -> torch.Tensor:
    """``label[box] == class_id`` with one layer of ``False`` around it (outside the volume is background)."""
    shape = tuple(sl.stop - sl.start + 2 for sl in box)
    if label.device.type == "cpu":  # numpy's boolean kernels are ~10x faster than torch's on CPU
        out = np.zeros(shape, dtype=bool)
        np.equal(label.numpy()[box], class_id, out=out[1:-1, 1:-1, 1:-1])
        return torch.from_numpy(out)
    out = torch.zeros(shape, dtype=torch.bool, device=label.device)
    out[1:-1, 1:-1, 1:-1] = label[box] == class_id
    return out


def edge_voxels(padded: torch.Tensor) -> torch.Tensor:
    """Voxels of a mask with a 6-neighbour outside it, for a mask padded by :func:`crop_padded`.

    Equals ``m ^ scipy.ndimage.binary_erosion(m)`` (cross structure, border value 0) on the
    unpadded mask; returns the unpadded shape.
    """
    cpu = padded.device.type == "cpu"
    m = padded.numpy() if cpu else padded
    core = m[1:-1, 1:-1, 1:-1]
    eroded = core & m[:-2, 1:-1, 1:-1]
    for nb in (m[2:, 1:-1, 1:-1], m[1:-1, :-2, 1:-1], m[1:-1, 2:, 1:-1], m[1:-1, 1:-1, :-2], m[1:-1, 1:-1, 2:]):
        eroded &= nb
    eroded ^= core  # core & ~eroded, as eroded is a subset of core
    return torch.from_numpy(eroded) if cpu else eroded


def neighbour_codes(padded: torch.Tensor) -> torch.Tensor:
    """DeepMind 2x2x2 neighbourhood codes (0..255, uint8) on the lattice between voxels.

    For a mask of shape ``n`` padded by :func:`crop_padded` (shape ``n + 2``) the result has
    shape ``n + 1``; entry ``i`` encodes voxels ``i - 1`` and ``i`` along each axis with the
    weights ``[[[128, 64], [32, 16]], [[8, 4], [2, 1]]]``, as
    ``surface_distance.compute_surface_distances`` does on its crop.
    """
    cpu = padded.device.type == "cpu"
    m = padded.numpy().view(np.uint8) if cpu else padded.to(torch.uint8)
    n0, n1, n2 = (s - 1 for s in m.shape)
    codes = np.zeros((n0, n1, n2), np.uint8) if cpu else torch.zeros((n0, n1, n2), dtype=torch.uint8, device=m.device)
    for a in range(2):
        for b in range(2):
            for c in range(2):
                codes |= m[a : a + n0, b : b + n1, c : c + n2] << (7 - (4 * a + 2 * b + c))
    return torch.from_numpy(codes) if cpu else codes


def surfel_area_table(spacing: Sequence[float], device: torch.device | str | None = None) -> torch.Tensor:
    """Area in mm^2 of the surface inside each of the 256 neighbourhood codes (float64).

    Same formula as ``surface_distance.lookup_tables.create_table_neighbour_code_to_surface_area``;
    the normals are MONAI's copy of the DeepMind table (exact: multiples of 1/8), held in
    :mod:`~s2s2_monai.evaluation.surfel_normals` so that no MONAI import is needed.
    """
    normals = _normals_table()
    s = [float(v) for v in spacing]
    scale = torch.tensor([s[1] * s[2], s[0] * s[2], s[0] * s[1]], dtype=torch.float64)
    return torch.linalg.norm(normals * scale, dim=-1).sum(-1).to(device)


@functools.cache
def _normals_table() -> torch.Tensor:
    """(256, 4, 3) float64 surface normals per neighbourhood code (zero rows pad to 4 triangles)."""
    from s2s2_monai.evaluation.surfel_normals import MAX_NORMALS, NORMALS_X8

    table = np.zeros((len(NORMALS_X8), MAX_NORMALS, 3), dtype=np.float64)
    for code, normals in enumerate(NORMALS_X8):
        if normals:
            table[code, : len(normals)] = np.asarray(normals, dtype=np.float64) / 8.0
    return torch.from_numpy(table)


def nearest_distances(
    src: torch.Tensor,
    dst: torch.Tensor,
    spacing: Sequence[float],
    chunk_bytes: int = 1 << 28,
    backend: str | None = None,
) -> torch.Tensor:
    """Euclidean distance (mm, float64) from each voxel index in ``src`` to the nearest one in ``dst``.

    Args:
        src / dst: integer (N, 3) / (M, 3) voxel indices on one device; ``dst`` non-empty.
        spacing: voxel size in mm per axis.
        chunk_bytes: memory of one distance block on a GPU.
        backend: ``"kdtree"`` or ``"torch"``; default KD-tree on CPU, torch elsewhere.

    The KD-tree (``scipy.spatial.cKDTree``, all cores) is exact, as is the torch backend (blocks
    of pairwise distances computed from differences, without the matrix-product shortcut).
    Values agree with ``scipy.ndimage.distance_transform_edt(sampling=spacing)`` to ~1e-15.
    """
    backend = backend or ("kdtree" if src.device.type == "cpu" else "torch")
    if src.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float64, device=src.device)
    if backend == "kdtree":
        from scipy.spatial import cKDTree

        scale = np.asarray([float(v) for v in spacing], dtype=np.float64)
        a = src.cpu().numpy() * scale
        b = dst.cpu().numpy() * scale
        tree = cKDTree(b, leafsize=32, balanced_tree=False, compact_nodes=False)
        dist, _ = tree.query(a, k=1, workers=-1 if len(a) > 20000 else 1)
        return torch.from_numpy(np.asarray(dist, dtype=np.float64)).to(src.device)
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
