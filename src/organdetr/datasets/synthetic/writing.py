"""Writing many synthetic cases: independent per-case seeds and the (parallel) loop that writes them.

Shared by the abdomen phantom and the brain phantom (``organdetr synth``); ``--workers`` processes are
spawned by :func:`organdetr.runtime.workers.map_tasks` and die with the command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from organdetr.runtime.workers import map_tasks, single_threaded_itk


def case_seeds(seed: int, num_cases: int) -> list[int]:
    """Independent per-case seeds derived from the dataset ``seed`` (``SeedSequence`` spawning)."""
    children = np.random.SeedSequence(seed).spawn(num_cases)
    return [int(child.generate_state(1, dtype=np.uint32)[0]) for child in children]


def write_cases(
    write_one: Callable[[Path, int, int, Any], dict],
    root: Path,
    seeds: list[int],
    cfg,
    workers: int = 1,
    *,
    progress: bool = False,
    desc: str = "synth",
) -> list[dict]:
    """``write_one(root, index, seed, cfg) -> summary`` for every seed (in ``workers`` spawned processes when
    > 1, SimpleITK single-threaded in each); returns the summaries sorted by ``case_id``. The first error
    stops the batch and is raised."""
    cases: list[dict] = []
    tasks = [(root, index, case_seed, cfg) for index, case_seed in enumerate(seeds)]
    with tqdm(total=len(seeds), desc=desc, unit="case", disable=not progress) as bar:
        for outcome in map_tasks(write_one, tasks, workers, setup=single_threaded_itk, fatal=Exception):
            cases.append(outcome.result)
            bar.update()
    return sorted(cases, key=lambda c: c["case_id"])


__all__ = ["case_seeds", "write_cases"]
