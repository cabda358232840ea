"""`organdetr convert FORMAT SRC DST`: a public dataset -> nnU-Net v2 raw dataset (resumable)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from organdetr.cli._failures import exit_if_failed
from organdetr.datasets import FORMATS, LABEL_SETS

DatasetFormat = Enum("DatasetFormat", {name: name for name in FORMATS}, type=str)


def _split_list(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def _label_set_option(fmt: str, label_set: str | None) -> dict:
    """``{"label_set": ...}`` for the converter; BadParameter (exit 2) for a set ``fmt`` lacks."""
    if label_set is None:
        return {}
    known = LABEL_SETS.get(fmt)
    if known is None:
        raise typer.BadParameter(
            f"{fmt} has one class list; --classes applies to {' and '.join(LABEL_SETS)} "
            "(use --keep to convert a subset of classes)",
            param_hint="--classes",
        )
    if label_set not in known:
        raise typer.BadParameter(
            f"{label_set!r} is not a {fmt} label set; known: {', '.join(known)}"
            + (" (use --keep to convert a subset of classes)" if "," in label_set else ""),
            param_hint="--classes",
        )
    return {"label_set": label_set}


def convert(
    fmt: DatasetFormat = typer.Argument(..., metavar="FORMAT", help="Source dataset format."),
    src: Path = typer.Argument(
        ..., help="Folder of the downloaded dataset, as published (monai-datalist: the JSON)."
    ),
    dst: Path = typer.Argument(..., help="Output nnU-Net v2 raw dataset folder (e.g. Dataset101_WORD)."),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Label set: abdomenct1k organs4 (default) | organs13; totalsegmentator auto (default: "
        "release detected from the mask names) | v1 (104 classes) | v2 (117 classes).",
    ),
    keep: str | None = typer.Option(
        None, "--keep", help="Comma-separated class names to keep (ids remapped to a dense 1..K)."
    ),
    limit: int | None = typer.Option(None, "--limit", help="Convert only the first N cases (quick runs)."),
    subset: str | None = typer.Option(None, "--subset", help="Comma-separated case ids to convert."),
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

    Label sets (--classes; dataset.json records the one used and its source). abdomenct1k: organs4 =
    the official labels of all scans, 1 liver, 2 kidney (both kidneys), 3 spleen, 4 pancreas;
    organs13 = the 50-case 13-organ release (FLARE22). totalsegmentator: v1 = 104 classes (1204
    subjects), v2 = 117; a tree mixing releases is refused.

    Organ-DETR paper (TMI 2025), inferred without its tables at hand: it reports TotalSegmentator
    with 104 classes, which only v1 has (high confidence). For AbdomenCT-1K the authors' code uses
    5 classes (liver, right kidney, spleen, pancreas, left kidney), none of the published sets;
    organs13 with --keep liver,kidney_right,spleen,pancreas,kidney_left gives exactly those ids, but
    for 50 cases only (low confidence that the paper used this).

    Images keep their geometry; labels become uint8/uint16 on the image grid, dataset.json is written last.
    A wrong source tree (a label map among the images, a CT among the masks, another label set) fails in
    one line.

    Re-running resumes where it stopped; failed cases are listed at the end (exit code 1).
    """
    from rich.console import Console

    from organdetr.datasets import get_converter

    options: dict = {"subset": _split_list(subset), "limit": limit, "keep_classes": _split_list(keep)}
    options |= _label_set_option(fmt.value, classes)
    if fmt.value == "amos":
        options["modality"] = modality
    elif modality != "ct":
        raise typer.BadParameter("--modality applies to the amos format only", param_hint="--modality")
    options.update(_monai_options(fmt.value, box_mode, coordinates, data_list_key, label_names, base_dir))
    summary = get_converter(fmt.value)(src, dst, workers=workers, resume=resume, **options)

    console = Console(stderr=True)
    for note in summary.notes:
        console.print(f"{dst}: {note}", highlight=False, markup=False)
    listed = (
        f"dataset.json lists {summary.num_training} training and {summary.num_test} test cases"
        if summary.num_training + summary.num_test
        else "nothing written"
    )
    console.print(
        f"[bold]{dst}[/]: {len(summary.done)} converted, {len(summary.skipped)} already there, "
        f"{len(summary.failed)} failed; {listed}."
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
