"""The shared engine of the dataset converters: source cases in, nnU-Net v2 raw dataset out.

Every converter (``organdetr.datasets.<format>``) only *discovers* its cases and knows how to read
one label map; this module does the rest, the same way for all of them:

* the output folder is checked before any work (not a file, not inside the source tree);
* every image must look like an image and every label file like a label map (integer ids of the
  class map), else :class:`InputError` naming the file: a mask folder taken for images, or a CT
  taken for a mask, fails in one line instead of being converted;
* images are written as ``images<split>/<case>_0000.nii.gz`` with their own geometry, unchanged;
* labels are written as ``labels<split>/<case>.nii.gz`` (uint8, or uint16 above 255 classes) on the
  image's geometry, which they must share (else :class:`InputError` naming the label file);
* label ids are checked against the official class map and remapped to a dense ``1..K`` when the
  official ids are not consecutive or a subset of classes is kept;
* every file is written atomically, the label before the image, so a case counts as converted once
  its image exists; re-running resumes (converted cases are skipped);
* one bad case never stops the others: failures are collected and returned -- except a file that
  does not hold what the layout says (:class:`SourceMismatchError`: a label map among the images, an
  image among the masks, ids of another class list) in the first case, which fails the run in one
  line before anything is written: the source tree or the label set is then wrong as a whole;
* ``dataset.json`` is written last, counting every complete training case in the destination (not at
  all while the destination holds no complete case).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from organdetr.core.geometry import Geometry
from organdetr.datasets.nnunet import image_path, label_path, read_dataset_json, write_dataset_json
from organdetr.io.images import integer_labels as cast_label_ids
from organdetr.io.images import read_image, write_image
from organdetr.runtime.errors import InputError

FILE_ENDING = ".nii.gz"

# Geometry tolerance between an image and its label (headers are often rewritten in float32).
SPACING_RTOL = 1e-4
ORIGIN_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4

# An "image" with at most this many distinct values, all non-negative integers, is a label map (or
# blank): TotalSegmentator's 117 classes + background fit, a real CT/MR volume never does.
MAX_LABEL_MAP_VALUES = 128
# Voxels inspected before deciding that a large volume is an image (a strided sample, no copy).
SAMPLE_VOXELS = 1 << 20
# Label values this low are CT intensities (air is -1000 HU), not ids.
HU_LIKE_MIN = -100
# Unknown ids listed in an error message (the rest are counted).
MAX_IDS_SHOWN = 8


class SourceMismatchError(InputError):
    """A file does not hold what its place in the source layout says: a label map among the images,
    an image among the label maps, label ids of another class list. In the first case of a run it
    fails the whole run (the source tree, or the chosen label set, is then wrong as a whole)."""


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


@dataclass
class ConversionSummary:
    """Outcome of one conversion run: case ids converted now, skipped (already there), and failed."""

    dst: Path
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    num_training: int = 0
    num_test: int = 0
    notes: list[str] = field(default_factory=list)  # one line each, e.g. how the label set was chosen


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


def dense_class_map(
    classes: dict[int, str], keep: Sequence[str] | None = None
) -> tuple[dict[int, str], np.ndarray]:
    """Output class map ``1..K`` and the lookup table official id -> output id (0 = dropped).

    Ids stay as they are when they already are ``1..K`` and no subset is asked for; otherwise the kept
    classes, in official id order, get ``1..K``. ``keep`` holds class names.
    """
    kept = sorted(classes)
    if keep is not None:
        unknown = set(keep) - set(classes.values())
        if unknown:
            raise InputError(None, f"unknown class names: {', '.join(sorted(unknown))}")
        kept = [i for i in kept if classes[i] in set(keep)]
    lut = np.zeros(max(classes) + 1, dtype=np.uint8 if len(kept) <= np.iinfo(np.uint8).max else np.uint16)
    out = {}
    for new_id, old_id in enumerate(kept, start=1):
        lut[old_id] = new_id
        out[new_id] = classes[old_id]
    return out, lut


def check_same_geometry(path: Path, geometry: Geometry, reference: Geometry, reference_path: Path) -> None:
    """InputError naming ``path`` unless its grid (size, spacing, origin, direction) equals ``reference``."""
    problems = []
    if tuple(geometry.size) != tuple(reference.size):
        problems.append(f"size {list(geometry.size)} vs {list(reference.size)}")
    if not np.allclose(geometry.spacing, reference.spacing, rtol=SPACING_RTOL, atol=0):
        problems.append(f"spacing {_fmt(geometry.spacing)} vs {_fmt(reference.spacing)} mm")
    if not np.allclose(geometry.origin, reference.origin, rtol=0, atol=ORIGIN_ATOL_MM):
        problems.append(f"origin {_fmt(geometry.origin)} vs {_fmt(reference.origin)} mm")
    if not np.allclose(geometry.direction, reference.direction, rtol=0, atol=DIRECTION_ATOL):
        problems.append(f"direction {_fmt(geometry.direction)} vs {_fmt(reference.direction)}")
    if problems:
        raise InputError(
            path, f"geometry differs from the image {reference_path.name}: {'; '.join(problems)}"
        )


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def integer_labels(path: Path, array: np.ndarray) -> np.ndarray:
    """Label array as the smallest fitting unsigned integer type (no copy when it already is one).

    InputError naming ``path`` for non-3D arrays and for values that are no label ids: fractions,
    negative values (HU-like ranges are called out as an image taken for a label map).
    """
    if array.ndim != 3:
        raise InputError(
            path, f"label map is {array.ndim}D (shape {'x'.join(map(str, array.shape))}); expected 3D"
        )
    if array.size == 0:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise SourceMismatchError(
            path,
            f"label map holds non-integer values ({_value_range(array)}): an image, not a label map?",
        )
    low = array.min()
    if low < 0:
        looks = "CT intensities (HU): an image, not a label map?" if low <= HU_LIKE_MIN else "no label ids"
        raise SourceMismatchError(path, f"label map holds negative values ({_value_range(array)}), {looks}")
    return cast_label_ids(path, array)


def _value_range(array: np.ndarray) -> str:
    low, high = array.min(), array.max()
    return f"values {low:.6g}..{high:.6g}"


def check_is_image(path: Path, array: np.ndarray) -> None:
    """InputError naming ``path`` when the "image" ``array`` is a label map (or blank).

    A label map holds few distinct non-negative integers; a CT (negative HU) or MR volume holds
    many values. Large volumes are judged on a strided sample first, so an image costs one pass
    over ~1 M voxels.
    """
    if array.size == 0 or array.min() < 0:
        return
    step = max(1, round((array.size / SAMPLE_VOXELS) ** (1 / 3)))
    for candidate in (array[::step, ::step, ::step], array):
        values = np.unique(candidate)
        if values.size > MAX_LABEL_MAP_VALUES or not np.array_equal(values, np.round(values)):
            return
        if candidate is array or step == 1:
            break
    raise SourceMismatchError(
        path,
        f"is not an image: it holds only {values.size} distinct non-negative integer values "
        f"({values.min():.6g}..{values.max():.6g}), like a label map or a blank volume",
    )


def read_label_file(case: SourceCase, geometry: Geometry) -> np.ndarray:
    """Default :data:`LabelReader`: one multi-label file that must share the image's grid."""
    if case.label is None or not case.label.is_file():
        raise InputError(case.label or case.image, f"label file of case {case.case_id!r} is missing")
    label = read_image(case.label)
    labels = integer_labels(case.label, label.array)
    check_same_geometry(case.label, label.geometry, geometry, case.image)
    return labels


