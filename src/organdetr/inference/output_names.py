"""The names of a prediction run's files, planned before the first scan is read: one planner for every writer.

A run writes per case ``<case>.json`` and, as asked, ``<case>.png``, ``<case>_boxes.nii.gz``,
``<case>_seg.nii.gz`` (segmenting models), ``<case>_seg.dcm`` / ``<case>_sr.dcm`` and the sister formats'
files (:meth:`organdetr.formats.run_outputs.RunOutputs.case_files`), plus run-level files
(``monai_datalist.json``, ``viewer.html``). :func:`plan_outputs` gives every case an id whose files meet no
other case's files nor a run-level file (:func:`organdetr.io.discovery.unique_case_ids`: inputs ``d1/a``,
``d2/a``, ``d3/a_2`` write ``a``, ``a_3`` and ``a_2``, never one over another), and refuses a run that would
write over one of its own inputs (``-o`` the input folder with ``--save-box-mask``: ``liver_boxes.nii.gz``
may be another input scan).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from organdetr.formats.run_outputs import RunOutputs
from organdetr.io.discovery import ScanInput, unique_case_ids
from organdetr.runtime.errors import InputError


@dataclasses.dataclass(frozen=True)
class OutputNames:
    """What files a run writes: per-case name endings and run-level file names."""

    case_endings: tuple[str, ...]
    run_files: tuple[str, ...] = ()

    @classmethod
    def for_run(
        cls,
        *,
        overlay: bool,
        save_box_mask: bool,
        segments: bool,
        dicom_out: bool,
        outputs: RunOutputs | None,
    ) -> OutputNames:
        """The names of a ``predict`` run with these settings (``segments``: the model writes a label map)."""
        endings = [".json"]
        endings += [".png"] if overlay else []
        endings += ["_boxes.nii.gz"] if save_box_mask else []
        endings += ["_seg.nii.gz"] if segments else []
        endings += ["_seg.dcm", "_sr.dcm"] if dicom_out else []
        endings += list(outputs.case_endings()) if outputs is not None else []
        run_files = tuple(outputs.run_files()) if outputs is not None else ()
        return cls(tuple(dict.fromkeys(endings)), run_files)

    def of_case(self, case_id: str) -> list[str]:
        """The file names case ``case_id`` writes."""
        return [f"{case_id}{ending}" for ending in self.case_endings]


def plan_outputs(scans: Sequence[ScanInput], out_dir: Path, names: OutputNames) -> list[ScanInput]:
    """``scans`` with case ids whose files collide with nothing (see the module docstring).

    InputError naming the input when a planned file is one of the run's input files (the run would
    overwrite a scan before, or after, reading it): choose another output folder.
    """
    case_ids = unique_case_ids([scan.case_id for scan in scans], names.of_case, names.run_files)
    planned = [dataclasses.replace(s, case_id=c) for s, c in zip(scans, case_ids, strict=True)]
    inputs = _input_files(planned)
    outputs = [out_dir / name for name in names.run_files]
    outputs += [out_dir / name for scan in planned for name in names.of_case(scan.case_id)]
    for path in outputs:
        source = inputs.get(_identity(path))
        if source is not None:
            raise InputError(
                source, f"is an input of this run and would be overwritten by {path}; choose another --out"
            )
    return planned


def _input_files(scans: Sequence[ScanInput]) -> dict[str, Path]:
    """Every file the run reads (scans, channel files, the files of DICOM series folders), by identity."""
    files: dict[str, Path] = {}
    for scan in scans:
        for path in scan.channels or (scan.path,):
            members = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
            for member in members:
                files[_identity(member)] = member
    return files


def _identity(path: Path) -> str:
    """A key equal for two names of one file (links, ``..``, case on case-insensitive file systems)."""
    real = os.path.realpath(path)
    return os.path.normcase(real)


__all__ = ["OutputNames", "plan_outputs"]
