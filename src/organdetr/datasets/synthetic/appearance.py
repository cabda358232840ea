"""Random appearance of from-label synthesis: structure map -> HU-like image (SynthSeg's generative model).

Per case, every structure draws a Gaussian (mean, standard deviation) of intensities: either from a CT prior
(:func:`structure_hu_range`, the structure's plausible HU over non-contrast, arterial and portal-venous
phases: ``p_ct_prior``) or uniformly from a wide range (``random_hu``: anything, MR-like contrasts included;
SynthSeg's fully random mixture). Then, in this order: a slow texture inside each structure (the standard
deviation modulates a smooth field), a multiplicative bias field (MONAI ``RandBiasField``, on intensities
above air), a Gaussian blur whose through-plane width stands for slice thickness, a gamma curve on the
soft-tissue range ``GAMMA_RANGE`` (monotone, the rest unchanged), and correlated Gaussian noise.

The image stays in HU-like units (float32, clipped to the 12-bit CT range), so the model's usual HU window
normalises it unchanged. ``fixed_hu`` (structure name -> HU) turns all randomness off: the image is then the
piecewise-constant volume ``fixed_hu[name of structure]`` (the test of the generator's bookkeeping).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from monai.transforms import RandBiasField
from scipy import ndimage

from organdetr.datasets.synthetic.shapes import smooth_field
from organdetr.datasets.synthetic.tissues import Tissue, tissue_hu_range

OUTSIDE = "outside_body"
BODY = "body_unlabelled"
AIR_HU = -1000.0
HU_RANGE = (-1024.0, 3071.0)
GAMMA_RANGE = (-200.0, 500.0)
"""HU interval the gamma curve acts on (the soft-tissue window and a margin); values outside stay."""

# name pattern -> plausible mean HU (low, high) over contrast phases; the first match wins
_CT_PRIOR: tuple[tuple[str, tuple[float, float]], ...] = (
    (r"^outside_body$", (-1024.0, -950.0)),
    (r"^body_unlabelled$", (-130.0, -50.0)),
    (r"^(trachea)$", (-1000.0, -900.0)),
    (r"lung", (-900.0, -700.0)),
    (r"costal_cartilage", (80.0, 220.0)),
    (r"intervertebral_disc", (60.0, 120.0)),
    (r"vertebra|rib_|sacrum|coccyx|hip_|femur|humerus|scapula|clavicula|sternum|skull", (180.0, 700.0)),
    (r"colon|small_bowel|duodenum|intestine|rectum", (-120.0, 70.0)),
    (r"stomach|esophagus", (-80.0, 70.0)),
    (r"aorta|arter|trunk|lumen", (35.0, 350.0)),
    (r"vena|vein", (35.0, 220.0)),
    (r"heart|atrial", (35.0, 250.0)),
    (r"kidney_cyst|gallbladder|bladder", (-5.0, 30.0)),
    (r"kidney", (30.0, 230.0)),
    (r"liver", (40.0, 135.0)),
    (r"spleen", (40.0, 140.0)),
    (r"pancreas", (35.0, 135.0)),
    (r"thyroid", (60.0, 140.0)),
    (r"gluteus|autochthon|iliopsoas|muscle", (35.0, 70.0)),
    (r"spinal_cord|brain", (20.0, 45.0)),
)
_DEFAULT_PRIOR = (-50.0, 150.0)


@dataclass(frozen=True)
class AppearanceConfig:
    """Ranges each case draws from (uniformly). HU for intensities, mm for widths.

    ``p_ct_prior``: probability that a case's means come from the CT prior (else from ``random_hu``);
    ``texture_hu``: per-structure standard deviation; ``texture_mm``: size of the texture's blobs;
    ``bias``: MONAI ``RandBiasField`` coefficient upper bound (0 = off); ``blur_mm``: in-plane Gaussian sigma,
    ``slice_blur``: through-plane sigma as a multiple of it; ``gamma``: exponent range; ``noise_hu``: noise
    standard deviation. ``fixed_hu``: name -> HU for every structure name (``outside_body`` and
    ``body_unlabelled`` included), every structure constant, nothing random.
    """

    p_ct_prior: float = 0.5
    random_hu: tuple[float, float] = (-250.0, 550.0)
    texture_hu: tuple[float, float] = (0.0, 25.0)
    texture_mm: float = 25.0
    bias: float = 0.06
    blur_mm: tuple[float, float] = (0.3, 2.0)
    slice_blur: tuple[float, float] = (1.0, 2.5)
    gamma: tuple[float, float] = (0.7, 1.4)
    noise_hu: tuple[float, float] = (0.0, 25.0)
    fixed_hu: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_ct_prior <= 1.0:
            raise ValueError(f"p_ct_prior must be a probability, got {self.p_ct_prior}")
        for name in ("random_hu", "texture_hu", "blur_mm", "slice_blur", "gamma", "noise_hu"):
            low, high = getattr(self, name)
            if low > high or (name != "random_hu" and low < 0):
                raise ValueError(f"{name} must be a (low, high) range with low <= high, got {(low, high)}")
        if self.bias < 0 or self.texture_mm <= 0 or self.gamma[0] <= 0:
            raise ValueError("bias must be >= 0, texture_mm and gamma > 0")


def structure_hu_range(name: str) -> tuple[float, float]:
    """Plausible mean HU ``(low, high)`` of a structure over CT contrast phases (phantom tissues: the
    phantom's own table)."""
    if name.startswith("tissue_"):
        return tissue_hu_range(Tissue[name.removeprefix("tissue_").upper()])
    for pattern, hu in _CT_PRIOR:
        if re.search(pattern, name):
            return hu
    return _DEFAULT_PRIOR


def draw_means(
    rng: np.random.Generator, names: list[str], cfg: AppearanceConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure ``(mean HU [S], standard deviation HU [S])`` of one case."""
    if cfg.fixed_hu is not None:
        return np.array([cfg.fixed_hu[n] for n in names], np.float32), np.zeros(len(names), np.float32)
    if rng.uniform() < cfg.p_ct_prior:
        means = np.array([rng.uniform(*structure_hu_range(n)) for n in names], np.float32)
    else:
        means = rng.uniform(*cfg.random_hu, size=len(names)).astype(np.float32)
        if OUTSIDE in names and rng.uniform() < 0.5:  # CT's air around the patient, half the time
            means[names.index(OUTSIDE)] = AIR_HU
    stds = rng.uniform(*cfg.texture_hu, size=len(names)).astype(np.float32)
    return means, stds


def render_appearance(
    rng: np.random.Generator,
    structures: np.ndarray,
    names: list[str],
    spacing: tuple[float, float, float],
    cfg: AppearanceConfig,
) -> np.ndarray:
    """``structures`` (dense index into ``names``, ``[I, J, K]``) on a ``spacing`` mm grid -> float32 HU."""
    means, stds = draw_means(rng, names, cfg)
    image = means[structures]
    if cfg.fixed_hu is not None:
        return image
    shape = structures.shape
    nodes = tuple(max(int(n * sp / cfg.texture_mm), 2) for n, sp in zip(shape, spacing, strict=True))
    image += stds[structures] * smooth_field(rng, shape, nodes, order=1) * np.float32(2.0)
    image = _bias(rng, image, cfg.bias)
    sigma_mm = rng.uniform(*cfg.blur_mm) * np.array([1.0, 1.0, rng.uniform(*cfg.slice_blur)])
    image = ndimage.gaussian_filter(image, sigma_mm / np.asarray(spacing), mode="nearest", truncate=3.0)
    image = _gamma(image, float(rng.uniform(*cfg.gamma)))
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.5, truncate=2.0)
    noise *= np.float32(rng.uniform(*cfg.noise_hu) / max(float(noise.std()), 1e-6))
    image += noise
    return np.clip(image, *HU_RANGE, out=image).astype(np.float32, copy=False)


def _bias(rng: np.random.Generator, image: np.ndarray, coefficient: float) -> np.ndarray:
    """Multiply the intensities above air by a smooth field (MONAI ``RandBiasField``: exp of a degree-3
    polynomial, coefficients in ``[0, coefficient]``), seeded from ``rng``."""
    if coefficient <= 0:
        return image
    transform = RandBiasField(degree=3, coeff_range=(0.0, coefficient), prob=1.0)
    transform.set_random_state(seed=int(rng.integers(2**31)))
    field = np.asarray(transform(np.ones((1, *image.shape), np.float32)), dtype=np.float32)[0]
    return (image - np.float32(HU_RANGE[0])) * field + np.float32(HU_RANGE[0])


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``lo + (hi - lo) * t ** gamma`` for ``t = (x - lo) / (hi - lo)`` in ``[0, 1]`` (``GAMMA_RANGE``)."""
    lo, hi = GAMMA_RANGE
    inside = (image > lo) & (image < hi)
    t = (image[inside] - lo) / (hi - lo)
    image[inside] = lo + (hi - lo) * np.power(t, gamma)
    return image


__all__ = ["BODY", "OUTSIDE", "AppearanceConfig", "draw_means", "render_appearance", "structure_hu_range"]
