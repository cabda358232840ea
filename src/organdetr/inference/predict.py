"""Prediction on new scans: files, folders of files or DICOM series -> JSON boxes, pictures, box masks.

Per scan (:meth:`Predictor.prepare`): read (``organdetr.io.images``), preprocess exactly as the training
cache was
made (``plans.json``: canonical LPS, ONE resampling straight onto the model grid, e.g. 96^3, so the model
never sees the full-resolution scan and memory stays bounded by the scan itself), then batches of grids go
through ``Detector.detect`` (bf16 autocast on CUDA) and the grid boxes are mapped back to the original
scan with :func:`organdetr.core.geometry.grid_box_to_original`.

Outputs in ``OUT/`` (schema in docs/conventions.md, "Predictions")::

    <case>.json            detections: organ, label id, score, box_voxel (original scan), box_mm (LPS),
                           center_mm, size_mm
    <case>.png             three orthogonal views, W400/L40, coloured boxes + legend   (overlay=True)
    <case>_boxes.nii.gz    label volume of the boxes on the original scan's grid        (save_box_mask=True)
    <case>_seg.nii.gz      the model's organ label map on the original scan's grid      (segmenting models)
    3D Slicer / MONAI / nnDetection files, viewer.html           (outputs, organdetr.formats.run_outputs)
    <case>_seg.dcm         DICOM SEG of the organ masks, <case>_sr.dcm DICOM SR (TID 1500)
                           of the boxes, for DICOM input                                   (dicom_out=True)

A segmenting model (one whose detector has ``segment``: ``seg2box``, MaskMed, ...) also writes its label map
(label ids of the dataset, nearest-neighbour back from the model grid); its boxes come from the masks. With
``dicom_out`` that label map (else the box masks) goes into the DICOM SEG. A classifying model (one whose
detector has ``classify``: MTMed3D with ``cls``) adds the case label with its probability to the JSON
(``"case_label": {"label", "probability", "probabilities"}``).

A model trained on several channels (``plans.json`` ``channels``, e.g. T1 / T1ce / T2 / FLAIR) reads each
scan as the nnU-Net channel files ``<case>_0000`` .. ``<case>_000{C-1}`` side by side: name the ``_0000``
file or the folder holding them; the picture shows the FLAIR (or first) channel, windowed by percentiles.

One bad scan does not stop the others: failures are collected in :class:`PredictSummary`.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from organdetr.core.geometry import Geometry, grid_box_to_original, grid_labels_to_original
from organdetr.io.images import IMAGE_SUFFIXES, UnevenSlices, Volume, read_image, write_image
from organdetr.runtime.atomic import write_json
from organdetr.runtime.errors import InputError

if TYPE_CHECKING:
    from organdetr.formats.run_outputs import RunOutputs

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's "_0000" channel suffix


# ----------------------------------------------------------------------------- finding inputs


@dataclass(frozen=True)
class ScanInput:
    """One scan to predict: a file or a DICOM series folder, and the case id its outputs are named by.

    ``channels``: every channel's file of a multi-channel scan (``channels[0] == path``), else empty.
    """

    path: Path
    case_id: str
    channels: tuple[Path, ...] = ()


def is_dicom_file(path: Path) -> bool:
    """``True`` for a ``.dcm`` file or a file with the DICOM preamble magic ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_image_file(path: Path) -> bool:
    """``True`` for a file with a known (non-DICOM) image suffix (.nii, .nii.gz, .nrrd, .mha, .mhd, ...)."""
    name = path.name.lower()
    return (
        path.is_file()
        and not name.startswith(".")
        and name.endswith(IMAGE_SUFFIXES)
        and not name.endswith(".dcm")
    )


def is_dicom_series(folder: Path) -> bool:
    """``True`` when ``folder`` directly holds DICOM files (it is then read as one series)."""
    return any(p.is_file() and not p.name.startswith(".") and is_dicom_file(p) for p in folder.iterdir())


def case_id_of(path: Path) -> str:
    """Case id from a file or folder name: image suffixes and nnU-Net's ``_0000`` channel suffix removed."""
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _CHANNEL_SUFFIX.sub("", name) or "scan"


