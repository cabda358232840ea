"""Organ presence: is an organ in the scan at all? The score threshold that keeps absent organs out.

A detector scores every organ class in every scan (one box per organ, the Organ-DETR protocol), also organs
the scan does not hold (an upper-abdomen slab still gets a urinary bladder at a low score). Presence is a
yes / no decision per (scan, organ) pair: the organ's best score in the scan against a threshold, scored
against whether the ground truth holds the organ. :func:`presence_threshold` picks the threshold that
maximises the F1 of that decision over the validation scans; training stores it in every checkpoint's
``state.json`` (``"score_threshold"``) and ``organdetr predict`` uses it by default.

One **global** threshold, pooled over all organs: a validation set holds one presence decision per organ and
scan (tens of scans at most), and most organs are present in every validation scan, so a per-organ threshold
would have no negatives to learn from and would be noise; the detector's sigmoid scores share one scale
across classes (one focal loss over every class), which a shared threshold relies on.

The cut: pairs ranked by score, the F1 of keeping the top ``n`` for every ``n`` between distinct scores; the
best F1 wins, ties going to the lowest threshold (more organs kept: a wrongly dropped organ is silent, a
wrongly kept one shows its score). The threshold sits halfway between the lowest kept score and the highest
dropped one; when no pair is dropped (every organ present in every validation scan: nothing to separate) it
is 0.0, which keeps every organ.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from organdetr.evaluation.coco import Detection, GroundTruth

FALLBACK_SCORE_THRESHOLD = 0.0
"""What ``predict`` uses for a run trained before the threshold was stored (and says so): every organ's best
box is kept, as before. No fixed number is right for every model's score scale, and a made-up one could drop
present organs without a word."""


@dataclass(frozen=True)
class PresenceThreshold:
    """The chosen threshold and how the validation scans' presence decisions fare with it."""

    score: float  # keep an organ when its score >= this, in [0, 1]
    f1: float
    precision: float
    recall: float
    scans: int  # validation scans
    pairs: int  # (scan, organ) pairs scored = scans x organ classes
    absent: int  # pairs whose organ the ground truth does not hold
    dropped_absent: int  # absent pairs the threshold drops (true negatives)

    def to_metrics(self) -> dict[str, float]:
        """The validation metrics' entries (``presence_threshold``, ``presence_F1``, ...)."""
        values = asdict(self)
        return {
            "presence_threshold": values.pop("score"),
            "presence_F1": values.pop("f1"),
            **{f"presence_{k}": float(v) for k, v in values.items()},
        }


def threshold_state(metrics: dict[str, float]) -> dict | None:
    """The checkpoint ``state.json`` entry ``"score_threshold"`` from validation ``metrics`` (``None`` when
    they hold no presence threshold)."""
    if "presence_threshold" not in metrics:
        return None
    fields = {k.removeprefix("presence_"): v for k, v in metrics.items() if k.startswith("presence_")}
    state = {"score": round(float(fields.pop("threshold")), 6), "f1": round(float(fields.pop("F1")), 6)}
    for key, value in fields.items():
        state[key] = int(value) if key in _COUNTS else round(float(value), 6)
    return {**state, "rule": "global: max F1 of organ presence over the validation scans"}


_COUNTS = ("scans", "pairs", "absent", "dropped_absent")


def presence_pairs(
    detections: Iterable[Detection],
    truths: Iterable[GroundTruth],
    case_ids: Sequence[str],
    classes: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [P], present [P] bool)`` over every (case, class) pair, ``P = len(case_ids) * len(classes)``:
    the class's best detection score in the case (0 without one) and whether the ground truth holds it."""
    index = {(c, k): n for n, (c, k) in enumerate((c, k) for c in case_ids for k in classes)}
    scores = np.zeros(len(index), dtype=np.float64)
    present = np.zeros(len(index), dtype=bool)
    for det in detections:
        n = index.get((det.case_id, det.label))
        if n is not None:
            scores[n] = max(scores[n], float(det.score))
    for truth in truths:
        n = index.get((truth.case_id, truth.label))
        if n is not None:
            present[n] = True
    return scores, present


def presence_threshold(
    detections: Iterable[Detection],
    truths: Iterable[GroundTruth],
    case_ids: Sequence[str],
    classes: Sequence[str],
) -> PresenceThreshold | None:
    """The global score threshold of maximal presence F1 (module docstring); ``None`` without a present
    organ in any case (nothing to learn from)."""
    scores, present = presence_pairs(detections, truths, case_ids, classes)
    if not present.any():
        return None
    order = np.argsort(-scores, kind="stable")
    ranked, truth = scores[order], present[order]
    tp = np.cumsum(truth)
    fp = np.cumsum(~truth)
    f1 = 2 * tp / (tp + fp + truth.sum())  # keeping the top n+1: 2TP / (2TP + FP + FN)
    cut_ok = np.append(ranked[1:] < ranked[:-1], True)  # cut only between distinct scores
    f1 = np.where(cut_ok, f1, -1.0)
    best = int(np.flatnonzero(f1 >= f1.max() - 1e-12)[-1])  # ties: the longest kept list
    kept = best + 1
    score = 0.0 if kept == len(ranked) else float((ranked[best] + ranked[kept]) / 2)
    keep = scores >= score
    true_pos = int((keep & present).sum())
    return PresenceThreshold(
        score=score,
        f1=float(f1[best]),
        precision=true_pos / max(int(keep.sum()), 1),
        recall=true_pos / int(present.sum()),
        scans=len(case_ids),
        pairs=len(scores),
        absent=int((~present).sum()),
        dropped_absent=int((~keep & ~present).sum()),
    )


__all__ = [
    "FALLBACK_SCORE_THRESHOLD",
    "PresenceThreshold",
    "presence_pairs",
    "presence_threshold",
    "threshold_state",
]
