"""Output paths checked before the work starts: a verb that would fail at its first write fails first.

Each check raises :class:`~organdetr.runtime.errors.InputError` naming the path: an output folder that is a
file,
an output file that is a folder, a parent that is a file, or a place that cannot be written (read-only file
system, no permission). Nothing is created by a check.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from organdetr.runtime.errors import InputError


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _is_read_only_mount(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def writable_problem(folder: str | Path) -> str | None:
    """Why new files cannot be made in ``folder`` (or in the folders made for it), or ``None`` if they can.

    The nearest existing ancestor must be a folder on a writable mount that this user may write to
    (``os.access``; root passes it, so an immutable folder is found at the first write instead).
    """
    folder = Path(folder)
    anchor = _existing_ancestor(folder)
    if not anchor.is_dir():
        return f"cannot create a folder inside {anchor}: it is a file"
    if _is_read_only_mount(anchor):
        return f"{anchor} is on a read-only file system"
    if not os.access(anchor, os.W_OK | os.X_OK):
        return f"no permission to write in {anchor}"
    return None


def probe_writable(folder: str | Path) -> str | None:
    """Why a file cannot be created in the existing ``folder`` (tried for real, then removed), or ``None``.

    Unlike :func:`writable_problem` this also finds immutable folders and root on read-only bind mounts.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".organdetr-write-probe.", suffix=".tmp", dir=folder)
    except OSError as err:
        return f"cannot create files in {folder} ({err.strerror or err})"
    os.close(fd)
    os.unlink(name)
    return None


def check_output_folder(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as a folder that can be written (created if needed later); InputError otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, f"{what} is an existing file, not a folder")
    problem = writable_problem(path)
    if problem is not None:
        raise InputError(path, f"cannot write the {what}: {problem}")
    return path


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file that can be written (its folder created if needed later); InputError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise InputError(path, f"{what} is an existing folder; give a file name")
    problem = writable_problem(path.parent)
    if problem is not None:
        raise InputError(path, f"cannot write the {what}: {problem}")
    return path


__all__ = ["check_output_file", "check_output_folder", "probe_writable", "writable_problem"]