def find_scans(inputs: Iterable[str | Path]) -> list[ScanInput]:
    """Expand the command line's INPUTs into scans.

    Each input is an image file, a DICOM series folder (a folder directly holding DICOM files), or a
    folder of scans (its image files and its sub-folders that are DICOM series, sorted by name). A
    missing input or a folder with no scans raises :class:`InputError`. Case ids are made unique by
    appending ``_2``, ``_3``, ... where two inputs share a name.
    """
    scans: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            scans.append(path)
        elif path.is_dir():
            scans.extend(_scans_in_folder(path))
        else:
            raise InputError(path, "no such file or folder")
    seen: dict[str, int] = {}
    result = []
    for path in scans:
        case_id = case_id_of(path)
        seen[case_id] = seen.get(case_id, 0) + 1
        if seen[case_id] > 1:
            case_id = f"{case_id}_{seen[case_id]}"
        result.append(ScanInput(path, case_id))
    return result


def group_channels(scans: Sequence[ScanInput], num_channels: int) -> list[ScanInput]:
    """Multi-channel scans from nnU-Net channel files: each ``<case>_0000<ending>`` with its siblings
    ``<case>_0001`` .. ``<case>_000{C-1}`` (which must exist); other channel files named alongside are
    dropped. ``InputError`` for an input that is not a ``_0000`` file (a DICOM folder, a plain file name)."""
    firsts = [s for s in scans if s.path.is_file() and _channel_of(s.path) == 0]
    covered = {_sibling(s.path, c) for s in firsts for c in range(num_channels)}
    result = []
    for scan in scans:
        if scan.path in covered and scan not in firsts:
            continue
        if scan not in firsts:
            raise InputError(
                scan.path,
                f"the model reads {num_channels} channels: give nnU-Net channel files <case>_0000 .. "
                f"<case>_{num_channels - 1:04d} (or their folder)",
            )
        channels = tuple(_sibling(scan.path, c) for c in range(num_channels))
        for c, path in enumerate(channels):
            if not path.is_file():
                raise InputError(
                    path, f"channel {c} of {scan.path.name} is missing (the model reads {num_channels})"
                )
        result.append(ScanInput(scan.path, case_id_of(scan.path), channels))
    return result


def _channel_of(path: Path) -> int | None:
    """The nnU-Net channel number of ``<case>_000c<ending>``, else ``None``."""
    match = re.search(r"_(\d{4})$", _strip_suffix(path.name))
    return int(match.group(1)) if match else None


def _strip_suffix(name: str) -> str:
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _sibling(path: Path, channel: int) -> Path:
    stem = _strip_suffix(path.name)
    return path.with_name(f"{stem[:-4]}{channel:04d}{path.name[len(stem) :]}")


def _scans_in_folder(folder: Path) -> list[Path]:
    if is_dicom_series(folder):
        return [folder]
    entries = sorted(folder.iterdir())
    found = [p for p in entries if is_image_file(p)]
    found += [p for p in entries if p.is_dir() and not p.name.startswith(".") and is_dicom_series(p)]
    if not found:
        raise InputError(folder, "folder holds no scans (no image files, no DICOM series)")
    return sorted(found)


# ----------------------------------------------------------------------------- the predictor


@dataclass
class PreparedScan:
    """A scan on the model grid, ready for the detector."""

    scan: ScanInput
    grid: np.ndarray  # [I, J, K] float, normalised as in training
    record: dict  # the case record (original geometry + to_original)
    volume: Volume | None  # the original scan when kept for pictures / box masks, else None


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU raises ``InputError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"--device {device}: no CUDA GPU is available (use --device cpu)")
    try:
        return torch.device(device)
    except RuntimeError:
        raise InputError(None, f"--device {device!r} is not a device (cpu, cuda, cuda:N, auto)") from None


