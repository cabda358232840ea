"""`organdetr preprocess DATASET OUT`: an nnU-Net v2 raw dataset -> the model-grid cache (resumable)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer

from organdetr.cli._failures import exit_if_failed


class Fit(StrEnum):
    resize = "resize"
    pad = "pad"


class Norm(StrEnum):
    auto = "auto"
    hu = "hu"
    zscore = "zscore"


def preprocess(
    dataset: Path = typer.Argument(..., help="nnU-Net v2 raw dataset folder (with dataset.json)."),
    out: Path = typer.Argument(..., help="Output cache folder (plans.json + cases/)."),
    spacing: tuple[float, float, float] = typer.Option(
        None,
        "--spacing",
        help="Target spacing in mm (i, j, k after LPS reorientation); --fit pad. Default: the plan's, "
        "else 2 2 2.",
    ),
    size: tuple[int, int, int] = typer.Option(
        None, "--size", help="Model input grid, voxels. Default: the plan's, else 96 96 96."
    ),
    fit: Fit = typer.Option(
        None,
        "--fit",
        help="resize: whole scan onto the grid; pad: target spacing, centre pad/crop. Default: the plan's, "
        "else resize.",
    ),
    hu: tuple[float, float] = typer.Option(
        None,
        "--hu",
        help="HU window: clip, scale to [0, 1]. Default: the plan's, else the 0.5-99.5 percentiles of the "
        "intensities inside the labelled organs (nnU-Net's CT scheme), computed once and kept in plans.json.",
    ),
    plan: Path = typer.Option(
        None,
        "--plan",
        help="Plan from `organdetr plan` (default: DATASET/organdetr_plan.json when present): its grid, "
        "spacing, fit and HU window fill the options not given; it is copied into the cache for `train`.",
    ),
    use_plan: bool = typer.Option(True, "--use-plan/--no-plan", help="Use the dataset's plan when present."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    min_voxels: int = typer.Option(1, "--min-voxels", min=1, help="Drop organs with fewer voxels."),
    largest_component: bool = typer.Option(
        False, "--largest-component", help="Box only each organ's largest connected component."
    ),
    float16: bool = typer.Option(False, "--float16", help="Cache images as float16 (half the disk)."),
    norm: Norm = typer.Option(
        Norm.auto,
        "--norm",
        help="Intensity normalisation per channel. auto: a single channel keeps the HU window; with several "
        "channels, CT ones get the HU window and the others (MR) z-score over the non-zero voxels. hu / "
        "zscore: that scheme for every channel.",
    ),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Skip cases already in the cache."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a cache made with other settings instead of stopping."
    ),
) -> None:
    """Reorient to LPS, resample once onto the model grid, clip HU and write the cache with organ boxes.

    Re-running resumes where it stopped; failed cases are listed at the end (exit code 1).
    """
    from rich.console import Console

    from organdetr.datasets.nnunet import load_dataset
    from organdetr.preprocessing.intensity import foreground_window
    from organdetr.preprocessing.planning import keep_plan_with_cache, planned_settings
    from organdetr.preprocessing.plans import PreprocessConfig, default_channel_norm
    from organdetr.preprocessing.run import preprocess_dataset
    from organdetr.runtime.errors import InputError
    from organdetr.runtime.json_files import read_json

    given = {"target_spacing": spacing, "input_size": size, "fit": fit and fit.value, "hu_window": hu}
    settings, plan_path = planned_settings(dataset, given, plan, use_plan=use_plan)
    if plan_path is not None:
        typer.echo(f"plan {plan_path}: " + ", ".join(f"{k}={settings[k]}" for k in given if given[k] is None))
    spacing, size, hu = settings["target_spacing"], settings["input_size"], settings["hu_window"]
    channels = load_dataset(dataset).channels
    if norm == Norm.auto:
        channel_norm = default_channel_norm(channels)
    else:
        scheme = "hu_window" if norm == Norm.hu else "zscore"
        channel_norm = (scheme,) * len(channels) if len(channels) > 1 or norm == Norm.zscore else ()
    if hu is None and channel_norm and "hu_window" not in channel_norm:
        hu = (-1000.0, 1000.0)  # unused: no channel is windowed
    if hu is None:  # resume with the window already chosen, else measure it on the labelled organs
        plans = Path(out) / "plans.json"
        try:
            hu = tuple(read_json(plans)["hu_window"])
        except (InputError, ValueError, KeyError, TypeError):
            hu = foreground_window(dataset)
        typer.echo(f"HU window {hu[0]:g} .. {hu[1]:g} (labelled-organ intensities, 0.5-99.5 percentiles)")
    try:
        cfg = PreprocessConfig(
            target_spacing=spacing,
            input_size=size,
            fit=settings["fit"],
            hu_window=hu,
            min_voxels=min_voxels,
            largest_component=largest_component,
            image_dtype="float16" if float16 else "float32",
            channel_norm=channel_norm,
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    summary = preprocess_dataset(dataset, out, cfg, workers=workers, resume=resume, overwrite=overwrite)
    if plan_path is not None:
        keep_plan_with_cache(plan_path, out)
    console = Console(stderr=True)
    console.print(
        f"[bold]{out}[/]: {len(summary.done)} preprocessed, {len(summary.skipped)} already there, "
        f"{len(summary.failed)} failed."
    )
    exit_if_failed(summary.failed)
