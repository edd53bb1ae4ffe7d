"""Seeded, graded corruptions of whole volumes: 4 scanner artefacts and 4 CT-relevant degradations, 5 levels each.

The field's robustness convention (ImageNet-C, Hendrycks & Dietterich 2019; ROOD-MRI, Boone et al. 2023):
several corruption types x 5 severities, reported per severity. :data:`CORRUPTIONS` holds every
corruption with its five levels in one place (:class:`Corruption`); :func:`severity_table` /
:func:`severity_table_markdown` list them.

**Scanner artefacts** (Chen et al., MICCAI 2021, upstream ``generate_artefacted_data.py``, made with
TorchIO; MONAI has no ghosting or motion, so TorchIO is used for all four). Upstream draws each
magnitude from a wide random range; here the *magnitude* is fixed per level and only the direction /
phase stays random, so the levels do not overlap. Level 3 is the upstream setting:

- ``bias_field``: ``RandomBiasField(coefficients=c)`` (order 3, coefficients ~ U(-c, c)); upstream
  c = 0.5 (TorchIO default) = level 3; levels c = 0.15, 0.3, 0.5, 0.7, 0.9.
- ``ghosting``: ``RandomGhosting(intensity=(s, s))``, 4-10 ghosts along a random axis (upstream
  defaults); upstream s ~ U(0.5, 1), its mean 0.75 = level 3; levels s = 0.25, 0.5, 0.75, 1.0, 1.25
  (the removed k-space planes are scaled by 1 - s, so the change is linear in s; s > 1 inverts them).
- ``motion``: ``RandomMotion(degrees=30, translation=10)`` (upstream; 2 movements, rotations ~ U(-30, 30)
  degrees, translations ~ U(-10, 10) mm) at every level; graded by *when* the patient moves, i.e. the
  share of k-space (along the last axis, around its centre) acquired in the unmoved pose: 75, 50,
  33 (upstream, movements at ~1/3 and ~2/3), 15, 5 %. Grading the magnitude instead does not work:
  the image change saturates near 30 degrees (a rotated copy of the anatomy no longer overlaps the
  original; measured mean |change| 0.084, 0.090, 0.102, 0.113, 0.113, 0.113 at 5, 10, 20, 30, 40,
  50 degrees on a 48 x 48 x 12 CT phantom), while shrinking the unmoved share grows it monotonically.
- ``spike``: ``RandomSpike(intensity=(r, r))``, 1 spike at a random k-space position; upstream
  r ~ U(1, 3), its mean 2 = level 3; levels r = 0.5, 1, 2, 3, 4.

**CT-relevant degradations** (own code, same seeded draw), in units of the [0, 1] intensity window:

- ``gaussian_noise``: white Gaussian noise of standard deviation sigma (low-dose-like); sigma = 0.02,
  0.04, 0.06, 0.08, 0.10, i.e. 8-40 HU in the [-125, 275] HU window.
- ``resolution``: anisotropic resolution loss, a thick-slice acquisition: each axis is averaged over
  cells ``f`` voxels wide (cell grid at a random phase) and linearly interpolated back; in-plane
  f = 1.25, 1.5, 1.75, 2, 2.5 (axes 0, 1), through-plane f = 1.5, 2, 3, 4, 5 (axis 2).
- ``intensity_shift``: a window shift, u + o, o = +-v x U(0.9, 1.1), random sign; v = 0.025, 0.05,
  0.1, 0.15, 0.2, i.e. 10-80 HU.
- ``gamma``: a contrast change, u ** g, log g = +-m x U(0.9, 1.1), random sign; m = 0.1, 0.2, 0.3, 0.4,
  0.5 (level 3 = the bounds of TorchIO's ``RandomGamma`` default, log g ~ U(-0.3, 0.3)).

The random draws of a seed are the same at every level (same calls, same order; uniform draws are
scaled by the level), so one seed gives one corruption "direction" at five strengths.

:func:`corrupt_volume` works in the network's input space (after the CT window / MRI
normalisation), as upstream: the volume is min-max scaled to [0, 1] (u), corrupted as one 3D image
with its voxel spacing, and mapped back to the original range. The scanner artefacts are min-max
scaled back to [0, 1] first (upstream ``rescale_intensity``), so the output spans exactly the input's
range; the CT degradations are clipped to [0, 1] (the window clip), so the output lies within the
input's range. For a CT volume in the [0, 1] window that touches 0 and 1 (air, bone) the units above
are the window. The draw uses torch's RNG forked and seeded with ``seed`` (numpy's RNG is not used),
so a (volume, corruption, seed, severity) tuple always gives the same copy, bit for bit, and the
global RNG is untouched. :func:`copy_seed` derives the seed of copy ``k`` of a case from a base seed
(stable across runs and machines); give all severities of a copy the same seed.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.robustness.names import CORRUPTION_NAMES, SEVERITIES

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "Corruption",
    "copy_seed",
    "corrupt_volume",
    "corruption_transform",
    "get_corruption",
    "severity_table",
    "severity_table_markdown",
]

# SEVERITIES (the levels, mildest first, ImageNet-C convention) and the corruption names are
# literal constants in :mod:`.names`, torch-free, for the CLI; the registry below must match them.


def _torchio():
    try:
        import torchio
    except ImportError as exc:  # pragma: no cover - torchio is an install requirement
        raise S2S2InputError(
            None, "the robustness corruptions need TorchIO, which is not installed", "pip install torchio"
        ) from exc
    return torchio


@dataclass(frozen=True)
class Corruption:
    """One corruption and its five severity levels.

    Attributes:
        name: registry key.
        description: what it models and what is random.
        levels: parameters of levels 1..5 (``levels[k - 1]``), in the units of ``fmt``.
        fmt: format string of one level's parameters for tables (``fmt.format(**params)``).
        build: parameters -> TorchIO transform (applied to a [0, 1] subject under the seeded RNG).
        rescale: True: min-max scale the output back to [0, 1] (scanner artefacts, upstream);
            False: clip it to [0, 1] (CT degradations).
        implementation: the TorchIO class used, or ``"s2s2"`` for the project's own code.
        level3: how level 3 relates to the upstream / library setting.
    """

    name: str
    description: str
    levels: tuple[dict, ...]
    fmt: str
    build: Callable[..., Callable]
    rescale: bool
    implementation: str
    level3: str

    def params(self, severity: int = 3) -> dict:
        """A copy of the parameters of ``severity`` (1..5)."""
        return dict(self.levels[_check_severity(severity) - 1])

    def transform(self, severity: int = 3) -> Callable:
        """The TorchIO transform of ``severity``."""
        return self.build(**self.params(severity))

    def record(self, severity: int = 3) -> dict:
        """JSON-ready description of one level (for reports)."""
        p = self.params(severity)
        return {
            "corruption": self.name,
            "severity": int(severity),
            "implementation": self.implementation,
            "params": p,
            "text": self.fmt.format(**p),
        }


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise S2S2InputError(
            None, f"severity {severity!r} is not a level", f"use one of {', '.join(map(str, SEVERITIES))}"
        )
    return int(severity)


# --- scanner artefacts (TorchIO) -------------------------------------------------------------


def _bias_field(coefficients):
    return _torchio().RandomBiasField(coefficients=coefficients, order=3)


def _ghosting(intensity):
    return _torchio().RandomGhosting(num_ghosts=(4, 10), axes=(0, 1, 2), intensity=(intensity, intensity))


@functools.cache
def _graded_motion_class():
    tio = _torchio()

    class GradedRandomMotion(tio.RandomMotion):
        """``RandomMotion`` whose k-space segment of the reference (unmoved) pose is scaled by ``centre_scale``.

        TorchIO fills k-space along the last axis in 3 segments split at the movement times
        t1 ~ 1/3, t2 ~ 2/3 (+-10 %): the centre segment from the unmoved image, the outer ones from
        the two moved poses. Here the times are mapped to 0.5 + (t - 0.5) x ``centre_scale`` (1 =
        upstream), so a smaller scale leaves less of k-space unmoved; the draws are unchanged.
        """

        def __init__(self, centre_scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.centre_scale = float(centre_scale)

        def get_params(self, *args, **kwargs):
            times, degrees, translation = super().get_params(*args, **kwargs)
            if self.centre_scale != 1.0:  # 1: upstream times, bit for bit
                times = np.clip(0.5 + (times - 0.5) * self.centre_scale, 0.0, 1.0).astype(times.dtype)
            return times, degrees, translation

    return GradedRandomMotion


def _motion(degrees, translation, unmoved):
    return _graded_motion_class()(
        centre_scale=unmoved * 3.0, degrees=degrees, translation=translation, num_transforms=2
    )


def _spike(intensity):
    return _torchio().RandomSpike(num_spikes=(1, 1), intensity=(intensity, intensity))


# --- CT-relevant degradations (own code, torch RNG) ----------------------------------------


def _lambda(fn: Callable[[torch.Tensor], torch.Tensor], **params) -> Callable:
    """A TorchIO transform applying ``fn(channel_tensor, **params)`` to each intensity image."""
    tio = _torchio()
    f = functools.partial(fn, **params)
    return tio.Lambda(
        lambda t: torch.stack([f(c.float()).to(torch.float32) for c in t]), types_to_apply=[tio.INTENSITY]
    )


def _jittered_signed(m: float) -> float:
    """+-m x U(0.9, 1.1), random sign; the same two draws at every level."""
    sign = 1.0 if int(torch.randint(0, 2, (1,))) else -1.0
    return sign * m * (0.9 + 0.2 * float(torch.rand(1)))


def _noise_fn(u: torch.Tensor, sigma: float) -> torch.Tensor:
    return (u + sigma * torch.randn(u.shape, dtype=torch.float32)).clamp(0.0, 1.0)


def _shift_fn(u: torch.Tensor, offset: float) -> torch.Tensor:
    return (u + _jittered_signed(offset)).clamp(0.0, 1.0)


def _gamma_fn(u: torch.Tensor, log_gamma: float) -> torch.Tensor:
    return u.clamp(0.0, 1.0) ** float(np.exp(_jittered_signed(log_gamma)))


def _thick_slice_matrix(n: int, factor: float, phase: float) -> np.ndarray:
    """(n, n) operator of one axis: average over cells ``factor`` voxels wide, linear interpolation back.

    Fine voxel i covers [i, i + 1); the coarse cell edges are ``(phase - 1 + k) * factor`` (phase in
    [0, 1)); cells are clipped to [0, n) and each averages the fine voxels it overlaps (by overlap
    length). The coarse values sit at their cells' centres and are linearly interpolated (constant
    beyond the first / last centre) back to the fine centres.
    """
    start = (phase - 1.0) * factor
    m = int(np.ceil((n - start) / factor)) + 1
    edges = start + factor * np.arange(m + 1)
    lo, hi = np.clip(edges[:-1], 0, n), np.clip(edges[1:], 0, n)
    keep = hi > lo + 1e-9
    lo, hi = lo[keep], hi[keep]
    i = np.arange(n, dtype=np.float64)
    overlap = np.clip(np.minimum(hi[:, None], i[None] + 1) - np.maximum(lo[:, None], i[None]), 0.0, None)
    down = overlap / overlap.sum(1, keepdims=True)
    centres = (lo + hi) / 2
    up = np.stack([np.interp(i + 0.5, centres, e) for e in np.eye(len(centres))], axis=1)
    return up @ down


def _resolution_fn(u: torch.Tensor, in_plane: float, z: float) -> torch.Tensor:
    from scipy import sparse

    phases = torch.rand(3).tolist()
    x = u.numpy().astype(np.float64)
    for axis, (factor, phase) in enumerate(zip((in_plane, in_plane, z), phases, strict=True)):
        a = sparse.csr_matrix(_thick_slice_matrix(x.shape[axis], factor, phase))
        moved = np.moveaxis(x, axis, 0)
        x = np.moveaxis((a @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape), 0, axis)
    return torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))


# --- registry ----------------------------------------------------------------------------


def _levels(**columns) -> tuple[dict, ...]:
    keys = list(columns)
    return tuple({k: columns[k][i] for k in keys} for i in range(len(SEVERITIES)))


_CORRUPTION_LIST = (
    Corruption(
        "bias_field",
        "smooth multiplicative MRI bias field, exp of a random order-3 polynomial with coefficients ~ U(-c, c)",
        _levels(coefficients=(0.15, 0.3, 0.5, 0.7, 0.9)),
        "c = {coefficients:g}",
        _bias_field,
        True,
        "RandomBiasField",
        "upstream RandomBiasField() default coefficients=0.5",
    ),
    Corruption(
        "ghosting",
        "MRI ghosting: every n-th k-space plane (n ~ U{4..10}, random axis) scaled by 1 - s",
        _levels(intensity=(0.25, 0.5, 0.75, 1.0, 1.25)),
        "s = {intensity:g}",
        _ghosting,
        True,
        "RandomGhosting",
        "upstream RandomGhosting() default intensity ~ U(0.5, 1), mean 0.75",
    ),
    Corruption(
        "motion",
        "MRI rigid motion: k-space (along the last axis) from 3 poses, 2 movements with rotations ~ U(-d, d) deg and "
        "translations ~ U(-t, t) mm; a share of k-space around its centre stays unmoved",
        _levels(degrees=(30,) * 5, translation=(10,) * 5, unmoved=(0.75, 0.5, 1 / 3, 0.15, 0.05)),
        "{unmoved:.0%} unmoved (d = {degrees:g} deg, t = {translation:g} mm)",
        _motion,
        True,
        "RandomMotion (subclass, graded k-space timing)",
        "upstream RandomMotion(degrees=30, translation=10): movements at ~1/3, 2/3 of k-space",
    ),
    Corruption(
        "spike",
        "MRI k-space spike (herringbone stripes): one random k-space point raised by r x max |k|",
        _levels(intensity=(0.5, 1.0, 2.0, 3.0, 4.0)),
        "r = {intensity:g}",
        _spike,
        True,
        "RandomSpike",
        "upstream RandomSpike() default intensity ~ U(1, 3), mean 2",
    ),
    Corruption(
        "gaussian_noise",
        "low-dose-like white Gaussian noise of std sigma (window units), clipped to the window",
        _levels(sigma=(0.02, 0.04, 0.06, 0.08, 0.10)),
        "sigma = {sigma:g}",
        functools.partial(_lambda, _noise_fn),
        False,
        "s2s2",
        "sigma 0.06 = 24 HU in the [-125, 275] HU window",
    ),
    Corruption(
        "resolution",
        "anisotropic resolution loss: thick-slice averaging over f voxels (random cell phase) and linear re-interpolation",
        _levels(in_plane=(1.25, 1.5, 1.75, 2.0, 2.5), z=(1.5, 2.0, 3.0, 4.0, 5.0)),
        "in-plane x{in_plane:g}, z x{z:g}",
        functools.partial(_lambda, _resolution_fn),
        False,
        "s2s2",
        "z x3: e.g. 1.5 mm slices acquired as 4.5 mm",
    ),
    Corruption(
        "intensity_shift",
        "window shift / calibration offset u + o, o = +-v x U(0.9, 1.1), clipped to the window",
        _levels(offset=(0.025, 0.05, 0.1, 0.15, 0.2)),
        "v = {offset:g}",
        functools.partial(_lambda, _shift_fn),
        False,
        "s2s2",
        "v 0.1 = 40 HU in the [-125, 275] HU window",
    ),
    Corruption(
        "gamma",
        "contrast change u ** g, log g = +-m x U(0.9, 1.1)",
        _levels(log_gamma=(0.1, 0.2, 0.3, 0.4, 0.5)),
        "log g = +-{log_gamma:g}",
        functools.partial(_lambda, _gamma_fn),
        False,
        "s2s2",
        "bounds of TorchIO RandomGamma() default log_gamma ~ U(-0.3, 0.3)",
    ),
)

#: name -> :class:`Corruption` (scanner artefacts first, then the CT degradations).
CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in _CORRUPTION_LIST}
assert tuple(CORRUPTIONS) == CORRUPTION_NAMES, "update s2s2_monai/robustness/names.py with the registry"


def get_corruption(name: str) -> Corruption:
    """The :class:`Corruption` called ``name``."""
    if name not in CORRUPTIONS:
        raise S2S2InputError(None, f"unknown corruption {name!r}", f"use one of {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def corruption_transform(name: str, severity: int = 3) -> Callable:
    """The TorchIO transform of corruption ``name`` at ``severity`` (see :data:`CORRUPTIONS`)."""
    return get_corruption(name).transform(severity)


def severity_table() -> list[dict]:
    """One row per corruption x severity: corruption, severity, implementation, params, text."""
    return [c.record(s) for c in CORRUPTIONS.values() for s in SEVERITIES]


def severity_table_markdown() -> str:
    """The five levels of every corruption as a markdown table (one row per corruption)."""
    lines = [
        "| corruption | " + " | ".join(f"level {s}" for s in SEVERITIES) + " | level 3 = |",
        "|---" * (len(SEVERITIES) + 2) + "|",
    ]
    for c in CORRUPTIONS.values():
        cells = [c.fmt.format(**c.params(s)) for s in SEVERITIES]
        lines.append(f"| `{c.name}` | " + " | ".join(cells) + f" | {c.level3} |")
    return "\n".join(lines) + "\n"


def copy_seed(base_seed: int, corruption: str, case_id: str, copy: int) -> int:
    """Seed of copy ``copy`` of ``case_id`` under ``corruption`` (CRC32 of the four, 31-bit)."""
    return zlib.crc32(f"{int(base_seed)}|{corruption}|{case_id}|{int(copy)}".encode()) & 0x7FFFFFFF


def _rescale01(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


def corrupt_volume(
    image, corruption: str, seed: int, spacing: Sequence[float] = (1.0, 1.0, 1.0), severity: int = 3
) -> np.ndarray:
    """One seeded corrupted copy of a volume.

    Args:
        image: (X, Y, Z) or (1, X, Y, Z) array/tensor, intensity-transformed (network input space).
        corruption: a name of :data:`CORRUPTIONS`.
        seed: seed of the draw (same seed, same copy; the same draw at every severity).
        spacing: voxel size in mm (motion translations are in mm).
        severity: level 1..5 (:data:`SEVERITIES`); 3 is the upstream setting of the scanner artefacts.

    Returns:
        float32 (X, Y, Z) array: spanning exactly the value range of ``image`` (scanner artefacts)
        or within it (CT degradations, clipped).
    """
    spec = get_corruption(corruption)
    transform = spec.transform(severity)
    vol = torch.as_tensor(np.asarray(image.as_tensor() if hasattr(image, "as_tensor") else image), dtype=torch.float32)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    if vol.ndim != 3:
        raise ValueError(f"expected an (X, Y, Z) volume, got shape {tuple(vol.shape)}")
    tio = _torchio()
    lo, hi = vol.min(), vol.max()
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    subject = tio.Subject(image=tio.ScalarImage(tensor=_rescale01(vol)[None], affine=affine))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        out = transform(subject)["image"].data[0].float()
    out = _rescale01(out) if spec.rescale else out.clamp(0.0, 1.0)
    return (out * (hi - lo) + lo).numpy().astype(np.float32)