class Predictor:
    """A trained detector + the preprocessing it was trained with.

    ``classes`` maps label id -> organ name; the detector's dense class index ``c`` is the ``c``-th
    label id in increasing order (docs/conventions.md).
    """

    def __init__(self, detector: torch.nn.Module, plans: dict, device: torch.device | str = "cpu"):
        from organdetr.preprocessing.plans import (
            case_classes_from_plans,
            class_map_from_plans,
            config_from_plans,
            num_channels,
        )

        self.device = torch.device(device)
        self.detector = detector.to(self.device).eval()
        self.plans = plans
        self.preprocess_config = config_from_plans(plans)
        self.classes = class_map_from_plans(plans)
        self.label_ids = list(self.classes)  # dense index -> label id
        self.source: str | None = None  # the checkpoint the weights came from (for the JSON)
        self.in_channels = num_channels(plans)
        self.channel_names = list(plans.get("channels") or [])
        self.case_classes = case_classes_from_plans(plans)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> Predictor:
        """Load a run folder / checkpoint folder (safetensors weights, no unpickling)."""
        from organdetr.training.checkpoint import load_detector

        resolved = resolve_device(device)
        detector, _, plans = load_detector(checkpoint, resolved)
        predictor = cls(detector, plans, resolved)
        predictor.source = str(checkpoint)
        return predictor

    def prepare(
        self, scan: ScanInput, *, keep_volume: bool = False, uneven_slices: UnevenSlices = "refuse"
    ) -> PreparedScan:
        """Read ``scan`` and resample it onto the model grid (InputError for unreadable/bad scans).

        ``uneven_slices="resample"`` accepts DICOM series with uneven slice steps (interpolated; the
        warning lands in ``record["warnings"]`` and the prediction JSON).
        """
        from organdetr.preprocessing.resampling import preprocess_image

        if self.preprocess_config.channel_norm:  # a multi-channel (or z-scored) cache: one volume per channel
            paths = list(scan.channels or (scan.path,))
            volumes = [read_image(p, uneven_slices=uneven_slices) for p in paths]
            grid, record = preprocess_image(volumes, self.preprocess_config)
            volume = volumes[self.display_channel]
            warnings = [w for v in volumes for w in v.warnings]
        else:
            volume = read_image(scan.path, uneven_slices=uneven_slices)
            grid, record = preprocess_image(volume, self.preprocess_config)
            warnings = list(volume.warnings)
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

    def _autocast(self):
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

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


# ----------------------------------------------------------------------------- writing outputs


def box_mask(detections: Sequence[dict], size: Sequence[int]) -> np.ndarray:
    """Label volume ``[I, J, K]`` (original scan grid) with each detection's ``box_voxel`` filled with its
    ``label_id``; larger boxes are drawn first so that small organs inside them stay visible.

    The voxels filled are those whose centre lies inside the box: ``round(lo) .. round(hi) - 1`` per axis
    (at least one voxel per axis).
    """
    max_id = max((int(d["label_id"]) for d in detections), default=0)
    mask = np.zeros(tuple(int(s) for s in size), dtype=np.uint8 if max_id < 256 else np.uint16)
    boxes = [(np.asarray(d["box_voxel"], dtype=np.float64), int(d["label_id"])) for d in detections]
    boxes.sort(key=lambda item: -float(np.prod(np.maximum(item[0][3:] - item[0][:3], 0))))
    for box, label_id in boxes:
        mask[box_voxel_slices(box, mask.shape)] = label_id
    return mask


def box_voxel_slices(box_voxel: Sequence[float], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """The voxels a voxel box ``(i0, j0, k0, i1, j1, k1)`` fills on a grid of ``shape``: those whose
    centre lies inside it, ``round(lo) .. round(hi) - 1`` per axis, clipped to the grid, at least one
    voxel per axis (a box thinner than a voxel still shows)."""
    box = np.asarray(box_voxel, dtype=np.float64)
    upper = np.asarray(shape, dtype=int)
    lo = np.clip(np.round(box[:3]).astype(int), 0, upper)
    hi = np.clip(np.round(box[3:]).astype(int), 0, upper)
    hi = np.maximum(hi, np.minimum(lo + 1, upper))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))  # type: ignore[return-value]


