"""Project-made phantom abdominal CT volumes: the embedded demo data.

Each case is an elliptic body (fat rim, muscle, spine) holding the 8 Synapse organs as jittered
ellipsoids / a cylinder at anatomically sensible places (liver and gallbladder on the patient's
right, spleen and stomach on the left, aorta in front of the spine), with plausible
contrast-enhanced HU values, smoothing and noise. The field of view is fixed (~350 x 350 x 144 mm):
the default 128 x 128 x 48 grid has ~2.7 x 2.7 x 3 mm voxels. Files are
stored in LPS axis order, so readers must reorient them. Everything is seeded: the same seed
writes the same bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from s2s2_monai.atomic import write_json
from s2s2_monai.data.volumes import save_nifti_atomic
from s2s2_monai.errors import S2S2InputError

logger = logging.getLogger(__name__)

__all__ = [
    "make_phantom_case",
    "write_demo_data",
    "write_nnunet_demo",
    "ensure_demo_data",
    "ORGANS",
    "NNUNET_DEMO_LABELS",
]

#: Synapse id -> (name, centre RAS mm (x right, y anterior, z superior), radii mm, mean HU).
ORGANS: dict[int, tuple[str, tuple[float, float, float], tuple[float, float, float], float]] = {
    5: ("liver", (65.0, 10.0, 35.0), (70.0, 62.0, 55.0), 105.0),
    1: ("spleen", (-85.0, -30.0, 45.0), (30.0, 40.0, 42.0), 120.0),
    2: ("right kidney", (60.0, -50.0, -25.0), (24.0, 30.0, 48.0), 170.0),
    3: ("left kidney", (-60.0, -50.0, -20.0), (24.0, 30.0, 48.0), 170.0),
    6: ("stomach", (-40.0, 35.0, 40.0), (42.0, 32.0, 38.0), 30.0),
    4: ("gallbladder", (50.0, 50.0, 0.0), (16.0, 16.0, 26.0), 8.0),
    8: ("pancreas", (-5.0, 5.0, 5.0), (55.0, 11.0, 12.0), 85.0),
    7: ("aorta", (-12.0, -30.0, 0.0), (11.0, 11.0, 1e4), 210.0),
}

_BODY_HU, _FAT_HU, _AIR_HU, _BONE_HU = 45.0, -95.0, -1000.0, 650.0


def make_phantom_case(
    rng: np.random.Generator, shape=(128, 128, 48), spacing=(2.7, 2.7, 3.0)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom case in LPS storage order.

    Returns:
        image int16 HU, label uint8 Synapse ids (both ``shape``), and the 4x4 LPS-ordered affine.
    """
    nx, ny, nz = shape
    sx, sy, sz = spacing
    # RAS world coordinates of voxel centres, volume centred at the origin
    x = (np.arange(nx) - (nx - 1) / 2) * sx
    y = (np.arange(ny) - (ny - 1) / 2) * sy
    z = (np.arange(nz) - (nz - 1) / 2) * sz
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    hu = np.full(shape, _AIR_HU, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    scale = rng.uniform(0.9, 1.1)
    body = (X / (160 * scale)) ** 2 + ((Y + 5) / (115 * scale)) ** 2 <= 1
    inner = (X / (148 * scale)) ** 2 + ((Y + 5) / (103 * scale)) ** 2 <= 1
    hu[body] = _FAT_HU
    hu[inner] = _BODY_HU
    spine = ((X / 17) ** 2 + ((Y + 75) / 17) ** 2) <= 1
    hu[spine] = _BONE_HU
    for organ_id, (_, centre, radii, mean_hu) in ORGANS.items():
        c = np.asarray(centre) + rng.normal(0, 6, 3) * scale
        r = np.asarray(radii) * rng.uniform(0.85, 1.15, 3) * scale
        mask = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1
        mask &= inner
        hu[mask] = mean_hu + rng.normal(0, 8)
        label[mask] = organ_id
    hu = gaussian_filter(hu, sigma=0.8) + rng.normal(0, 12, shape).astype(np.float32)
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    # store in LPS order: flip x and y; affine maps LPS-ordered indices to RAS mm
    image, label = image[::-1, ::-1, :].copy(), label[::-1, ::-1, :].copy()
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [x[-1], y[-1], z[0] + rng.uniform(-20, 20)]
    return image, label, affine


def _phantoms(cases: int, seed: int, shape, progress: bool):
    """``(i, image, label, affine)`` of phantom ``i`` = 0..cases-1, each from its own seeded stream."""
    for i in tqdm(range(cases), desc="phantoms", disable=not progress, unit="case"):
        rng = np.random.default_rng([seed, i])
        # field of view ~350 x 350 x 144 mm whatever the grid (128x128x48 -> ~2.7 x 2.7 x 3 mm voxels)
        spacing = (
            350.0 / shape[0] * rng.uniform(0.96, 1.04),
            350.0 / shape[1] * rng.uniform(0.96, 1.04),
            144.0 / shape[2],
        )
        yield (i, *make_phantom_case(rng, shape=shape, spacing=spacing))


def write_demo_data(
    out: str | os.PathLike, cases: int = 6, seed: int = 0, shape=(128, 128, 48), progress: bool = True
) -> Path:
    """Write ``cases`` phantoms as ``OUT/imagesTr``, ``OUT/labelsTr`` and ``OUT/datalist.json``.

    The last third of the cases (at least one) is the test split; with 3 cases or more, the case before
    them is the validation split (disjoint from test: it may choose a model); the rest train.
    """
    if cases < 2:
        raise ValueError("need at least 2 cases (one for training, one for test)")
    out = Path(out)
    entries = []
    for i, image, label, affine in _phantoms(cases, seed, shape, progress):
        name = f"phantom_{i:03d}.nii.gz"
        save_nifti_atomic(image, affine, out / "imagesTr" / name)
        save_nifti_atomic(label, affine, out / "labelsTr" / name)
        entries.append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    n_test = max(1, cases // 3)
    n_val = 1 if cases >= 3 else 0
    n_train = cases - n_test - n_val
    datalist = {
        "description": f"s2s2 demo phantoms (seed {seed}), abdominal CT, Synapse label ids",
        "label_map": "synapse",
        "modality": "CT",
        "training": entries[:n_train],
        "validation": entries[n_train : n_train + n_val],
        "test": entries[n_train + n_val :],
    }
    return write_json(out / "datalist.json", datalist)


#: The own-data stand-in's three organs (nnU-Net ``dataset.json`` form) and the phantom ids they come from.
NNUNET_DEMO_LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}
_NNUNET_DEMO_REMAP = {5: 1, 1: 2, 2: 3, 3: 3}


def write_nnunet_demo(
    out: str | os.PathLike,
    cases: int = 6,
    test_cases: int = 2,
    seed: int = 0,
    shape=(96, 96, 24),
    progress: bool = True,
) -> Path:
    """Phantoms in nnU-Net's raw-dataset layout with a three-organ map: a stand-in for one's own data.

    ``OUT/imagesTr/phantom_XXX_0000.nii.gz`` + ``OUT/labelsTr/phantom_XXX.nii.gz`` (liver 1, spleen 2,
    both kidneys 3; the other phantom organs are background), the last ``test_cases`` in ``imagesTs`` /
    ``labelsTs``, and ``OUT/dataset.json`` (nnU-Net v2: ``channel_names``, ``labels``, ``numTraining``,
    ``file_ending``). Returns the ``dataset.json`` path.
    """
    if not 1 <= test_cases < cases:
        raise ValueError(f"need 1 <= test_cases < cases, got {test_cases} of {cases}")
    out = Path(out)
    lut = np.zeros(max(ORGANS) + 1, dtype=np.uint8)
    for src, dst in _NNUNET_DEMO_REMAP.items():
        lut[src] = dst
    for i, image, label, affine in _phantoms(cases, seed, shape, progress):
        split = "Ts" if i >= cases - test_cases else "Tr"
        save_nifti_atomic(image, affine, out / f"images{split}" / f"phantom_{i:03d}_0000.nii.gz")
        save_nifti_atomic(lut[label], affine, out / f"labels{split}" / f"phantom_{i:03d}.nii.gz")
    dataset = {
        "name": f"s2s2 phantoms in nnU-Net layout (seed {seed})",
        "channel_names": {"0": "CT"},
        "labels": NNUNET_DEMO_LABELS,
        "numTraining": cases - test_cases,
        "file_ending": ".nii.gz",
    }
    return write_json(out / "dataset.json", dataset)


def ensure_demo_data(out_dir: str | os.PathLike, cases: int = 6, shape=(96, 96, 24), seed: int = 0) -> str:
    """The datalist of ``s2s2 demo-data`` phantoms in ``out_dir``, written first if missing or incomplete."""
    path = Path(out_dir) / "datalist.json"
    if path.is_file():
        try:
            from s2s2_monai.data.check import require_data

            return require_data(path, out_dir)
        except S2S2InputError:
            logger.info("demo data in %s incomplete, rewriting", out_dir)
    logger.info("writing %d demo phantom cases to %s", cases, out_dir)
    return str(write_demo_data(out_dir, cases=cases, seed=seed, shape=tuple(shape), progress=False))
