"""The extra outputs of one ``organdetr predict`` run: sister-toolkit formats and the HTML viewer.

``predict`` calls :meth:`RunOutputs.add_scan` for every scan it finishes (before that scan's JSON, which
is written last) and :meth:`RunOutputs.finish` once at the end:

=================  ==============================================  ========
``--format``       files                                           when
=================  ==============================================  ========
``slicer``         ``<case>_boxes.mrk.json``, ``<case>.seg.nrrd``  per scan
``nndetection``    ``<case>_boxes.pkl``                            per scan
``monai``          ``monai_datalist.json``                         per run
``rtstruct``       ``<case>_rtstruct.dcm`` (DICOM series input)    per scan
``--html``         ``viewer.html``                                 per run
=================  ==============================================  ========
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from organdetr.core.boxes.modes import check_options, require_monai
from organdetr.core.volume import Volume
from organdetr.formats.html_viewer import RunViewer
from organdetr.formats.monai_datalist import write_datalist
from organdetr.formats.nndetection import write_prediction
from organdetr.formats.slicer import require_slicerio, write_slicer_files
from organdetr.runtime.atomic import visible_files
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.locking import folder_lock
from organdetr.runtime.text import brief

PREDICTION_FORMATS = {
    "slicer": "3D Slicer: <case>_boxes.mrk.json (ROI per organ) + <case>.seg.nrrd",
    "monai": "MONAI detection datalist: monai_datalist.json",
    "nndetection": "nnDetection: <case>_boxes.pkl",
    "rtstruct": "DICOM RT Structure Set: <case>_rtstruct.dcm (DICOM series input)",
}
DICOM_FORMATS = ("rtstruct",)
"""Formats written with the DICOM objects (:func:`organdetr.formats.dicom_out.write_dicom_outputs`), which
share the source series' headers, not by :meth:`RunOutputs.add_scan`."""
CASE_ENDINGS = {
    "slicer": ("_boxes.mrk.json", ".seg.nrrd"),
    "nndetection": ("_boxes.pkl",),
    "rtstruct": ("_rtstruct.dcm",),
}
"""The per-case files of each format: ``<case><ending>``."""
MONAI_FILE = "monai_datalist.json"
VIEWER_FILE = "viewer.html"


@dataclass
class RunOutputs:
    """Writers for the formats chosen; the MONAI datalist is made at the end from the folder's JSONs."""

    out_dir: Path
    formats: Sequence[str] = ()
    html: bool = False
    monai_box_mode: str = "cccwhd"
    monai_coordinates: str = "world"
    title: str = "organdetr predictions"
    classes: Mapping[int, str] | None = None  # the model's label id -> organ name (set by predict)
    _viewer: RunViewer | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.formats = tuple(dict.fromkeys(self.formats))
        unknown = [f for f in self.formats if f not in PREDICTION_FORMATS]
        if unknown:
            raise InputError(
                None, f"--format {brief(unknown[0])} is not one of {', '.join(PREDICTION_FORMATS)}"
            )
        if "monai" in self.formats:
            check_options(self.monai_box_mode, self.monai_coordinates)
            require_monai()  # MONAI installed? say so now, not after the whole run
        if "slicer" in self.formats:
            require_slicerio()
        if self.html:
            self._viewer = RunViewer(title=self.title)

    @property
    def needs_volume(self) -> bool:
        """Whether the scan's outputs need the scan itself (the viewer shows it, DICOM objects take its
        geometry)."""
        return self.html or bool(self.dicom_objects)

    @property
    def dicom_objects(self) -> tuple[str, ...]:
        """The DICOM objects (:data:`DICOM_FORMATS`) chosen with ``--format``, written by the DICOM route."""
        return tuple(f for f in self.formats if f in DICOM_FORMATS)

    @property
    def active(self) -> bool:
        """Whether anything is to be written."""
        return bool(self.formats) or self.html

    def case_endings(self) -> list[str]:
        """Endings of the per-case files the chosen formats write (``<case><ending>``)."""
        return [ending for fmt in self.formats for ending in CASE_ENDINGS.get(fmt, ())]

    def run_files(self) -> list[str]:
        """Names of the run-level files (``monai_datalist.json``, ``viewer.html``) that will be written."""
        return [MONAI_FILE] * ("monai" in self.formats) + [VIEWER_FILE] * self.html

    def add_scan(
        self, prediction: Mapping, volume: Volume | None, *, seg: np.ndarray | None = None
    ) -> list[Path]:
        """Write the per-scan files of one prediction JSON; keep what the run-level files need."""
        written: list[Path] = []
        if "slicer" in self.formats:
            written += write_slicer_files(prediction, self.out_dir, seg=seg, classes=self.classes)
        if "nndetection" in self.formats:
            written.append(write_prediction(prediction, self.out_dir))
        if self._viewer is not None:
            if volume is None:
                raise InputError(prediction.get("image"), "the HTML viewer needs the scan")
            self._viewer.add(prediction, volume, seg=seg)
        return written

    def finish(self) -> list[Path]:
        """Write the run-level files (``monai_datalist.json``, ``viewer.html``); returns their paths."""
        written: list[Path] = []
        if "monai" in self.formats:  # every prediction in the folder: two runs into one folder list both
            with folder_lock(self.out_dir, exclusive=True, purpose="organdetr predict", wait=True):
                written.append(
                    write_datalist(
                        self.out_dir / MONAI_FILE,
                        folder_predictions(self.out_dir),
                        box_mode=self.monai_box_mode,
                        coordinates=self.monai_coordinates,
                    )
                )
        if self._viewer is not None:
            written.append(self._viewer.write(self.out_dir / VIEWER_FILE))
        return written


def folder_predictions(out_dir: Path) -> list[dict]:
    """The prediction JSONs (``case_id``, ``image``, ``detections``) in ``out_dir``, by case id; other JSON
    files (markups, datalists, a user's) and temporaries are passed over."""
    predictions = []
    for path in visible_files(out_dir, "*.json"):
        try:
            data = read_json(path)
        except InputError:
            continue
        if isinstance(data, dict) and {"case_id", "image", "detections"} <= data.keys():
            predictions.append({k: data[k] for k in ("case_id", "image", "detections")})
    return sorted(predictions, key=lambda p: str(p["case_id"]))


__all__ = ["DICOM_FORMATS", "MONAI_FILE", "PREDICTION_FORMATS", "VIEWER_FILE", "RunOutputs"]
