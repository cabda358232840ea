"""Reading the JSON files a user or an earlier run left (records, states, datalists): one checked reader.

What the toolkit writes goes through :mod:`organdetr.runtime.atomic`; what it reads back may be anything, so
:func:`read_json` names the file in one line when it cannot be read or is not what the caller needs: not a
regular file (a FIFO named ``x.json`` would block the read forever), not UTF-8, not JSON, or nested too deep
for Python's parser (``RecursionError`` on 100k brackets). :func:`parse_json` does the same for JSON text
kept elsewhere (model metadata).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import collapse

_PARSE_ERRORS = (UnicodeDecodeError, ValueError, RecursionError, MemoryError)


def parse_json(text: str | bytes, path: str | Path | None, unreadable: str = "not readable JSON") -> Any:
    """``text`` parsed as JSON; InputError ``"<unreadable> (<reason>)"`` naming ``path`` when it is not."""
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(path, f"{unreadable} (nested too deep)") from None
    except _PARSE_ERRORS as err:
        raise InputError(path, f"{unreadable} ({collapse(str(err), 200)})") from None


def read_json(
    path: str | Path, unreadable: str = "not readable JSON", *, not_object: str | None = None
) -> Any:
    """The JSON in ``path``.

    InputError ``"<unreadable> (<reason>)"`` naming the file when it is not a regular file or cannot be read
    or parsed, and ``not_object`` when that is given and the top level is not a JSON object.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise InputError(path, f"{unreadable} (not a regular file)")
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(path, f"{unreadable} ({collapse(err.strerror or str(err), 200)})") from None
    data = parse_json(raw, path, unreadable)
    if not_object is not None and not isinstance(data, dict):
        raise InputError(path, not_object)
    return data


__all__ = ["parse_json", "read_json"]
