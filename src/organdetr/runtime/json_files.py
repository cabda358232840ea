"""Reading the JSON files a user or an earlier run left (records, states, datalists): one checked reader.

What the toolkit writes goes through :mod:`organdetr.runtime.atomic`; what it reads back may be anything, so
:func:`read_json` names the file in one line when it cannot be read or is not what the caller needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import collapse


def read_json(
    path: str | Path, unreadable: str = "not readable JSON", *, not_object: str | None = None
) -> Any:
    """The JSON in ``path``.

    InputError ``"<unreadable> (<reason>)"`` naming the file when it cannot be read or parsed, and
    ``not_object`` when that is given and the top level is not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(path, f"{unreadable} ({collapse(str(err))})") from None
    if not_object is not None and not isinstance(data, dict):
        raise InputError(path, not_object)
    return data


__all__ = ["read_json"]
