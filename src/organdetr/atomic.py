"""Atomic file writes: a crash never leaves a half-written file that a later run trusts.

Every writer goes to a temporary file in the destination folder, flushes and fsyncs it, then
``os.replace``-s it onto the final name (atomic on POSIX and Windows for same-volume renames).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is moved onto ``path``, on error removed.

    The temporary name keeps the final suffix(es) so that libraries choosing a format by extension
    (SimpleITK, safetensors, matplotlib) behave as they would on ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; finished files get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


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


def write_npy(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` atomically (loadable with ``np.load(mmap_mode='r')``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
