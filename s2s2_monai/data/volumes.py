"""Read NIfTI files and DICOM series into canonically oriented volumes, with clear errors.

Everything the project reads goes through :func:`load_volume`: MONAI's ``LoadImage``
(nibabel for NIfTI, ITK/GDCM for DICOM folders, which copes with JPEG 2000 and empty series
UIDs), channel first, reoriented to RAS. The volume's affine is the RAS affine after
reorientation; :func:`to_source_orientation` undoes the reorientation for writing outputs in
the input file's own geometry.

Geometry is checked before it is trusted (:func:`check_nifti_header`, :func:`check_slice_spacing`):

- a NIfTI header without a usable voxel size (pixdim 0, NaN or inf) is refused
  instead of being taken as 1 mm;
- a NIfTI header declaring more than :func:`max_voxels` voxels (default :data:`MAX_VOXELS` =
  2**31, 8 GiB as float32; ``S2S2_MAX_VOXELS`` overrides it), or more voxel data than the file
  can hold, is refused from the header alone, before anything is allocated;
- a DICOM series whose slice positions (``ImagePositionPatient`` along the slice normal) are not
  evenly spaced (a slice missing in the middle) is refused: ITK would stack it on a uniform grid.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from s2s2_monai.arrays import is_torch, to_numpy
from s2s2_monai.errors import S2S2InputError

if TYPE_CHECKING:  # MONAI (and torch) are imported on the first read: a wrong path is reported in 2 s, not 10
    import torch
    from monai.data import MetaTensor
    from monai.transforms import LoadImage

__all__ = [
    "CANONICAL_AXCODES",
    "CaseVolume",
    "load_volume",
    "read_nifti_ras",
    "load_case",
    "spacing_of",
    "to_source_orientation",
    "save_nifti_atomic",
    "source_affine_of",
    "write_prediction",
    "case_id_of",
    "check_same_grid",
    "check_nifti_header",
    "check_slice_spacing",
    "max_voxels",
    "MAX_VOXELS",
]

#: Every volume is reoriented to this; axial slices run along the last axis (S).
CANONICAL_AXCODES = "RAS"

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


#: Default upper bound on the voxels of one volume read (2**31: 8 GiB as float32); see :func:`max_voxels`.
MAX_VOXELS = 2**31
#: deflate never compresses better than about 1032:1, so a .nii.gz of N bytes holds at most this many times N.
_DEFLATE_MAX_RATIO = 1032
#: slice gaps may differ from the median gap by this fraction (plus 1 µm) before a series counts as uneven.
SLICE_GAP_TOLERANCE = 0.01


def max_voxels() -> int:
    """Largest volume (voxels) any reader accepts: ``$S2S2_MAX_VOXELS`` if set, else :data:`MAX_VOXELS`."""
    raw = os.environ.get("S2S2_MAX_VOXELS", "").strip()
    if not raw:
        return MAX_VOXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise S2S2InputError(
            "S2S2_MAX_VOXELS",
            f"got {raw!r}, expected a whole number of voxels >= 1",
            "unset it, or e.g. S2S2_MAX_VOXELS=4294967296",
        )
    return value


def spacing_of(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """Voxel spacing (mm) along each array axis of a 4x4 affine."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    return np.sqrt((a * a).sum(axis=0))


@functools.cache
def _loader(reader: str | None) -> LoadImage:
    """One MONAI ``LoadImage`` per reader, built once. MONAI instantiates every reader it knows,
    including the GPU DICOM decoder, which warns on CPU-only machines; that noise is muted."""
    from monai.transforms import LoadImage

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return LoadImage(image_only=True, ensure_channel_first=True, reader=reader)


def _reader_for(path: Path) -> str | None:
    if path.is_dir():
        return "ITKReader"
    if path.name.endswith(_NIFTI_SUFFIXES):
        return "NibabelReader"
    return None


def _existing(path: str | os.PathLike) -> Path:
    """``Path(path)``, or the one error every reader gives for a missing file."""
    path = Path(path)
    if not path.exists():
        raise S2S2InputError(path, "file not found", "check the path (relative paths are resolved against --data-root)")
    return path


