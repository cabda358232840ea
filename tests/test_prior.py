"""organdetr.models.baselines.prior: the image-blind mean-box prior in mm and in field-of-view coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from organdetr.evaluation import GroundTruth, evaluate_detections
from organdetr.models.baselines.prior import fit_box_prior, prior_detections


def _record(case_id: str, origin_mm: float, boxes: dict[str, list[float]], size=(10, 10, 10)) -> dict:
    """A case record on a 10^3 grid of 2 mm voxels whose origin moves with ``origin_mm`` (i axis)."""
    geometry = {"size": list(size), "spacing": [2.0, 2.0, 2.0], "origin": [origin_mm, 0.0, 0.0],
                "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}  # fmt: skip
    out = []
    for name, voxel in boxes.items():
        v = np.asarray(voxel, dtype=float)
        mm = np.concatenate([(v[:3] - 0.5) * 2.0, (v[3:] - 0.5) * 2.0]) + np.tile([origin_mm, 0, 0], 2)
        out.append({"name": name, "box_voxel": v.tolist(), "box_mm": mm.tolist()})
    return {
        "case_id": case_id,
        "grid": geometry,
        "original": geometry,
        "to_original": {"scale": [1.0, 1.0, 1.0], "offset": [0.0, 0.0, 0.0]},
        "boxes": out,
    }


def test_fit_means_and_frequencies():
    records = [
        _record("a", 0.0, {"liver": [0, 0, 0, 4, 4, 4], "spleen": [6, 6, 6, 8, 8, 8]}),
        _record("b", 100.0, {"liver": [2, 2, 2, 6, 6, 6]}),
    ]
    prior = fit_box_prior(records)
    np.testing.assert_allclose(prior.fov["liver"], [0.1, 0.1, 0.1, 0.5, 0.5, 0.5])
    assert prior.frequency == {"liver": 1.0, "spleen": 0.5}
    np.testing.assert_allclose(prior.mm["liver"][[0, 3]], [(-1 + 103) / 2, (7 + 111) / 2])
    with pytest.raises(ValueError, match="at least one"):
        fit_box_prior([])


def test_fov_prior_follows_the_scan_mm_prior_does_not():
    """The same anatomy at two table positions: the field-of-view prior is right on both, the mm prior
    (fitted where the tables differ) is right on neither."""
    liver = {"liver": [2, 2, 2, 6, 6, 6]}
    prior = fit_box_prior([_record("a", 0.0, liver), _record("b", 100.0, liver)])
    test = [_record("t1", 0.0, liver), _record("t2", 100.0, liver)]
    truth = [GroundTruth(r["case_id"], "liver", np.asarray(r["boxes"][0]["box_mm"])) for r in test]
    fov = evaluate_detections(prior_detections(prior, test, "fov"), truth, ["liver"], max_detections=1)
    mm = evaluate_detections(prior_detections(prior, test, "mm"), truth, ["liver"], max_detections=1)
    assert fov.summary["AP75"] == pytest.approx(1.0)
    assert mm.summary["AP10"] == pytest.approx(0.0)
    assert all(d.score == 1.0 for d in prior_detections(prior, test, "mm"))
    with pytest.raises(ValueError, match="prior kind"):
        prior_detections(prior, test, "inches")
