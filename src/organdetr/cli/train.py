"""`organdetr train` (not implemented yet)."""

import typer


def train() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
