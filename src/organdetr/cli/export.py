"""`organdetr export` (not implemented yet)."""

import typer


def export() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
