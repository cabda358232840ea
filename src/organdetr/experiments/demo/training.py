"""The demo's two trainings: their configs, the measured step time, and how they share the CPU.

On a CPU with two or more threads the seg2box baseline trains in a second process *beside* Organ-DETR, the
threads split between them, instead of after it. Two one-thread trainings on two cores are faster than two
two-thread trainings one after the other: torch's intra-op parallelism gains only ~1.26x from a second
thread on the demo's small 64^3 models (Organ-DETR 0.56 CPU-s per step on one thread, 0.445 s per step on
two; BENCHMARKS.md "Issue 20", the demo), so the baseline's minutes mostly disappear behind Organ-DETR's.
The budget stays a step count per model: what each model learns does not depend on how the CPU is shared.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.models import detector_from_config
from organdetr.runtime.devices import cpu_bf16_capable
from organdetr.training.config import load_config, replace_section
from organdetr.training.fit import fit

BASELINE_LOG = "train_console.log"  # the concurrent baseline's console output, inside its run folder


def thread_split(threads: int, concurrent: bool) -> tuple[int, int] | None:
    """``(Organ-DETR threads, baseline threads)`` when the baseline trains beside Organ-DETR, else ``None``
    (one after the other, each with all ``threads``). The baseline gets a third of the threads (at least
    one): its step costs ~0.7x Organ-DETR's on one thread (seg2box on the pooled grid 0.41 vs 0.56 CPU-s),
    so with 2 threads the two finish close together."""
    if not concurrent or threads < 2:
        return None
    baseline = max(1, threads // 3)
    return threads - baseline, baseline


@contextlib.contextmanager
def torch_threads(threads: int):
    """Run the block with ``torch.set_num_threads(threads)``; the previous count is restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_step_seconds(train_cfg, cache_dir: Path, case_ids: Sequence[str], batch_size: int) -> float:
    """Seconds per optimizer step on this machine at torch's current thread count, data loading and
    augmentation included.

    Runs 5 real steps (cached cases, the config's augmentation, a throw-away model) and returns the
    median of the last 3 (the first two pay one-off allocation and kernel-selection costs). Only used to
    print the expected time: the budget is a step count. The steps run in bf16 autocast where training will
    most likely use it (``train.amp`` bf16, or auto on a CPU with bf16 instructions; the run itself decides
    auto by its own measurement, :mod:`organdetr.training.precision`).
    """
    amp = train_cfg.train.amp
    bf16 = amp == "bf16" or (amp == "auto" and cpu_bf16_capable())
    torch.manual_seed(0)
    dataset = CacheDataset(cache_dir, list(case_ids), train_cfg.augment)
    detector = detector_from_config(train_cfg, dataset.num_classes, dataset.input_size)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-5)
    times = []
    for step in range(5):
        t0 = time.perf_counter()
        images, targets = collate(
            [dataset[((step * batch_size + b) % len(dataset), step)] for b in range(batch_size)]
        )
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = detector.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]))


def train_config(cfg, cache_dir: Path, train_ids: list[str], preset: str, overrides: Sequence[str] = ()):
    """``preset`` (+ ``overrides``) with the demo's (:class:`~organdetr.experiments.demo.run.DemoConfig`
    ``cfg``) data split, step budget, optimiser and CPU settings."""
    train_cfg = load_config(preset, list(overrides))
    train_cfg = replace_section(
        train_cfg, "data", cache_dir=str(cache_dir), train_cases=list(train_ids), val_cases=[],
        batch_size=cfg.batch_size, num_workers=cfg.num_workers,
    )  # fmt: skip
    train_cfg = replace_section(
        train_cfg, "train", steps=cfg.steps, val_every=0, checkpoint_every=1000, device="cpu",
        seed=cfg.seed, log_every=max(1, min(10, cfg.steps // 50)), progress=cfg.progress,
    )  # fmt: skip
    warmup = min(cfg.warmup_steps, max(1, cfg.steps // 10))
    return replace_section(train_cfg, "optim", warmup_steps=warmup, lr=cfg.lr, grad_clip=cfg.grad_clip)


def train_run(train_cfg, run_dir: Path) -> Path:
    """Train ``train_cfg`` into ``run_dir`` for its ``train.steps`` optimizer steps (the cosine schedule
    spans exactly them); an earlier demo's run there is replaced."""
    _start_afresh(run_dir)
    fit(train_cfg, run_dir)
    return run_dir


def _start_afresh(run_dir: Path) -> None:
    """Remove an earlier demo's run in ``run_dir`` (one that wrote its ``config.yaml``)."""
    if (run_dir / "config.yaml").is_file():
        shutil.rmtree(run_dir)


def _train_in_child(train_cfg, run_dir: Path, threads: int) -> float:
    """The concurrent baseline's process: ``threads`` torch threads, its console (the precision chosen, a line
    per epoch, progress bars where ``train.progress``) into ``run_dir``'s :data:`BASELINE_LOG`: the terminal
    shows Organ-DETR's. Returns its wall seconds."""
    torch.set_num_threads(threads)
    started = time.perf_counter()
    _start_afresh(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / BASELINE_LOG
    with open(log, "w", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):  # fmt: skip
        fit(train_cfg, run_dir)
    return time.perf_counter() - started


def train_models(
    jobs: dict[str, tuple[object, Path, str]],
    split: tuple[int, int] | None,
    step: Callable[[str, str], contextlib.AbstractContextManager],
    echo: Callable[[str], None],
) -> dict[str, float]:
    """Train ``jobs`` (name -> (train config, run folder, label for the console); the first is Organ-DETR,
    a second the baseline) and return each one's own wall seconds.

    ``split`` (:func:`thread_split`): the second job trains in a spawned process with ``split[1]`` threads
    while the first trains here with ``split[0]``, both inside one ``step("train", ...)``; ``None``: one after
    the other, steps ``"train"`` and ``"train_<name>"``. ``step(key, message)`` is the demo clock's
    numbered, timed step."""
    names = list(jobs)
    seconds: dict[str, float] = {}
    if split is None or len(names) < 2:
        for name in names:
            train_cfg, run_dir, label = jobs[name]
            key = "train" if name == names[0] else f"train_{name}"
            started = time.perf_counter()
            with step(key, f"training {label} for {train_cfg.train.steps} steps"):
                train_run(train_cfg, run_dir)
            seconds[name] = time.perf_counter() - started
        return seconds
    first_cfg, first_dir, first_label = jobs[names[0]]
    second_cfg, second_dir, second_label = jobs[names[1]]
    message = (
        f"training {first_label} on {threads_text(split[0])} and beside it, in a second process, "
        f"{second_label} on {threads_text(split[1])} (its log: {second_dir / BASELINE_LOG}), "
        f"{first_cfg.train.steps} steps each"
    )
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with step("train", message), ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        started = time.perf_counter()
        future = pool.submit(_train_in_child, second_cfg, second_dir, split[1])
        with torch_threads(split[0]):
            train_run(first_cfg, first_dir)
        seconds[names[0]] = time.perf_counter() - started
        if not future.done():
            echo(f"      {names[0]} done after {seconds[names[0]] / 60:.1f} min; waiting for {names[1]}")
        seconds[names[1]] = future.result()  # its exception, if it failed, is raised here
    sys.stdout.flush()
    return seconds


def threads_text(n: int) -> str:
    """``1 thread`` / ``2 threads``."""
    return f"{n} thread{'s' if n > 1 else ''}"


__all__ = [
    "BASELINE_LOG",
    "measure_step_seconds",
    "thread_split",
    "threads_text",
    "torch_threads",
    "train_config",
    "train_models",
    "train_run",
]
