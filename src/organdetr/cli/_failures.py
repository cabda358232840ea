"""The end of every batch verb: list what failed, one line each, and exit 1 (the rest has finished)."""

from __future__ import annotations

from collections.abc import Sequence

import typer


def exit_if_failed(failed: Sequence[tuple[str, str]], what: str = "cases") -> None:
    """Print ``(name, one-line reason)`` pairs to stderr and raise ``typer.Exit(1)``; no-op when empty.

    A reason that already starts with the name (an ``InputError`` naming the file) is printed as it is.
    """
    if not failed:
        return
    typer.secho(f"{len(failed)} {what} failed:", fg="red", bold=True, err=True)
    for name, reason in failed:
        typer.echo(f"  {reason}" if reason.startswith(str(name)) else f"  {name}: {reason}", err=True)
    raise typer.Exit(code=1)
