"""Which organs a prediction run reports: the score threshold (the run's validated one by default) and the
``--organs`` subset. Both act on the prediction before any writer sees it, so every output agrees.

The threshold: training stores the score threshold of best organ-presence F1 over the validation scans in
every checkpoint's ``state.json`` (``"score_threshold"``, :mod:`organdetr.evaluation.presence`); ``predict``
uses it unless ``--score-threshold`` / ``--min-score`` is given. A run trained before that (no entry) falls
back to :data:`~organdetr.evaluation.presence.FALLBACK_SCORE_THRESHOLD` (0.0: every organ kept) and says so
on the console and under ``warnings`` in every prediction JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from organdetr.evaluation.presence import FALLBACK_SCORE_THRESHOLD
from organdetr.runtime.errors import InputError


@dataclass(frozen=True)
class ScoreThreshold:
    """The threshold a run keeps detections with and where it came from."""

    score: float
    source: str  # "validation" | "option" | "fallback"
    detail: str  # one line for the console and the JSON

    @property
    def warning(self) -> str | None:
        """The line every prediction JSON carries under ``warnings`` when the run had no threshold."""
        return self.detail if self.source == "fallback" else None

    def to_json(self) -> dict:
        """The prediction JSON's ``"score_threshold"`` entry."""
        return {"score": self.score, "source": self.source, "detail": self.detail}


def resolve_score_threshold(requested: float | None, stored: Mapping | None) -> ScoreThreshold:
    """``requested`` (the option; ``None``: not given) else the checkpoint's stored entry else the fallback.

    InputError when ``requested`` is not a number in [0, 1]; a stored entry that is not is ignored (named in
    the fallback's line).
    """
    if requested is not None:
        if not (math.isfinite(requested) and 0.0 <= requested <= 1.0):
            raise InputError(None, f"--score-threshold must be a number in [0, 1], got {requested}")
        return ScoreThreshold(float(requested), "option", f"score >= {requested:g} (--score-threshold)")
    value = stored.get("score") if isinstance(stored, Mapping) else None
    if isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0:
        f1, scans = stored.get("f1"), stored.get("scans")
        detail = f"score >= {value:.4g}, chosen on the validation scans"
        if isinstance(f1, int | float) and isinstance(scans, int):
            detail += f" (organ-presence F1 {f1:.3f} over {scans} scan(s))"
        return ScoreThreshold(float(value), "validation", detail)
    return ScoreThreshold(
        FALLBACK_SCORE_THRESHOLD,
        "fallback",
        f"this model stores no validated score threshold (trained before it was chosen): kept every organ "
        f"with score >= {FALLBACK_SCORE_THRESHOLD:g}; pass --score-threshold to drop unlikely organs",
    )


def parse_organs(names: str | Iterable[str] | None, classes: Mapping[int, str]) -> frozenset[str] | None:
    """``--organs liver,spleen`` -> the organ names (``None``: all). InputError listing the valid names when
    one is unknown or none is given."""
    if names is None:
        return None
    parts = names.split(",") if isinstance(names, str) else [p for n in names for p in str(n).split(",")]
    wanted = [p.strip() for p in parts if p.strip()]
    valid = sorted(classes.values())
    unknown = [n for n in wanted if n not in valid]
    if unknown or not wanted:
        what = f"unknown organ(s) {', '.join(unknown)}" if unknown else "no organ named"
        raise InputError(None, f"--organs: {what}; this model's organs are: {', '.join(valid)}")
    return frozenset(wanted)


def select_organs(
    prediction: dict, seg: np.ndarray | None, organs: frozenset[str] | None, classes: Mapping[int, str]
) -> tuple[dict, np.ndarray | None]:
    """Keep only ``organs`` (``None``: all) in ``prediction``'s detections and the label map ``seg``
    (label ids; other organs become 0). Returns new objects; the inputs are not changed."""
    if organs is None:
        return prediction, seg
    detections = [d for d in prediction["detections"] if d["label"] in organs]
    prediction = {**prediction, "detections": detections, "organs": sorted(organs)}
    if seg is not None:
        keep_ids = [label_id for label_id, name in classes.items() if name in organs]
        seg = np.where(np.isin(seg, keep_ids), seg, 0).astype(seg.dtype)
    return prediction, seg


__all__ = ["ScoreThreshold", "parse_organs", "resolve_score_threshold", "select_organs"]
