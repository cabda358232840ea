"""``organdetr preprocess``: an nnU-Net v2 raw dataset -> the cache, resumable, one writer at a time.

:func:`preprocess_dataset` works in named steps: the plans of the dataset (:func:`dataset_plans`), a cache
made with other plans refused before anything is created or locked, then under the cache's exclusive lock
(``organdetr.runtime.locking``; a second writer, or a writer beside a training run, is refused): the plans
checked again, what killed writers left removed (:func:`prepare_cache`), the complete cases skipped
(:func:`cases_to_do`), ``plans.json`` written, and every other case preprocessed by
:func:`preprocess_case`, in ``--workers`` processes that die with the command
(:func:`organdetr.runtime.workers.map_tasks`). Bad cases are listed, not raised; a full disk stops the batch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from organdetr.datasets.nnunet import NnUNetCase, NnUNetDataset, load_dataset
from organdetr.io.images import read_image, read_label_map
from organdetr.preprocessing.cache import is_complete, write_case
from organdetr.preprocessing.plans import (
    PreprocessConfig,
    changed_plans,
    default_channel_norm,
    make_plans,
    refuse_other_plans,
)
from organdetr.preprocessing.resampling import preprocess_channels, preprocess_volume
from organdetr.runtime.atomic import remove_stale_temps, visible_files, write_json
from organdetr.runtime.errors import DiskFullError, InputError
from organdetr.runtime.locking import folder_lock
from organdetr.runtime.outputs import check_output_folder, probe_writable
from organdetr.runtime.text import one_line
from organdetr.runtime.workers import BatchSummary, map_tasks, single_threaded_itk


def preprocess_case(
    case_id: str,
    image_path: Path,
    label_path: Path | None,
    out_dir: Path,
    cfg: PreprocessConfig,
    classes,
    channel_paths: tuple[Path, ...] = (),
    case_label: str | None = None,
) -> str:
    """Preprocess one case into ``out_dir/cases`` (arrays first, JSON last); returns ``case_id``.

    ``channel_paths``: every channel's file of a multi-channel case (then ``image_path`` is channel 0);
    ``case_label``: its case-level class name, stored in the record as ``"case_label"``.
    """
    labels = read_label_map(label_path) if label_path is not None else None
    if len(channel_paths) > 1 or cfg.channel_norm:
        paths = list(channel_paths) or [image_path]
        image, label, record = preprocess_channels(
            [read_image(p) for p in paths], cfg, labels, classes, image_paths=paths, label_path=label_path
        )
    else:
        image, label, record = preprocess_volume(
            read_image(image_path), cfg, labels, classes, image_path=image_path, label_path=label_path
        )
    if case_label is not None:
        record["case_label"] = case_label
    write_case(out_dir, case_id, image, label, record)
    return case_id


def preprocess_dataset(
    dataset_root: str | Path,
    out_dir: str | Path,
    cfg: PreprocessConfig,
    workers: int = 1,
    resume: bool = True,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchSummary:
    """Preprocess every training case of an nnU-Net v2 raw dataset into the cache ``out_dir``.

    Resumable: cases that pass :func:`~organdetr.preprocessing.cache.verify_case` (checksums included) are
    skipped (``resume``); any other is redone. A ``plans.json`` made with other settings is an
    :class:`InputError` unless ``overwrite``; so is a cache another process is writing (or training from),
    and a cache folder that cannot be written when there is something to write (a complete read-only cache
    passes). Each case is atomic (arrays first, JSON last). Bad cases do not stop the batch: they are
    returned in ``BatchSummary.failed`` as ``(case_id, message)``; a full disk stops it (``DiskFullError``).
    """
    dataset = load_dataset(dataset_root)
    out_dir = Path(out_dir)
    cfg, plans = dataset_plans(dataset_root, dataset, cfg)
    _, changed = changed_plans(out_dir, plans) if out_dir.is_dir() else (None, [])
    if changed and not overwrite:
        refuse_other_plans(out_dir, changed)  # before creating or locking anything
    if not out_dir.is_dir():
        _create_folder(out_dir)
    summary = BatchSummary()
    with folder_lock(out_dir, exclusive=True, purpose="organdetr preprocess") as locked:
        existing, problem = prepare_cache(out_dir, plans, overwrite=overwrite, locked=locked)
        todo = cases_to_do(dataset, out_dir, plans, resume, summary)
        _write_plans(out_dir, plans, existing, problem, todo)
        jobs = [
            (c.case_id, c.image, c.label, out_dir, cfg, dataset.classes, c.channels, c.case_label)
            for c in todo
        ]
        _run_jobs(jobs, workers, summary, progress and bool(jobs))
    summary.done.sort()
    summary.failed.sort()
    return summary


def dataset_plans(
    dataset_root: str | Path, dataset: NnUNetDataset, cfg: PreprocessConfig
) -> tuple[PreprocessConfig, dict]:
    """``cfg`` with the dataset's per-channel normalisation (default: from the channel names) and the
    cache's plans; InputError naming dataset.json when ``cfg`` normalises another number of channels."""
    if not cfg.channel_norm and len(dataset.channels) > 1:
        cfg = replace(cfg, channel_norm=default_channel_norm(dataset.channels))
    if cfg.channel_norm and len(cfg.channel_norm) != len(dataset.channels):
        raise InputError(
            Path(dataset_root) / "dataset.json",
            f"{len(dataset.channels)} channels {dataset.channels} but channel_norm gives "
            f"{len(cfg.channel_norm)} schemes {list(cfg.channel_norm)}",
        )
    plans = make_plans(
        cfg,
        dataset.classes,
        Path(dataset_root).resolve(),
        channels=dataset.channels,
        regions=dataset.regions,
        case_classes=dataset.case_classes,
    )
    return cfg, plans


