"""The image-blind prior: the mean training box of each organ, predicted for every scan without looking at it.

Every accuracy number of the toolkit stands beside this prior (DEVELOPERS.md): a detector that does not
beat it has not learned to read the image. Two flavours, both fitted on the training cases' cache records:

* ``"mm"``: the mean LPS-mm box of each organ (scanner coordinates). Right when patients lie at the same
  place in the scanner and the field of view is fixed;
* ``"fov"``: the mean box in normalised field-of-view coordinates (the model grid divided by its size),
  mapped back to each test scan through its own record. Right when scans are cropped around the same
  anatomy.

The score of every prior box is the organ's frequency in the training cases (constant per organ, so the
ranking within a class is a tie - the prior cannot tell a scan that has the organ from one that lacks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from organdetr.core.boxes.world import grid_box_to_original
from organdetr.evaluation import Detection
from organdetr.runtime.text import brief

PRIOR_KINDS: tuple[str, ...] = ("mm", "fov")


@dataclass(frozen=True)
class BoxPrior:
    """Mean boxes per organ name: ``mm`` LPS xyzxyz in mm, ``fov`` normalised grid xyzxyz in [0, 1]."""

    mm: dict[str, np.ndarray]
    fov: dict[str, np.ndarray]
    frequency: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "mm": {k: v.tolist() for k, v in self.mm.items()},
            "fov": {k: v.tolist() for k, v in self.fov.items()},
            "frequency": dict(self.frequency),
        }


def fit_box_prior(records: Iterable[dict]) -> BoxPrior:
    """Fit the prior on training case records (``preprocess`` case JSONs: ``boxes[*].box_mm``,
    ``boxes[*].box_voxel`` and ``grid.size``)."""
    mm: dict[str, list[np.ndarray]] = {}
    fov: dict[str, list[np.ndarray]] = {}
    count = 0
    for record in records:
        count += 1
        size = np.tile(np.asarray(record["grid"]["size"], dtype=np.float64), 2)
        for box in record["boxes"]:
            mm.setdefault(box["name"], []).append(np.asarray(box["box_mm"], dtype=np.float64))
            fov.setdefault(box["name"], []).append(np.asarray(box["box_voxel"], dtype=np.float64) / size)
    if count == 0:
        raise ValueError("fit_box_prior needs at least one training record")
    return BoxPrior(
        mm={k: np.mean(v, axis=0) for k, v in mm.items()},
        fov={k: np.mean(v, axis=0) for k, v in fov.items()},
        frequency={k: len(v) / count for k, v in mm.items()},
    )


def prior_detections(prior: BoxPrior, records: Iterable[dict], kind: str = "mm") -> list:
    """:class:`organdetr.evaluation.Detection` per organ and case: the prior box in LPS mm, score = frequency.

    ``records``: the test cases' records (``case_id``, and for ``kind="fov"`` the geometry fields that
    :func:`organdetr.core.boxes.world.grid_box_to_original` needs).
    """
    if kind not in PRIOR_KINDS:
        raise ValueError(f"prior kind must be one of {PRIOR_KINDS}, got {brief(kind)}")
    detections = []
    for record in records:
        size = np.tile(np.asarray(record["grid"]["size"], dtype=np.float64), 2)
        for name, box_mm in prior.mm.items():
            if kind == "fov":
                box_mm = grid_box_to_original(prior.fov[name] * size, record)[1]
            detections.append(Detection(record["case_id"], name, prior.frequency[name], np.asarray(box_mm)))
    return detections


__all__ = ["PRIOR_KINDS", "BoxPrior", "fit_box_prior", "prior_detections"]
