"""Is a scan what the model was trained on? Modality and intensity checks before its boxes are trusted.

A CT model (its cache normalised HU with a window, ``plans.json`` ``"normalization": {"scheme":
"hu_window"}``) given an MR series or an MR NIfTI still finds "organs": nothing in the network can tell.
:func:`scan_mismatches` says so in one line per problem, which ``predict`` puts under ``warnings`` in the
prediction JSON and on the console (and with ``--dicom-out`` refuses: a DICOM series tagged other than CT
before the model runs, exit 2; a scan whose intensities are not HU as a failed scan, no SEG / SR written).

* **Modality**: the DICOM ``Modality`` (0008,0060) of a series must be CT.
* **Intensities**: the scan's 1st / 99th percentiles (HU) against those of the training scans (its 1st
  percentile more than 300 HU above theirs, or its 99th more than 300 HU below: lower dark ends, from
  padding at -2048 / -3024 HU, and brighter ends, from metal or bone, are CT as well), when the
  model stores them (``plans.json`` ``"intensity"``, written by ``train`` from the cache's case records,
  :func:`~organdetr.preprocessing.intensity.intensity_reference`); else against what any CT in HU shows:
  air, lung or fat below -200 HU in at least 1 % of the voxels (an MR or a normalised image has none: its
  lowest values sit near 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from organdetr.io.discovery import is_dicom_file

CT_LOW_HU = -200.0
"""The 1st percentile of any CT in HU lies below this (air around the patient, lung, bowel gas, fat)."""
REFERENCE_MARGIN_HU = 300.0
"""How far outside the training scans' range a percentile may lie before the scan is called different."""


def is_hu_model(plans: Mapping) -> bool:
    """Whether the model was trained on CT in HU (a single channel normalised with a HU window)."""
    scheme = (plans.get("normalization") or {}).get("scheme", "hu_window")
    channels = [str(c).strip().upper() for c in plans.get("channels") or ["CT"]]
    return scheme == "hu_window" and channels == ["CT"]


def dicom_modality(path: str | Path) -> str | None:
    """The ``Modality`` of the first DICOM file at ``path`` (a series folder or a file); ``None`` when it is
    not DICOM or has none."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file.name.startswith(".") or not is_dicom_file(file):
            continue
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        return str(ds.get("Modality", "") or "") or None
    return None


def scan_mismatches(path: str | Path, seen: Mapping[str, float], plans: Mapping) -> list[str]:
    """One line per way the scan at ``path`` (its intensity percentiles ``seen``, the case record's
    ``"intensity"``: :func:`~organdetr.preprocessing.intensity.intensity_percentiles`) differs from the
    training scans of a HU model (module docstring); empty when it does not, or for other models."""
    if not is_hu_model(plans):
        return []
    problems = []
    modality = dicom_modality(path) if Path(path).exists() else None
    if modality is not None and modality != "CT":
        problems.append(
            f"DICOM Modality is {modality}, this model was trained on CT: its boxes are not reliable"
        )
    reference = plans.get("intensity")
    if isinstance(reference, Mapping) and "p1" in reference and "p99" in reference:
        # only the directions a CT in HU never goes: a dark end above the training scans' (no air: MR, a
        # normalised image), a bright end below theirs; padding (-2048, -3024) and metal or bone are CT
        off = [f"p1 {seen['p1']:.0f}"] if seen["p1"] > reference["p1"][1] + REFERENCE_MARGIN_HU else []
        off += [f"p99 {seen['p99']:.0f}"] if seen["p99"] < reference["p99"][0] - REFERENCE_MARGIN_HU else []
        if off:
            ranges = ", ".join(f"{k} {reference[k][0]:.0f}..{reference[k][1]:.0f}" for k in ("p1", "p99"))
            problems.append(
                f"intensities unlike the training scans ({', '.join(off)} HU; training {ranges} HU over "
                f"{reference.get('cases', '?')} scan(s)): not a CT in HU? its boxes are not reliable"
            )
    elif seen["p1"] > CT_LOW_HU:
        problems.append(
            f"intensities are not CT in HU (1st percentile {seen['p1']:.0f}, no air, lung or fat below "
            f"{CT_LOW_HU:.0f} HU; MR or a normalised image?): this model was trained on CT, its boxes "
            "are not reliable"
        )
    return problems


__all__ = [
    "CT_LOW_HU",
    "dicom_modality",
    "is_hu_model",
    "scan_mismatches",
]
