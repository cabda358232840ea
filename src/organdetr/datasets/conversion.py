"""The shared engine of the dataset converters: source cases in, nnU-Net v2 raw dataset out.

Every converter (``organdetr.datasets.<format>``) only *discovers* its cases (:mod:`.source`) and knows
how to read one label map; this module does the rest, the same way for all of them (the file checks live
in :mod:`.source_checks`):

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
  line before anything is written: the source tree or the label set is then wrong as a whole (the
  other cases run in ``--workers`` processes that die with the command,
  :func:`organdetr.runtime.workers.map_tasks`);
* ``dataset.json`` is written last, counting every complete training case in the destination (not at
  all while the destination holds no complete case).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from organdetr.datasets.nnunet import (
    CASE_LABELS_FILE,
    image_path,
    label_path,
    read_dataset_json,
    write_case_labels,
    write_dataset_json,
)
from organdetr.datasets.source import LabelReader, SourceCase, check_output_folder
from organdetr.datasets.source_checks import (
    SourceMismatchError,
    check_label_ids,
    check_same_geometry,
    read_image_checked,
    read_label_file,
)
from organdetr.io.images import write_image
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief, one_line
from organdetr.runtime.workers import BatchSummary, map_tasks, single_threaded_itk

FILE_ENDING = ".nii.gz"


@dataclass(kw_only=True)
class ConversionSummary(BatchSummary):
    """Outcome of one conversion run: case ids converted now, skipped (already there), and failed
    (:class:`~organdetr.runtime.workers.BatchSummary`), the destination, the complete cases dataset.json
    counts, and notes."""

    dst: Path
    num_training: int = 0
    num_test: int = 0
    notes: list[str] = field(default_factory=list)  # one line each, e.g. how the label set was chosen


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
        check_label_ids(case.label, labels, valid_ids, dataset, id_hint)
        out = lut[labels]
        write_image(label_out, out, geometry)  # label first: the image marks the case as complete
    for path, other in zip(extra_out, others, strict=True):
        write_image(path, other, geometry)
    write_image(image_out, array, geometry)
    return "done"


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
    _convert_all(job, cases, summary, workers, desc=f"convert {dataset}", progress=progress)
    summary.sort()
    summary.num_training = _count_complete(dst, "Tr")
    summary.num_test = _count_complete(dst, "Ts")
    if summary.num_training + summary.num_test == 0:
        summary.notes.append("no case converted: dataset.json not written")
        return summary
    extras = _dataset_extras(dst, cases, lut, summary, regions, case_classes, extra)
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


def _dataset_extras(
    dst: Path,
    cases: Sequence[SourceCase],
    lut: np.ndarray,
    summary: ConversionSummary,
    regions: dict[str, Sequence[int]] | None,
    case_classes: Sequence[str] | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """dataset.json's keys beyond the classes: ``extra``, the regions in output ids, the case classes
    (``case_labels.json`` written beside it) and the official ids when they were remapped."""
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
    return extras


def _convert_all(
    job: Callable[[SourceCase], str],
    cases: Sequence[SourceCase],
    summary: ConversionSummary,
    workers: int,
    *,
    desc: str,
    progress: bool,
) -> None:
    """``job`` over every case into ``summary``: the first case alone, here, the rest in ``workers``
    processes (:func:`~organdetr.runtime.workers.map_tasks`) under a progress bar."""
    # The first case runs alone, here, before the progress bar: a source mismatch in it fails the run
    # in one line (the whole source tree or label set is then suspect), nothing written.
    for case in cases[:1]:
        _record(summary, case, _guarded(job, case, fatal=SourceMismatchError))
    rest = cases[1:]
    bar = tqdm(
        total=len(cases), initial=len(cases) - len(rest), desc=desc, unit="case",
        disable=not progress or not rest,
    )  # fmt: skip
    with bar:
        tasks = [(job, case) for case in rest]
        for outcome in map_tasks(_guarded, tasks, workers, setup=single_threaded_itk, fatal=Exception):
            _record(summary, outcome.task[1], outcome.result)
            bar.update()


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
    path = dst / CASE_LABELS_FILE
    labels: dict[str, str] = {}
    if path.is_file():
        try:
            labels = {str(k): str(v) for k, v in read_json(path).items()}
        except (InputError, AttributeError):
            labels = {}
    for case in cases:
        if case.case_label is not None:
            if case.case_label not in case_classes:
                raise InputError(
                    case.image, f"case label {brief(case.case_label)} is not one of {list(case_classes)}"
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
        return "failed", one_line(err, where=str(case.image))


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
            raise InputError(
                case.image, f"case id {brief(case.case_id)} is also used by {seen[case.case_id]}"
            )
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


__all__ = ["FILE_ENDING", "ConversionSummary", "convert_case", "convert_cases", "dense_class_map"]
