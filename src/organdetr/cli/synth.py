"""`organdetr synth OUT --cases N [--kind abdomen|brain-tumour]`: a synthetic dataset (nnU-Net v2 raw)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class Kind(StrEnum):
    abdomen = "abdomen"
    brain_tumour = "brain-tumour"


# kind -> (size, spacing mm, spacing jitter) defaults
_DEFAULTS = {
    Kind.abdomen: ((96, 96, 96), (4.0, 4.0, 4.0), 0.10),
    Kind.brain_tumour: ((64, 64, 64), (3.0, 3.0, 3.0), 0.05),
}


def synth(
    out: Path = typer.Argument(..., help="Output dataset folder (new or empty), e.g. Dataset900_Phantom."),
    cases: int = typer.Option(20, "--cases", "-n", min=1, help="Number of cases to generate."),
    seed: int = typer.Option(0, "--seed", min=0, help="Dataset seed; the same seed gives the same cases."),
    kind: Kind = typer.Option(
        Kind.abdomen,
        "--kind",
        help="abdomen: CT with ten organs; brain-tumour: four MR channels (T1, T1ce, T2, FLAIR), a glioma "
        "with BraTS labels and regions, and its grade (LGG / HGG) as a case label.",
    ),
    size: tuple[int, int, int] = typer.Option(
        None, "--size", help="Nominal grid (I, J, K), voxels [abdomen 96^3, brain-tumour 64^3]."
    ),
    spacing: tuple[float, float, float] = typer.Option(
        None,
        "--spacing",
        help="Nominal spacing (i, j, k), mm, varied by --spacing-jitter [abdomen 4, brain-tumour 3].",
    ),
    spacing_jitter: float = typer.Option(
        None, "--spacing-jitter", min=0.0, max=0.49, help="Relative, per case [abdomen 0.10, brain 0.05]."
    ),
    hgg_fraction: float = typer.Option(
        0.5, "--hgg-fraction", min=0.0, max=1.0, help="brain-tumour: fraction of high-grade cases."
    ),
    size_jitter: float = typer.Option(0.0, "--size-jitter", min=0.0, max=0.49, help="Relative, per case."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel processes."),
    preview: bool = typer.Option(False, "--preview", help="Also draw the first case to OUT/preview.png."),
) -> None:
    """Generate a synthetic dataset to train from scratch (default: CT-like abdomens).

    abdomen: HU volumes with ten labelled organs (TotalSegmentator ids): a body outline, spine, ribs, bowel,
    and liver, spleen, kidneys, stomach, pancreas, gallbladder, aorta, IVC and bladder at varying positions
    and sizes, a random contrast phase, partial-volume blur and noise.

    brain-tumour: skull-stripped heads in four MR channels with one glioma (necrotic core, enhancing rim,
    oedema; BraTS labels, regions WT / TC / ET) whose grade the image decides: HGG cases show an enhancing
    rim around necrosis on T1ce, LGG cases do not. Grades are written to case_labels.json.

    The result feeds `organdetr preprocess` unchanged.
    """
    from rich.console import Console

    default_size, default_spacing, default_jitter = _DEFAULTS[kind]
    size = size or default_size
    spacing = spacing or default_spacing
    spacing_jitter = default_jitter if spacing_jitter is None else spacing_jitter
    if kind == Kind.brain_tumour:
        if size_jitter:
            raise typer.BadParameter("--size-jitter applies to --kind abdomen", param_hint="--size-jitter")
        _brain(out, cases, seed, size, spacing, spacing_jitter, hgg_fraction, workers, preview)
        return

    from organdetr.datasets.synthetic.phantom import (
        PhantomConfig,
        generate_case,
        save_preview,
        write_synthetic_dataset,
    )
    from organdetr.datasets.synthetic.writing import case_seeds

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


def _brain(out, cases, seed, size, spacing, spacing_jitter, hgg_fraction, workers, preview) -> None:
    from rich.console import Console

    from organdetr.datasets.synthetic.brain import (
        BrainPhantomConfig,
        generate_brain_case,
        save_brain_preview,
        write_brain_dataset,
    )
    from organdetr.datasets.synthetic.writing import case_seeds

    try:
        cfg = BrainPhantomConfig(
            size=size, spacing=spacing, spacing_jitter=spacing_jitter, hgg_fraction=hgg_fraction
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    root = write_brain_dataset(out, cases, seed=seed, cfg=cfg, workers=workers, progress=True)
    console = Console(stderr=True)
    console.print(
        f"[bold]{root}[/]: {cases} synthetic brain-tumour cases (seed {seed}), four channels, "
        "nnU-Net v2 raw layout with regions and case_labels.json."
    )
    if preview:
        channels, labels, _, info = generate_brain_case(case_seeds(seed, 1)[0], cfg)
        path = save_brain_preview(channels, labels, root / "preview.png", title=f"brain_0000 ({info.grade})")
        console.print(f"preview: {path}")
