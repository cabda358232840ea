"""Worker processes that end with their parent (``--workers`` pools never outlive a killed command).

:func:`die_with_parent` is a pool initializer: on Linux it asks the kernel to send the worker ``SIGKILL``
when the process that started it dies (``prctl(PR_SET_PDEATHSIG)``), and exits at once when the parent is
already gone. Elsewhere the pool's own broken-pipe handling ends idle workers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

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


__all__ = ["die_with_parent"]
