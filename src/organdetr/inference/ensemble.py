"""Ensembles and test-time augmentation: several models and / or mirrored views of one scan -> one prediction.

:class:`EnsemblePredictor` is a :class:`~organdetr.inference.predictor.Predictor` over ``members`` (models
trained on caches with the same preprocessing and class list, e.g. the 5 folds of a cross-validation) and
``views`` (test-time mirrorings: the identity plus flips of the model grid along ``i``, ``j`` and / or ``k``).
Every (member, view) pair is one forward pass per scan: the grid is mirrored, detected, and its voxel boxes
mirrored back exactly (:func:`organdetr.core.boxes.fusion.flip_voxel_boxes`); a mirror along ``i`` (patient
left-right in the canonical LPS grid) also swaps ``*_left`` / ``*_right`` classes back, as training's
left-right flip does. Per organ the boxes of all passes are fused by score-weighted box fusion
(:func:`organdetr.core.boxes.fusion.fuse_organ_boxes`); label maps of segmenting members are averaged as
one-hot masks (the per-voxel majority, ties to the lower label id); case-level class probabilities are
averaged. The prediction JSON's ``model`` names every member (run folder, checkpoint, weights SHA-256) and
the views (``"tta"``).

Mirroring helps a model that saw mirrored scans in training (nnU-Net trains with mirroring and mirrors at
test time); a model trained without flips may see a mirrored abdomen as an unknown anatomy, which the
benchmark (benchmarks/bench_ensemble_tta.py) measures.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.fusion import flip_voxel_boxes, fuse_organ_boxes
from organdetr.data.augment import left_right_swap_table
from organdetr.inference.predictor import Predictor, PreparedScan
from organdetr.runtime.atomic import file_sha256
from organdetr.runtime.devices import AmpChoice
from organdetr.runtime.errors import InputError
from organdetr.training.checkpoint import (
    CHECKPOINT_NAMES,
    EMA_FILE,
    MODEL_FILE,
    STATE_FILE,
    read_state,
    resolve_checkpoint_dir,
)

AXIS_NAMES = "ijk"

View = tuple[int, ...]  # the grid axes a view mirrors (0 = i, 1 = j, 2 = k); () = the scan as it is


def flip_views(axes: str) -> list[View]:
    """The identity and every non-empty combination of mirrors along ``axes`` (letters of ``"ijk"``):
    ``"ijk"`` -> 8 views (the 7 non-identity flips of nnU-Net's test-time mirroring), ``"i"`` -> 2."""
    picked = sorted({AXIS_NAMES.index(a) for a in axes.lower() if a in AXIS_NAMES})
    if not picked or len(axes) != len(set(axes.lower())) or any(a not in AXIS_NAMES for a in axes.lower()):
        raise InputError(None, f"--tta-axes must be distinct letters of 'ijk', got {axes!r}")
    combos = [c for n in range(len(picked) + 1) for c in itertools.combinations(picked, n)]
    return [tuple(c) for c in combos]


def view_name(view: View) -> str:
    """``()`` -> ``"none"``, ``(0, 2)`` -> ``"flip ik"``."""
    return "none" if not view else "flip " + "".join(AXIS_NAMES[a] for a in view)


def _flip_grid(grid: np.ndarray, view: View) -> np.ndarray:
    """Mirror a grid ``[I, J, K]`` or ``[C, I, J, K]`` along the view's axes (a contiguous copy)."""
    if not view:
        return grid
    lead = grid.ndim - 3
    return np.ascontiguousarray(np.flip(grid, axis=tuple(a + lead for a in view)))


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder (``best/`` / ``last/`` checkpoints), a checkpoint folder or its
    ``model.safetensors``."""
    path = Path(path)
    if path.name == MODEL_FILE and path.is_file():
        path = path.parent
    return path.is_dir() and any((path / name / STATE_FILE).is_file() for name in ("", *CHECKPOINT_NAMES))


def split_members(arguments: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """A command line's ``RUN1 RUN2 ... SCAN...`` -> (the leading run / checkpoint folders, the scans)."""
    n = 0
    while n < len(arguments) and is_run_folder(arguments[n]):
        n += 1
    return list(arguments[:n]), list(arguments[n:])


def member_record(run: str | Path) -> dict:
    """What the JSON says about a member: its run folder, checkpoint folder and the weights' SHA-256."""
    ckpt = resolve_checkpoint_dir(run)  # verified against state.json's SHA-256 list where it has one
    weights = ckpt / EMA_FILE if (ckpt / EMA_FILE).is_file() else ckpt / MODEL_FILE
    listed = (read_state(ckpt).get("files") or {}).get(weights.name) or {}
    digest = listed.get("sha256") or file_sha256(weights)
    return {"run": str(run), "checkpoint": str(ckpt), "weights": weights.name, "sha256": digest}


def check_members(members: Sequence[Predictor], names: Sequence[str]) -> None:
    """InputError naming the first member whose class list or preprocessing differs from the first's."""
    first = members[0]
    for member, name in zip(members[1:], names[1:], strict=True):
        if member.classes != first.classes:
            differ = sorted(set(member.classes.items()) ^ set(first.classes.items()))[:3]
            raise InputError(
                name, f"classes differ from {names[0]}'s ({', '.join(f'{i}={n}' for i, n in differ)}): "
                "an ensemble needs members with one class list",
            )  # fmt: skip
        if member.preprocess_config != first.preprocess_config:
            raise InputError(name, f"preprocessing (grid, spacing, intensities) differs from {names[0]}'s")
        if (member.segments, member.classifies) != (first.segments, first.classifies):
            raise InputError(name, f"segments / classifies unlike {names[0]}: members need the same outputs")


class EnsemblePredictor(Predictor):
    """Members x views as one predictor (see the module docstring); ``predict_scans`` takes it as is."""

    def __init__(
        self, members: Sequence[Predictor], views: Sequence[View] = ((),), records: list | None = None
    ):
        if not members or not views:
            raise ValueError("an ensemble needs at least one member and one view")
        first = members[0]
        super().__init__(first.detector, first.plans, first.device, first.amp)
        self.members = list(members)
        self.views = [tuple(v) for v in views]
        self.records = records if records is not None else [{"run": m.source} for m in members]
        self.source = first.source if len(members) == 1 else f"ensemble of {len(members)}"
        names = [self.classes[i] for i in self.label_ids]
        self.swap = left_right_swap_table(names)  # [K + 1]: dense class + 1 -> its mirror partner + 1

    @classmethod
    def from_checkpoints(
        cls,
        runs: Sequence[str | Path],
        views: Sequence[View] = ((),),
        device: str = "auto",
        amp: str = "auto",
    ) -> EnsemblePredictor:
        """Load every run (InputError when their class lists or preprocessing differ)."""
        members: list[Predictor] = []
        for run in runs:  # each checked as it loads: a mismatch is refused before the rest load
            members.append(Predictor.from_checkpoint(run, device, amp))
            check_members([members[0], members[-1]], [str(runs[0]), str(run)])
        return cls(members, views, [member_record(run) for run in runs])

    @property
    def amp_choice(self) -> AmpChoice | None:
        """The first member's precision (every member settles its own)."""
        return self.members[0].amp_choice if hasattr(self, "members") else None

    @amp_choice.setter
    def amp_choice(self, value) -> None:  # the base __init__ sets it; members keep their own
        pass

    @property
    def forward_passes(self) -> int:
        """Network forward passes per scan: members x views x the model's outputs (detection, + label map
        for a segmenting model, + case class for a classifying one: one pass each, as a single model)."""
        return len(self.members) * len(self.views) * (1 + int(self.segments) + int(self.classifies))

    def _passes(self, grids: Sequence[np.ndarray]):
        """Yield ``(member, view, mirrored grids)`` for every pass."""
        for member in self.members:
            for view in self.views:
                yield member, view, [_flip_grid(g, view) for g in grids]

    def _unflip_result(self, result: dict, view: View, size: Sequence[int]) -> dict:
        labels = np.asarray(result["labels"])
        if 0 in view:
            labels = self.swap[labels + 1] - 1
        return {**result, "labels": labels, "boxes": flip_voxel_boxes(result["boxes"], view, size)}

    def detect_grids(self, grids: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Every pass's detections mirrored back, fused per organ -> per grid ``labels``, ``scores``,
        ``boxes [D, 6]`` (voxel xyzxyz on the model grid)."""
        per_grid: list[list[dict]] = [[] for _ in grids]
        for member, view, flipped in self._passes(grids):
            for collected, grid, result in zip(per_grid, grids, member.detect_grids(flipped), strict=True):
                collected.append(self._unflip_result(result, view, grid.shape[-3:]))
        return [fuse_organ_boxes(collected) for collected in per_grid]

    def segment_grids(self, grids: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps (label ids ``[I, J, K]``) of every pass mirrored back, averaged as one-hot masks."""
        lut = np.zeros(max(self.label_ids) + 1, dtype=np.int64)  # label id -> dense class + 1
        lut[self.label_ids] = np.arange(1, len(self.label_ids) + 1)
        votes = [np.zeros((len(self.label_ids) + 1, *g.shape[-3:]), dtype=np.int32) for g in grids]
        for member, view, flipped in self._passes(grids):
            for vote, seg in zip(votes, member.segment_grids(flipped), strict=True):
                dense = _flip_grid(lut[seg], view)
                if 0 in view:
                    dense = self.swap[dense]
                for c in range(vote.shape[0]):
                    vote[c] += dense == c
        ids = np.asarray([0, *self.label_ids], dtype=np.uint8 if max(self.label_ids) < 256 else np.uint16)
        return [ids[vote.argmax(axis=0)] for vote in votes]

    def classify_grids(self, grids: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Case-level class probabilities averaged over every pass."""
        total = [np.zeros(len(self.case_classes)) for _ in grids]
        for member, _view, flipped in self._passes(grids):
            for acc, probs in zip(total, member.classify_grids(flipped), strict=True):
                acc += probs
        n = len(self.members) * len(self.views)
        return [acc / n for acc in total]

    def to_prediction(
        self, prepared: PreparedScan, result: dict, score_threshold: float = 0.0, case_probabilities=None
    ) -> dict:
        """The base prediction JSON, its ``model`` naming the members, the views and the passes per scan."""
        prediction = super().to_prediction(prepared, result, score_threshold, case_probabilities)
        prediction["model"].update(
            {
                "members": self.records,
                "fusion": "score-weighted box fusion per organ (missing members score 0)",
                "tta": {
                    "used": len(self.views) > 1,
                    "views": [view_name(v) for v in self.views],
                    "axes_not_mirrored_in_training": self.unseen_mirror_axes(),
                },
                "forward_passes": self.forward_passes,
            }
        )
        return prediction

    def unseen_mirror_axes(self) -> list[str]:
        """Axes (letters of ``"ijk"``) the views mirror but some member never saw mirrored in training.

        Training mirrors at most axis i (``augment.flip_lr``, left / right swapped); j and k flips show the
        model an upside-down or back-to-front abdomen. On the demo phantoms, models trained without flips lost
        62 % of their test mAP with ``--tta-axes i`` and more with ``ijk`` (BENCHMARKS.md, issue 23), so
        predict warns. Members built in memory (no training record) are not judged."""
        mirrored = {a for view in self.views for a in view}
        known = [m.trained_mirror_axes for m in self.members if m.trained_mirror_axes is not None]
        return [AXIS_NAMES[a] for a in sorted(mirrored) if any(a not in seen for seen in known)]

    def describe(self) -> str:
        """One line for the console: members, views and what it costs."""
        tta = ", ".join(view_name(v) for v in self.views)
        factor = len(self.members) * len(self.views)
        return (
            f"{len(self.members)} model(s) x {len(self.views)} view(s) ({tta}) = "
            f"{self.forward_passes} forward pass(es) per scan ({factor}x a single model's)"
        )


__all__ = [
    "is_run_folder",
    "split_members",
    "AXIS_NAMES",
    "EnsemblePredictor",
    "View",
    "check_members",
    "flip_views",
    "member_record",
    "view_name",
]
