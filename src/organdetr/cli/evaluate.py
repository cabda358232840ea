"""`organdetr evaluate` (not implemented yet)."""

import typer


def evaluate() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
