"""A weight-free stack generator in the style of SynthSeg (a substitute, NOT the paper's generator).

The paper generates stacks with Stable Diffusion 2.1 + a ControlNet fine-tuned on the training
masks (:mod:`s2s2_monai.stack.diffusion`). Users without those weights, the demo and the tests
use this generator instead. It paints each label with an intensity drawn around statistics
learned from the real training images, then adds what SynthSeg adds (Billot et al., 2023):

0. background pixels within ``band_fraction`` of the image size around the organs form their
   own pseudo-label (peri-organ tissue, :data:`PERI_ORGAN`), so air does not grey the organs;
1. per label ``k``: mean ``mu_k ~ N(mean_k, (jitter * spread_k)^2)`` and texture std
   ``sd_k = std_k * U(1 - std_jitter, 1 + std_jitter)``; texture = ``sd_k`` x unit-variance
   Gaussian noise smoothed with ``texture_sigma`` pixels (``background_texture_sigma`` for the
   background labels);
2. a smooth multiplicative bias field ``exp(f)``, ``f`` = a ``bias_grid`` x ``bias_grid`` grid of
   ``N(0, bias_std^2)`` values upsampled with cubic splines;
3. Gaussian blur with ``sigma ~ U(0, blur_max)`` pixels;
4. additive Gaussian noise with std ``~ U(0, noise_max)``; clipped to the unit space [0, 1].

Statistics (unit space, see :class:`~s2s2_monai.stack.base.UnitIntensity`) per label, over its
interior pixels (edges carry partial volume that the blur re-creates): ``mean`` (pooled mean), ``std`` (pooled within-slice std), ``spread`` (std of the per-slice
means). They live in :meth:`settings`, so they are part of every cache key. Member ``m`` of a
mask with seed ``s`` uses ``numpy.random.default_rng([s, m])``: it depends on nothing else (not
the batch, not ``n``, not the process), and the first k members of n are the stack of k.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, maximum_filter, minimum_filter, zoom

from s2s2_monai.stack.base import StackGenerator, UnitIntensity

__all__ = ["AppearanceGenerator", "label_statistics", "with_peri_organ_band", "PERI_ORGAN"]

_DEFAULT_STATS = {"mean": 0.5, "std": 0.05, "spread": 0.05, "count": 0}

#: pseudo-label of background pixels close to an organ (tissue around organs, not air)
PERI_ORGAN = 255


def with_peri_organ_band(mask: np.ndarray, band_fraction: float = 0.03) -> np.ndarray:
    """Relabel background within max(3, ``band_fraction`` x max(H, W)) pixels of an organ as :data:`PERI_ORGAN`.

    Background in CT/MR mixes air, fat and soft tissue; the pixels right around the organs are
    tissue. Modelling them apart keeps small organs from being blurred into an air-grey mean.
    """
    mask = np.asarray(mask, dtype=np.uint8)
    fg = mask > 0
    width = max(3.0, band_fraction * max(mask.shape))
    if band_fraction <= 0 or not fg.any() or fg.all():
        return mask
    dist = distance_transform_edt(~fg)
    out = mask.copy()
    out[(~fg) & (dist <= width)] = PERI_ORGAN
    return out


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def label_statistics(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    unit: UnitIntensity,
    min_pixels: int = 16,
    decimals: int = 5,
    band_fraction: float = 0.03,
) -> dict[str, dict]:
    """Per-label intensity statistics of real slices, in unit space.

    Args:
        pairs: ``(image, label)`` 2D arrays (network intensity space, integer label ids).
        unit: maps network intensities to the unit space.
        min_pixels: a slice contributes to ``spread`` for a label only with this many pixels.
        decimals: rounding of the returned numbers (keeps cache keys stable).
        band_fraction: width of the :data:`PERI_ORGAN` band (0 disables it).

    Returns:
        ``{str(label_id): {"mean", "std", "spread", "count"}}`` over *interior* pixels (whose 3x3
        neighbourhood has one label); ``std`` is the pooled within-slice standard deviation,
        ``spread`` the std of per-slice means.
    """
    size = 256
    s1, s2, cnt, within = (np.zeros(size) for _ in range(4))
    slice_means: list[list[float]] = [[] for _ in range(size)]
    for image, label in pairs:
        img = unit.to_unit(np.squeeze(_as_numpy(image))).astype(np.float64).ravel()
        lab2d = with_peri_organ_band(np.squeeze(_as_numpy(label)), band_fraction)
        # interior pixels only: edges carry the real image's partial volume, which blur re-creates
        interior = (minimum_filter(lab2d, 3, mode="nearest") == lab2d) & (
            maximum_filter(lab2d, 3, mode="nearest") == lab2d
        )
        lab = np.where(interior, lab2d.astype(np.int64), size).ravel()
        c = np.bincount(lab, minlength=size + 1)[:size]
        a = np.bincount(lab, weights=img, minlength=size + 1)[:size]
        b = np.bincount(lab, weights=img * img, minlength=size + 1)[:size]
        s1 += a
        s2 += b
        cnt += c
        present = np.flatnonzero(c)
        m = a[present] / c[present]
        within[present] += b[present] - c[present] * m * m  # sum of squared deviations within the slice
        for k, mk, ck in zip(present, m, c[present]):
            if ck >= min_pixels:
                slice_means[k].append(float(mk))
    stats = {}
    for k in np.flatnonzero(cnt):
        mean = s1[k] / cnt[k]
        std = np.sqrt(max(within[k], 0.0) / cnt[k])
        spread = float(np.std(slice_means[k])) if len(slice_means[k]) > 1 else 0.0
        stats[str(int(k))] = {
            "mean": round(float(mean), decimals),
            "std": round(float(std), decimals),
            "spread": round(spread, decimals),
            "count": int(cnt[k]),
        }
    return stats


class AppearanceGenerator(StackGenerator):
    """SynthSeg-style weight-free generator (a documented substitute for the diffusion generator).

    Args:
        stats: per-label statistics from :func:`label_statistics` (use :meth:`fit` /
            :meth:`from_slices`); labels without statistics get mean 0.5, std 0.05.
        jitter: scale of the per-member mean perturbation (in units of ``spread``).
        std_jitter: relative range of the per-member texture std.
        texture_sigma: smoothing (pixels) of the within-label texture noise.
        background_texture_sigma: the same for background and peri-organ tissue (coarser blobs:
            background mixes air, fat, muscle and bone).
        bias_std: std of the log bias field; ``bias_grid``: its control grid size.
        blur_max: maximum blur sigma (pixels).
        noise_max: maximum additive noise std (unit space).
        band_fraction: width of the peri-organ background band (fraction of the image size),
            painted with its own statistics (see :func:`with_peri_organ_band`); must match the fit.
    """

    name = "appearance"

    def __init__(
        self,
        stats: dict,
        jitter: float = 1.0,
        std_jitter: float = 0.3,
        texture_sigma: float = 1.0,
        background_texture_sigma: float = 4.0,
        bias_std: float = 0.05,
        bias_grid: int = 4,
        blur_max: float = 1.0,
        noise_max: float = 0.02,
        band_fraction: float = 0.03,
    ) -> None:
        if not stats:
            raise ValueError("AppearanceGenerator needs label statistics; use AppearanceGenerator.fit(...)")
        self.stats = {str(int(k)): dict(v) for k, v in stats.items()}
        self.params = {
            "jitter": float(jitter),
            "std_jitter": float(std_jitter),
            "texture_sigma": float(texture_sigma),
            "background_texture_sigma": float(background_texture_sigma),
            "bias_std": float(bias_std),
            "bias_grid": int(bias_grid),
            "blur_max": float(blur_max),
            "noise_max": float(noise_max),
            "band_fraction": float(band_fraction),
        }
        self._ids = sorted(int(k) for k in self.stats)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def from_slices(cls, slices: Iterable, modality: str = "CT", min_pixels: int = 16, **kwargs) -> AppearanceGenerator:
        """Fit statistics from slices: dicts with ``image``/``label`` (e.g. a ``SliceDataset``) or pairs."""

        def pairs():
            for s in slices:
                if isinstance(s, dict):
                    if "label" not in s:
                        continue
                    yield s["image"], s["label"]
                else:
                    yield s

        band = kwargs.get("band_fraction", 0.03)
        return cls(
            label_statistics(pairs(), UnitIntensity.for_modality(modality), min_pixels, band_fraction=band), **kwargs
        )

    @classmethod
    def fit(
        cls, volumes, data_root: str | os.PathLike | None = None, min_pixels: int = 16, **kwargs
    ) -> AppearanceGenerator:
        """Fit statistics on the labelled training cases.

        Args:
            volumes: a :class:`~s2s2_monai.data.slices.VolumeCache` or a datalist (path) whose
                ``training`` section is loaded.
            data_root: root of relative datalist paths.
        """
        from s2s2_monai.data.slices import VolumeCache

        if not isinstance(volumes, VolumeCache):
            volumes = VolumeCache(volumes, "training", data_root, progress=False)
        pairs = (
            (case.image[:, :, z], case.label[:, :, z])
            for case in volumes.cases
            if case.label is not None
            for z in range(case.num_slices)
        )
        band = kwargs.get("band_fraction", 0.03)
        return cls(
            label_statistics(
                pairs, UnitIntensity.for_modality(volumes.datalist.modality), min_pixels, band_fraction=band
            ),
            **kwargs,
        )

    # ------------------------------------------------------------------ interface
    def settings(self) -> dict:
        stats = {
            k: {f: v[f] for f in ("mean", "std", "spread")}
            for k, v in sorted(self.stats.items(), key=lambda kv: int(kv[0]))
        }
        return {"version": 1, "stats": stats, **self.params}

    def _label_params(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Per-member lookup tables (256,) of label means and texture stds."""
        p = self.params
        mu = np.full(256, _DEFAULT_STATS["mean"], dtype=np.float64)
        sd = np.full(256, _DEFAULT_STATS["std"], dtype=np.float64)
        for k in self._ids:  # fixed order: the random stream does not depend on the mask
            s = self.stats[str(k)]
            mu[k] = s["mean"] + p["jitter"] * s["spread"] * rng.standard_normal()
            sd[k] = s["std"] * rng.uniform(1.0 - p["std_jitter"], 1.0 + p["std_jitter"])
        return np.clip(mu, 0.0, 1.0), np.maximum(sd, 0.0)

    def render(self, mask: np.ndarray, seed: int, member: int) -> np.ndarray:
        """One member, float32 (H, W) in [0, 1]; depends only on ``(mask, seed, member)``."""
        return self._render(with_peri_organ_band(mask, self.params["band_fraction"]), seed, member)

    def _render(self, mask: np.ndarray, seed: int, member: int) -> np.ndarray:
        p = self.params
        h, w = mask.shape
        rng = np.random.default_rng([int(seed), int(member)])
        mu, sd = self._label_params(rng)
        texture = self._texture(rng, (h, w), p["texture_sigma"])
        bg_texture = self._texture(rng, (h, w), p["background_texture_sigma"])
        background = (mask == 0) | (mask == PERI_ORGAN)
        img = mu[mask] + sd[mask] * np.where(background, bg_texture, texture)
        g = p["bias_grid"]
        coarse = rng.standard_normal((g, g)) * p["bias_std"]
        field = zoom(coarse, (h / g, w / g), order=3, mode="nearest", grid_mode=True)[:h, :w]
        img *= np.exp(field)
        sigma = rng.uniform(0.0, p["blur_max"])
        if sigma > 0.05:
            img = gaussian_filter(img, sigma, mode="nearest")
        img += rng.standard_normal((h, w)) * rng.uniform(0.0, p["noise_max"])
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    @staticmethod
    def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
        """Unit-variance Gaussian noise smoothed with ``sigma`` pixels."""
        t = rng.standard_normal(shape)
        if sigma > 0:
            t = gaussian_filter(t, sigma, mode="reflect")
            t /= t.std() + 1e-12
        return t

    def generate(self, masks: np.ndarray, prompts: list[str], seeds: list[int], n: int) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"masks must be (B, H, W), got {masks.shape}")
        if len(seeds) != len(masks):
            raise ValueError(f"got {len(seeds)} seeds for {len(masks)} masks")
        out = np.empty((len(masks), n, *masks.shape[1:]), dtype=np.float32)
        for b, (mask, seed) in enumerate(zip(masks, seeds)):
            banded = with_peri_organ_band(mask, self.params["band_fraction"])
            for m in range(n):
                out[b, m] = self._render(banded, seed, m)
        return out
