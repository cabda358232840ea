"""DICOM SEG of organ masks (highdicom): a label map on the source scan's grid -> a BINARY segment per organ.

Input is a label map ``[I, J, K]`` of label ids on the original scan grid (the model's segmentation when it
segments, else :func:`organdetr.core.boxes.raster.box_mask` of the detected boxes) plus the class map. Frame
``k`` of the SEG derives from the source slice at volume index ``k`` (``SourceSeries.datasets[k]``); a DICOM
frame is ``rows x columns = J x I``, i.e. ``label_map[:, :, k].T``. Segment labels are the organ names;
property types are the SNOMED CT codes of :mod:`organdetr.formats.organ_codes` (laterality as a modifier).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organdetr import __version__
from organdetr.core.colours import organ_colours
from organdetr.formats.dicom_source import SourceSeries
from organdetr.formats.organ_codes import coding_scheme_identification, organ_code

SEG_SERIES_NUMBER = 9901
"""Series number of the SEG series organdetr creates (the SR gets :data:`SEG_SERIES_NUMBER` + 1)."""

MANUFACTURER = "organdetr"


@dataclass(frozen=True)
class Segment:
    """One SEG segment: its number (1..N), the label id it came from and the organ name."""

    number: int
    label_id: int
    name: str


def segments_of(label_map: np.ndarray, classes: Mapping[int, str]) -> list[Segment]:
    """The label ids present in ``label_map`` (ascending) as segments numbered 1..N.

    Ids missing from ``classes`` are named ``label_<id>``.
    """
    present = [int(v) for v in np.unique(label_map) if v != 0]
    return [
        Segment(n, label_id, classes.get(label_id, f"label_{label_id}"))
        for n, label_id in enumerate(present, 1)
    ]


def build_segmentation(
    label_map: np.ndarray,
    classes: Mapping[int, str],
    source: SourceSeries,
    *,
    algorithm,
    tracking_uids: Mapping[int, str] | None = None,
    boxes: bool = True,
    series_number: int = SEG_SERIES_NUMBER,
):
    """A ``highdicom.seg.Segmentation`` of ``label_map [I, J, K]`` (label ids; 0 = background).

    ``algorithm`` is a ``highdicom.AlgorithmIdentificationSequence``; ``tracking_uids`` (label id -> UID)
    ties each segment to its SR measurement group; ``boxes`` says whether the masks are detection boxes
    (True) or an organ segmentation (False), written into the segment and series descriptions.
    Raises ``ValueError`` when the label map is empty or not on the source grid.
    """
    import highdicom as hd

    expected = (int(source.first.Columns), int(source.first.Rows), len(source.datasets))
    if tuple(label_map.shape) != expected:
        raise ValueError(f"label map {label_map.shape} is not on the source grid {expected} (I, J, K)")
    segments = segments_of(label_map, classes)
    if not segments:
        raise ValueError("label map is empty: no organ to write into a DICOM SEG")
    frames = _segment_frames(label_map, segments)
    what = "organ box (detection)" if boxes else "organ segmentation"
    descriptions, any_fallback = _segment_descriptions(segments, algorithm, tracking_uids or {}, what)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        segmentation = hd.seg.Segmentation(
            source_images=source.datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=__version__,
            device_serial_number="none",
            content_description=f"{what}s"[:64],
            content_label="ORGANS",
            series_description=f"organdetr {'organ boxes' if boxes else 'organ segmentation'}",
            omit_empty_frames=True,
        )
    if any_fallback:
        segmentation.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return segmentation


def _segment_frames(label_map: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """The SEG frames ``(K, J, I)``: per source slice ``k``, the segment numbers of ``label_map[:, :, k].T``
    (a DICOM frame is ``rows x columns = J x I``)."""
    lut = np.zeros(int(label_map.max()) + 1, dtype=np.uint16 if len(segments) > 255 else np.uint8)
    for seg in segments:
        lut[seg.label_id] = seg.number
    return np.stack([lut[label_map[:, :, k].T] for k in range(label_map.shape[2])])


def _segment_descriptions(
    segments: list[Segment], algorithm, tracking_uids: Mapping[int, str], what: str
) -> tuple[list, bool]:
    """One ``highdicom.seg.SegmentDescription`` per segment (SNOMED CT codes, colour, tracking UID), and
    whether any organ code is a fallback code (the SEG then names the fallback coding scheme)."""
    import highdicom as hd

    colours = _display_colours([s.name for s in segments])
    descriptions = []
    any_fallback = False
    for seg in segments:
        code = organ_code(seg.name)
        any_fallback |= code.fallback
        description = hd.seg.SegmentDescription(
            segment_number=seg.number,
            segment_label=seg.name[:64],
            segmented_property_category=code.category,
            segmented_property_type=code.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uids.get(seg.label_id) or hd.UID(),
            tracking_id=f"{seg.name} (label {seg.label_id})"[:64],
            anatomic_regions=[code.region] if code.region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*colours[seg.name]),
        )
        description.SegmentDescription = what
        if code.laterality is not None:
            modifier = [hd.sr.CodedConcept.from_code(code.laterality)]
            if code.region is not None:
                description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = modifier
            else:
                description.SegmentedPropertyTypeModifierCodeSequence = modifier
        descriptions.append(description)
    return descriptions, any_fallback


def read_segmentation(path: str | Path, source: SourceSeries) -> tuple[np.ndarray, dict[int, str]]:
    """Read a DICOM SEG back onto ``source``'s grid with highdicom.

    Returns ``(segment_map [I, J, K] of segment numbers (0 = none), {segment number: segment label})``;
    where segments overlap the highest number wins.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    numbers = list(seg.segment_numbers)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in source.datasets],
        segment_numbers=numbers,
        combine_segments=True,
        skip_overlap_checks=True,
    )  # (K, J, I)
    labels = {n: str(seg.get_segment_description(n).segment_label) for n in numbers}
    return np.ascontiguousarray(np.transpose(frames, (2, 1, 0))), labels


def _display_colours(names: list[str]) -> dict[str, tuple[int, int, int]]:
    return {name: tuple(int(round(255 * c)) for c in rgba[:3]) for name, rgba in organ_colours(names).items()}


__all__ = ["SEG_SERIES_NUMBER", "Segment", "build_segmentation", "read_segmentation", "segments_of"]
