"""Folder locks: one writer per cache or run folder, readers beside each other, never a writer beside them.

:func:`folder_lock` takes ``fcntl.flock`` on ``FOLDER/.organdetr.lock`` without waiting: exclusive for a
writer (``organdetr preprocess`` on its cache, ``organdetr train`` on its run folder), shared for a reader
(``train`` on its cache). A second writer, or a writer beside a reader, is refused at once with an
:class:`~organdetr.runtime.errors.InputError` that names the folder and the process holding it. The kernel
drops
the lock when its holder dies (even by ``kill -9``), so a lock is never stale; a holder's temporary files
are then a dead writer's and the next writer removes them (``organdetr.runtime.atomic.remove_stale_temps``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are then not protected from each other
    fcntl = None

LOCK_NAME = ".organdetr.lock"


def _open_lock_file(path: Path) -> int | None:
    """A descriptor of the lock file (created when possible), or ``None`` in a folder that cannot hold one."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        pass
    try:
        return os.open(path, os.O_RDONLY)  # a read-only folder: flock works on read-only descriptors
    except OSError:
        return None


def _holder(path: Path) -> str:
    """`` (organdetr preprocess, pid 123 on host)`` of the process holding the lock, else ``""``.

    The pids come from the kernel's lock table (``/proc/locks``, Linux), so a reader (shared lock, which
    records nothing) is named too; the purpose and host from the lock file an exclusive holder wrote.
    """
    pids = _flock_pids(path)
    try:
        info = read_json(path)
        pid, host = int(info["pid"]), str(info.get("host", ""))
    except (InputError, KeyError, TypeError, ValueError):
        info, pid, host = {}, None, ""
    if pids and pid not in pids:  # the lock file names an earlier holder: the kernel's pids only
        return f" (pid {', '.join(map(str, pids))})"
    if pid is None:
        return ""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ""
        except PermissionError:
            pass
    return f" ({info.get('purpose', 'organdetr')}, pid {pid} on {host or 'unknown host'})"


def _flock_pids(path: Path) -> list[int]:
    """Pids holding an ``flock`` on ``path`` per ``/proc/locks`` (empty where there is none to read)."""
    try:
        stat = path.stat()
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            table = fh.read()
    except OSError:
        return []
    device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    pids = []
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" in fields and device in fields:
            with contextlib.suppress(ValueError, IndexError):
                pids.append(int(fields[fields.index(device) - 1]))
    return sorted(set(pids))


@contextlib.contextmanager
def folder_lock(
    folder: str | Path, *, exclusive: bool, purpose: str = "organdetr", wait: bool = False
) -> Iterator[bool]:
    """Hold the lock of ``folder`` (which must exist) for the ``with`` block.

    Yields ``True`` while locked, ``False`` where no lock file can exist (a read-only folder without one:
    nobody can write there, and the caller must not either). Raises :class:`InputError` naming ``folder``
    when another process holds a conflicting lock. ``purpose`` (e.g. ``"organdetr preprocess"``) is
    recorded by exclusive holders for that message. ``wait``: wait for the lock instead (for short
    read-modify-write steps that two runs may reach at once, never for a whole run).
    """
    folder = Path(folder)
    if fcntl is None:
        yield True
        return
    path = folder / LOCK_NAME
    fd = _open_lock_file(path)
    if fd is None:
        yield False
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        action = "written" if not exclusive else "used"
        raise InputError(
            folder,
            f"is being {action} by another organdetr process{_holder(path)}; "
            "wait for it to finish or use another folder",
        ) from None
    except OSError:  # a file system without flock support: go on unprotected rather than refuse all work
        pass
    try:
        if exclusive:
            info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose}
            info["command"] = " ".join(sys.argv)[:500]
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
        yield True
    finally:
        os.close(fd)


__all__ = ["LOCK_NAME", "folder_lock"]
