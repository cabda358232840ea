"""`organdetr synth OUT --cases N`: write a synthetic abdominal CT dataset (nnU-Net v2 raw layout)."""

from __future__ import annotations

from pathlib import Path

import typer


def synth(
    out: Path = typer.Argument(..., help="Output dataset folder (new or empty), e.g. Dataset900_Phantom."),
    cases: int = typer.Option(20, "--cases", "-n", min=1, help="Number of cases to generate."),
    seed: int = typer.Option(0, "--seed", min=0, help="Dataset seed; the same seed gives the same cases."),
    size: tuple[int, int, int] = typer.Option((96, 96, 96), "--size", help="Nominal grid (I, J, K), voxels."),
    spacing: tuple[float, float, float] = typer.Option(
        (4.0, 4.0, 4.0),
        "--spacing",
        help="Nominal spacing (i, j, k), mm; varied per case by --spacing-jitter.",
    ),
    spacing_jitter: float = typer.Option(
        0.10, "--spacing-jitter", min=0.0, max=0.49, help="Relative, per case."
    ),
    size_jitter: float = typer.Option(0.0, "--size-jitter", min=0.0, max=0.49, help="Relative, per case."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    preview: bool = typer.Option(False, "--preview", help="Also draw the first case to OUT/preview.png."),
) -> None:
    """Generate CT-like abdomens (HU) with ten labelled organs (TotalSegmentator ids) to train from scratch.

    Each case has a body outline, spine, ribs, bowel, and liver, spleen, kidneys, stomach, pancreas,
    gallbladder, aorta, IVC and bladder at varying positions and sizes, a random contrast phase,
    partial-volume blur and noise. The result feeds `organdetr preprocess` unchanged.
    """
    from rich.console import Console

    from organdetr.data.phantom import (
        PhantomConfig,
        case_seeds,
        generate_case,
        save_preview,
        write_synthetic_dataset,
    )

    try:
        cfg = PhantomConfig(
            size=size, spacing=spacing, spacing_jitter=spacing_jitter, size_jitter=size_jitter
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    root = write_synthetic_dataset(out, cases, seed=seed, cfg=cfg, workers=workers, progress=True)
    console = Console(stderr=True)
    console.print(f"[bold]{root}[/]: {cases} synthetic cases (seed {seed}), nnU-Net v2 raw layout.")
    if preview:
        image, labels, geometry = generate_case(case_seeds(seed, 1)[0], cfg)
        path = save_preview(
            image, labels, root / "preview.png", spacing=geometry.spacing, title="phantom_0000"
        )
        console.print(f"preview: {path}")
