"""The predictor: one scan -> its grid on the model's input -> detections (+ label map, case label).

:meth:`Predictor.prepare` reads a scan (``organdetr.io.images``) and preprocesses it exactly as the training
cache was made (``plans.json``: canonical LPS, ONE resampling straight onto the model grid, e.g. 96^3, so the
model never sees the full-resolution scan and memory stays bounded by the scan itself); batches of grids go
through ``Detector.detect`` (in the precision :meth:`Predictor.precision` settles: bf16 on a GPU that has it,
on the CPU only where measured clearly faster) and :meth:`Predictor.to_prediction` maps the grid boxes back to
the original scan with :func:`organdetr.core.boxes.world.grid_box_to_original` (the prediction JSON of
docs/conventions.md). The batch run over many scans is :mod:`organdetr.inference.predict`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from organdetr.core.boxes.world import grid_box_to_original
from organdetr.core.volume import Volume
from organdetr.inference.scan_checks import scan_mismatches
from organdetr.io.discovery import ScanInput
from organdetr.io.images import UnevenSlices, read_image
from organdetr.preprocessing.plans import (
    case_classes_from_plans,
    class_map_from_plans,
    config_from_plans,
    num_channels,
)
from organdetr.preprocessing.resampling import preprocess_image
from organdetr.runtime.devices import (
    AmpChoice,
    autocast_dtype,
    choose_cpu_amp,
    measures_cpu_amp,
    resolve_device,
)
from organdetr.training.checkpoint import load_detector, read_state, resolve_checkpoint_dir

PREDICT_MEASURE_STEPS = 1  # timed forwards per precision when predict measures (one scan's worth of waiting)


@dataclass
class PreparedScan:
    """A scan on the model grid, ready for the detector."""

    scan: ScanInput
    grid: np.ndarray  # [I, J, K] float, normalised as in training
    record: dict  # the case record (original geometry + to_original)
    volume: Volume | None  # the original scan when kept for pictures / box masks, else None


class Predictor:
    """A trained detector + the preprocessing it was trained with.

    ``classes`` maps label id -> organ name; the detector's dense class index ``c`` is the ``c``-th
    label id in increasing order (docs/conventions.md).
    """

    def __init__(
        self, detector: torch.nn.Module, plans: dict, device: torch.device | str = "cpu", amp: str = "auto"
    ):
        self.device = torch.device(device)
        self.amp = amp  # auto | off | bf16 | fp16, as train.amp (runtime.devices.autocast_dtype)
        self.amp_choice: AmpChoice | None = None  # settled by the first detect_grids
        self.detector = detector.to(self.device).eval()
        self.plans = plans
        self.preprocess_config = config_from_plans(plans)
        self.classes = class_map_from_plans(plans)
        self.label_ids = list(self.classes)  # dense index -> label id
        self.source: str | None = None  # the checkpoint the weights came from (for the JSON)
        self.in_channels = num_channels(plans)
        self.channel_names = list(plans.get("channels") or [])
        self.case_classes = case_classes_from_plans(plans)
        # the checkpoint's validated score threshold (state.json "score_threshold"; None: older runs)
        self.stored_score_threshold: dict | None = None
        # grid axes the training mirrored (augment.flip_lr: i); None = not known (a model built in memory)
        self.trained_mirror_axes: tuple[int, ...] | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto", amp: str = "auto") -> Predictor:
        """Load a run folder / checkpoint folder (safetensors weights, no unpickling)."""
        resolved = resolve_device(device, option="--device")
        detector, cfg, plans = load_detector(checkpoint, resolved)
        predictor = cls(detector, plans, resolved, amp)
        predictor.source = str(checkpoint)
        predictor.trained_mirror_axes = (0,) if cfg.augment.flip_lr > 0 else ()
        predictor.stored_score_threshold = read_state(resolve_checkpoint_dir(checkpoint)).get(
            "score_threshold"
        )
        return predictor

    def prepare(
        self, scan: ScanInput, *, keep_volume: bool = False, uneven_slices: UnevenSlices = "refuse"
    ) -> PreparedScan:
        """Read ``scan`` and resample it onto the model grid (InputError for unreadable/bad scans).

        ``uneven_slices="resample"`` accepts DICOM series with uneven slice steps (interpolated; the
        warning lands in ``record["warnings"]`` and the prediction JSON). A scan unlike the training scans
        (an MR into a CT model, :mod:`organdetr.inference.scan_checks`) gets one line per problem there and
        in ``record["mismatches"]``.
        """
        if self.preprocess_config.channel_norm:  # a multi-channel (or z-scored) cache: one volume per channel
            paths = list(scan.channels or (scan.path,))
            volumes = [read_image(p, uneven_slices=uneven_slices) for p in paths]
            grid, record = preprocess_image(volumes, self.preprocess_config)
            volume = volumes[self.display_channel]
            warnings = [w for v in volumes for w in v.warnings]
        else:
            volume = read_image(scan.path, uneven_slices=uneven_slices)
            grid, record = preprocess_image(volume, self.preprocess_config)
            record["mismatches"] = scan_mismatches(scan.path, record["intensity"], self.plans)  # MR, CT model
            warnings = [*volume.warnings, *record["mismatches"]]
        record.update({"case_id": scan.case_id, "image": str(scan.path), "warnings": warnings})
        return PreparedScan(scan, grid, record, volume if keep_volume else None)

    @property
    def display_channel(self) -> int:
        """The channel the pictures show: a CT channel, else FLAIR, else the first."""
        names = [n.strip().upper() for n in self.channel_names]
        for wanted in ("CT", "FLAIR"):
            if wanted in names:
                return names.index(wanted)
        return 0

    def display_window(self, volume: Volume) -> tuple[float, float] | None:
        """(width, level) for the picture: ``None`` (soft tissue W400/L40) for HU, else the 1-99.5
        percentiles of the non-zero voxels (MR has no fixed intensity scale)."""
        norms = self.preprocess_config.channel_norm
        if not norms or norms[self.display_channel] == "hu_window":
            return None
        values = np.asarray(volume.array, dtype=np.float32)
        values = values[values != 0] if np.count_nonzero(values) else values.ravel()
        low, high = np.percentile(values, (1.0, 99.5))
        return float(max(high - low, 1e-6)), float((high + low) / 2)

    def _batch(self, grids: Sequence[np.ndarray]) -> torch.Tensor:
        """``[B, C, I, J, K]`` float32 from grids ``[I, J, K]`` (one channel) or ``[C, I, J, K]``."""
        batch = torch.from_numpy(np.stack([np.asarray(g, dtype=np.float32) for g in grids]))
        return (batch[:, None] if batch.ndim == 4 else batch).to(self.device, non_blocking=True)

    @torch.no_grad()
    def detect_grids(self, grids: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Detector on a batch of grids ``[I, J, K]`` -> per grid ``labels [D]``, ``scores [D]``,
        ``boxes [D, 6]`` (voxel xyzxyz on the model grid), as numpy."""
        batch = self._batch(grids)
        self.precision(lambda: self.detector.detect(batch))
        with self._autocast():
            results = self.detector.detect(batch)
        return [
            {k: v.detach().float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in r.items()}
            for r in results
        ]

    @property
    def segments(self) -> bool:
        """Whether the model also gives a label map (its detector has ``segment``; a multi-task detector
        declares it in ``tasks``)."""
        return callable(getattr(self.detector, "segment", None)) and self._trained_for("seg")

    @property
    def classifies(self) -> bool:
        """Whether the model gives a case-level class (its detector has ``classify``)."""
        return callable(getattr(self.detector, "classify", None)) and self._trained_for("cls")

    def _trained_for(self, task: str) -> bool:
        tasks = getattr(self.detector, "tasks", None)
        return tasks is None or task in tasks

    @torch.no_grad()
    def classify_grids(self, grids: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Case-level class probabilities of a batch of grids -> per grid ``[C]`` (``case_classes`` order)."""
        with self._autocast():
            probs = self.detector.classify(self._batch(grids)).float().cpu().numpy()
        return list(probs)

    def case_label(self, probabilities: np.ndarray) -> dict:
        """The prediction JSON's ``case_label``: the most probable class, its probability, all of them."""
        best = int(np.argmax(probabilities))
        return {
            "label": self.case_classes[best],
            "probability": round(float(probabilities[best]), 6),
            "probabilities": {
                n: round(float(p), 6) for n, p in zip(self.case_classes, probabilities, strict=True)
            },
        }

    @torch.no_grad()
    def segment_grids(self, grids: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Label maps of a batch of grids -> per grid ``[I, J, K]`` of the dataset's label ids (0 = none)."""
        with self._autocast():
            dense = self.detector.segment(self._batch(grids)).cpu().numpy()
        lut = np.asarray([0, *self.label_ids], dtype=np.uint8 if max(self.label_ids) < 256 else np.uint16)
        return [lut[d] for d in dense]

    def precision(self, forward: Callable[[], object] | None = None) -> AmpChoice:
        """The precision of the model's forward passes, settled on the first call and kept.

        As ``train.amp``: ``auto`` is bf16 on a CUDA GPU that has it; on the CPU it is fp32 unless the CPU
        has bf16 instructions and ``forward`` (the first batch's detection) measures clearly faster under
        bf16 autocast (:func:`organdetr.runtime.devices.choose_cpu_amp`, one timed forward each after a
        warm-up). Without ``forward`` an unsettled CPU ``auto`` is fp32 without measuring.
        """
        if self.amp_choice is None:
            if measures_cpu_amp(self.amp, self.device) and forward is not None:
                with torch.random.fork_rng(devices=[]):
                    self.amp_choice = choose_cpu_amp(forward, steps=PREDICT_MEASURE_STEPS)
            elif measures_cpu_amp(self.amp, self.device):
                return AmpChoice(None, None, "not measured")
            else:
                dtype = autocast_dtype(self.amp, self.device)
                self.amp_choice = AmpChoice(dtype, None, f"amp {self.amp} on {self.device.type}")
        return self.amp_choice

    def _autocast(self):
        dtype = self.precision().dtype
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def to_prediction(
        self,
        prepared: PreparedScan,
        result: dict,
        score_threshold: float = 0.0,
        case_probabilities: np.ndarray | None = None,
    ) -> dict:
        """Model-grid detections -> the prediction JSON of docs/conventions.md (original scan, LPS mm);
        ``case_probabilities`` ``[C]`` add its ``case_label``."""
        keep = result["scores"] >= score_threshold
        labels, scores, boxes = result["labels"][keep], result["scores"][keep], result["boxes"][keep]
        box_voxel, box_mm = grid_box_to_original(boxes.reshape(-1, 6).astype(np.float64), prepared.record)
        detections = []
        for c, score, vox, mm in zip(labels, scores, box_voxel, box_mm, strict=True):
            label_id = self.label_ids[int(c)]
            detections.append(
                {
                    "label": self.classes[label_id],
                    "label_id": int(label_id),
                    "score": round(float(score), 6),
                    "box_voxel": [round(float(v), 3) for v in vox],
                    "box_mm": [round(float(v), 3) for v in mm],
                    "center_mm": [round(float(v), 3) for v in (mm[:3] + mm[3:]) / 2.0],
                    "size_mm": [round(float(v), 3) for v in mm[3:] - mm[:3]],
                }
            )
        prediction = {
            "case_id": prepared.scan.case_id,
            "image": str(prepared.scan.path),
            "world_frame": "LPS",
            "original": prepared.record["original"],
            "model": {"checkpoint": self.source, "input_size": list(self.preprocess_config.input_size)},
            "warnings": list(prepared.record.get("warnings", [])),
            "detections": detections,
        }
        if prepared.scan.channels:
            prediction["images"] = [str(p) for p in prepared.scan.channels]
        if case_probabilities is not None:
            prediction["case_label"] = self.case_label(case_probabilities)
        return prediction


__all__ = ["PreparedScan", "Predictor"]
