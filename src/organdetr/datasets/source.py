"""What a converter works from: the source cases it discovered and the folders, checked before any work.

:class:`SourceCase` is one case of a published dataset (image, label, split, channels, case label);
:data:`LabelReader` reads its label map on the image grid; :func:`select_cases` applies ``--subset`` /
``--limit``. The path helpers refuse a bad source or output folder before anything is read or written
(:func:`require_folder`, :func:`check_output_folder`, :func:`check_paths`) and find a dataset's files
(:func:`find_root`, :func:`nifti_stem`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organdetr.core.geometry import Geometry
from organdetr.runtime.errors import InputError


@dataclass(frozen=True)
class SourceCase:
    """One case of a source dataset.

    ``label`` is the label file (or, for TotalSegmentator, the folder of per-structure masks);
    ``None`` for unlabelled images. ``split`` is ``"Tr"`` (training pool) or ``"Ts"`` (test).
    ``channels``: the image file of every channel of a multi-channel case (``channels[0] == image``;
    written as ``<case>_0000`` .. ``<case>_000{C-1}``, all checked to share channel 0's grid), else empty.
    ``case_label``: the case-level class name (e.g. the BraTS grade), ``None`` when unknown.
    """

    case_id: str
    image: Path
    label: Path | None
    split: str = "Tr"
    channels: tuple[Path, ...] = ()
    case_label: str | None = None


# (case, image geometry) -> label ids [I, J, K] (official ids, any integer dtype) on the image grid.
LabelReader = Callable[[SourceCase, Geometry], np.ndarray]


def select_cases(
    cases: Sequence[SourceCase], subset: Sequence[str] | None = None, limit: int | None = None
) -> list[SourceCase]:
    """Keep the cases named in ``subset`` (all if ``None``), then the first ``limit`` of them."""
    chosen = list(cases)
    if subset:
        wanted = set(subset)
        unknown = wanted - {c.case_id for c in chosen}
        if unknown:
            raise InputError(None, f"--subset names unknown case ids: {', '.join(sorted(unknown))}")
        chosen = [c for c in chosen if c.case_id in wanted]
    if limit is not None:
        if limit < 1:
            raise InputError(None, f"--limit must be >= 1, got {limit}")
        chosen = chosen[:limit]
    return chosen


def require_folder(src: str | Path) -> Path:
    """``src`` as a Path; InputError unless it is an existing folder."""
    src = Path(src)
    if not src.is_dir():
        raise InputError(src, "is a file, not a source folder" if src.exists() else "source folder not found")
    return src


def check_output_folder(dst: str | Path, src: str | Path | None = None) -> Path:
    """``dst`` as a Path; InputError naming it unless it can become (or already is) the output folder.

    Refused before any work: an existing file, a path below a file, a folder that cannot be written,
    and ``src`` itself or a folder inside it (the converter would discover its own output).
    """
    dst = Path(dst)
    if dst.exists() and not dst.is_dir():
        raise InputError(dst, "is a file; the output must be a folder (a new one, or an earlier conversion)")
    existing = next(p for p in (dst.absolute(), *dst.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(existing, f"is a file, so the output folder {dst} cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(existing, "is not writable (permission denied)")
    if src is not None:
        source, target = Path(src).resolve(), dst.resolve()
        if target == source or source in target.parents:
            raise InputError(dst, f"lies inside the source folder {source}; convert into a folder outside it")
    return dst


def check_paths(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    """The source folder and the output folder of a conversion, both checked before any work.

    ``src`` is the folder the converter searches (the dataset root): ``dst`` may not lie inside it.
    """
    src = require_folder(src)
    return src, check_output_folder(dst, src)


def find_root(src: Path, marker: str, max_depth: int = 2) -> Path:
    """The folder at or below ``src`` (at most ``max_depth`` levels) that contains ``marker``."""
    level = [src]
    for _ in range(max_depth + 1):
        for folder in level:
            if (folder / marker).exists():
                return folder
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir())
    raise InputError(src, f"no {marker} found here or up to {max_depth} folders below")


def nifti_stem(path: Path) -> str:
    """``word_0001.nii.gz`` -> ``word_0001`` (also ``.nii``, ``.mha``, ``.nrrd``)."""
    name = path.name
    for ending in (".nii.gz", ".nii", ".mha", ".nrrd"):
        if name.endswith(ending):
            return name[: -len(ending)]
    return path.stem


__all__ = [
    "LabelReader",
    "SourceCase",
    "check_output_folder",
    "check_paths",
    "find_root",
    "nifti_stem",
    "require_folder",
    "select_cases",
]