def write_outputs(
    prediction: dict,
    out_dir: Path,
    volume: Volume | None,
    *,
    overlay: bool,
    save_box_mask: bool,
    uneven_slices: UnevenSlices = "refuse",
    seg: np.ndarray | None = None,
    outputs: RunOutputs | None = None,
    dicom_out: bool = False,
    window: tuple[float, float] | None = None,
) -> list[Path]:
    """Write ``<case>.json`` (+ ``<case>.png``, ``<case>_boxes.nii.gz``, ``<case>_seg.nii.gz``, the
    ``outputs`` formats' files, ``<case>_seg.dcm`` / ``<case>_sr.dcm``).

    ``seg``: the model's label map on the original scan's grid (label ids), for segmenting models; the
    ``outputs`` writers use it too (3D Slicer segments, mask outlines in the viewer), and with ``dicom_out``
    the DICOM SEG holds it (else the box masks). ``window``: (width, level) of the picture (default
    W400/L40, CT soft tissue). Returns the paths written.
    """
    from organdetr.inference.overlay import render_overlay

    case_id = prediction["case_id"]
    written = []
    if seg is not None:
        path = out_dir / f"{case_id}_seg.nii.gz"
        write_image(path, seg, Geometry.from_dict(prediction["original"]))
        prediction = {**prediction, "segmentation": path.name}
        written.append(path)
    needs_volume = overlay or save_box_mask or dicom_out or (outputs is not None and outputs.needs_volume)
    if needs_volume and volume is None:
        volume = read_image(prediction["image"], uneven_slices=uneven_slices)
    if overlay:
        n = len(prediction["detections"])
        shown = "W400/L40" if window is None else f"W{window[0]:.4g}/L{window[1]:.4g}"
        title = f"{case_id}: {n} organ box{'es' if n != 1 else ''} ({shown})"
        if "case_label" in prediction:
            title += f", {prediction['case_label']['label']} ({prediction['case_label']['probability']:.2f})"
        options = {} if window is None else {"window": window}
        written.append(
            render_overlay(
                volume, prediction["detections"], out_dir / f"{case_id}.png", title=title, **options
            )
        )
    if save_box_mask:
        mask = box_mask(prediction["detections"], volume.geometry.size)
        path = out_dir / f"{case_id}_boxes.nii.gz"
        write_image(path, mask, volume.geometry)
        written.append(path)
    if outputs is not None:
        written += outputs.add_scan(prediction, volume, seg=seg)
    if dicom_out:
        from organdetr.formats.dicom_out import write_dicom_outputs

        mask = seg if seg is not None else box_mask(prediction["detections"], volume.geometry.size)
        prediction["dicom"] = write_dicom_outputs(
            prediction, mask, volume.geometry, out_dir, segmentation=seg is not None
        )
        written += [out_dir / entry["file"] for entry in prediction["dicom"].values()]
    json_path = out_dir / f"{case_id}.json"
    write_json(json_path, prediction)  # last: a JSON present means the case is complete
    return [json_path, *written]


# ----------------------------------------------------------------------------- batch driver


@dataclass
class PredictSummary:
    """What a prediction run did: case ids written, and ``(input path, one-line reason)`` per failure."""

    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _one_line(err: BaseException) -> str:
    if isinstance(err, InputError):
        return str(err)
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


