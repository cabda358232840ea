"""organdetr.runtime.workers.map_tasks, the one process pool: serial and pooled runs agree, errors come back
as outcomes (``fatal`` ones end the batch), an early break cancels the rest, and the spawned workers of
every ``--workers`` verb (convert, synth, evaluate --seg; preprocess: test_collisions_and_kills.py) die
with a killed parent. Real subprocesses, tiny inputs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from _procs import kill_parent_and_check_workers
from organdetr.core.geometry import Geometry
from organdetr.datasets.nnunet import image_path, label_path, write_dataset_json
from organdetr.io.images import write_image
from organdetr.runtime.workers import BatchSummary, map_tasks

CLI = [sys.executable, "-c", "from organdetr.cli import main; main()"]
GEOMETRY = Geometry((48, 48, 40), (2.0, 2.0, 3.0), (-48.0, -48.0, -60.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
needs_two_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="a pool needs two CPUs here")


def _square(x: int) -> int:
    return x * x


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad task {x}")
    return x


def _mark(folder: str, x: int) -> int:
    """Leave ``folder/<x>`` and take a moment (so that a cancelled batch stops early)."""
    Path(folder, str(x)).touch()
    time.sleep(0.2)
    return x


@needs_two_cpus
@pytest.mark.parametrize("ordered", [True, False])
def test_serial_and_pool_give_the_same_results(ordered):
    tasks = [(x,) for x in range(10)]
    serial = [(o.task, o.result) for o in map_tasks(_square, tasks, 1, ordered=ordered)]
    pooled = [(o.task, o.result) for o in map_tasks(_square, iter(tasks), 2, ordered=ordered)]
    assert serial == [((x,), x * x) for x in range(10)]
    assert (pooled if ordered else sorted(pooled)) == serial


@needs_two_cpus
@pytest.mark.parametrize("workers", [1, 2])
def test_errors_come_back_as_outcomes_and_fatal_ones_end_the_batch(workers):
    outcomes = list(map_tasks(_fail_on_three, [(x,) for x in range(6)], workers, ordered=True))
    assert [o.result for o in outcomes] == [0, 1, 2, None, 4, 5]
    error = outcomes[3].error
    assert isinstance(error, ValueError) and str(error) == "bad task 3"
    with pytest.raises(ValueError, match="bad task 3"):
        for _ in map_tasks(_fail_on_three, [(x,) for x in range(6)], workers, fatal=ValueError):
            pass


def test_batch_summary_sorts_every_list():
    summary = BatchSummary(done=["b", "a"], skipped=["d", "c"], failed=[("z", "late"), ("y", "early")])
    summary.sort()
    assert summary == BatchSummary(["a", "b"], ["c", "d"], [("y", "early"), ("z", "late")])


@needs_two_cpus
def test_an_early_break_cancels_the_rest(tmp_path):
    read = []

    def tasks():
        for x in range(40):
            read.append(x)
            yield (str(tmp_path), x)

    for outcome in map_tasks(_mark, tasks(), 2):
        assert outcome.error is None
        break
    assert len(read) <= 5  # the window: at most 2 * workers tasks in flight, the iterator read no further
    time.sleep(0.5)
    assert len(list(tmp_path.iterdir())) <= 4  # cancelled tasks never ran, nothing runs after the break


# ----------------------------------------------------------------------------- workers die with the parent


@needs_two_cpus
def test_map_tasks_workers_die_with_their_parent():
    code = (
        "import time\n"
        "from organdetr.runtime.workers import map_tasks\n"
        "for _ in map_tasks(time.sleep, [(60.0,)] * 4, 2):\n"
        "    pass\n"
    )
    kill_parent_and_check_workers([sys.executable, "-c", code])


@needs_two_cpus
def test_synth_workers_die_with_their_parent(tmp_path):
    kill_parent_and_check_workers([*CLI, "synth", str(tmp_path / "out"), "--cases", "8", "--workers", "2"])


def _word_tree(root: Path, cases: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(1, cases + 1):
        image = rng.integers(-1000, 1000, GEOMETRY.size).astype(np.int16)
        write_image(root / "imagesTr" / f"word_{i:04d}.nii.gz", image, GEOMETRY)
        write_image(root / "labelsTr" / f"word_{i:04d}.nii.gz", (image > 900).astype(np.uint8), GEOMETRY)
    return root


@needs_two_cpus
def test_convert_workers_die_with_their_parent(tmp_path):
    src = _word_tree(tmp_path / "WORD", 12)
    out = tmp_path / "out"
    kill_parent_and_check_workers([*CLI, "convert", "word", str(src), str(out), "--workers", "2"])


@needs_two_cpus
def test_evaluate_seg_workers_die_with_their_parent(tmp_path):
    root, pred = tmp_path / "Dataset001_Seg", tmp_path / "pred"
    for n in range(12):
        labels = np.zeros(GEOMETRY.size, dtype=np.uint8)
        labels[4 + n : 30, 6:40, 5:30] = 1
        labels[32:44, 10:20 + n, 8:36] = 2
        write_image(label_path(root, f"case_{n:02d}"), labels, GEOMETRY)
        write_image(image_path(root, f"case_{n:02d}"), labels.astype(np.int16), GEOMETRY)
        write_image(pred / f"case_{n:02d}.nii.gz", np.roll(labels, 2, axis=0), GEOMETRY)
    write_dataset_json(root, {1: "liver", 2: "spleen"}, 12, name="Dataset001_Seg")
    kill_parent_and_check_workers([*CLI, "evaluate", str(pred), str(root), "--seg", "--workers", "2"])