def read_image_checked(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a 3D image; InputError naming ``path`` for non-3D, non-finite or label-map-like data."""
    volume = read_image(path)
    array = volume.array
    if array.ndim != 3:
        raise InputError(
            path, f"image is {array.ndim}D (shape {'x'.join(map(str, array.shape))}); expected 3D"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(path, "image holds NaN or infinite values")
    check_is_image(path, array)
    return array, volume.geometry


def convert_case(
    case: SourceCase,
    dst: Path,
    *,
    read_label: LabelReader,
    lut: np.ndarray,
    valid_ids: frozenset[int],
    dataset: str,
    resume: bool,
    id_hint: str = "",
) -> str:
    """Convert one case into ``dst``; returns ``"done"`` or ``"skipped"`` (raises on bad input).

    A multi-channel case writes channels 1.. before channel 0: channel 0 marks the case complete.
    """
    image_out = image_path(dst, case.case_id, case.split, FILE_ENDING)
    label_out = label_path(dst, case.case_id, case.split, FILE_ENDING) if case.label is not None else None
    extra_out = [
        image_path(dst, case.case_id, case.split, FILE_ENDING, c) for c in range(1, len(case.channels))
    ]
    done = image_out.is_file() and all(p.is_file() for p in extra_out)
    if resume and done and (label_out is None or label_out.is_file()):
        return "skipped"
    array, geometry = read_image_checked(case.image)
    others = []
    for path in case.channels[1:]:  # read and check every channel before writing anything
        other, other_geometry = read_image_checked(path)
        check_same_geometry(path, other_geometry, geometry, case.image)
        others.append(other)
    if case.label is not None and label_out is not None:
        labels = read_label(case, geometry)
        if labels.shape != array.shape:
            raise InputError(case.label, f"label shape {labels.shape} differs from image shape {array.shape}")
        _check_ids(case.label, labels, valid_ids, dataset, id_hint)
        out = lut[labels]
        write_image(label_out, out, geometry)  # label first: the image marks the case as complete
    for path, other in zip(extra_out, others, strict=True):
        write_image(path, other, geometry)
    write_image(image_out, array, geometry)
    return "done"


def _check_ids(
    path: Path, labels: np.ndarray, valid_ids: frozenset[int], dataset: str, hint: str = ""
) -> None:
    """InputError naming ``path`` if ``labels`` holds ids outside ``valid_ids`` (0 always allowed).

    The message lists the first :data:`MAX_IDS_SHOWN` unknown ids, says when the values look like an
    image rather than ids, and ends with ``hint`` (e.g. the other label sets of the dataset).
    """
    highest = int(labels.max()) if labels.size else 0
    if all(i in valid_ids for i in range(1, highest + 1)):
        return  # fast path: every id up to the maximum is valid, no need for np.unique
    values = np.unique(labels)
    unknown = sorted({int(v) for v in values} - valid_ids - {0})
    if not unknown:
        return
    shown = ", ".join(map(str, unknown[:MAX_IDS_SHOWN]))
    more = f", ... ({len(unknown)} ids)" if len(unknown) > MAX_IDS_SHOWN else ""
    problem = f"label ids [{shown}{more}] are not in the {dataset} class map"
    if values.size > MAX_LABEL_MAP_VALUES:
        problem += f"; {values.size} distinct values up to {highest} look like an image, not a label map"
    elif hint:
        problem += f" ({hint})"
    raise SourceMismatchError(path, problem)


def _one_line(case: SourceCase, err: Exception) -> str:
    if isinstance(err, InputError):
        return str(err)
    return f"{case.image}: {' '.join(str(err).split()) or type(err).__name__}"


def convert_cases(
    cases: Sequence[SourceCase],
    dst: str | Path,
    classes: dict[int, str],
    *,
    dataset: str,
    name: str,
    read_label: LabelReader = read_label_file,
    keep_classes: Sequence[str] | None = None,
    id_hint: str = "",
    notes: Sequence[str] = (),
    channel_name: str = "CT",
    channel_names: Sequence[str] | None = None,
    regions: dict[str, Sequence[int]] | None = None,
    case_classes: Sequence[str] | None = None,
    resume: bool = True,
    workers: int = 1,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> ConversionSummary:
    """Convert ``cases`` into the nnU-Net v2 raw dataset ``dst`` and write its dataset.json last.

    ``classes``: official label id -> name; ``dataset``: format name used in messages;
    ``keep_classes``: optional subset of class names (remapped to dense ids); ``id_hint``: appended to
    the error for label ids outside ``classes``; ``notes``: lines copied into the summary. ``workers``
    > 1 converts in parallel processes. Returns a :class:`ConversionSummary`; per-case failures are
    collected, not raised.

    Multi-channel datasets: ``channel_names`` in channel order (cases carry their ``channels``; default:
    one channel named ``channel_name``). ``regions`` (name -> official label ids) are written to
    dataset.json in the output ids (a region that loses a class to ``keep_classes`` is dropped, noted);
    ``case_classes`` with the cases' ``case_label`` write ``case_labels.json`` beside dataset.json.
    """
    dst = check_output_folder(dst)
    out_classes, lut = dense_class_map(classes, keep_classes)
    _check_existing_dataset(dst, out_classes, resume)
    _check_unique_ids(cases)
    summary = ConversionSummary(dst=dst, notes=list(notes))
    job = partial(
        convert_case,
        dst=dst,
        read_label=read_label,
        lut=lut,
        valid_ids=frozenset(classes),
        dataset=dataset,
        resume=resume,
        id_hint=id_hint,
    )
    # The first case runs alone, here, before the progress bar: a source mismatch in it fails the run
    # in one line (the whole source tree or label set is then suspect), nothing written.
    for case in cases[:1]:
        _record(summary, case, _guarded(job, case, fatal=SourceMismatchError))
    rest = cases[1:]
    bar = tqdm(
        total=len(cases), initial=len(cases) - len(rest), desc=f"convert {dataset}", unit="case",
        disable=not progress or not rest,
    )  # fmt: skip
    with bar:
        if workers <= 1 or len(rest) <= 1:
            for case in rest:
                _record(summary, case, _guarded(job, case))
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=min(workers, os.cpu_count() or 1)) as pool:
                futures = {pool.submit(_guarded, job, case): case for case in rest}
                for future in as_completed(futures):
                    _record(summary, futures[future], future.result())
                    bar.update()
    summary.failed.sort()
    summary.done.sort()
    summary.skipped.sort()
    summary.num_training = _count_complete(dst, "Tr")
    summary.num_test = _count_complete(dst, "Ts")
    if summary.num_training + summary.num_test == 0:
        summary.notes.append("no case converted: dataset.json not written")
        return summary
    official = {new: old for old, new in enumerate(lut) if new > 0}
    extras = dict(extra or {})
    if regions:
        extras["regions"] = _output_regions(regions, lut, summary)
        if not extras["regions"]:
            del extras["regions"]
    if case_classes:
        _write_case_labels(dst, cases, case_classes)
        extras["case_classes"] = {name: i for i, name in enumerate(case_classes)}
    if any(new != old for new, old in official.items()):
        extras["official_label_ids"] = {str(k): int(v) for k, v in sorted(official.items())}
    write_dataset_json(
        dst,
        out_classes,
        summary.num_training,
        name=name,
        file_ending=FILE_ENDING,
        channel_names={str(c): n for c, n in enumerate(channel_names or [channel_name])},
        numTest=summary.num_test,
        converted_from=dataset,
        **extras,
    )
    return summary


def _output_regions(regions: dict[str, Sequence[int]], lut: np.ndarray, summary: ConversionSummary) -> dict:
    """Regions in output label ids; regions that lose a class to ``keep_classes`` are dropped (noted)."""
    out = {}
    for name, ids in regions.items():
        mapped = [int(lut[i]) for i in ids if i < len(lut) and lut[i] > 0]
        if len(mapped) == len(ids):
            out[name] = sorted(mapped)
        else:
            summary.notes.append(f"region {name} dropped: not all of its labels {list(ids)} were kept")
    return out


def _write_case_labels(dst: Path, cases: Sequence[SourceCase], case_classes: Sequence[str]) -> None:
    """``case_labels.json`` of every case converted so far (earlier runs' entries kept on resume)."""
    import json

    from organdetr.datasets.nnunet import CASE_LABELS_FILE, write_case_labels

    path = dst / CASE_LABELS_FILE
    labels: dict[str, str] = {}
    if path.is_file():
        try:
            labels = {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
        except (ValueError, AttributeError):
            labels = {}
    for case in cases:
        if case.case_label is not None:
            if case.case_label not in case_classes:
                raise InputError(
                    case.image, f"case label {case.case_label!r} is not one of {list(case_classes)}"
                )
            labels[case.case_id] = case.case_label
    complete = {c for split in ("Tr", "Ts") for c in _complete_ids(dst, split)}
    write_case_labels(dst, {k: v for k, v in labels.items() if k in complete})


def _guarded(
    job: Callable[[SourceCase], str],
    case: SourceCase,
    fatal: type[Exception] | tuple[type[Exception], ...] = (),
) -> tuple[str, str]:
    """Run ``job(case)`` -> ``(outcome, message)``; errors become ``("failed", one-line message)``.

    Errors are turned into strings inside the worker so that nothing needs unpickling in the parent;
    ``fatal`` errors are raised instead (only where the job runs in the parent).
    """
    try:
        return job(case), ""
    except fatal:
        raise
    except Exception as err:  # one bad case never stops the others
        return "failed", _one_line(case, err)


def _record(summary: ConversionSummary, case: SourceCase, result: tuple[str, str]) -> None:
    outcome, message = result
    if outcome == "failed":
        summary.failed.append((case.case_id, message))
    else:
        (summary.done if outcome == "done" else summary.skipped).append(case.case_id)


def _check_unique_ids(cases: Sequence[SourceCase]) -> None:
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(case.image, f"case id {case.case_id!r} is also used by {seen[case.case_id]}")
        seen[case.case_id] = case.image


def _check_existing_dataset(dst: Path, classes: dict[int, str], resume: bool) -> None:
    """Refuse to resume into a folder that holds a dataset with another class list."""
    if not resume or not (dst / "dataset.json").is_file():
        return
    existing = read_dataset_json(dst).get("labels")
    wanted = {"background": 0} | {n: i for i, n in classes.items()}
    if existing != wanted:
        raise InputError(
            dst / "dataset.json",
            "already describes a dataset with other labels; convert into a new folder or pass --no-resume",
        )


def _count_complete(dst: Path, split: str) -> int:
    return len(_complete_ids(dst, split))


def _complete_ids(dst: Path, split: str) -> list[str]:
    folder = dst / f"images{split}"
    if not folder.is_dir():
        return []
    suffix = f"_0000{FILE_ENDING}"
    ids = []
    for image in folder.iterdir():
        if image.name.endswith(suffix) and not image.name.startswith("."):
            case_id = image.name[: -len(suffix)]
            if split == "Ts" or label_path(dst, case_id, split, FILE_ENDING).is_file():
                ids.append(case_id)
    return ids


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
