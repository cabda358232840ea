"""Console tables that fit the terminal: every shown column at its full width, the ones that do not fit left
out (and named in the caption), never squeezed to zero width.

Rich shrinks the wrappable columns of a table wider than the console until they vanish (an 80-column
terminal, or stdout piped to a file, where rich assumes 80 columns). :func:`fitted_table` instead measures
every column, keeps the first ``keep`` columns always (they fold if even they do not fit) and then each
further column, in order, that still fits; the caption names what was left out and where to find it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table

_CELL_EXTRA = 3  # one space of padding either side + one border line
_EDGE = 1  # the table's closing border


@dataclass(frozen=True)
class Column:
    """A table column: its header and how its cells are justified."""

    header: str
    justify: str = "left"


def _needed(column: Column, cells: Sequence[str]) -> int:
    """The width a column's header and cells need on one line (the widest line of any multi-line cell)."""
    lines = [column.header, *(line for cell in cells for line in str(cell).splitlines() or [""])]
    return max(len(line) for line in lines)


def shown_columns(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int, keep: int = 1
) -> list[int]:
    """Indices of the columns a table of ``rows`` shows at ``width`` characters: the first ``keep`` always,
    then each further column, in order, whose full width still fits."""
    needed = [_needed(c, [row[n] for row in rows]) + _CELL_EXTRA for n, c in enumerate(columns)]
    shown = list(range(min(keep, len(columns))))
    used = _EDGE + sum(needed[n] for n in shown)
    for n in range(len(shown), len(columns)):
        if used + needed[n] <= width:
            shown.append(n)
            used += needed[n]
    return shown


def fitted_table(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    keep: int = 1,
    caption: str | None = None,
    elsewhere: str = "a wider terminal or --json",
    end_sections: Sequence[int] = (),
) -> Table:
    """A rich table of ``rows`` (cells as text, one per column) that fits ``width`` characters
    (:func:`shown_columns`); columns left out are named in the caption with ``elsewhere`` (where to see
    them). ``end_sections``: row indices followed by a rule."""
    shown = shown_columns(columns, rows, width, keep)
    left_out = [c.header for n, c in enumerate(columns) if n not in shown]
    notes = [caption] if caption else []
    if left_out:
        notes.append(f"not shown at {width} columns: {', '.join(left_out)} ({elsewhere})")
    table = Table(title=title, title_justify="left", caption="; ".join(notes) or None, caption_justify="left")
    for n in shown:
        column = columns[n]
        cells = [row[n] for row in rows]
        table.add_column(
            column.header,
            justify=column.justify,  # type: ignore[arg-type]
            no_wrap=n >= keep,
            overflow="fold",
            min_width=min(_needed(column, cells), max(width - _CELL_EXTRA - _EDGE, 1)),
        )
    for index, row in enumerate(rows):
        table.add_row(*(row[n] for n in shown), end_section=index in end_sections)
    return table


__all__ = ["Column", "fitted_table", "shown_columns"]
