"""Graded corruptions: 5 severities per corruption, measured to grow, seeded, upstream settings at level 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s2_monai.errors import S2S2InputError
from s2s2_monai.robustness.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    Corruption,
    _thick_slice_matrix,
    corrupt_volume,
    corruption_transform,
    get_corruption,
    severity_table,
    severity_table_markdown,
)

LEGACY = ("bias_field", "ghosting", "motion", "spike")
CT = ("gaussian_noise", "resolution", "intensity_shift", "gamma")
SPACING = (7.3, 7.3, 9.0)  # the phantom's 350 x 350 x 144 mm field of view on a 48 x 48 x 16 grid


@pytest.fixture(scope="module")
def ct_volume() -> np.ndarray:
    """A 48 x 48 x 16 phantom abdominal CT (body, fat rim, spine, 8 organs, noise) in the [0, 1] window."""
    from s2s2_monai.data.phantom import make_phantom_case

    hu, _, _ = make_phantom_case(np.random.default_rng(0), shape=(48, 48, 16), spacing=SPACING)
    return np.clip((hu.astype(np.float32) + 125.0) / 400.0, 0.0, 1.0)


def test_registry_has_every_corruption_with_five_levels():
    assert tuple(CORRUPTIONS) == LEGACY + CT and SEVERITIES == (1, 2, 3, 4, 5)
    for name, c in CORRUPTIONS.items():
        assert isinstance(c, Corruption) and c.name == name and len(c.levels) == len(SEVERITIES)
        assert all(set(p) == set(c.levels[0]) for p in c.levels)  # the same parameters at every level
        assert c.rescale == (name in LEGACY)
        for s in SEVERITIES:
            c.fmt.format(**c.params(s))
        c.params(3)["x"] = 1  # params() hands out copies
        assert "x" not in c.levels[2]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_stronger_level_changes_the_image_more_measured(ct_volume, name):
    """The issue's acceptance test: mean |corrupted - clean|, averaged over 3 seeds, grows strictly with the level."""
    change = [
        np.mean(
            [
                np.abs(corrupt_volume(ct_volume, name, seed, SPACING, severity=s) - ct_volume).mean()
                for seed in (0, 1, 2)
            ]
        )
        for s in SEVERITIES
    ]
    assert np.all(np.diff(change) > 0), f"{name}: mean |change| per level {np.round(change, 4).tolist()}"
    assert change[0] > 1e-3  # level 1 already changes the image


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_seeded_bit_identical_and_global_rng_untouched(ct_volume, name):
    np.random.seed(5)
    torch.manual_seed(5)
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    a = corrupt_volume(ct_volume, name, seed=11, spacing=SPACING, severity=4)
    b = corrupt_volume(torch.from_numpy(ct_volume)[None], name, seed=11, spacing=SPACING, severity=4)
    c = corrupt_volume(ct_volume, name, seed=12, spacing=SPACING, severity=4)
    np.testing.assert_array_equal(a, b)  # same (seed, level), same copy, bit for bit
    assert np.abs(a - c).max() > 1e-3  # another seed, another copy
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    st = np.random.get_state()
    assert st[0] == np_state[0] and np.array_equal(st[1], np_state[1]) and st[2:] == np_state[2:]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_output_shape_dtype_and_range(name):
    """Scanner artefacts span exactly the input's range (upstream min-max rescale); CT degradations stay within it."""
    rng = np.random.default_rng(0)
    vol = (rng.normal(size=(24, 20, 8)) + np.linspace(-1, 2, 8)).astype(np.float64)  # an MRI-like z-scored volume
    out = corrupt_volume(vol, name, seed=3, severity=5)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isfinite(out).all()
    lo, hi = vol.min(), vol.max()
    if name in LEGACY:
        assert out.min() == pytest.approx(lo, abs=1e-4) and out.max() == pytest.approx(hi, abs=1e-4)
    else:
        assert out.min() >= lo - 1e-4 and out.max() <= hi + 1e-4


def test_level_3_of_the_scanner_artefacts_is_the_upstream_setting(ct_volume):
    import torchio as tio

    assert CORRUPTIONS["bias_field"].params(3) == {"coefficients": 0.5}
    assert CORRUPTIONS["ghosting"].params(3) == {"intensity": 0.75}  # mean of upstream U(0.5, 1)
    assert CORRUPTIONS["motion"].params(3) == {"degrees": 30, "translation": 10, "unmoved": pytest.approx(1 / 3)}
    assert CORRUPTIONS["spike"].params(3) == {"intensity": 2.0}  # mean of upstream U(1, 3)
    bias, ghost, motion, spike = (corruption_transform(n) for n in LEGACY)
    assert isinstance(bias, tio.RandomBiasField) and bias.coefficients_range == (-0.5, 0.5) and bias.order == 3
    assert (
        isinstance(ghost, tio.RandomGhosting)
        and ghost.intensity_range == (0.75, 0.75)
        and ghost.num_ghosts_range == (4, 10)
    )
    assert ghost.axes == (0, 1, 2)
    assert (
        isinstance(motion, tio.RandomMotion)
        and motion.degrees_range == (-30, 30)
        and motion.translation_range == (-10, 10)
    )
    assert motion.num_transforms == 2 and motion.centre_scale == 1.0
    assert (
        isinstance(spike, tio.RandomSpike) and spike.intensity_range == (2.0, 2.0) and spike.num_spikes_range == (1, 1)
    )
    # bias field and motion at level 3 are the upstream transforms, bit for bit
    for name, upstream in (
        ("bias_field", tio.RandomBiasField()),
        ("motion", tio.RandomMotion(degrees=30, translation=10)),
    ):
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(ct_volume)[None], affine=np.diag([*SPACING, 1.0]))
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            ref = upstream(subject)["image"].data[0]
        ref = ((ref - ref.min()) / (ref.max() - ref.min())).numpy()
        np.testing.assert_allclose(corrupt_volume(ct_volume, name, 4, SPACING), ref, atol=1e-6)
    # the default severity is 3
    np.testing.assert_array_equal(
        corrupt_volume(ct_volume, "spike", 2, SPACING), corrupt_volume(ct_volume, "spike", 2, SPACING, severity=3)
    )
    # levels are fixed magnitudes (only direction / position random): the levels do not overlap
    for s in SEVERITIES:
        g, p = CORRUPTIONS["ghosting"].params(s)["intensity"], CORRUPTIONS["spike"].params(s)["intensity"]
        assert corruption_transform("ghosting", s).intensity_range == (g, g) and corruption_transform(
            "spike", s
        ).intensity_range == (p, p)


