"""On-the-fly appearance synthesis on a preprocessed cache (issue 24, ``data.synthesis: appearance``).

Each training sample may replace its cached image by a new one painted from its label map on the cache grid,
so that every step sees new intensities (SynthSeg's domain randomisation, here for the appearance; the shape
varies through :mod:`organdetr.data.augment` as before). The cache keeps only the organs' labels, so the
unlabelled rest of the scan is split into structures by the cached image itself: its normalised intensities in
:data:`BACKGROUND_BINS` (air and fat, soft tissue, dense tissue, bone in a CT window) become ``outside_body``,
``body_unlabelled``, ``muscle`` and ``vertebrae``; each organ is its own structure, named as in the cache. The
new image is drawn by :func:`organdetr.datasets.synthetic.appearance.render_appearance` in HU and normalised
with the cache's HU window, as the cached one was.

Only single-channel caches normalised with an HU window qualify (``plans["hu_window"]``, no ``channel_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from organdetr.datasets.synthetic.appearance import AppearanceConfig, render_appearance
from organdetr.preprocessing.intensity import normalise_hu

SYNTHESIS_MODES = ("none", "appearance")
BACKGROUND_BINS: tuple[tuple[float, str], ...] = (
    (0.02, "outside_body"),
    (0.35, "body_unlabelled"),
    (0.90, "muscle"),
    (np.inf, "vertebrae"),
)
"""Upper edge (normalised cached intensity, exclusive) -> the background structure below it."""


@dataclass(frozen=True)
class Resynthesis:
    """``probability`` that a training sample gets a new appearance; ``appearance``: its ranges."""

    probability: float = 0.8
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"data.synthesis_p must be a probability, got {self.probability}")


def structure_map(
    image01: np.ndarray, seg: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, list[str]]:
    """``(structures uint16 [I, J, K], names)``: background bins of the cached image ``image01`` (normalised,
    ``[I, J, K]``) where ``seg`` (dense class + 1, 0 = background) is 0, organ ``c`` as structure
    ``len(BACKGROUND_BINS) + c``."""
    edges = np.array([edge for edge, _ in BACKGROUND_BINS[:-1]], dtype=np.float32)
    background = np.searchsorted(edges, image01, side="right").astype(np.uint16)
    organs = seg.astype(np.uint16) + np.uint16(len(BACKGROUND_BINS) - 1)
    structures = np.where(seg > 0, organs, background)
    return structures, [name for _, name in BACKGROUND_BINS] + list(class_names)


def resynthesize(
    image01: np.ndarray,
    seg: np.ndarray,
    class_names: list[str],
    spacing: tuple[float, float, float],
    hu_window: tuple[float, float],
    rng: np.random.Generator,
    cfg: AppearanceConfig,
) -> np.ndarray:
    """A new float32 image ``[I, J, K]`` in ``[0, 1]`` for the cached ``image01`` and its ``seg`` on a grid of
    ``spacing`` mm (see the module docstring)."""
    structures, names = structure_map(image01, seg, class_names)
    hu = render_appearance(rng, structures, names, spacing, cfg)
    return normalise_hu(hu, hu_window)


__all__ = ["BACKGROUND_BINS", "SYNTHESIS_MODES", "Resynthesis", "resynthesize", "structure_map"]