def _prepared_batches(
    predictor: Predictor,
    scans: Sequence[ScanInput],
    batch_size: int,
    keep_volume: bool,
    summary: PredictSummary,
    bar,
    uneven_slices: UnevenSlices = "refuse",
) -> Iterator[list[PreparedScan]]:
    batch: list[PreparedScan] = []
    for scan in scans:
        try:
            batch.append(predictor.prepare(scan, keep_volume=keep_volume, uneven_slices=uneven_slices))
        except (InputError, RuntimeError, ValueError, OSError, MemoryError) as err:
            summary.failed.append((str(scan.path), _one_line(err)))
            bar.update(1)
            continue
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_scans(
    predictor: Predictor,
    inputs: Sequence[str | Path] | Sequence[ScanInput],
    out_dir: str | Path,
    *,
    batch_size: int = 1,
    score_threshold: float = 0.0,
    overlay: bool = True,
    save_box_mask: bool = False,
    uneven_slices: UnevenSlices = "refuse",
    dicom_out: bool = False,
    progress: bool = True,
    outputs: RunOutputs | None = None,
) -> PredictSummary:
    """Predict every scan of ``inputs`` into ``out_dir`` (see the module docstring for the outputs).

    ``score_threshold`` 0.0 keeps the best query of every organ (as the paper evaluates); raise it to
    drop unlikely organs (a number in [0, 1]). ``uneven_slices="resample"``: see :meth:`Predictor.prepare`.
    With ``batch_size`` 1 the original scan is kept in memory for the picture /
    box mask; with larger batches it is read again when needed, so memory holds one full scan at a time.
    ``outputs`` adds the files of other formats (3D Slicer, MONAI, nnDetection, the HTML viewer).
    ``dicom_out`` (DICOM series inputs only, checked before the model runs) adds the DICOM SEG and SR.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise InputError(None, f"--batch-size must be >= 1, got {batch_size}")
    if not (math.isfinite(score_threshold) and 0.0 <= score_threshold <= 1.0):
        raise InputError(None, f"--score-threshold must be a number in [0, 1], got {score_threshold}")
    scans = [s if isinstance(s, ScanInput) else None for s in inputs]
    if any(s is None for s in scans):
        scans = find_scans(inputs)  # type: ignore[arg-type]
    if predictor.in_channels > 1:
        scans = group_channels(scans, predictor.in_channels)
    if dicom_out:
        from organdetr.formats.dicom_source import check_dicom_source
        from organdetr.formats.optional import require

        require("highdicom", "--dicom-out")
        for scan in scans:
            check_dicom_source(scan.path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary()
    if outputs is not None and not outputs.active:
        outputs = None
    if outputs is not None and outputs.classes is None:
        outputs.classes = predictor.classes
    keep_volume = (batch_size == 1 or predictor.in_channels > 1) and (
        overlay or save_box_mask or dicom_out or (outputs is not None and outputs.needs_volume)
    )  # a multi-channel scan keeps its display channel: the picture cannot reread it by name
    with tqdm(total=len(scans), desc="predict", unit="scan", disable=not progress, dynamic_ncols=True) as bar:
        batches = _prepared_batches(predictor, scans, batch_size, keep_volume, summary, bar, uneven_slices)
        for batch in batches:
            results = predictor.detect_grids([p.grid for p in batch])
            segs = (
                predictor.segment_grids([p.grid for p in batch])
                if predictor.segments
                else [None] * len(batch)
            )
            probs = (
                predictor.classify_grids([p.grid for p in batch])
                if predictor.classifies
                else [None] * len(batch)
            )
            for prepared, result, seg, prob in zip(batch, results, segs, probs, strict=True):
                try:
                    prediction = predictor.to_prediction(prepared, result, score_threshold, prob)
                    seg_original = None if seg is None else grid_labels_to_original(seg, prepared.record)
                    write_outputs(
                        prediction,
                        out_dir,
                        prepared.volume,
                        overlay=overlay,
                        save_box_mask=save_box_mask,
                        uneven_slices=uneven_slices,
                        seg=seg_original,
                        outputs=outputs,
                        dicom_out=dicom_out,
                        window=None if prepared.volume is None else predictor.display_window(prepared.volume),
                    )
                    summary.done.append(prepared.scan.case_id)
                except (InputError, RuntimeError, ValueError, OSError, MemoryError) as err:
                    summary.failed.append((str(prepared.scan.path), _one_line(err)))
                bar.update(1)
                prepared.volume = None
    if outputs is not None and summary.done:
        outputs.finish()
    return summary


def load_prediction(path: str | Path) -> dict:
    """Read one prediction JSON (InputError naming the file when it is not one)."""
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"not a readable prediction JSON ({err})") from None
    if not isinstance(data, dict) or "detections" not in data or "case_id" not in data:
        raise InputError(path, "not a prediction JSON (needs 'case_id' and 'detections')")
    return data


__all__ = [
    "PredictSummary",
    "PreparedScan",
    "Predictor",
    "ScanInput",
    "box_mask",
    "box_voxel_slices",
    "case_id_of",
    "find_scans",
    "group_channels",
    "load_prediction",
    "predict_scans",
    "resolve_device",
    "write_outputs",
]