def _create_folder(out_dir: Path) -> None:
    check_output_folder(out_dir, "cache folder")
    try:
        (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(out_dir, f"cannot create the cache folder ({err.strerror or err})") from None


def prepare_cache(
    out_dir: Path, plans: dict, *, overwrite: bool, locked: bool
) -> tuple[dict | None, str | None]:
    """Under the cache's lock: ``(its current plans or None, why it cannot be written or None)``.

    The plans are compared again (another writer may just have finished); a writable cache loses what
    killed writers left, and with ``overwrite`` the case records of other plans (never complete under
    the new ones).
    """
    existing, changed = changed_plans(out_dir, plans)
    if changed and not overwrite:
        refuse_other_plans(out_dir, changed)
    problem = probe_writable(out_dir / "cases") if locked else f"{out_dir} is read-only"
    if problem is None:
        remove_stale_temps(out_dir)
        remove_stale_temps(out_dir / "cases")
    if changed:  # --overwrite: stale cases must never count as complete under the new plans
        if problem is not None:
            raise InputError(out_dir, f"cannot replace the cache: {problem}")
        for record_path in visible_files(out_dir / "cases", "*.json"):
            record_path.unlink()
    return existing, problem


def cases_to_do(
    dataset: NnUNetDataset, out_dir: Path, plans: dict, resume: bool, summary: BatchSummary
) -> list[NnUNetCase]:
    """The cases to preprocess; with ``resume`` the complete ones are skipped (listed in ``summary``)."""
    todo = []
    for case in dataset.cases:
        if resume and is_complete(out_dir, case.case_id, plans):
            summary.skipped.append(case.case_id)
        else:
            todo.append(case)
    return todo


def _write_plans(
    out_dir: Path, plans: dict, existing: dict | None, problem: str | None, todo: list[NnUNetCase]
) -> None:
    """Write ``plans.json`` when it changed; InputError when the cache must change but cannot be written."""
    plans_stale = existing is None or {**existing, "source": None} != {**plans, "source": None}
    if problem is not None and (todo or plans_stale):
        raise InputError(out_dir, f"cannot write the cache: {problem} ({len(todo)} case(s) to preprocess)")
    if problem is None and existing != plans:
        write_json(out_dir / "plans.json", plans)


def _run_jobs(jobs: list[tuple], workers: int, summary: BatchSummary, progress: bool) -> None:
    """Run :func:`preprocess_case` over ``jobs`` (in ``workers`` processes); a full disk stops the batch."""
    bar = tqdm(total=len(jobs), desc="preprocess", unit="case", disable=not progress)
    try:
        outcomes = map_tasks(preprocess_case, jobs, workers, setup=single_threaded_itk, fatal=DiskFullError)
        for outcome in outcomes:
            case_id = outcome.task[0]
            if outcome.error is None:
                summary.done.append(outcome.result)
            else:
                summary.failed.append((case_id, one_line(outcome.error, where=case_id, with_type=True)))
            bar.update()
    except BaseException:
        bar.leave = False  # the error line replaces the bar
        raise
    finally:
        bar.close()


__all__ = ["cases_to_do", "dataset_plans", "prepare_cache", "preprocess_case", "preprocess_dataset"]
