"""Stack cache format, keys, appearance generator statistics and the QC module."""

from __future__ import annotations

import numpy as np
import pytest

from s2s2_monai.stack.appearance import PERI_ORGAN, AppearanceGenerator, label_statistics, with_peri_organ_band
from s2s2_monai.stack.base import StackGenerator, UnitIntensity
from s2s2_monai.stack.cache import (
    CorruptEntryError,
    StackCache,
    _decode,
    _encode,
    entry_key,
    from_uint8,
    mask_digest,
    slice_seed,
    to_uint8,
)
from s2s2_monai.stack.quality import QualityBounds, check_and_regenerate, retry_seed

SPEC = {"generator": "appearance", "settings": {"a": 1}, "n": 4, "seed": 0, "qc": None}


def _members(seed: int, n: int = 4, shape=(24, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.add.outer(np.arange(shape[0]), np.arange(shape[1])).astype(np.uint8)  # compressible
    noise = rng.integers(0, 256, (n - 1, *shape), dtype=np.uint8)  # incompressible
    return np.concatenate([smooth[None], noise])


def _manifest(cache: StackCache, keys: list[str]) -> None:
    cache.write_manifest(
        {
            **SPEC,
            "label_map": "synapse",
            "modality": "CT",
            "unit": [0.0, 1.0],
            "slices": [["c", i, k] for i, k in enumerate(keys)],
        }
    )


# ---------------------------------------------------------------------------- format
def test_codecs_round_trip_and_at_most_one_byte_per_pixel():
    members = _members(0)
    for m in members:
        codec, data = _encode(m)
        assert len(data) <= m.size  # never more than 1 byte per pixel
        np.testing.assert_array_equal(_decode(codec, data, m.shape), m)
    assert _encode(members[0])[0] in ("zstd", "zstd-delta") and len(_encode(members[0])[1]) < members[0].size // 4
    assert _encode(members[1])[0] == "raw"
    # the delta codec is chosen for a wrapping ramp, and decodes the uint8 wrap-around correctly
    ramp = (np.arange(6000, dtype=np.int64).reshape(60, 100) * 7 % 256).astype(np.uint8)
    codec, data = _encode(ramp)
    assert codec == "zstd-delta"
    np.testing.assert_array_equal(_decode(codec, data, ramp.shape), ramp)
    with pytest.raises(CorruptEntryError):
        _decode("zstd", data[:-3], ramp.shape)


def test_uint8_quantisation():
    x = np.linspace(-0.2, 1.2, 1001, dtype=np.float32)
    u = to_uint8(x)
    assert u.dtype == np.uint8 and u.min() == 0 and u.max() == 255
    inside = (x >= 0) & (x <= 1)
    assert np.abs(from_uint8(u)[inside] - x[inside]).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError):
        to_uint8(np.array([np.nan]))


def test_round_trip_and_single_member_read(tmp_path):
    cache = StackCache(tmp_path / "c")
    members = _members(1, n=5)
    key = entry_key(np.zeros((4, 4), np.uint8), "p", SPEC)
    path = cache.write_entry(key, members, {"prompt": "p"})
    np.testing.assert_array_equal(StackCache(tmp_path / "c").read_entry(key), members)
    reader = StackCache(tmp_path / "c")
    header = reader.header(key)
    assert header["prompt"] == "p" and header["shape"] == [24, 20] and header["n"] == 5
    head_bytes = reader.bytes_read
    assert head_bytes < 4096
    np.testing.assert_array_equal(reader.read_member(key, 3), members[3])
    # only the header and that member's chunk were read
    assert reader.bytes_read == head_bytes + header["members"][3]["length"]
    assert path.stat().st_size > reader.bytes_read + 3 * members[0].size
    with pytest.raises(IndexError):
        reader.read_member(key, 5)
    with pytest.raises(KeyError):
        reader.read_member("0" * 64, 0)


def test_corruption_of_one_member_is_detected_and_isolated(tmp_path):
    cache = StackCache(tmp_path)
    members = _members(2, n=4)
    key = entry_key(np.ones((4, 4), np.uint8), "p", SPEC)
    path = cache.write_entry(key, members)
    header = cache.header(key)
    data_start = path.stat().st_size - sum(m["length"] for m in header["members"])
    raw = bytearray(path.read_bytes())
    raw[data_start + header["members"][2]["offset"] + 5] ^= 0xFF  # flip a byte of member 2 (raw codec)
    path.write_bytes(bytes(raw))
    reader = StackCache(tmp_path)
    for m in (0, 1, 3):  # other members still read fine: member reads never touch member 2's bytes
        np.testing.assert_array_equal(reader.read_member(key, m), members[m])
    with pytest.raises(CorruptEntryError):
        reader.read_member(key, 2)
    assert reader.check_entry(key, full=True) == "corrupt"
    assert reader.check_entry(key, full=False) == "ok"  # the quick check only sees headers and sizes
    # a damaged header or a truncated file is caught by the quick check
    path.write_bytes(bytes(raw[:-10]))
    assert StackCache(tmp_path).check_entry(key, full=False) == "corrupt"
    raw[60] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert StackCache(tmp_path).check_entry(key, full=False) == "corrupt"
    assert StackCache(tmp_path).check_entry("f" * 64) == "missing"


def test_keys_follow_content_and_settings():
    mask = np.zeros((8, 8), np.uint8)
    mask[2:4, 2:5] = 3
    base = entry_key(mask, "p", SPEC)
    assert base == entry_key(mask_digest(mask), "p", dict(SPEC))
    other = mask.copy()
    other[0, 0] = 1
    variants = [
        entry_key(other, "p", SPEC),
        entry_key(mask.reshape(4, 16), "p", SPEC),  # same bytes, other shape
        entry_key(mask, "q", SPEC),
        entry_key(mask, "p", {**SPEC, "settings": {"a": 2}}),
        entry_key(mask, "p", {**SPEC, "generator": "diffusion"}),
        entry_key(mask, "p", {**SPEC, "n": 5}),
        entry_key(mask, "p", {**SPEC, "seed": 1}),
        entry_key(mask, "p", {**SPEC, "qc": {"bounds": {}}}),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # per-mask seeds depend on content + global seed only
    assert slice_seed(0, mask, "p") == slice_seed(0, mask.copy(), "p") != slice_seed(1, mask, "p")
    assert slice_seed(0, mask, "p") != slice_seed(0, other, "p")
    assert 0 <= slice_seed(7, mask, "p") < 2**63


def test_info_digest_independent_of_order_and_temp_cleanup(tmp_path):
    stacks = {entry_key(np.full((3, 3), i, np.uint8), "p", SPEC): _members(i, n=3) for i in range(4)}
    digests = []
    for name, order in (("a", sorted(stacks)), ("b", sorted(stacks, reverse=True))):
        cache = StackCache(tmp_path / name)
        _manifest(cache, list(stacks))
        for k in order:
            cache.write_entry(k, stacks[k])
        info = cache.verify()
        assert info["complete"] and info["members"] == 12 and info["entries"] == 4
        assert 0 < info["bytes_per_pixel"] <= 1.3  # 24x20 members: the header is a visible share
        digests.append(info["digest"])
    assert digests[0] == digests[1]
    cache = StackCache(tmp_path / "a")
    cache.remove_entry(sorted(stacks)[0])
    (cache.root / "entries" / ".tmp-x.stk.1").write_bytes(b"half")
    info = cache.info()
    assert info["missing"] == [sorted(stacks)[0]] and info["digest"] is None and info["temp_files"] == 1
    assert cache.clean_temp() == 1 and cache.temp_files() == []


# ---------------------------------------------------------------------------- appearance generator
def _toy_pairs(count=6, shape=(40, 36), seed=0):
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        lab = np.zeros(shape, np.uint8)
        lab[5:20, 6:22] = 1
        lab[22:34, 10 + i : 26 + i] = 2
        img = np.where(lab == 1, 0.6 + 0.02 * i, np.where(lab == 2, 0.3, 0.1)) + rng.normal(0, 0.03, shape)
        pairs.append((img.astype(np.float32), lab))
    return pairs


def test_label_statistics_match_direct_computation():
    pairs = _toy_pairs()
    stats = label_statistics(pairs, UnitIntensity(), min_pixels=4, decimals=8, band_fraction=0.0)
    from scipy.ndimage import binary_erosion

    for k in (0, 1, 2):
        vals, per_slice, ss = [], [], 0.0
        for img, lab in pairs:
            inner = binary_erosion(lab == k, np.ones((3, 3)), border_value=1)  # 3x3-interior pixels
            v = np.clip(img[inner].astype(np.float64), 0, 1)
            vals.append(v)
            per_slice.append(v.mean())
            ss += ((v - v.mean()) ** 2).sum()
        allv = np.concatenate(vals)
        assert stats[str(k)]["mean"] == pytest.approx(allv.mean(), abs=1e-6)
        assert stats[str(k)]["std"] == pytest.approx(np.sqrt(ss / allv.size), abs=1e-6)
        assert stats[str(k)]["spread"] == pytest.approx(np.std(per_slice), abs=1e-6)
        assert stats[str(k)]["count"] == allv.size
    assert stats["1"]["spread"] > 0.02  # the slice-to-slice trend of label 1 is measured


def test_peri_organ_band():
    mask = np.zeros((50, 50), np.uint8)
    mask[20:30, 20:30] = 4
    banded = with_peri_organ_band(mask, 0.1)  # 5 px (at least 3)
    assert (banded == 4).sum() == 100
    assert banded[20, 15] == PERI_ORGAN and banded[20, 14] == 0 and banded[0, 0] == 0
    np.testing.assert_array_equal(with_peri_organ_band(np.zeros((5, 5), np.uint8)), 0)


def test_appearance_generator_statistics_determinism_and_batch_independence():
    gen = AppearanceGenerator.from_slices(
        ({"image": i, "label": y} for i, y in _toy_pairs()), modality="CT", min_pixels=4
    )
    assert set(gen.stats) == {"0", "1", "2", str(PERI_ORGAN)}
    mask = _toy_pairs()[0][1]
    imgs = gen.generate(mask[None], ["p"], [11], 64)[0]
    assert imgs.shape == (64, 40, 36) and imgs.dtype == np.float32 and imgs.min() >= 0 and imgs.max() <= 1
    from scipy.ndimage import binary_erosion

    for k in (1, 2):
        inner = binary_erosion(mask == k, np.ones((5, 5)))
        got = imgs[:, inner].mean()
        s = gen.stats[str(k)]
        # member means scatter with `spread`; bias field and blur add a little
        assert got == pytest.approx(s["mean"], abs=4 * s["spread"] / 8 + 0.02)
    # the per-member mean really varies with the fitted spread of label 1 (0.6 .. 0.7 trend)
    per_member = imgs[:, binary_erosion(mask == 1, np.ones((5, 5)))].mean(axis=1)
    assert 0.3 * gen.stats["1"]["spread"] < per_member.std() < 3 * gen.stats["1"]["spread"] + 0.02
    # deterministic, independent of batch composition, and n-prefix stable
    masks = np.stack([mask, np.roll(mask, 3, axis=0), mask[::-1].copy()])
    batch = gen.generate(masks, ["a", "b", "c"], [5, 6, 7], 4)
    for b in range(3):
        np.testing.assert_array_equal(batch[b], gen.generate(masks[b : b + 1], ["x"], [5 + b], 4)[0])
    np.testing.assert_array_equal(gen.generate(masks[:1], ["a"], [5], 2)[0], batch[0, :2])
    assert not np.array_equal(batch[0], gen.generate(masks[:1], ["a"], [99], 4)[0])
    # statistics are part of the settings (and so of the cache key)
    other = AppearanceGenerator({**gen.stats, "1": {**gen.stats["1"], "mean": 0.1}})
    assert other.settings() != gen.settings() and entry_key(
        mask, "p", {**SPEC, "settings": other.settings()}
    ) != entry_key(mask, "p", {**SPEC, "settings": gen.settings()})
    with pytest.raises(ValueError):
        AppearanceGenerator({})


# ---------------------------------------------------------------------------- quality check
def test_quality_bounds_fit_and_check():
    pairs = _toy_pairs(count=8)
    qb = QualityBounds.fit(pairs, UnitIntensity(), lower=0, upper=100, margin=0.0, abs_margin=0.0, min_pixels=4)
    med1 = [np.median(np.clip(i[y == 1], 0, 1)) for i, y in pairs]
    assert qb.bounds[1] == pytest.approx((min(med1), max(med1)), abs=1e-5)
    assert 0 not in qb.bounds  # background is not an organ
    qb = QualityBounds.from_dict(QualityBounds.fit(pairs, UnitIntensity(), min_pixels=4).to_dict())
    img, lab = pairs[3]
    assert qb.passes(img, lab)
    wrong = np.where(lab == 2, 0.9, img)
    assert set(qb.failures(wrong, lab)) == {2}
    tiny = lab.copy()
    tiny[tiny == 2] = 0
    tiny[0, 0] = 2  # an organ below min_pixels is not judged
    assert qb.passes(np.where(tiny == 2, 0.99, img), tiny)


class _FlakyGenerator(StackGenerator):
    """Correct label intensities only for seeds divisible by 3 (deterministically)."""

    name = "flaky"

    def settings(self) -> dict:
        return {}

    def generate(self, masks, prompts, seeds, n):
        out = np.zeros((len(masks), n, *masks.shape[1:]), np.float32)
        for b, (mask, seed) in enumerate(zip(masks, seeds)):
            for m in range(n):
                good = (seed + m) % 3 == 0
                out[b, m] = np.where(mask == 1, 0.65 if good else 0.05, np.where(mask == 2, 0.3, 0.1))
        return out


def test_failing_members_are_regenerated_with_new_seeds_or_flagged():
    pairs = _toy_pairs(count=8)
    qb = QualityBounds.fit(pairs, UnitIntensity(), min_pixels=4, retries=6)
    gen, mask = _FlakyGenerator(), pairs[0][1]
    first = gen.generate(mask[None], ["p"], [30], 6)[0]
    fixed, records = check_and_regenerate(gen, mask, "p", 30, first, qb)
    assert [r["attempts"] == 0 for r in records] == [qb.passes(f, mask) for f in first]
    for m, r in enumerate(records):
        expected_attempts = next(
            a for a in range(7) if a == 0 and (30 + m) % 3 == 0 or a > 0 and retry_seed(30, m, a) % 3 == 0
        )
        assert r == {"pass": True, "attempts": expected_attempts}
        assert qb.passes(fixed[m], mask)
    again, records2 = check_and_regenerate(gen, mask, "p", 30, first, qb)
    np.testing.assert_array_equal(again, fixed)
    assert records2 == records
    strict = QualityBounds({1: (0.9, 1.0)}, min_pixels=4, retries=2)
    _, flagged = check_and_regenerate(gen, mask, "p", 30, first, strict)
    assert all(r == {"pass": False, "attempts": 2} for r in flagged)
