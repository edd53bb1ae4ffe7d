"""Hardening of the data layer (issue 19): files compared by identity, geometry and modality checked.

- Leaks and duplicates are found on resolved files (real path, then bytes), not on spellings:
  ``sub/../img``, a symlink, an absolute path and a byte-identical copy all name one image.
- A DICOM series with a slice missing in the middle, a NIfTI without a voxel size, a header
  declaring an impossible size, and an MR volume in a ``"modality": "CT"`` datalist are refused
  with one line naming the file.

:data:`BAD_INPUT` is the table of kinds run as real ``s2s2 stack build`` subprocesses (one error
line, exit 2, no traceback, nothing written); the unit tests above it check each rule directly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_bad_input import Demo, assert_clean_error, files_of, run_s2s2, save_nifti, stack_build, write_datalist

from s2s2_monai.cli import main
from s2s2_monai.data.check import check_datalist, require_data
from s2s2_monai.data.datalist import FileIdentity, load_datalist
from s2s2_monai.data.volumes import (
    check_nifti_header,
    check_slice_spacing,
    load_volume,
    max_voxels,
    read_nifti_ras,
)
from s2s2_monai.errors import S2S2InputError

SERIES = Path("dicom") / "totalseg_example_ct_dicom"
SERIES_SEG = Path("dicom") / "totalseg_example_ct_dicom_seg.nii.gz"


@pytest.fixture(scope="module")
def demo(tiny_demo) -> Demo:
    return Demo(tiny_demo)


def _dl(path: Path, training: list | None = None, **extra) -> Path:
    """A datalist (``"modality": "CT"`` unless ``extra`` says otherwise)."""
    return write_datalist(path, training or [], **{"modality": "CT", **extra})


def _gap_series(shared: Path, dst: Path) -> Path:
    """A copy of the real series with its middle file (index 10 of 20) deleted."""
    shutil.copytree(shared / SERIES, dst)
    sorted(dst.iterdir())[10].unlink()
    return dst


def _zero_pixdim(path: Path, array: np.ndarray) -> Path:
    img = nib.Nifti1Image(np.asarray(array), None)  # no qform, no sform: pixdim is the only spacing
    img.header.set_zooms((0.0, 0.0, 0.0))
    nib.save(img, path)
    return path


def _huge_header(path: Path, shape=(30000, 30000, 30000)) -> Path:
    """A NIfTI whose header declares ``shape`` int16 voxels, followed by 1000 bytes of data."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((1.0, 1.0, 1.0))
    hdr["vox_offset"] = 352
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    return path


# ---------------------------------------------------------------------------- identity of files
def test_file_identity_by_real_path_then_bytes(demo, tmp_path):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.nii.gz"
    link.symlink_to(demo.image)
    copy = tmp_path / "copy.nii.gz"
    shutil.copyfile(demo.image, copy)
    other = tmp_path / "other.nii.gz"  # same size, other bytes
    raw = bytearray(demo.image.read_bytes())
    raw[-1] ^= 0xFF
    other.write_bytes(bytes(raw))
    spelled = [
        str(demo.image),
        str(demo.root / "imagesTr" / ".." / "imagesTr" / demo.image.name),
        str(link),
        str(copy),
        str(other),
        str(tmp_path / "missing.nii.gz"),
    ]
    keys = FileIdentity().keys(spelled)
    assert [k for k, _ in keys[:4]] == [keys[0][0]] * 4
    assert [how for _, how in keys[:4]] == ["", "the same file", "the same file", "a byte-identical copy"]
    assert keys[4][0] != keys[0][0] and keys[5][0] != keys[0][0]


