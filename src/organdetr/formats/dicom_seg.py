"""DICOM SEG of organ masks (highdicom): one BINARY segment per organ, each with its full mask.

Input is one boolean mask ``[I, J, K]`` per organ on the original scan grid, stacked ``[S, I, J, K]``: the
organ's region of the model's segmentation when it segments, else its detection box
(:func:`organdetr.core.boxes.raster.box_voxel_slices`). Boxes overlap (the pancreas lies inside the
stomach's and liver's boxes), so the SEG is written with overlapping segments (highdicom sets
``SegmentsOverlap`` = ``YES`` when any two masks share a voxel): every segment keeps its whole mask, also
an organ whose box is covered by larger or smaller ones. Frame ``k`` of the SEG derives from the source
slice at volume index ``k`` (``SourceSeries.datasets[k]``); a DICOM frame is ``rows x columns = J x I``,
i.e. ``mask[:, :, k].T``.

Per segment: the label is the organ in words from its SNOMED CT codes (``"Liver"``, ``"Right kidney"``,
:attr:`~organdetr.formats.organ_codes.OrganCode.display_name`); property category / type are the codes of
:mod:`organdetr.formats.organ_codes`, laterality as the type's modifier *inside* the Segmented Property
Type Code Sequence item (PS3.3 C.8.20-4, where dciodvfy and conformant readers look for it) or inside the
Anatomic Region Sequence item where the organ has a region; the colour is the organ's colour everywhere
(:func:`organdetr.core.colours.label_colour`); the segment description says box or segmentation and the
model's score (``"organ box (detection), score 0.873"``); the tracking ID keeps the class name.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organdetr import __version__
from organdetr.core.colours import label_colour
from organdetr.formats.dicom_run import DicomRun
from organdetr.formats.dicom_source import SourceSeries
from organdetr.formats.organ_codes import coding_scheme_identification, organ_code

MANUFACTURER = "organdetr"


@dataclass(frozen=True)
class Segment:
    """One SEG segment: its number (1..N), the label id it came from, the organ (class) name and the
    model's score for it (None when unknown)."""

    number: int
    label_id: int
    name: str
    score: float | None = None


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
    masks: np.ndarray,
    segments: Sequence[Segment],
    source: SourceSeries,
    *,
    algorithm,
    tracking_uids: Mapping[int, str] | None = None,
    boxes: bool = True,
    run: DicomRun | None = None,
):
    """A ``highdicom.seg.Segmentation`` with segment ``segments[s]`` = ``masks[s]`` (``[S, I, J, K]`` bool).

    ``algorithm`` is a ``highdicom.AlgorithmIdentificationSequence``; ``tracking_uids`` (label id -> UID)
    ties each segment to its SR measurement group; ``boxes`` says whether the masks are detection boxes
    (True) or an organ segmentation (False), written into the segment and series descriptions; ``run``
    gives SeriesNumber / SeriesDate / SeriesTime (default: now). Raises ``ValueError`` when there is no
    segment or the masks are not on the source grid.
    """
    import highdicom as hd

    expected = (len(segments), int(source.first.Columns), int(source.first.Rows), len(source.datasets))
    if not segments:
        raise ValueError("no organ to write into a DICOM SEG (a SEG needs at least one segment)")
    if tuple(masks.shape) != expected:
        raise ValueError(f"masks {masks.shape} are not on the source grid {expected} (S, I, J, K)")
    frames = np.transpose(masks.astype(bool, copy=False), (3, 2, 1, 0))  # (K, J, I, S) view, no copy
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
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=__version__,
            device_serial_number="none",
            content_description="organ boxes (detections)" if boxes else "organ segmentation",
            content_label="ORGANS",
            series_description=f"organdetr {'organ boxes' if boxes else 'organ segmentation'}",
            omit_empty_frames=True,
            **(run or DicomRun()).highdicom_series("seg"),
        )
    if any_fallback:
        segmentation.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return segmentation


def _segment_descriptions(
    segments: list[Segment], algorithm, tracking_uids: Mapping[int, str], what: str
) -> tuple[list, bool]:
    """One ``highdicom.seg.SegmentDescription`` per segment (SNOMED CT codes, colour, tracking UID), and
    whether any organ code is a fallback code (the SEG then names the fallback coding scheme)."""
    import highdicom as hd

    descriptions = []
    any_fallback = False
    for seg in segments:
        code = organ_code(seg.name)
        any_fallback |= code.fallback
        description = hd.seg.SegmentDescription(
            segment_number=seg.number,
            segment_label=code.display_name,
            segmented_property_category=code.category,
            segmented_property_type=code.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=tracking_uids.get(seg.label_id) or hd.UID(),
            tracking_id=f"{seg.name} (label {seg.label_id})"[:64],
            anatomic_regions=[code.region] if code.region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*_rgb255(seg.label_id)),
        )
        score = "" if seg.score is None else f", score {seg.score:.3f}"
        description.SegmentDescription = f"{what}{score}"[:64]
        if code.laterality is not None:
            modifier = [hd.sr.CodedConcept.from_code(code.laterality)]
            if code.region is not None:
                description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = modifier
            else:  # nested in the type's item (PS3.3 C.8.20-4), not at the segment level
                property_type = description.SegmentedPropertyTypeCodeSequence[0]
                property_type.SegmentedPropertyTypeModifierCodeSequence = modifier
        descriptions.append(description)
    return descriptions, any_fallback


def read_segmentation(path: str | Path, source: SourceSeries) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Read a DICOM SEG back onto ``source``'s grid with highdicom, segment by segment (overlaps kept).

    Returns ``({segment number: mask [I, J, K] bool}, {segment number: segment label})``.
    """
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = [str(ds.SOPInstanceUID) for ds in source.datasets]
    masks, labels = {}, {}
    for number in seg.segment_numbers:
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=True
        )  # (K, J, I)
        masks[number] = np.ascontiguousarray(np.transpose(frames, (2, 1, 0))) > 0
        labels[number] = str(seg.get_segment_description(number).segment_label)
    return masks, labels


def _rgb255(label_id: int) -> tuple[int, int, int]:
    """The organ's colour everywhere (:func:`organdetr.core.colours.label_colour`), as 8-bit RGB."""
    return tuple(int(round(255 * c)) for c in label_colour(label_id))  # type: ignore[return-value]


__all__ = ["Segment", "build_segmentation", "read_segmentation", "segments_of"]
