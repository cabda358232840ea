"""Batch work over cases: one process-pool helper whose workers end with their parent, and one summary.

:func:`map_tasks` runs ``fn(*task)`` for every task, in this process (``workers <= 1``) or in ``workers``
*spawned* processes (no forked copies of torch or open files). Every worker asks the kernel to kill it when
the process that started it dies (:func:`die_with_parent`, ``prctl(PR_SET_PDEATHSIG)`` on Linux), so
``--workers`` pools never outlive a killed command. At most ``2 * workers`` tasks are in flight, so a lazy
task iterator is never read ahead further than that. Each task's result or exception comes back as an
:class:`Outcome`, except the ``fatal`` exception types the caller names (e.g. a full disk), which end the
batch; the caller turns the others into one line of a :class:`BatchSummary`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this process die when ``parent_pid`` (default: the current parent) does; call it in the child."""
    parent_pid = os.getppid() if parent_pid is None else parent_pid
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the request was in place
        os._exit(1)


def single_threaded_itk() -> None:
    """A worker ``setup``: SimpleITK on one thread (the pool is the parallelism)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _start_worker(parent_pid: int, setup: Callable[[], None] | None) -> None:
    die_with_parent(parent_pid)
    if setup is not None:
        setup()


@dataclass
class Outcome:
    """One task's end: ``result`` when it returned, ``error`` (not raised) when it raised."""

    task: tuple
    result: Any = None
    error: BaseException | None = None


def map_tasks(
    fn: Callable[..., Any],
    tasks: Iterable[tuple],
    workers: int = 1,
    *,
    ordered: bool = False,
    setup: Callable[[], None] | None = None,
    fatal: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> Iterator[Outcome]:
    """``fn(*task)`` for every task -> an :class:`Outcome` each, as they finish (task order: ``ordered``).

    ``workers <= 1`` (or a sized ``tasks`` of at most one task) runs in this process (``setup`` is not
    called); otherwise ``fn`` and ``setup`` must be module-level functions (they are pickled into spawned
    workers), at most ``min(workers, cpu_count, len(tasks))`` processes. ``Exception`` subclasses come back
    as ``Outcome.error``, except those of a ``fatal`` type: that one is raised and ends the batch (tasks not
    started are cancelled, running ones awaited); anything else (``KeyboardInterrupt``) propagates. Leaving
    the loop early cancels the tasks not started and waits for the running ones.
    """
    if isinstance(tasks, Sized):
        workers = min(workers, len(tasks))
    if workers <= 1:
        yield from _serial(fn, tasks, fatal)
        return
    workers = min(workers, os.cpu_count() or 1)
    pool = ProcessPoolExecutor(
        workers, mp_context=get_context("spawn"), initializer=_start_worker, initargs=(os.getpid(), setup)
    )
    window: deque[tuple[tuple, Future]] = deque()
    try:
        for task in tasks:
            window.append((task, pool.submit(fn, *task)))
            while len(window) >= 2 * workers:
                yield _next_done(window, ordered, fatal)
        while window:
            yield _next_done(window, ordered, fatal)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _serial(fn: Callable[..., Any], tasks: Iterable[tuple], fatal) -> Iterator[Outcome]:
    """:func:`map_tasks` in this process, task by task."""
    for task in tasks:
        try:
            result = fn(*task)
        except fatal:
            raise
        except Exception as err:
            yield Outcome(task, error=err)
            continue
        yield Outcome(task, result)


def _next_done(window: deque[tuple[tuple, Future]], ordered: bool, fatal) -> Outcome:
    """Pop the first task of ``window`` (``ordered``) or the first to finish, and wait for it; raise its
    error when it is ``fatal``."""
    if not ordered:
        done, _ = wait([future for _, future in window], return_when=FIRST_COMPLETED)
        index = next(i for i, (_, future) in enumerate(window) if future in done)
        window.rotate(-index)
    task, future = window.popleft()
    error = future.exception()
    if error is not None and isinstance(error, fatal):
        raise error
    return Outcome(task, error=error) if error is not None else Outcome(task, future.result())


@dataclass
class BatchSummary:
    """What a batch verb did: ids done now, skipped (already there), and ``(id or path, one-line reason)``
    per failure; the verb prints it and exits 1 when anything failed."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def sort(self) -> None:
        """Sort each list (pools finish in any order; summaries read in id order)."""
        self.done.sort()
        self.skipped.sort()
        self.failed.sort()


__all__ = ["BatchSummary", "Outcome", "die_with_parent", "map_tasks", "single_threaded_itk"]
