"""The synthetic abdomen's materials: organ label ids, tissue classes and their CT numbers per contrast phase.

:data:`LABEL_IDS` names the ten labelled organs (TotalSegmentator ids); :class:`Tissue` is what a voxel is
made of (which decides its CT number, not its label); :func:`tissue_hu` draws a case's mean HU and texture
amplitude per tissue for a contrast phase (:data:`PHASES`).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

LABEL_IDS = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "pancreas": 7,
    "urinary_bladder": 21,
    "aorta": 52,
    "inferior_vena_cava": 63,
}
"""Organ name -> label id of TotalSegmentator's "total" map."""


class Tissue(IntEnum):
    """What a voxel is made of (decides its CT number); not the organ label."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BOWEL = 3
    GAS = 4
    LUNG = 5
    CORTICAL_BONE = 6
    MARROW = 7
    DISC = 8
    CSF = 9
    STOOL = 10
    ARTERY = 11
    VEIN = 12
    LIVER = 13
    SPLEEN = 14
    KIDNEY_CORTEX = 15
    KIDNEY_MEDULLA = 16
    BILE = 17
    STOMACH = 18
    PANCREAS = 19
    URINE = 20


PHASES = ("native", "arterial", "portal")

# Mean HU ranges (low, high); a case draws one mean per tissue. Entries missing in a phase use "native".
_HU = {
    "native": {
        Tissue.AIR: (-1000, -1000),
        Tissue.FAT: (-115, -85),
        Tissue.MUSCLE: (40, 55),
        Tissue.BOWEL: (15, 40),
        Tissue.GAS: (-1000, -950),
        Tissue.LUNG: (-860, -760),
        Tissue.CORTICAL_BONE: (650, 1000),
        Tissue.MARROW: (170, 280),
        Tissue.DISC: (70, 100),
        Tissue.CSF: (5, 15),
        Tissue.STOOL: (-20, 60),
        Tissue.ARTERY: (35, 45),
        Tissue.VEIN: (35, 45),
        Tissue.LIVER: (55, 65),
        Tissue.SPLEEN: (44, 52),
        Tissue.KIDNEY_CORTEX: (30, 40),
        Tissue.KIDNEY_MEDULLA: (26, 36),
        Tissue.BILE: (0, 20),
        Tissue.STOMACH: (15, 35),
        Tissue.PANCREAS: (35, 48),
        Tissue.URINE: (0, 15),
    },
    "arterial": {
        Tissue.MUSCLE: (45, 60),
        Tissue.BOWEL: (30, 60),
        Tissue.ARTERY: (230, 330),
        Tissue.VEIN: (60, 100),
        Tissue.LIVER: (65, 85),
        Tissue.SPLEEN: (95, 135),
        Tissue.KIDNEY_CORTEX: (150, 220),
        Tissue.KIDNEY_MEDULLA: (60, 95),
        Tissue.STOMACH: (30, 50),
        Tissue.PANCREAS: (100, 130),
    },
    "portal": {
        Tissue.MUSCLE: (50, 65),
        Tissue.BOWEL: (40, 70),
        Tissue.ARTERY: (150, 200),
        Tissue.VEIN: (130, 170),
        Tissue.LIVER: (100, 125),
        Tissue.SPLEEN: (105, 125),
        Tissue.KIDNEY_CORTEX: (150, 190),
        Tissue.KIDNEY_MEDULLA: (130, 170),
        Tissue.STOMACH: (35, 55),
        Tissue.PANCREAS: (85, 110),
    },
}

# Amplitude (HU) of the slow texture inside each tissue (heterogeneity); arterial spleen is mottled.
_TEXTURE = {
    Tissue.FAT: 8,
    Tissue.MUSCLE: 5,
    Tissue.BOWEL: 15,
    Tissue.STOOL: 60,
    Tissue.LIVER: 6,
    Tissue.SPLEEN: 6,
    Tissue.KIDNEY_CORTEX: 6,
    Tissue.STOMACH: 8,
    Tissue.PANCREAS: 10,
    Tissue.MARROW: 40,
    Tissue.LUNG: 40,
}


def tissue_hu(rng: np.random.Generator, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-case ``(mean HU [T], texture amplitude HU [T])`` lookup tables indexed by :class:`Tissue`."""
    table = _HU["native"] | _HU[phase]
    means = np.array([rng.uniform(*table[t]) for t in Tissue], dtype=np.float32)
    texture = np.array([_TEXTURE.get(t, 0.0) for t in Tissue], dtype=np.float32)
    if phase == "arterial":
        texture[Tissue.SPLEEN] = 25.0
    return means, texture


def tissue_hu_range(tissue: Tissue) -> tuple[float, float]:
    """The widest mean-HU range of ``tissue`` over every contrast phase, ``(low, high)``."""
    ranges = [(_HU["native"] | _HU[phase])[tissue] for phase in PHASES]
    return float(min(lo for lo, _ in ranges)), float(max(hi for _, hi in ranges))


__all__ = ["LABEL_IDS", "PHASES", "Tissue", "tissue_hu", "tissue_hu_range"]