def test_hashing_is_lazy(demo, tmp_path, monkeypatch):
    """Sizes first, then head+tail samples of equal sizes, then full hashes of equal samples only."""
    calls: list[tuple[str, int | None]] = []
    real_hash = FileIdentity._hash_file

    def spy(path, sample=None):
        calls.append((str(path), sample))
        return real_hash(path, sample)

    monkeypatch.setattr(FileIdentity, "_hash_file", staticmethod(spy))
    images = [str(demo.image), str(demo.image2), str(demo.root / "imagesTr" / "phantom_002.nii.gz")]
    assert len({os.path.getsize(p) for p in images}) == 3  # the phantoms compress to different sizes
    FileIdentity().keys(images)
    assert calls == []  # nothing read
    copy = tmp_path / "copy.nii.gz"
    shutil.copyfile(demo.image2, copy)
    flipped = tmp_path / "flipped.nii.gz"  # same size, other last byte: the sample tells it apart
    raw = bytearray(demo.image.read_bytes())
    raw[-1] ^= 0xFF
    flipped.write_bytes(bytes(raw))
    ident = FileIdentity()
    keys = ident.keys([*images, str(copy), str(flipped)])
    ident.keys([*images, str(copy), str(flipped)])  # cached: each file read at most once per stage
    assert keys[3][0] == keys[1][0] and keys[4][0] != keys[0][0]
    full = sorted(path for path, sample in calls if sample is None)
    assert full == sorted([os.path.realpath(demo.image2), str(copy)])
    assert len(calls) == 4 + 2  # samples of the two size collisions, full hashes of the copy pair
    # equal heads and tails, other middle: only the full hash separates them
    big = np.random.default_rng(0).integers(0, 255, 3 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "a.nii").write_bytes(big)
    (tmp_path / "b.nii").write_bytes(big[: 3 << 19] + bytes([big[3 << 19] ^ 1]) + big[(3 << 19) + 1 :])
    a, b = FileIdentity().keys([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")])
    assert a[0] != b[0]


def test_dicom_folder_identity_is_content(shared_data, tmp_path):
    copy = tmp_path / "renamed"
    copy.mkdir()
    for i, f in enumerate(sorted((shared_data / SERIES).iterdir())):
        shutil.copyfile(f, copy / f"IM{i:04d}.dcm")  # other names, same files
    keys = FileIdentity().keys([str(shared_data / SERIES), str(copy), str(_gap_series(shared_data, tmp_path / "g"))])
    assert keys[0][0] == keys[1][0] and keys[1][1] == "a byte-identical copy" and keys[2][0] != keys[0][0]


def _leaky(demo: Demo, tmp: Path, spelling: str) -> tuple[Path, str]:
    """A datalist whose training entry names test image phantom_000 by ``spelling`` (relative paths under the
    data root ``tmp/root``); returns it and the training image as the error names it."""
    img = demo.image
    if spelling == "dotdot":
        train = "imagesTr/../imagesTr/phantom_000.nii.gz"
    elif spelling == "symlink":
        (tmp / "link.nii.gz").symlink_to(img)
        train = str(tmp / "link.nii.gz")
    elif spelling == "absolute":
        train = str(img)
    else:
        shutil.copyfile(img, tmp / "copy.nii.gz")
        train = str(tmp / "copy.nii.gz")
    dl = _dl(
        tmp / "dl.json",
        training=[{"image": train, "label": str(demo.label)}, demo.entry(demo.image2, demo.label2)],
        test=[{"image": "imagesTr/phantom_000.nii.gz", "label": "labelsTr/phantom_000.nii.gz"}],
    )
    return dl, train if os.path.isabs(train) else str(tmp / "root" / train)


@pytest.mark.parametrize("spelling", ["dotdot", "symlink", "absolute", "copy"])
def test_leak_found_whatever_the_spelling(demo, tmp_path, spelling):
    root = tmp_path / "root"
    root.symlink_to(demo.root)  # the test entries resolve under another spelling of the data root
    dl_path, train = _leaky(demo, tmp_path, spelling)
    dl = load_datalist(dl_path, root)
    assert dl.shared_images("training", "test") == [dl.items("training")[0]["image"]]
    assert dl.shared_images("training", "validation") == []
    with pytest.raises(S2S2InputError, match=r"1 training case\(s\) are also test cases.*train the model") as e:
        require_data(dl_path, root)
    msg = str(e.value)
    assert f"training entry 0 {train} is test entry 0 {root / 'imagesTr/phantom_000.nii.gz'}" in msg
    assert ("a byte-identical copy" in msg) == (spelling == "copy")


def test_duplicates_refused_with_entry_indices(demo, tmp_path):
    dup = str(demo.root / "imagesTr" / ".." / "imagesTr" / demo.image.name)
    dl_path = _dl(
        tmp_path / "dl.json",
        training=[demo.entry(), demo.entry(demo.image2, demo.label2), {"image": dup, "label": str(demo.label)}],
    )
    with pytest.raises(S2S2InputError) as e:
        require_data(dl_path, demo.root)
    msg = str(e.value)
    assert f"{demo.image} is listed twice in 'training' (entries 0 and 2; entry 2 {dup} is the same file)" in msg
    assert "silently doubles its weight" in msg and "remove entry 2 of 'training'" in msg
    thrice = _dl(tmp_path / "three.json", training=[demo.entry()] * 3)
    with pytest.raises(
        S2S2InputError, match=r"listed 3 times in 'training' \(entries 0, 1 and 2\).*remove entries 1, 2"
    ):
        load_datalist(thrice).require_distinct()
    # every reader of a section refuses it before loading anything
    from s2s2_monai.data.slices import VolumeCache

    with pytest.raises(S2S2InputError, match="listed twice in 'training'"):
        VolumeCache(dl_path, "training", progress=False)


def test_check_data_table_reports_leaks_and_duplicates(demo, tmp_path, capsys):
    shutil.copyfile(demo.image2, tmp_path / "copy.nii.gz")
    dl_path = _dl(
        tmp_path / "dl.json",
        training=[
            demo.entry(),
            demo.entry(demo.image2, demo.label2),
            demo.entry(tmp_path / "copy.nii.gz", demo.label2),
        ],
        validation=[{"image": str(demo.root / "imagesTr/phantom_003.nii.gz")}],
        test=[{"image": str(demo.root / "imagesTr" / ".." / "imagesTr" / "phantom_003.nii.gz")}],
    )
    results = check_datalist(dl_path)
    assert [r.ok for r in results] == [True, True, False, False, True]
    assert "same image as entry 1 of 'training'" in results[2].problem and "a byte-identical copy" in results[2].problem
    assert "is test entry 0" in results[3].problem and "the same file" in results[3].problem
    assert main(["check-data", "--datalist", str(dl_path)]) == 1
    assert "3 ok, 2 failed" in capsys.readouterr().out


# ---------------------------------------------------------------------------- DICOM slice spacing
def test_real_series_is_evenly_spaced(shared_data):
    check_slice_spacing(shared_data / SERIES)
    assert load_volume(shared_data / SERIES).shape[-1] == 20


def test_series_with_a_missing_slice_is_refused(shared_data, tmp_path):
    series = _gap_series(shared_data, tmp_path / "series")
    for fn in (check_slice_spacing, load_volume):
        with pytest.raises(S2S2InputError) as e:
            fn(series)
        msg = str(e.value)
        assert msg.startswith(f"{series}: slice spacing varies from 2.0 to 4.0 mm between slices 9 and 10"), msg
        assert "Fix:" in msg


def test_series_with_a_corrupt_file_keeps_its_message(shared_data, tmp_path):
    """A file pydicom cannot read leaves the folder to ITK and the file count (the older, exact message)."""
    series = tmp_path / "series"
    shutil.copytree(shared_data / SERIES, series)
    (series / "IM_BROKEN.dcm").write_bytes(b"DICM" + os.urandom(2000))
    check_slice_spacing(series)  # nothing to judge
    with pytest.raises(S2S2InputError, match="holds 21 files but only 20 slices"):
        load_volume(series)


# ---------------------------------------------------------------------------- NIfTI headers
def test_zero_or_nan_pixdim_is_refused(tmp_path):
    arr = np.zeros((4, 4, 3), np.int16)
    zero = _zero_pixdim(tmp_path / "zero.nii.gz", arr)
    for fn in (check_nifti_header, load_volume, read_nifti_ras):
        with pytest.raises(S2S2InputError, match=r"voxel spacing \(0, 0, 0\) mm of the header's pixdim") as e:
            fn(zero)
        assert str(e.value).startswith(str(zero))
    img = nib.Nifti1Image(arr, None)
    img.header["pixdim"][1:4] = [1.0, np.nan, 1.0]
    nib.save(img, tmp_path / "nan.nii")
    with pytest.raises(S2S2InputError, match=r"voxel spacing \(1, nan, 1\)"):
        load_volume(tmp_path / "nan.nii")


def test_zero_pixdim_is_refused_even_with_an_sform(tmp_path):
    """Both readers take the voxel size from pixdim (MONAI's NibabelReader rewrites the sform to match it,
    nibabel turns a 0 into 1 first): a valid sform does not save a zero pixdim; a zero sform is refused too."""
    arr = np.zeros((4, 4, 3), np.int16)
    path = tmp_path / "sform.nii"
    nib.save(nib.Nifti1Image(arr, np.diag([2.0, 2.0, 3.0, 1.0])), path)
    good = path.read_bytes()
    np.testing.assert_allclose(np.diag(np.asarray(load_volume(path).affine))[:3], [2.0, 2.0, 3.0])
    raw = bytearray(good)
    raw[80:92] = np.zeros(3, "<f4").tobytes()  # pixdim[1:4]
    path.write_bytes(bytes(raw))
    with pytest.raises(S2S2InputError, match=r"voxel spacing \(0, 0, 0\) mm of the header's pixdim"):
        load_volume(path)
    raw = bytearray(good)
    raw[280:328] = np.zeros(12, "<f4").tobytes()  # srow_x, srow_y, srow_z
    path.write_bytes(bytes(raw))
    with pytest.raises(S2S2InputError, match=r"voxel spacing \(0, 0, 0\) mm of the header's sform"):
        load_volume(path)


def test_impossible_size_is_refused_before_allocation(tmp_path, monkeypatch):
    for name in ("huge.nii", "huge.nii.gz"):
        path = _huge_header(tmp_path / name)
        if name.endswith(".gz"):
            import gzip

            path.write_bytes(gzip.compress(path.read_bytes()))
        with pytest.raises(S2S2InputError, match=r"shape \(30000, 30000, 30000\).*more than the limit of 2147483648"):
            load_volume(path)
    # below the limit, but more data than the file can hold (deflate: <= 1032:1)
    mid = _huge_header(tmp_path / "mid.nii", shape=(1000, 1000, 1000))
    with pytest.raises(S2S2InputError, match=r"2000000000 bytes\) but the 1352-byte file can hold at most 1000"):
        read_nifti_ras(mid)
    # the limit is configurable
    small = save_nifti(tmp_path / "small.nii.gz", np.zeros((10, 10, 10), np.int16), np.eye(4))
    monkeypatch.setenv("S2S2_MAX_VOXELS", "999")
    assert max_voxels() == 999
    with pytest.raises(
        S2S2InputError, match=r"shape \(10, 10, 10\) \(1000 voxels, 3.91 KiB as float32\), more than the limit of 999"
    ):
        check_nifti_header(small)
    monkeypatch.setenv("S2S2_MAX_VOXELS", "lots")
    with pytest.raises(S2S2InputError, match="S2S2_MAX_VOXELS: got 'lots'"):
        check_nifti_header(small)


# ---------------------------------------------------------------------------- modality of a datalist
def test_mr_in_a_ct_datalist_is_refused(shared_data, real_mr, demo, tmp_path, capsys):
    from s2s2_monai.data.cases import iter_cases, load_entry

    entry = {"image": str(real_mr), "label": str(shared_data / "mr/totalseg_example_mr_sm_seg.nii.gz")}
    ct = load_datalist(
        _dl(tmp_path / "ct.json", label_remap="totalseg_mr_to_chaos", label_map="chaos_t2spir", training=[entry])
    )
    with pytest.raises(S2S2InputError, match=r'do not look like CT.*"modality": "CT"\) expects CT') as e:
        load_entry(ct, entry)
    assert str(e.value).startswith(str(real_mr))
    with pytest.raises(S2S2InputError, match="do not look like CT"):
        list(iter_cases(ct, "training"))
    assert load_entry(ct, entry, check_modality=False).image.shape == (117, 91, 20)
    mri = load_datalist(
        _dl(
            tmp_path / "mri.json",
            modality="MRI",
            label_remap="totalseg_mr_to_chaos",
            label_map="chaos_t2spir",
            training=[entry],
        )
    )
    assert load_entry(mri, entry).label is not None  # the same volume in an MRI datalist loads
    # the phantoms (CT with air) and the real CT and DICOM pass
    assert len(list(iter_cases(demo.datalist, "training"))) == 2
    assert main(["check-data", "--datalist", str(ct.path)]) == 1
    assert "do not look like CT" in capsys.readouterr().out


# ---------------------------------------------------------------------------- the commands, as a user runs them
@dataclass
class Kind:
    """``setup(tmp, demo, shared)`` writes the bad input and returns ``(datalist, names in the error line)``."""

    setup: Callable
    data_root: str | None = None  # relative to tmp


def _leak(spelling: str) -> Callable:
    def setup(tmp: Path, demo: Demo, shared: Path):
        dl, train = _leaky(demo, tmp, spelling)
        names = [dl, f"training entry 0 {train} is test entry 0 {tmp / 'root' / 'imagesTr/phantom_000.nii.gz'}"]
        return dl, names + (["a byte-identical copy"] if spelling == "copy" else [])

    return setup


def _duplicate(tmp: Path, demo: Demo, shared: Path):
    dl = _dl(
        tmp / "dl.json",
        training=[
            demo.entry(),
            demo.entry(demo.image2, demo.label2),
            demo.entry(),
            demo.entry(demo.image2, demo.label2),
        ],
    )
    return dl, [dl, demo.image, "listed twice in 'training' (entries 0 and 2)"]


def _dicom_gap(tmp: Path, demo: Demo, shared: Path):
    series = _gap_series(shared, tmp / "series")
    dl = _dl(
        tmp / "dl.json",
        label_remap="totalseg_to_synapse",
        training=[{"image": str(series), "label": str(shared / SERIES_SEG)}],
    )
    return dl, [series, "slice spacing varies from 2.0 to 4.0 mm between slices 9 and 10"]


def _zero_pixdim_image(tmp: Path, demo: Demo, shared: Path):
    img = _zero_pixdim(tmp / "zero.nii.gz", demo.image_array)
    return _dl(tmp / "dl.json", training=[demo.entry(image=img)]), [img, "voxel spacing (0, 0, 0) mm"]


def _impossible_size(tmp: Path, demo: Demo, shared: Path):
    img = _huge_header(tmp / "huge.nii")
    return _dl(tmp / "dl.json", training=[demo.entry(image=img)]), [img, "(30000, 30000, 30000)", "more than the limit"]


def _mr_as_ct(tmp: Path, demo: Demo, shared: Path):
    mr = shared / "mr/totalseg_example_mr_sm.nii.gz"
    dl = _dl(
        tmp / "dl.json", training=[{"image": str(mr), "label": str(shared / "mr/totalseg_example_mr_sm_seg.nii.gz")}]
    )
    return dl, [mr, "do not look like CT", '"modality": "CT"']


BAD_INPUT: dict[str, Kind] = {
    "leak via ../": Kind(_leak("dotdot"), data_root="root"),
    "leak via symlink": Kind(_leak("symlink"), data_root="root"),
    "leak via absolute path": Kind(_leak("absolute"), data_root="root"),
    "leak via byte-identical copy": Kind(_leak("copy"), data_root="root"),
    "duplicate in a section": Kind(_duplicate),
    "DICOM series with a missing slice": Kind(_dicom_gap),
    "NIfTI with pixdim 0": Kind(_zero_pixdim_image),
    "header of impossible size": Kind(_impossible_size),
    "MR volume in a CT datalist": Kind(_mr_as_ct),
}


@pytest.mark.parametrize("kind", list(BAD_INPUT))
def test_stack_build_refuses(kind, demo, shared_data, tmp_path):
    case = BAD_INPUT[kind]
    (tmp_path / "root").symlink_to(demo.root)  # a second spelling of the phantoms' data root
    datalist, names = case.setup(tmp_path, demo, shared_data)
    extra = ("--data-root", str(tmp_path / case.data_root)) if case.data_root else ()
    before = files_of(demo.root)
    r = run_s2s2(*stack_build(datalist, tmp_path, *extra))
    assert_clean_error(r, *names)
    assert not (tmp_path / "out").exists(), f"partial output left: {sorted(files_of(tmp_path / 'out'))}"
    assert files_of(demo.root) == before
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
