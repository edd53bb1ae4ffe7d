"""Dice / HD95 / ASSD against medpy, DeepMind surface-distance and MONAI, hand-computed cases, empty masks."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from s2s2_monai.evaluation.metrics import DEFAULT_HD95, HD95_DEFINITIONS, compute_case_metrics
from s2s2_monai.evaluation.surface import class_boxes, crop_padded, edge_voxels, nearest_distances, neighbour_codes

SPACINGS = [(3.0, 3.0, 3.0), (0.8, 1.3, 3.0)]


@pytest.fixture(scope="module")
def real_pair(shared_data):
    """Real TotalSegmentator CT labels remapped to Synapse, and a perturbed copy (dilated, eroded, shifted, blobs)."""
    import nibabel as nib

    from s2s2_monai.label_maps import get_label_remap

    seg = np.asarray(nib.load(shared_data / "ct" / "totalseg_example_ct_sm_seg.nii.gz").dataobj)
    lut = np.zeros(256, np.uint8)
    for src, dst in get_label_remap("totalseg_to_synapse").mapping.items():
        lut[src] = dst
    gt = lut[seg]
    pred = gt.copy()
    for c in range(1, 9):
        m = gt == c
        op = c % 3
        m2 = (
            ndimage.binary_dilation(m)
            if op == 0
            else ndimage.binary_erosion(m)
            if op == 1
            else np.roll(m, 2, axis=c % 3)
        )
        pred[(pred == c) & ~m2] = 0
        pred[m2] = c
    rng = np.random.default_rng(0)
    for _ in range(6):  # false-positive blobs far from the organs
        c = int(rng.integers(1, 9))
        x, y, z = (int(v) for v in rng.integers(3, np.array(gt.shape) - 3))
        pred[x - 2 : x + 2, y - 2 : y + 2, z - 1 : z + 1] = c
    return pred, gt


def _reference(name, p, g, spacing):
    if name == "medpy":
        from medpy.metric import binary

        return binary.hd95(p, g, voxelspacing=spacing), binary.assd(p, g, voxelspacing=spacing)
    if name == "surface-distance":
        import surface_distance as sd

        s = sd.compute_surface_distances(g, p, spacing)
        a = sd.compute_average_surface_distance(s)
        return sd.compute_robust_hausdorff(s, 95), 0.5 * (a[0] + a[1])
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    t = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = compute_hausdorff_distance(t(p), t(g), include_background=True, percentile=95, spacing=list(spacing))
        asd = compute_average_surface_distance(
            t(p), t(g), include_background=True, symmetric=True, spacing=list(spacing)
        )
    return float(hd), float(asd)


@pytest.mark.parametrize("name", HD95_DEFINITIONS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_matches_reference_libraries_on_real_labels(real_pair, name, spacing):
    pred, gt = real_pair
    ours = compute_case_metrics(torch.from_numpy(pred), gt, spacing, range(1, 9), hd95=name)
    assert set(ours) == set(range(1, 9))
    for c in range(1, 9):
        p, g = pred == c, gt == c
        ref_hd, ref_assd = _reference(name, p, g, spacing)
        assert ours[c]["hd95_mm"] == pytest.approx(ref_hd, rel=1e-9), (name, c)
        # MONAI sums its ASSD in float32; ours is float64
        assert ours[c]["assd_mm"] == pytest.approx(ref_assd, rel=1e-6 if name == "monai" else 1e-9), (name, c)
        assert ours[c]["dice"] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()), rel=1e-12)


def test_definitions_disagree_on_real_labels(real_pair):
    """The three definitions are different numbers on the same masks (why the name is in every output)."""
    pred, gt = real_pair
    res = {n: compute_case_metrics(pred, gt, (0.8, 1.3, 3.0), range(1, 9), hd95=n) for n in HD95_DEFINITIONS}
    diffs = [abs(res["medpy"][c]["hd95_mm"] - res["monai"][c]["hd95_mm"]) for c in range(1, 9)]
    assert max(diffs) > 1.0
    assert any(abs(res["surface-distance"][c]["hd95_mm"] - res["monai"][c]["hd95_mm"]) > 0.1 for c in range(1, 9))


def _cubes():
    gt = np.zeros((32, 12, 10), np.uint8)
    gt[2:6, 2:6, 2:4] = 1  # 4x4x2 block: every voxel is a surface voxel (32)
    pred = gt.copy()
    pred[25, 2:6, 6] = 1  # 4 stray voxels, nearest gt voxel at offset (20, 0, 3)
    far = np.zeros_like(gt)
    far[10:14, 2:6, 2:4] = 1  # the block moved 8 voxels along x
    return gt, pred, far


def test_hand_computed_cubes_anisotropic():
    gt, pred, far = _cubes()
    spacing = (0.5, 1.0, 2.5)
    d = math.sqrt((20 * 0.5) ** 2 + (3 * 2.5) ** 2)  # 12.5 mm
    assert d == 12.5
    monai = compute_case_metrics(pred, gt, spacing, [1], hd95="monai")[1]
    medpy = compute_case_metrics(pred, gt, spacing, [1], hd95="medpy")[1]
    # pred->gt: 32 zeros + 4 x 12.5; gt->pred: 32 zeros
    assert monai["dice"] == pytest.approx(64 / 68)
    assert monai["hd95_mm"] == pytest.approx(12.5)  # directed 95th percentile of 36 values, index 33.25
    assert medpy["hd95_mm"] == pytest.approx(0.65 * 12.5)  # pooled 68 values, index 63.65 -> 0 + 0.65 * 12.5
    assert monai["assd_mm"] == pytest.approx(4 * 12.5 / 68) == medpy["assd_mm"]
    # two disjoint blocks 8 voxels apart along x (0.5 mm): distances 2.5, 3.0, 3.5, 4.0 mm, 16 each
    sep = compute_case_metrics(far, gt, spacing, [1], hd95="monai")[1]
    assert sep["dice"] == 0.0
    assert sep["hd95_mm"] == pytest.approx(4.0)
    assert sep["assd_mm"] == pytest.approx(3.25)
    sd = compute_case_metrics(far, gt, spacing, [1], hd95="surface-distance")[1]
    assert sd["assd_mm"] == pytest.approx(_reference("surface-distance", far == 1, gt == 1, spacing)[1])


def test_empty_mask_policy():
    gt, pred, _ = _cubes()
    spacing = (0.5, 1.0, 2.5)
    diagonal = math.sqrt((32 * 0.5) ** 2 + 12**2 + (10 * 2.5) ** 2)
    only_gt = np.zeros_like(gt)
    for name in HD95_DEFINITIONS:
        res = compute_case_metrics(only_gt, gt, spacing, [1, 2], hd95=name)
        assert res[1] == {"dice": 0.0, "hd95_mm": pytest.approx(diagonal), "assd_mm": pytest.approx(diagonal)}
        assert all(math.isnan(v) for v in res[2].values())  # absent from both
        res = compute_case_metrics(pred, np.zeros_like(gt), spacing, [1], hd95=name)
        assert res[1]["dice"] == 0.0 and res[1]["hd95_mm"] == pytest.approx(diagonal)


def test_default_and_input_forms():
    gt, pred, _ = _cubes()
    assert DEFAULT_HD95 in HD95_DEFINITIONS
    a = compute_case_metrics(pred, gt, (1, 1, 1), [1])
    b = compute_case_metrics(
        torch.from_numpy(pred)[None].long(), torch.from_numpy(gt)[None].float(), (1, 1, 1), [1], hd95=DEFAULT_HD95
    )
    assert a == b
    with pytest.raises(ValueError, match="unknown HD95"):
        compute_case_metrics(pred, gt, (1, 1, 1), [1], hd95="hausdorff")
    with pytest.raises(ValueError, match="shape"):
        compute_case_metrics(pred[:-1], gt, (1, 1, 1), [1])


def test_surface_building_blocks(real_pair):
    pred, gt = real_pair
    boxes = class_boxes([torch.from_numpy(pred), torch.from_numpy(gt)], 9)
    from s2s2_monai.evaluation.surface import _boxes_torch

    torch_boxes = {}
    for lab in (pred, gt):
        for c, box in _boxes_torch(torch.from_numpy(lab), 9).items():
            old = torch_boxes.get(c, box)
            torch_boxes[c] = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(old, box))
    assert boxes == torch_boxes
    assert class_boxes([np.asfortranarray(pred), np.asfortranarray(gt)], 0) == boxes  # nibabel's memory order
    for hd95 in HD95_DEFINITIONS:  # Fortran-ordered volumes (as nibabel reads them; scored on the transposed view)
        f_order = compute_case_metrics(
            np.asfortranarray(pred), np.asfortranarray(gt), (0.8, 1.3, 3.0), range(1, 9), hd95
        )
        c_order = compute_case_metrics(pred, gt, (0.8, 1.3, 3.0), range(1, 9), hd95)
        for c in c_order:  # the same distances, summed in another order: equal to rounding
            assert f_order[c] == pytest.approx(c_order[c], rel=1e-12, nan_ok=True), (hd95, c)
    for c, box in boxes.items():
        union = (pred == c) | (gt == c)
        assert ndimage.find_objects(union.astype(np.uint8))[0] == box
        m = crop_padded(torch.from_numpy(gt), box, c)
        ref = gt[box] == c
        assert torch.equal(edge_voxels(m), torch.from_numpy(ref ^ ndimage.binary_erosion(ref)))
        codes = neighbour_codes(m).numpy()
        kernel = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])
        crop = np.zeros(np.array(ref.shape) + 1, np.uint8)
        crop[:-1, :-1, :-1] = ref
        assert np.array_equal(codes, ndimage.correlate(crop, kernel, mode="constant", cval=0))


def test_nearest_distances_backends_match_edt():
    rng = np.random.default_rng(1)
    dst_mask = rng.random((20, 15, 9)) > 0.97
    src = torch.from_numpy(np.argwhere(rng.random((20, 15, 9)) > 0.9))
    spacing = (0.7, 1.1, 2.9)
    edt = ndimage.distance_transform_edt(~dst_mask, sampling=spacing)
    ref = edt[tuple(src.numpy().T)]
    dst = torch.from_numpy(np.argwhere(dst_mask))
    for backend in ("kdtree", "torch"):
        got = nearest_distances(src, dst, spacing, backend=backend, chunk_bytes=4096).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-12)


def test_surfel_normals_table_is_monais():
    """The vendored DeepMind/MONAI normals (so the surface-distance HD95 needs no `import monai`) are MONAI's, exactly."""
    from monai.metrics.utils import _get_neighbour_code_to_normals_table

    from s2s2_monai.evaluation.surface import _normals_table, surfel_area_table

    ref = _get_neighbour_code_to_normals_table("cpu").to(torch.float64)
    assert np.array_equal(_normals_table(), ref.numpy())
    spacing = (0.7, 1.1, 2.9)
    s = torch.tensor([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]], dtype=torch.float64)
    np.testing.assert_allclose(
        surfel_area_table(spacing), torch.linalg.norm(ref * s, dim=-1).sum(-1).numpy(), rtol=1e-15
    )
    try:
        from surface_distance import lookup_tables
    except ImportError:
        return
    np.testing.assert_allclose(
        surfel_area_table(spacing),
        lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
        rtol=1e-12,
    )


