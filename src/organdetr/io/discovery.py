"""Input discovery: the command line's INPUTs (files, DICOM series folders, folders of scans) -> scans.

A scan is an image file or a folder directly holding DICOM files (one series); its case id is the file or
folder name without image suffixes and without nnU-Net's ``_0000`` channel suffix. A multi-channel scan is
the nnU-Net channel files ``<case>_0000`` .. ``<case>_000{C-1}`` side by side (:func:`group_channels`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from organdetr.io.images import IMAGE_SUFFIXES
from organdetr.runtime.errors import InputError

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's "_0000" channel suffix


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
    missing input or a folder with no scans raises :class:`InputError`. Case ids are made unique
    (:func:`unique_case_ids`) where two inputs share a name.
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
    case_ids = unique_case_ids([case_id_of(path) for path in scans])
    return [ScanInput(path, case_id) for path, case_id in zip(scans, case_ids, strict=True)]


def unique_case_ids(
    case_ids: Sequence[str],
    names_of: Callable[[str], Iterable[str]] = lambda case_id: (case_id,),
    reserved: Iterable[str] = (),
) -> list[str]:
    """``case_ids`` made unique against the final set of names: ``names_of(case_id)`` (the files a case
    writes; by default the id itself) may not meet another case's names nor ``reserved`` (compared without
    case, as macOS and Windows file systems do).

    Every case whose names are free keeps its id (first come first served); the others get the first free
    ``<id>_2``, ``<id>_3``, ...: inputs ``a``, ``a``, ``a_2`` become ``a``, ``a_3``, ``a_2``.
    """
    taken = {name.casefold() for name in reserved}
    result: list[str | None] = [None] * len(case_ids)
    for i, case_id in enumerate(case_ids):
        names = {name.casefold() for name in names_of(case_id)}
        if not names & taken:
            result[i] = case_id
            taken |= names
    for i, case_id in enumerate(case_ids):
        number = 2
        while result[i] is None:
            candidate = f"{case_id}_{number}"
            names = {name.casefold() for name in names_of(candidate)}
            if not names & taken:
                result[i] = candidate
                taken |= names
            number += 1
    return [case_id for case_id in result if case_id is not None]


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


__all__ = [
    "ScanInput",
    "case_id_of",
    "find_scans",
    "group_channels",
    "is_dicom_file",
    "is_dicom_series",
    "is_image_file",
    "unique_case_ids",
]
