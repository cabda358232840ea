"""A run folder before training: what may be written there, resuming it, holding it.

:func:`check_run_folder` keeps the rule that organdetr never replaces a file it did not write (a user's
``config.yaml``, the cache) and that a resumed run trains on the cache its checkpoints were made with;
:func:`run_folder` holds the folder's exclusive lock while the run writes into it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from organdetr.preprocessing.plans import changed_plans
from organdetr.runtime.atomic import remove_stale_temps
from organdetr.runtime.errors import InputError
from organdetr.runtime.locking import LOCK_NAME, folder_lock
from organdetr.runtime.outputs import check_output_folder
from organdetr.training import distributed
from organdetr.training.config import written_by_organdetr


def resume_config_path(run_dir: str | Path) -> Path:
    """``RUN/config.yaml`` of a run to resume (``InputError`` when it is not a run folder)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a run folder (no config.yaml); cannot resume")
    return path


def check_run_folder(run_dir: Path, cache_dir: Path, plans: dict, *, resume: bool) -> None:
    """Refuse, before anything is written, a run that would replace a file organdetr did not write or
    resume on a cache made with other settings.

    A new run refuses a ``config.yaml`` in ``run_dir`` that organdetr did not write (``train config.yaml
    -o .`` would replace the user's file with the resolved config) and the cache folder as run folder. A
    resumed run compares the cache's plans with those the run was trained on (``RUN/plans.json``): after
    ``preprocess --overwrite`` with other settings, ``best/`` and ``last/`` would mix two preprocessings.
    """
    if os.path.realpath(run_dir) == os.path.realpath(cache_dir):
        raise InputError(run_dir, "the run folder is the cache folder; give another --output")
    config = run_dir / "config.yaml"
    if not resume and config.exists() and not written_by_organdetr(config):
        raise InputError(
            config, "is not a config organdetr wrote; the run's would replace it: give another --output"
        )
    if resume and (run_dir / "plans.json").is_file():
        _, changed = changed_plans(run_dir, plans)
        if changed:
            raise InputError(
                cache_dir / "plans.json",
                f"the cache was remade since this run started ({', '.join(changed)} differ from "
                f"{run_dir / 'plans.json'}); resume on a cache made with the run's settings, or start a new "
                "run (another --output)",
            )


@contextlib.contextmanager
def run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock (main rank only), created if needed; remove killed writers' temps.

    A run folder this call created is removed again when the run fails before writing anything into it.
    """
    if not distributed.is_main_process():
        yield
        return
    check_output_folder(run_dir, "run folder")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, exclusive=True, purpose="organdetr train"):
        remove_stale_temps(run_dir)
        try:
            yield
        except BaseException:
            if created and all(p.name == LOCK_NAME for p in run_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


__all__ = ["check_run_folder", "resume_config_path", "run_folder"]