def _human_bytes(n: float) -> str:
    """``n`` bytes as ``"3.91 KiB"`` / ``"100,583 GiB"``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.3g} {unit}" if n < 1000 else f"{n:,.0f} {unit}"


def _raw_nifti_header(path: Path):
    """The NIfTI-1/-2 header of ``path`` exactly as stored (nibabel's load would turn pixdim 0 into 1),
    or ``None`` when it is no readable NIfTI header (the reader then reports the file as it always did)."""
    try:
        with nib.openers.ImageOpener(str(path)) as fh:
            raw = fh.read(540)
    except Exception:  # noqa: BLE001 - unreadable: the reader's own message follows
        return None
    for klass, size in ((nib.Nifti1Header, 348), (nib.Nifti2Header, 540)):
        for order in ("<", ">"):
            if len(raw) >= size and int(np.frombuffer(raw[:4], dtype=order + "i4")[0]) == size:
                try:
                    return klass(raw[:size], endianness=order, check=False)
                except Exception:  # noqa: BLE001
                    return None
    return None


def check_nifti_header(path: str | os.PathLike) -> None:
    """Refuse, from the header alone, a NIfTI file whose geometry or size cannot be right.

    Nothing is allocated: a damaged header declaring 30000^3 voxels is refused here, not as a
    ``MemoryError``. A header that is no NIfTI at all is left to the reader (its message names the file).

    Raises:
        S2S2InputError: more than :func:`max_voxels` voxels; more voxel data than the file can hold
            (uncompressed: its size past ``vox_offset``; ``.gz``: 1032 times its size, deflate's best
            ratio); missing, zero or non-finite voxel spacing in pixdim (what ITK and MONAI's
            NibabelReader take the voxel size from, whatever the sform says: a zero becomes 1 mm) or,
            when ``sform_code`` > 0, in the sform.
    """
    path = Path(path)
    hdr = _raw_nifti_header(path)
    if hdr is None:
        return
    try:
        shape = tuple(int(d) for d in hdr.get_data_shape())
        itemsize = int(hdr.get_data_dtype().itemsize)
        offset = int(hdr["vox_offset"])
    except Exception:  # noqa: BLE001 - a header nibabel cannot interpret: the reader reports it
        return
    if not shape or min(shape) < 1:
        return
    voxels = math.prod(shape)
    limit = max_voxels()
    if voxels > limit:
        raise S2S2InputError(
            path,
            f"header declares a volume of shape {shape} ({voxels} voxels, {_human_bytes(voxels * 4)} as float32), "
            f"more than the limit of {limit} voxels",
            "check the file (a damaged header declares absurd sizes); crop or downsample a genuinely larger volume, "
            "or raise the limit with S2S2_MAX_VOXELS",
        )
    size = path.stat().st_size
    gz = path.name.endswith(".gz")
    room = size * _DEFLATE_MAX_RATIO if gz else size - offset
    if voxels * itemsize > room:
        raise S2S2InputError(
            path,
            f"header declares {shape} voxels of {hdr.get_data_dtype()} ({voxels * itemsize} bytes) but the "
            f"{size}-byte file can hold at most {max(room, 0)} (a truncated file or a damaged header)",
            "re-export or re-download it",
        )
    ndim = min(len(shape), 3)
    checks = [("pixdim", np.abs(np.asarray(hdr["pixdim"][1 : 1 + ndim], dtype=np.float64)))]
    if int(hdr["sform_code"]) > 0:
        checks.append(("sform", spacing_of(hdr.get_sform())[:ndim]))
    for source, spacing in checks:
        if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
            shown = ", ".join(f"{v:g}" for v in spacing)
            raise S2S2InputError(
                path,
                f"voxel spacing ({shown}) mm of the header's {source} is missing, zero or not finite: the volume "
                "has no size in mm (it would be read as 1 mm voxels)",
                "write the scanner's voxel size into the header (pixdim and the qform/sform), e.g. re-save it with "
                "nibabel or SimpleITK from the original scan",
            )


def _dicom_files(folder: Path) -> list[Path]:
    """The files of a series folder, as the reader and the file count see them (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def check_slice_spacing(folder: str | os.PathLike, tolerance: float = SLICE_GAP_TOLERANCE) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along the slice normal.

    ITK stacks the slices on one uniform spacing whatever their positions, so a series with a
    slice missing in the middle would load silently distorted. Reads ``ImagePositionPatient`` and
    ``ImageOrientationPatient`` of every file (headers only, no pixels). A folder this cannot judge
    is left to ITK and the file count of :func:`load_volume`: a file without a position (a single
    multi-frame file, secondary captures, an unreadable file), several series or orientations.

    Args:
        folder: one DICOM series.
        tolerance: allowed deviation of a gap from the median gap, as a fraction (plus 1 µm).

    Raises:
        S2S2InputError: uneven spacing, naming the slices (0-based, in the files' name order along
            the slice normal) and their files.
    """
    import pydicom

    folder = Path(folder)
    tags = ["ImagePositionPatient", "ImageOrientationPatient", "SeriesInstanceUID"]
    rows: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=tags)
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
            iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        except Exception:  # noqa: BLE001 - no usable position: nothing to check against
            return
        if ipp.shape != (3,) or iop.shape != (6,) or not (np.isfinite(ipp).all() and np.isfinite(iop).all()):
            return
        rows.append((f.name, ipp, iop, str(ds.get("SeriesInstanceUID", ""))))
    if len(rows) < 3 or len({uid for *_, uid in rows}) > 1:
        return
    if any(not np.allclose(iop, rows[0][2], atol=1e-4) for _, _, iop, _ in rows):
        return
    normal = np.cross(rows[0][2][:3], rows[0][2][3:])
    positions = [(float(np.dot(normal, ipp)), name) for name, ipp, _, _ in rows]
    reverse = positions[0][0] > positions[-1][0]  # number the slices in the files' order when it runs downwards
    positions.sort(reverse=reverse)
    gaps = np.abs(np.diff([z for z, _ in positions]))
    median = float(np.median(gaps))
    deviation = np.abs(gaps - median)
    if float(deviation.max()) <= tolerance * median + 1e-3:
        return
    i = int(deviation.argmax())
    raise S2S2InputError(
        folder,
        f"slice spacing varies from {round(float(gaps.min()), 3)} to {round(float(gaps.max()), 3)} mm between "
        f"slices {i} and {i + 1} (files {positions[i][1]} and {positions[i + 1][1]} are {round(float(gaps[i]), 3)} mm "
        f"apart, the other slices {round(median, 3)} mm: a slice is missing or out of place)",
        "re-export the complete series, or resample it to even spacing and save it as NIfTI",
    )


def load_volume(path: str | os.PathLike, is_label: bool = False) -> MetaTensor:
    """Load a NIfTI file or a DICOM series folder as a (1, X, Y, Z) MetaTensor in RAS.

    Args:
        path: ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.
        is_label: labels are checked to hold non-negative integers and returned as int64;
            images as float32 and checked to hold finite values only.

    Raises:
        S2S2InputError: missing, unreadable or truncated file, not a 3D volume, NaN/inf values,
            non-integer labels, unusable geometry (:func:`check_nifti_header`, :func:`check_slice_spacing`).
    """
    path = _existing(path)
    if path.is_dir() and not any(p.is_file() for p in path.iterdir()):
        raise S2S2InputError(path, "folder holds no DICOM files", "point to a folder with the .dcm files of one series")
    if path.is_file() and path.name.endswith(_NIFTI_SUFFIXES):
        check_nifti_header(path)
    elif path.is_dir():
        check_slice_spacing(path)  # before ITK, which would stack the slices evenly (and warn on stderr)
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    try:
        img = _loader(_reader_for(path))(str(path))
        img = Orientation(axcodes=CANONICAL_AXCODES, labels=_RAS_LABELS)(img)
        arr = img.as_tensor()  # forces a full read: truncated gzip fails here, not later
    except S2S2InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
        kind = "DICOM series" if path.is_dir() else "NIfTI file"
        raise S2S2InputError(
            path,
            f"cannot read this {kind} ({type(exc).__name__}: {str(exc).splitlines()[0].replace(f': {path}.', '').replace(str(path), 'it')[:200] if str(exc) else ''})",
            "re-export or re-download it; a truncated .nii.gz is the usual cause",
        ) from None
    if path.is_dir():
        n_files = len(_dicom_files(path))
        if n_files != arr.shape[-1]:
            raise S2S2InputError(
                path,
                f"the folder holds {n_files} files but only {arr.shape[-1]} slices could be read (a missing, corrupt or foreign file)",
                "keep exactly one complete DICOM series per folder; re-export the unreadable files",
            )
    if img.ndim != 4 or img.shape[0] != 1:
        shape = tuple(arr.shape[1:]) + ((int(arr.shape[0]),) if arr.shape[0] > 1 else ())
        raise S2S2InputError(
            path,
            f"expected one 3D volume, got a {len(shape)}D image of shape {shape}",
            "give a single-channel 3D image (split 4D series into one file per volume)",
        )
    if is_label:
        if arr.is_floating_point() and not torch.equal(arr, torch.round(arr)):
            raise S2S2InputError(path, "label file holds non-integer values", "labels must be integer class ids")
        if arr.numel() and arr.min() < 0:
            raise S2S2InputError(path, "label file holds negative values", "labels must be class ids >= 0")
        img = MetaTensor(arr.to(torch.int64), meta=img.meta, applied_operations=img.applied_operations)
    else:
        if not torch.isfinite(arr).all():
            bad = int((~torch.isfinite(arr)).sum())
            raise S2S2InputError(
                path, f"image holds {bad} NaN/inf voxels", "fix or re-export the image; intensities must be finite"
            )
        img = MetaTensor(arr.to(torch.float32), meta=img.meta, applied_operations=img.applied_operations)
    img.meta["filename_or_obj"] = str(path)
    return img


@dataclass
class CaseVolume:
    """One preprocessed case, held as plain numpy arrays (compact, fork-friendly).

    Attributes:
        case_id: name of the case (file stem).
        image: float32 (X, Y, Z), intensity-transformed, RAS.
        label: uint8 (X, Y, Z) target-map ids, RAS (``None`` for unlabelled cases).
        affine: 4x4 RAS affine of ``image``.
        source_affine: affine of the file as stored (to write outputs back in its geometry).
        image_path / label_path: where it came from.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    source_affine: np.ndarray
    image_path: str
    label_path: str | None = None

    @property
    def spacing(self) -> np.ndarray:
        """Voxel spacing (mm) of the RAS arrays."""
        return spacing_of(self.affine)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[-1])

    @property
    def nbytes(self) -> int:
        return int(self.image.nbytes + (0 if self.label is None else self.label.nbytes))


def case_id_of(path: str | os.PathLike) -> str:
    """Case name from a file or folder name (``.nii.gz`` / ``.nii`` stripped)."""
    name = Path(path).name
    for suffix in _NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_same_grid(image: MetaTensor, label: MetaTensor, image_path: str, label_path: str, atol: float = 1e-3) -> None:
    """Raise :class:`S2S2InputError` unless image and label share shape and affine."""
    if tuple(image.shape[1:]) != tuple(label.shape[1:]):
        raise S2S2InputError(
            label_path,
            f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} of {image_path}",
            "pair each image with its own label file, resampled to the image grid",
        )
    a, b = np.asarray(image.affine, np.float64), np.asarray(label.affine, np.float64)
    if not np.allclose(a, b, atol=atol):
        raise S2S2InputError(
            label_path,
            f"label affine differs from the affine of {image_path} (max difference {np.abs(a - b).max():.4g} mm)",
            "resample the label onto the image grid or fix its header",
        )


