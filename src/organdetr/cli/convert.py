"""`organdetr convert` (not implemented yet)."""

import typer


def convert() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
