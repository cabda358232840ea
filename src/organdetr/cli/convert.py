"""`organdetr convert FORMAT SRC DST`: a public dataset -> nnU-Net v2 raw dataset (resumable)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from organdetr.cli._failures import exit_if_failed
from organdetr.datasets import FORMATS

DatasetFormat = Enum("DatasetFormat", {name: name for name in FORMATS}, type=str)


def _split_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def convert(
    fmt: DatasetFormat = typer.Argument(..., metavar="FORMAT", help="Source dataset format."),
    src: Path = typer.Argument(..., help="Folder of the downloaded dataset, as published."),
    dst: Path = typer.Argument(..., help="Output nnU-Net v2 raw dataset folder (e.g. Dataset101_WORD)."),
    limit: int | None = typer.Option(None, "--limit", help="Convert only the first N cases (quick runs)."),
    subset: str | None = typer.Option(None, "--subset", help="Comma-separated case ids to convert."),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated class names to keep (ids remapped to a dense 1..K)."
    ),
    modality: str = typer.Option("ct", "--modality", help="AMOS only: 'ct' (ids <= 500) or 'mr'."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cases already converted."),
) -> None:
    """Convert a public dataset into nnU-Net v2 raw format with its official class names.

    FORMAT: abdomenct1k, word, amos (CT unless --modality mr), verse, totalsegmentator, totalsegmentator_mr.

    Images keep their geometry; labels become uint8/uint16 on the image grid, dataset.json is written last.

    Re-running resumes where it stopped; failed cases are listed at the end (exit code 1).
    """
    from rich.console import Console

    from organdetr.datasets import get_converter

    options: dict = {"subset": _split_list(subset), "limit": limit, "keep_classes": _split_list(classes)}
    if fmt.value == "amos":
        options["modality"] = modality
    elif modality != "ct":
        raise typer.BadParameter("--modality applies to the amos format only", param_hint="--modality")
    summary = get_converter(fmt.value)(src, dst, workers=workers, resume=resume, **options)

    console = Console(stderr=True)
    console.print(
        f"[bold]{dst}[/]: {len(summary.done)} converted, {len(summary.skipped)} already there, "
        f"{len(summary.failed)} failed; dataset.json lists {summary.num_training} training"
        f" and {summary.num_test} test cases."
    )
    exit_if_failed(summary.failed)