def load_case(
    image_path: str | os.PathLike,
    label_path: str | os.PathLike | None,
    intensity=None,
    remap=None,
    valid_label_ids: set[int] | None = None,
    case_id: str | None = None,
    transform=None,
    check_image=None,
) -> CaseVolume:
    """Load, check and preprocess one image/label pair.

    Args:
        image_path / label_path: NIfTI files or DICOM folders (label may be ``None``).
        intensity: array transform applied to the image (e.g. :class:`~s2s2_monai.transforms.CTWindow`).
        remap: array transform applied to the label (e.g. :class:`~s2s2_monai.transforms.RemapLabels`).
        valid_label_ids: ids allowed in the label file *before* remapping; others are an error.
        case_id: defaults to the image file name without extension.
        transform: dictionary transform over ``{"image", "label"}`` applied after ``remap`` and
            ``intensity`` (e.g. a bundle's ``CTWindowd`` / ``MRINormalized`` / ``RemapLabelsd``).
        check_image: ``check_image(raw image, image_path)`` before any preprocessing (e.g. the modality
            range check of :func:`~s2s2_monai.data.modality.check_modality_range`).
    """
    image = load_volume(image_path)
    if check_image is not None:
        check_image(image, image_path)
    source_affine = source_affine_of(image)
    label = None
    if label_path is not None:
        label = load_volume(label_path, is_label=True)
        check_same_grid(image, label, str(image_path), str(label_path))
        if valid_label_ids is not None:
            found = set(np.unique(to_numpy(label)).tolist())
            unknown = sorted(found - set(valid_label_ids))
            if unknown:
                raise S2S2InputError(
                    label_path,
                    f"label ids {unknown[:10]} are not in the label map (allowed: {sorted(valid_label_ids)[:20]})",
                    "choose the matching --label-map / label_remap for this annotation",
                )
    img = intensity(image) if intensity is not None else image
    lab = None if label is None else (remap(label) if remap is not None else label)
    if transform is not None:
        data = transform({"image": img} if lab is None else {"image": img, "label": lab})
        img, lab = data["image"], data.get("label")
    image_np = np.ascontiguousarray(to_numpy(img)[0], dtype=np.float32)
    label_np = None
    if lab is not None:
        label_np = np.ascontiguousarray(to_numpy(lab)[0], dtype=np.uint8)
    return CaseVolume(
        case_id=case_id or case_id_of(image_path),
        image=image_np,
        label=label_np,
        affine=np.asarray(image.affine, dtype=np.float64),
        source_affine=source_affine,
        image_path=str(image_path),
        label_path=None if label_path is None else str(label_path),
    )


