"""`organdetr benchmark` (not implemented yet)."""

import typer


def benchmark() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