def test_quantile_float32_is_torch_quantile_bit_for_bit():
    """The CPU path's "monai" HD95 reproduces torch.quantile(float32) exactly (its fused lerp included)."""
    from s2s2_monai.evaluation.metrics import quantile_float32

    rng = np.random.default_rng(7)
    for i in range(3000):
        n = int(rng.integers(1, 3000))
        draws = (
            rng.random(n) * 100,
            np.sqrt(rng.integers(0, 2000, n) * 0.7),  # surface distances: square roots of lattice sums
            rng.exponential(5.0, n),
        )
        x = draws[i % 3].astype(np.float32)
        assert quantile_float32(x, 0.95) == float(torch.quantile(torch.from_numpy(x), 0.95)), (i, n)


@pytest.mark.parametrize("hd95", HD95_DEFINITIONS)
def test_device_path_gives_the_cpu_numbers(real_pair, hd95):
    """The torch (GPU) path of every building block, run on CPU tensors, gives the numpy path's numbers."""
    from s2s2_monai.evaluation import metrics as m

    pred, gt = real_pair
    spacing = (0.8, 1.3, 3.0)
    table = m.surfel_area_table(spacing)
    for c, box in class_boxes([pred, gt], 9).items():
        pn, gn = crop_padded(pred, box, c), crop_padded(gt, box, c)
        pt, gt_t = crop_padded(torch.from_numpy(pred), box, c), crop_padded(torch.from_numpy(gt), box, c)
        assert torch.is_tensor(pt) and np.array_equal(pt.numpy(), pn)
        if not (pn.any() and gn.any()):
            continue
        if hd95 == "surface-distance":
            assert m._surfel_metrics(pt, gt_t, spacing, table) == pytest.approx(
                m._surfel_metrics(pn, gn, spacing, table), rel=1e-12
            )
        else:
            assert m._voxel_edges_metrics(pt, gt_t, spacing, hd95) == pytest.approx(
                m._voxel_edges_metrics(pn, gn, spacing, hd95), rel=1e-12
            )
    k = 9
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            m.dice_per_class(torch.from_numpy(pred), torch.from_numpy(gt), k), m.dice_per_class(pred, gt, k)
        )
    )
