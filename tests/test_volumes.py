"""Volume IO: canonical orientation, DICOM series, geometry round trips and bad input."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from s2s2_monai.data.volumes import (
    load_case,
    load_volume,
    save_nifti_atomic,
    spacing_of,
    to_source_orientation,
)
from s2s2_monai.errors import S2S2InputError
from s2s2_monai.transforms import CTWindow, RemapLabels


def _reoriented_copy(src, dst, codes):
    img = nib.load(src)
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    nib.save(out, dst)
    return out


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("A", "S", "R"), ("R", "A", "I")])
def test_reoriented_copy_gives_same_slices(shared_data, tmp_path, codes):
    src_img = shared_data / "ct/totalseg_example_ct_sm.nii.gz"
    src_lab = shared_data / "ct/totalseg_example_ct_sm_seg.nii.gz"
    _reoriented_copy(src_img, tmp_path / "img.nii.gz", codes)
    _reoriented_copy(src_lab, tmp_path / "lab.nii.gz", codes)
    assert nib.aff2axcodes(nib.load(tmp_path / "img.nii.gz").affine) == codes
    a = load_case(src_img, src_lab, intensity=CTWindow(), remap=RemapLabels("totalseg_to_synapse"))
    b = load_case(
        tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", intensity=CTWindow(), remap=RemapLabels("totalseg_to_synapse")
    )
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-4)
    assert nib.aff2axcodes(b.affine) == ("R", "A", "S")
    # and back to the file's own axis order, exactly as stored
    stored = np.asarray(nib.load(tmp_path / "lab.nii.gz").dataobj)
    back = to_source_orientation(b.label, b.affine, b.source_affine)
    np.testing.assert_array_equal(RemapLabels("totalseg_to_synapse")(stored), back)
    back_t = to_source_orientation(torch.from_numpy(b.label), b.affine, b.source_affine)
    np.testing.assert_array_equal(back_t.numpy(), back)


def test_lps_mr_is_reoriented_to_ras(shared_data):
    raw = nib.load(shared_data / "mr/totalseg_example_mr_sm.nii.gz")
    vol = load_volume(shared_data / "mr/totalseg_example_mr_sm.nii.gz")
    assert nib.aff2axcodes(raw.affine) == ("L", "P", "S")
    assert nib.aff2axcodes(np.asarray(vol.affine)) == ("R", "A", "S")
    np.testing.assert_array_equal(vol[0].numpy(), raw.get_fdata()[::-1, ::-1, :].astype(np.float32))
    # the world position of voxel 0 in RAS equals that of the last x/y voxel of the file
    corner = raw.affine @ np.array([raw.shape[0] - 1, raw.shape[1] - 1, 0, 1])
    np.testing.assert_allclose(np.asarray(vol.affine)[:3, 3], corner[:3], atol=1e-4)


def test_dicom_series_loads_with_label_geometry(shared_data):
    series = shared_data / "dicom/totalseg_example_ct_dicom"
    label = shared_data / "dicom/totalseg_example_ct_dicom_seg.nii.gz"
    case = load_case(series, label, remap=RemapLabels("totalseg_to_synapse"))  # raises on any grid mismatch
    assert case.image.shape == (512, 512, 20)
    np.testing.assert_allclose(case.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    assert case.image.min() == -1024 and case.image.max() == 1839
    assert set(np.unique(case.label)) == {0, 1, 5, 6, 7, 8}  # kidneys and gallbladder are below this slab
    lab_ras = load_volume(label, is_label=True)
    np.testing.assert_allclose(case.affine, np.asarray(lab_ras.affine), atol=1e-3)
    # liver (5) sits on the patient's right: larger RAS x than the spleen (1)
    xs = {k: np.argwhere(case.label == k)[:, 0].mean() for k in (1, 5)}
    assert xs[5] > xs[1]


def test_save_nifti_atomic_is_deterministic_and_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 9, (5, 6, 7)).astype(np.uint8)
    aff = np.array([[-2.5, 0, 0, 10], [0, -2.5, 0, 20], [0, 0, 3, -5], [0, 0, 0, 1.0]])
    p1, p2 = save_nifti_atomic(arr, aff, tmp_path / "a.nii.gz"), save_nifti_atomic(arr, aff, tmp_path / "b.nii.gz")
    assert p1.read_bytes() == p2.read_bytes()
    img = nib.load(p1)
    np.testing.assert_array_equal(np.asarray(img.dataobj), arr)
    np.testing.assert_allclose(img.affine, aff)
    np.testing.assert_allclose(spacing_of(aff), [2.5, 2.5, 3.0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---------------------------------------------------------------- bad input


def _write(path, arr, aff=None):
    nib.save(nib.Nifti1Image(arr, np.eye(4) if aff is None else aff), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(S2S2InputError, match="file not found") as e:
        load_volume(tmp_path / "nope.nii.gz")
    assert "nope.nii.gz" in str(e.value)


def test_truncated_nifti(shared_data, tmp_path):
    data = (shared_data / "ct/totalseg_example_ct_sm.nii.gz").read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(S2S2InputError, match="cannot read") as e:
        load_volume(bad)
    assert "trunc.nii.gz" in str(e.value) and "Fix:" in str(e.value)


def test_not_a_nifti(tmp_path):
    bad = tmp_path / "junk.nii.gz"
    bad.write_bytes(gzip.compress(b"hello world" * 10))
    with pytest.raises(S2S2InputError, match="cannot read"):
        load_volume(bad)


def test_nan_image(tmp_path):
    arr = np.zeros((4, 4, 3), np.float32)
    arr[1, 1, 1] = np.nan
    arr[2, 2, 2] = np.inf
    with pytest.raises(S2S2InputError, match="2 NaN/inf voxels"):
        load_volume(_write(tmp_path / "nan.nii.gz", arr))


def test_shape_and_affine_mismatch(tmp_path):
    img = _write(tmp_path / "img.nii.gz", np.zeros((4, 4, 3), np.int16))
    lab = _write(tmp_path / "lab.nii.gz", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(S2S2InputError, match="label shape"):
        load_case(img, lab)
    lab2 = _write(tmp_path / "lab2.nii.gz", np.zeros((4, 4, 3), np.uint8), np.diag([2.0, 1, 1, 1]))
    with pytest.raises(S2S2InputError, match="affine differs"):
        load_case(img, lab2)


def test_label_ids_outside_map_and_non_integer(tmp_path):
    img = _write(tmp_path / "img.nii.gz", np.zeros((4, 4, 3), np.int16))
    lab = np.zeros((4, 4, 3), np.uint8)
    lab[0, 0, 0] = 42
    with pytest.raises(S2S2InputError, match=r"label ids \[42\]"):
        load_case(img, _write(tmp_path / "lab.nii.gz", lab), valid_label_ids=set(range(9)))
    frac = np.full((4, 4, 3), 0.5, np.float32)
    with pytest.raises(S2S2InputError, match="non-integer"):
        load_volume(_write(tmp_path / "frac.nii.gz", frac), is_label=True)


def test_unreadable_dicom(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    with pytest.raises(S2S2InputError, match="DICOM series"):
        load_volume(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(S2S2InputError, match="no DICOM files"):
        load_volume(empty)


def test_real_dicom_copy_with_one_corrupt_file_is_reported(shared_data, tmp_path):
    folder = tmp_path / "series"
    shutil.copytree(shared_data / "dicom/totalseg_example_ct_dicom", folder)
    victim = sorted(folder.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:2000])
    with pytest.raises(S2S2InputError, match="only 19 slices could be read"):
        load_volume(folder)
