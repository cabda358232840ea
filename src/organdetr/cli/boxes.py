"""`organdetr boxes` (not implemented yet)."""

import typer


def boxes() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
