"""`organdetr preprocess` (not implemented yet)."""

import typer


def preprocess() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
