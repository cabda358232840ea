"""One self-contained HTML page per prediction run: the scans in three views with the organ boxes.

``organdetr predict --html`` writes ``OUT/viewer.html`` (the demo writes ``report/viewer.html``). Open it
in any current browser, offline: the scans are embedded as compact arrays (soft-tissue window W400/L40
as 8-bit, zlib-compressed, base64) and decoded by the page's own inline script (the browser's
``DecompressionStream``); no network, no CDN, no server.

What the page shows, per scan (a selector switches scans):

* axial, coronal and sagittal views in canonical LPS orientation, radiological convention as in the
  PNG overlays (patient right on the image's left; anterior up in the axial view, superior up in the
  others), pixels at their physical aspect ratio, except that a view is at least 190 px tall (a 20-slice
  series would be a thin strip: it is stretched and its title says by how much); R / L, A / P, S / I markers
  at the edges of every view; a slice slider per view (also mouse wheel / arrow keys), a click in one view
  moves the other two to that point;
* every organ box, in the organ's colour (:func:`organdetr.core.colours.label_colour`): solid where the
slice
  cuts the box, dotted where the box lies beyond the slice; ground truth white dashed where given; mask
  outlines when the model segments (``seg``: label ids ``[I, J, K]`` on the scan grid); organ names beside
  their boxes, inside the view and never over each other or a marker (a name with no free spot is left out;
  the table has it);
* a table of organs: score, box size and volume, mask volume (segmenting models), box centre in LPS mm;
  a checkbox per organ toggles it, a click on a row moves the views to the organ, a score filter hides
  unlikely organs.

Scans larger than ``max_size`` voxels along an axis are resampled (linear; labels nearest) to at most
``max_size`` along it for display: about 0.5-3 MB of page per scan (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import base64
import html
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from organdetr.core.boxes.world import world_box_to_voxel
from organdetr.core.colours import label_colour, window_image
from organdetr.core.geometry import Geometry, axis_codes, resize_grid
from organdetr.core.volume import Volume, reorient_to_lps, resample
from organdetr.io.images import read_image
from organdetr.runtime.atomic import write_text

DEFAULT_MAX_SIZE = 256
"""Largest number of voxels along one axis of a scan's display grid."""


def _encode(array: np.ndarray) -> str:
    """``array [I, J, K]`` -> base64 of zlib-compressed bytes in ``(k, j, i)`` C order (i fastest)."""
    raw = np.ascontiguousarray(np.transpose(array, (2, 1, 0))).tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def display_grid(geometry: Geometry, max_size: int = DEFAULT_MAX_SIZE) -> Geometry | None:
    """The display grid of a canonical scan: ``None`` when no axis exceeds ``max_size`` voxels, else the
    same extent on ``min(size, max_size)`` voxels per axis."""
    size = np.asarray(geometry.size)
    if np.all(size <= max_size):
        return None
    return resize_grid(geometry, tuple(int(s) for s in np.minimum(size, max_size))).geometry


def _hex(colour: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(float(c) * 255)):02x}" for c in colour[:3])


def _organ_rows(
    detections: Sequence[Mapping], geometry: Geometry, voxel_ml: float, seg_counts: np.ndarray | None
) -> list[dict]:
    rows = []
    for det in detections:
        box_mm = np.asarray(det["box_mm"], dtype=np.float64)
        size_mm = box_mm[3:] - box_mm[:3]
        label_id = int(det.get("label_id", 0))
        row = {
            "name": str(det["label"]),
            "label_id": label_id,
            "score": None if det.get("score") is None else round(float(det["score"]), 4),
            "color": _hex(label_colour(label_id)),
            "box": [round(float(v), 3) for v in world_box_to_voxel(box_mm, geometry)],
            "size_mm": [round(float(v), 1) for v in size_mm],
            "center_mm": [round(float(v), 1) for v in (box_mm[:3] + box_mm[3:]) / 2.0],
            "box_ml": round(float(np.prod(size_mm)) / 1000.0, 2),
        }
        if seg_counts is not None:
            count = int(seg_counts[label_id]) if label_id < len(seg_counts) else 0
            row["mask_ml"] = round(count * voxel_ml, 2)
        rows.append(row)
    return rows


