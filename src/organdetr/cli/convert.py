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
    src: Path = typer.Argument(
        ..., help="Folder of the downloaded dataset, as published (monai-datalist: the JSON)."
    ),
    dst: Path = typer.Argument(..., help="Output nnU-Net v2 raw dataset folder (e.g. Dataset101_WORD)."),
    limit: int | None = typer.Option(None, "--limit", help="Convert only the first N cases (quick runs)."),
    subset: str | None = typer.Option(None, "--subset", help="Comma-separated case ids to convert."),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated class names to keep (ids remapped to a dense 1..K)."
    ),
    modality: str = typer.Option("ct", "--modality", help="AMOS only: 'ct' (ids <= 500) or 'mr'."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cases already converted."),
    box_mode: str | None = typer.Option(
        None,
        "--box-mode",
        help="monai-datalist: MONAI box mode of 'box' (cccwhd, xyzxyz, ...; default: "
        "the file's 'box_mode', else cccwhd).",
    ),
    coordinates: str | None = typer.Option(
        None,
        "--coordinates",
        help="monai-datalist: world (LPS mm), world-ras or image (voxels); default: "
        "the file's 'coordinates', else world.",
    ),
    data_list_key: str = typer.Option(
        "training,validation", "--data-list-key", help="monai-datalist: comma-separated lists to read."
    ),
    label_names: str | None = typer.Option(
        None, "--label-names", help="monai-datalist: comma-separated organ names of labels 0, 1, ..."
    ),
    base_dir: Path | None = typer.Option(
        None,
        "--base-dir",
        help="monai-datalist: folder relative image paths start from (default: the JSON's).",
    ),
) -> None:
    """Convert a public dataset into nnU-Net v2 raw format with its official class names.

    FORMAT: abdomenct1k, word, amos (CT unless --modality mr), verse, totalsegmentator, totalsegmentator_mr;
    from sister toolkits: nndetection (a raw Task folder: instance maps + per-case instance JSON) and
    monai-datalist (SRC is a MONAI detection datalist JSON; its boxes become box label maps).

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
    options.update(_monai_options(fmt.value, box_mode, coordinates, data_list_key, label_names, base_dir))
    summary = get_converter(fmt.value)(src, dst, workers=workers, resume=resume, **options)

    console = Console(stderr=True)
    console.print(
        f"[bold]{dst}[/]: {len(summary.done)} converted, {len(summary.skipped)} already there, "
        f"{len(summary.failed)} failed; dataset.json lists {summary.num_training} training"
        f" and {summary.num_test} test cases."
    )
    exit_if_failed(summary.failed)


def _monai_options(fmt: str, box_mode, coordinates, data_list_key: str, label_names, base_dir) -> dict:
    """The monai-datalist converter's own options (refused for other formats)."""
    given = {"--box-mode": box_mode, "--coordinates": coordinates, "--label-names": label_names}
    given["--base-dir"] = base_dir
    if data_list_key != "training,validation":
        given["--data-list-key"] = data_list_key
    if fmt != "monai-datalist":
        for flag, value in given.items():
            if value is not None:
                raise typer.BadParameter(f"{flag} applies to the monai-datalist format only", param_hint=flag)
        return {}
    return {
        "box_mode": box_mode,
        "coordinates": coordinates,
        "keys": _split_list(data_list_key) or ["training"],
        "label_names": _split_list(label_names),
        "base_dir": base_dir,
    }
