"""`organdetr synth` (not implemented yet)."""

import typer


def synth() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
