"""Text for people: one-line error reasons and short number lists (used in errors, summaries and logs)."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable

import numpy as np

from organdetr.runtime.errors import InputError


def collapse(text: str, limit: int | None = None) -> str:
    """``text`` on one line (runs of white space -> one space), cut to ``limit`` characters when given."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


def one_line(
    err: BaseException, *, where: str | None = None, with_type: bool = False, limit: int | None = None
) -> str:
    """A failure as one line for a batch summary or an error message.

    An :class:`InputError` already names its file and is kept as it is. Any other error becomes its message on
    one line (cut to ``limit``), after ``"<TypeName>: "`` with ``with_type`` (and the type name alone when the
    message is empty), after ``"<where>: "`` when ``where`` names the case or file.
    """
    if isinstance(err, InputError):
        return str(err)
    text = collapse(str(err), limit)
    if with_type:
        text = f"{type(err).__name__}: {text}"
    elif not text:
        text = type(err).__name__
    return f"{where}: {text}" if where else text


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel = 3
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 100
for _limit in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_SHORT_REPR, _limit, 6)


def brief(value: object, limit: int = 120) -> str:
    """``repr(value)`` for an error message, bounded whatever ``value`` is: nesting, items and strings are cut
    (``reprlib``) before the text is built, so a YAML alias bomb's billion-item list costs no memory; the
    result is one line of at most ``limit`` characters (``...`` where cut)."""
    try:
        text = collapse(_SHORT_REPR.repr(value))
    except Exception:  # a __repr__ that raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_vector(values: Iterable[float] | np.ndarray) -> str:
    """``[a, b, c]`` with 4 significant digits (spacings, sizes, directions in messages)."""
    return "[" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


__all__ = ["brief", "collapse", "format_vector", "one_line"]
