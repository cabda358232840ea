"""`organdetr predict` (not implemented yet)."""

import typer


def predict() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
