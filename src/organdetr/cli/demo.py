"""`organdetr demo` (not implemented yet)."""

import typer


def demo() -> None:
    """Not implemented yet."""
    raise typer.Exit(code=2)