def case_payload(
    prediction: Mapping,
    volume: Volume,
    *,
    seg: np.ndarray | None = None,
    ground_truth: Iterable[Mapping] = (),
    max_size: int = DEFAULT_MAX_SIZE,
    window: tuple[float, float] = (400.0, 40.0),
) -> dict:
    """Everything the page needs for one scan, JSON-ready (a few MB at most).

    ``prediction``: a prediction JSON (``case_id``, ``image``, ``detections`` with ``label``,
    ``label_id``, ``score``, ``box_mm``); ``volume``: the scan in HU, any orientation; ``seg``: optional
    label ids ``[I, J, K]`` on ``volume``'s grid; ``ground_truth``: optional ``{label, box_mm}`` dicts.
    """
    canonical = reorient_to_lps(volume)
    geometry = canonical.geometry
    target = display_grid(geometry, max_size)
    image = window_image(canonical.array, window)
    if target is not None:
        image = resample(image, geometry, target, interpolation="linear")
    shown = target or geometry
    payload = {
        "case_id": str(prediction["case_id"]),
        "image": str(prediction.get("image", "")),
        "source_size": [int(s) for s in volume.geometry.size],
        "source_spacing": [round(float(s), 4) for s in volume.geometry.spacing],
        "orientation": axis_codes(volume.geometry),
        "size": [int(s) for s in shown.size],
        "spacing": [float(s) for s in shown.spacing],
        "window": [float(w) for w in window],
        "volume": _encode(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)),
        "labels": None,
        "label_bytes": 1,
    }
    seg_counts = None
    if seg is not None:
        seg = np.asarray(seg)
        if seg.shape != tuple(volume.geometry.size):
            raise ValueError(f"seg shape {seg.shape} differs from the scan's {tuple(volume.geometry.size)}")
        seg_counts = np.bincount(seg.ravel().astype(np.int64))
        labels = reorient_to_lps(Volume(seg, volume.geometry)).array
        if target is not None:
            labels = resample(labels, geometry, target, interpolation="nearest")
        wide = int(labels.max(initial=0)) > 255
        payload["labels"] = _encode(labels.astype(np.uint16 if wide else np.uint8))
        payload["label_bytes"] = 2 if wide else 1
    voxel_ml = float(np.prod(volume.geometry.spacing)) / 1000.0
    payload["organs"] = _organ_rows(prediction.get("detections", []), shown, voxel_ml, seg_counts)
    payload["truth"] = [
        {"name": str(g["label"]), "box": [round(float(v), 3) for v in world_box_to_voxel(g["box_mm"], shown)]}
        for g in ground_truth
    ]
    return payload


@dataclass
class RunViewer:
    """Collects one payload per scan while a run goes, then writes the page (memory: the payloads only)."""

    title: str = "organdetr predictions"
    max_size: int = DEFAULT_MAX_SIZE
    notes: str = ""
    cases: list[dict] = field(default_factory=list)

    def add(
        self,
        prediction: Mapping,
        volume: Volume,
        *,
        seg: np.ndarray | None = None,
        ground_truth: Iterable[Mapping] = (),
    ) -> None:
        """Add one scan (see :func:`case_payload`)."""
        self.cases.append(
            case_payload(prediction, volume, seg=seg, ground_truth=ground_truth, max_size=self.max_size)
        )

    def write(self, path: str | Path) -> Path:
        """Write the page with every scan added so far (atomically); returns ``path``."""
        path = Path(path)
        write_text(path, render_page(self.cases, title=self.title, notes=self.notes))
        return path


def render_page(cases: Sequence[Mapping], *, title: str, notes: str = "") -> str:
    """The self-contained HTML page for ``cases`` (payloads of :func:`case_payload`)."""
    template = resources.files("organdetr.formats").joinpath("html_viewer.html").read_text(encoding="utf-8")
    data = json.dumps({"title": title, "notes": notes, "cases": list(cases)}, allow_nan=False)
    data = data.replace("</", "<\\/")  # nothing inside the JSON can close the <script> element
    return template.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


def write_viewer(
    path: str | Path,
    scans: Mapping[str, str | Path],
    predictions: Mapping[str, Mapping],
    ground_truth: Mapping[str, Sequence[Mapping]] | None = None,
    *,
    title: str = "organdetr predictions",
    max_size: int = DEFAULT_MAX_SIZE,
) -> Path:
    """The page for scans on disk: ``scans`` and ``predictions`` (prediction JSONs) keyed by case id,
    optional ``ground_truth`` boxes per case id (``{label, box_mm}``). Reads one scan at a time."""
    viewer = RunViewer(title=title, max_size=max_size)
    for case_id, prediction in predictions.items():
        truth = (ground_truth or {}).get(case_id, ())
        viewer.add(prediction, read_image(scans[case_id]), ground_truth=truth)
    return viewer.write(path)


__all__ = ["DEFAULT_MAX_SIZE", "RunViewer", "case_payload", "display_grid", "render_page", "write_viewer"]
