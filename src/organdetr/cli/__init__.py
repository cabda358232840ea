"""The ``organdetr`` command line: one verb per job (nnU-Net style).

Each verb lives in its own module ``organdetr.cli.<verb>`` that defines one typer command
function of the same name; heavy imports (torch, SimpleITK) happen inside the function so
that ``organdetr --help`` stays instant.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="organdetr",
    help="Organ detection in 3D CT with detection transformers (Organ-DETR).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Order here is the order shown by --help.
VERBS = [
    "demo",
    "synth",
    "convert",
    "plan",
    "preprocess",
    "split",
    "boxes",
    "train",
    "predict",
    "evaluate",
    "export",
    "benchmark",
]

for _verb in VERBS:
    _module = importlib.import_module(f"organdetr.cli.{_verb}")
    app.command(name=_verb)(getattr(_module, _verb))


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


def main() -> None:
    """Console-script entry point: bad input ends in one line naming the file, not a traceback.

    ``InputError`` (and ``OSError`` naming a file: permissions, read-only file systems) -> ``error: ...``
    on stderr, exit code 2; warnings are printed as one line each.
    """
    import warnings

    from organdetr.runtime.errors import InputError

    warnings.formatwarning = _one_line_warning
    try:
        app()
    except InputError as err:
        typer.echo(f"error: {err}", err=True)
        raise SystemExit(2) from None
    except OSError as err:
        if err.filename is None:
            raise
        typer.echo(f"error: {err.filename}: {err.strerror or err}", err=True)
        raise SystemExit(2) from None