def test_one_seed_is_one_direction_at_every_level(ct_volume):
    """The draws are the same at every level: noise is the same pattern scaled, a shift keeps its sign."""
    d1 = corrupt_volume(ct_volume, "gaussian_noise", 9, severity=1) - ct_volume
    d5 = corrupt_volume(ct_volume, "gaussian_noise", 9, severity=5) - ct_volume
    inside = (ct_volume > 0.5) & (ct_volume < 0.6) & (np.abs(d1) < 0.07)  # no clip at 0 or 1 at either level
    np.testing.assert_allclose(d5[inside], 5 * d1[inside], atol=1e-5)
    assert 0.08 < d5[inside].std() < 0.12  # sigma 0.1 of the window at level 5
    signs = {
        np.sign(np.mean((corrupt_volume(ct_volume, "intensity_shift", 9, severity=s) - ct_volume)[inside]))
        for s in SEVERITIES
    }
    assert len(signs) == 1 and 0 not in signs


def test_gamma_and_shift_are_monotone_maps_of_the_window():
    u = np.linspace(0, 1, 24 * 8 * 4, dtype=np.float32).reshape(24, 8, 4)
    g = corrupt_volume(u, "gamma", 1, severity=5).ravel()
    assert g[0] == 0 and g[-1] == pytest.approx(1) and np.all(np.diff(g) >= 0)  # 0 and 1 stay, order kept
    s = corrupt_volume(u, "intensity_shift", 1, severity=3).ravel() - u.ravel()
    inner = s[(u.ravel() > 0.25) & (u.ravel() < 0.75)]
    assert np.ptp(inner) < 1e-5 and 0.09 <= abs(inner[0]) <= 0.11  # one offset of +-0.1 x U(0.9, 1.1)


def test_resolution_is_an_anisotropic_thick_slice_average():
    for n, f, ph in ((16, 3.0, 0.4), (48, 1.25, 0.0), (7, 5.0, 0.9)):
        a = _thick_slice_matrix(n, f, ph)
        assert a.shape == (n, n) and np.allclose(a.sum(1), 1) and (a >= -1e-12).all()  # constants kept, no overshoot
    np.testing.assert_allclose(_thick_slice_matrix(10, 1.0, 0.0), np.eye(10), atol=1e-12)
    rng = np.random.default_rng(1)
    vol = rng.uniform(0, 1, (32, 32, 32)).astype(np.float32)
    out = corrupt_volume(vol, "resolution", 0, severity=5)
    rough = [np.abs(np.diff(out, axis=k)).mean() for k in range(3)]
    assert rough[2] < rough[0] and rough[2] < rough[1]  # z (x5) smoother than in-plane (x2.5)
    const = np.full((12, 12, 6), 0.4, dtype=np.float32)
    const[0, 0, 0] = 0.0
    assert np.abs(corrupt_volume(const, "resolution", 0, severity=3)[6:10, 6:10, 2:4] - 0.4).max() < 1e-6


def test_severity_table():
    rows = severity_table()
    assert len(rows) == len(CORRUPTIONS) * len(SEVERITIES)
    assert [(r["corruption"], r["severity"]) for r in rows[:6]] == [("bias_field", s) for s in SEVERITIES] + [
        ("ghosting", 1)
    ]
    assert (
        rows[2]["params"] == {"coefficients": 0.5}
        and rows[2]["implementation"] == "RandomBiasField"
        and rows[2]["text"] == "c = 0.5"
    )
    md = severity_table_markdown().strip().splitlines()
    assert len(md) == 2 + len(CORRUPTIONS) and all(line.count("|") == md[0].count("|") for line in md)
    assert all(f"`{n}`" in severity_table_markdown() for n in CORRUPTIONS)
    motion = CORRUPTIONS["motion"].record(3)
    assert motion["implementation"].startswith("RandomMotion") and motion["params"]["degrees"] == 30


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3", None])
def test_bad_severity(severity):
    with pytest.raises(S2S2InputError, match=r"severity .* is not a level.*1, 2, 3, 4, 5"):
        corrupt_volume(np.zeros((8, 8, 4), np.float32), "gamma", 0, severity=severity)
    with pytest.raises(S2S2InputError, match="not a level"):
        corruption_transform("motion", severity)


def test_unknown_corruption():
    for call in (
        lambda: corrupt_volume(np.zeros((8, 8, 4), np.float32), "blur", 0),
        lambda: corruption_transform("blur"),
        lambda: get_corruption("Motion"),
    ):
        with pytest.raises(
            S2S2InputError,
            match="unknown corruption.*bias_field, ghosting, motion, spike, gaussian_noise, resolution, intensity_shift, gamma",
        ):
            call()
