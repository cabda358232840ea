"""Atomic file writes (a crash never leaves a half-written file that a later run trusts) and file hashes.

Every writer goes to a temporary file in the destination folder, flushes and fsyncs it, then
``os.replace``-s it onto the final name (atomic on POSIX and Windows for same-volume renames); folder
swaps (checkpoints) also fsync the parent folder (:func:`fsync_folder`). Temporary names start with ``.``
and hold ``.tmp`` (:func:`is_temp_name`: ``.<stem>.<pid>.<random>.tmp<suffix>``, the stem shortened so that
the name fits the file system's 255 bytes): every reader that lists a folder skips them
(:func:`visible_files`), a later run that owns the folder (it holds the folder's lock,
``organdetr.runtime.locking``) removes what a killed writer left (:func:`remove_stale_temps`), and any later
writer removes the temporaries of writers that are no longer running (:func:`remove_dead_temps`). A write
that fails because the disk is full raises :class:`~organdetr.runtime.errors.DiskFullError` naming the file.
:func:`file_sha256` is the checksum that caches and checkpoints record of what was written.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from organdetr.runtime.errors import DiskFullError

_UMASK = os.umask(0)
os.umask(_UMASK)
_TEMP_NAME = re.compile(r"^\..+\.tmp")  # ".<stem>.<pid>.<random>.tmp<suffix>", ".<name>.tmp-<pid>", ...
_TEMP_PID = re.compile(r"\.(\d+)\.[^.]+\.tmp|\.tmp-(\d+)")  # the writer's pid in a temporary name
_Staged = list[tuple[Path, Path]]  # (temporary, final) of the writes held by staged_writes
_STAGED: contextvars.ContextVar[_Staged | None] = contextvars.ContextVar("staged", default=None)
_NAME_MAX = 255  # bytes of one file name (ext4, xfs, btrfs, tmpfs, NTFS, APFS)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is moved onto ``path``, on error removed.

    The temporary name keeps the final suffix(es) so that libraries choosing a format by extension
    (SimpleITK, safetensors, matplotlib) behave as they would on ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temp_affixes(path.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    except OSError as err:
        full = _disk_full(path, err)
        if full is not None:
            raise full from None
        raise
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        staged = _STAGED.get()
        if staged is None:
            os.replace(tmp_path, path)
        else:
            staged.append((tmp_path, path))
    except Exception as err:
        tmp_path.unlink(missing_ok=True)
        full = None if isinstance(err, DiskFullError) else _disk_full(path, err)
        if full is not None:
            raise full from None
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def temp_affixes(name: str) -> tuple[str, str]:
    """``(prefix, suffix)`` of a temporary name for ``name``: ``.<stem>.<pid>.`` and ``.tmp<suffixes>``.

    The suffixes are kept (libraries choose a format by them) and the stem is cut so that the whole name,
    with ``mkstemp``'s 8 random characters, fits in :data:`_NAME_MAX` bytes: a valid long file name stays
    writable.
    """
    path = Path(name)
    suffix = ".tmp" + "".join(path.suffixes)
    stem = name[: len(name) - len(suffix) + 4] if path.suffixes else name
    pid = f".{os.getpid()}."
    room = _NAME_MAX - len(("." + pid + "x" * 8 + suffix).encode())
    while len(stem.encode()) > max(room, 1):
        stem = stem[:-1]
    return f".{stem}{pid}", suffix


@contextlib.contextmanager
def staged_writes() -> Iterator[None]:
    """Write a set of files all or nothing (a report: JSON, CSV, Markdown, pictures).

    Inside, every :func:`atomic_path` write stays under its temporary name; when the block ends they are all
    moved onto their final names (renames need no disk space, so a full disk cannot leave half a set), and
    when it fails they are all removed.
    """
    staged: _Staged = []
    token = _STAGED.set(staged)
    try:
        yield
    except BaseException:
        for tmp_path, _ in staged:
            tmp_path.unlink(missing_ok=True)
        raise
    finally:
        _STAGED.reset(token)
    for tmp_path, path in staged:
        os.replace(tmp_path, path)


_FULL_MESSAGES = ("No space left on device", "StorageFull", "Disk quota exceeded", "requested and")


def _disk_full(path: Path, err: Exception) -> DiskFullError | None:
    """A :class:`DiskFullError` for ``path`` when ``err`` means the disk is full, else ``None``.

    Writers report a full disk differently: ``OSError`` with ``ENOSPC``, numpy's short write ``"N requested
    and M written"`` (no errno), safetensors' ``IoError(... StorageFull ...)``, torch's ``file write
    failed``. An errno says so outright; otherwise a telling message or any write error while the folder
    has under 1 MiB free does.
    """
    if getattr(err, "errno", None) not in _FULL_ERRNOS:
        message = str(err)
        if not isinstance(err, OSError | RuntimeError) and not any(m in message for m in _FULL_MESSAGES):
            return None
        try:
            if shutil.disk_usage(path.parent).free > 1 << 20:
                return None
        except OSError:
            return None
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return DiskFullError(path, f"disk full: no space left on the device of {path.parent} ({free})")


def fsync_folder(folder: str | Path) -> None:
    """fsync a folder so that renames into it survive a power loss (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """``True`` for organdetr's temporary names (``.<stem>.<pid>.<random>.tmp...``, ``.<name>.tmp-<pid>``)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove the temporary files and folders (:func:`is_temp_name`) directly in ``folder``; return them.

    Only call this while holding the folder's exclusive lock: then every temporary is a dead writer's.
    """
    return _remove_temps(folder, lambda name: False)


def _remove_temps(folder: str | Path, keep: Callable[[str], bool]) -> list[Path]:
    """Remove the temporaries directly in ``folder`` (files and folders) that ``keep`` does not keep."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not is_temp_name(entry.name) or keep(entry.name):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
    return removed


def visible_files(folder: str | Path, pattern: str = "*") -> list[Path]:
    """The entries of ``folder`` matching ``pattern`` that are not temporaries (:func:`is_temp_name`), sorted.

    Every reader that lists a folder of records or predictions goes through this: a writer's temporary
    (``.<case>.<pid>.<random>.tmp.json``, perhaps a killed writer's) is never taken for data.
    """
    return sorted(p for p in Path(folder).glob(pattern) if not is_temp_name(p.name))


def remove_dead_temps(folder: str | Path) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer (the pid in the name, this host) no longer runs.

    Safe without the folder's lock: a live writer's temporaries are kept; a name without a pid is kept.
    """
    return _remove_temps(folder, _writer_alive)


def _writer_alive(name: str) -> bool:
    """Whether the writer named in a temporary name still runs (``True`` when the name holds no pid)."""
    match = _TEMP_PID.search(name)
    return match is None or _pid_alive(int(match.group(1) or match.group(2)))


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as existing)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (NaN/Inf are rejected, never written)."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def write_figure(fig, path: str | Path, **savefig_kwargs) -> Path:
    """Save the matplotlib ``fig`` to ``path`` atomically (format from the suffix unless given), close it and
    return ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path)
    savefig_kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` atomically (loadable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