def source_affine_of(img: MetaTensor) -> np.ndarray:
    """Affine of the volume as read from disk (before the RAS reorientation)."""
    original = img.meta.get("original_affine")
    return np.asarray(original if original is not None else img.affine, dtype=np.float64)


def to_source_orientation(
    array: np.ndarray | torch.Tensor, affine: np.ndarray, source_affine: np.ndarray
) -> np.ndarray | torch.Tensor:
    """Reorient an (X, Y, Z) array from RAS (``affine``) back to the file's axis order.

    Works on numpy arrays and on torch tensors (kept on their device).
    """
    src = nib.orientations.io_orientation(np.asarray(affine))
    dst = nib.orientations.io_orientation(np.asarray(source_affine))
    transform = nib.orientations.ornt_transform(src, dst)
    is_tensor = is_torch(array)
    out = array
    flips = [i for i, (_, flip) in enumerate(transform) if flip == -1]
    if flips:
        out = out.flip(flips) if is_tensor else np.flip(out, flips)
    perm = [0] * 3
    for i, (axis, _) in enumerate(transform):
        perm[int(axis)] = i
    out = out.permute(*perm) if is_tensor else np.transpose(out, perm)
    return out.contiguous() if is_tensor else np.ascontiguousarray(out)


def save_nifti_atomic(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype=None) -> Path:
    """Write a NIfTI file via a temporary name and ``os.replace`` (never a half-written file).

    The gzip header carries no timestamp, so equal arrays give equal bytes.
    """
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array if dtype is None else np.asarray(array).astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.header.set_data_dtype(arr.dtype)
    img.set_qform(np.asarray(affine), code=1)
    img.set_sform(np.asarray(affine), code=1)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        raw = img.to_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.compress(raw, compresslevel=6, mtime=0)
        with open(tmp, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_prediction(labels, affine: np.ndarray, source_affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Write (X, Y, Z) RAS class ids as a NIfTI label map on the grid of the original file (atomic).

    The one prediction writer (evaluation, inference bundle, MONAI Label): undoes the RAS
    reorientation (:func:`to_source_orientation`) and stores uint8 (int16 beyond 255 classes)
    with the file's own affine.
    """
    arr = to_numpy(labels)
    arr = arr.astype(np.uint8 if arr.size == 0 or arr.max() <= 255 else np.int16)
    return save_nifti_atomic(to_source_orientation(arr, affine, source_affine), source_affine, path)


def read_nifti_ras(
    path: str | os.PathLike, is_label: bool = False, compact: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Read a 3D NIfTI file with nibabel alone (no MONAI import), reoriented to RAS.

    The same array and affine as ``load_volume(path, is_label)`` (its ``[0]`` and ``.affine``),
    with the same checks and error messages, without the ~10 s ``import monai``: what
    ``s2s2 evaluate`` reads prediction and label folders with. DICOM series stay with
    :func:`load_volume` (ITK).

    Args:
        path: ``.nii`` / ``.nii.gz`` file.
        is_label: labels are checked to hold non-negative integers and returned as int64;
            images as float32 and checked to hold finite values only.
        compact: integer data stored without scaling keeps an integer type instead of int64
            (labels) or float32 (images): uint8 when its values fit a byte, else int64. Same
            values and checks, no 8-byte (or float) copy of the volume: what ``s2s2 evaluate``
            reads predictions and labels with. Float or scaled data is read as without it.

    Returns:
        ``(array, affine)``: the (X, Y, Z) array in RAS and its 4x4 float64 RAS affine.

    Raises:
        S2S2InputError: missing, unreadable or truncated file, not a 3D volume, NaN/inf values,
            non-integer labels.
    """
    path = _existing(path)
    if not (path.is_file() and path.name.endswith(_NIFTI_SUFFIXES)):
        raise S2S2InputError(
            path, "not a NIfTI file", "give a .nii or .nii.gz file (DICOM series go through load_volume)"
        )
    check_nifti_header(path)
    try:
        img = nib.load(str(path))
        dataobj = img.dataobj
        # integer data without scaling keeps its values exactly; anything else is read as float32, as MONAI's LoadImage does
        scaled = getattr(dataobj, "slope", 1.0) != 1.0 or getattr(dataobj, "inter", 0.0) != 0.0
        raw = np.asanyarray(dataobj)
        keep_int = raw.dtype.kind in "iub" and not scaled and (is_label or compact)
        arr = raw if keep_int else np.asarray(raw, dtype=np.float32)
        affine = np.array(img.affine, dtype=np.float64)
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one clear message
        raise S2S2InputError(
            path,
            f"cannot read this NIfTI file ({type(exc).__name__}: {str(exc).splitlines()[0].replace(str(path), 'it')[:200] if str(exc) else ''})",
            "re-export or re-download it; a truncated .nii.gz is the usual cause",
        ) from None
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]  # one channel stored last: a 3D volume, as MONAI's EnsureChannelFirst reads it
    if arr.ndim != 3:
        shape = (
            tuple(arr.shape)
            if arr.ndim < 3
            else tuple(arr.shape[:-1]) + ((int(arr.shape[-1]),) if arr.shape[-1] > 1 else ())
        )
        raise S2S2InputError(
            path,
            f"expected one 3D volume, got a {len(shape)}D image of shape {shape}",
            "give a single-channel 3D image (split 4D series into one file per volume)",
        )
    ornt = nib.orientations.io_orientation(affine)  # as MONAI's Orientation("RAS") and nib.as_closest_canonical
    if not np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        affine = affine @ nib.orientations.inv_ornt_aff(ornt, arr.shape)
        arr = nib.orientations.apply_orientation(arr, ornt)
    if compact and arr.dtype.kind in "iub":
        return _compact_ints(arr, path, is_label), affine
    if is_label:
        if arr.dtype.kind == "f" and not np.array_equal(arr, np.round(arr)):
            raise S2S2InputError(path, "label file holds non-integer values", "labels must be integer class ids")
        if arr.size and arr.min() < 0:
            raise S2S2InputError(path, "label file holds negative values", "labels must be class ids >= 0")
        arr = arr.astype(np.int64)
    else:
        finite = np.isfinite(arr)
        if not finite.all():
            raise S2S2InputError(
                path,
                f"image holds {int((~finite).sum())} NaN/inf voxels",
                "fix or re-export the image; intensities must be finite",
            )
    return np.ascontiguousarray(arr), affine


def _compact_ints(arr: np.ndarray, path: Path, is_label: bool) -> np.ndarray:
    """Integer volume of :func:`read_nifti_ras` ``(compact=True)``: uint8 when it fits, else int64.

    One pass for the range (none for uint8/bool) and no copy for uint8: the array keeps nibabel's
    (Fortran) memory order, which every numpy consumer handles (a C-order copy cost ~45 ms per
    500 x 400 x 110 volume).
    """
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.dtype != np.uint8 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if is_label and lo < 0:
            raise S2S2InputError(path, "label file holds negative values", "labels must be class ids >= 0")
        if lo >= 0 and hi < 256:
            return arr.astype(np.uint8, order="K")
    return np.asarray(arr, dtype=np.uint8 if arr.dtype == np.uint8 else np.int64, order="K")
