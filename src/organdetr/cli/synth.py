"""`organdetr synth OUT --cases N [--kind abdomen|brain-tumour]` and `organdetr synth --kind from-labels
LABEL_MAPS... OUT`: a synthetic dataset (nnU-Net v2 raw)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class Kind(StrEnum):
    abdomen = "abdomen"
    brain_tumour = "brain-tumour"
    from_labels = "from-labels"


# kind -> (size, spacing mm, spacing jitter) defaults
_DEFAULTS = {
    Kind.abdomen: ((96, 96, 96), (4.0, 4.0, 4.0), 0.10),
    Kind.brain_tumour: ((64, 64, 64), (3.0, 3.0, 3.0), 0.05),
}


def synth(
    paths: list[Path] = typer.Argument(
        ...,
        metavar="[LABEL_MAPS]... OUT",
        help="Output dataset folder (new or empty), e.g. Dataset900_Phantom; with --kind from-labels first "
        "the source label maps (NIfTI files, or folders of them such as an nnU-Net labelsTr).",
    ),
    cases: int = typer.Option(20, "--cases", "-n", min=1, help="Number of cases to generate."),
    seed: int = typer.Option(0, "--seed", min=0, help="Dataset seed; the same seed gives the same cases."),
    kind: Kind = typer.Option(
        Kind.abdomen,
        "--kind",
        help="abdomen: CT with ten organs; brain-tumour: four MR channels (T1, T1ce, T2, FLAIR), a glioma "
        "with BraTS labels and regions, and its grade (LGG / HGG) as a case label; from-labels: scans "
        "synthesised from LABEL_MAPS with random deformation, field of view and appearance.",
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
    phantom_sources: int = typer.Option(
        0, "--phantom-sources", min=0, help="from-labels: also use this many procedural phantoms' label maps."
    ),
    real_share: float = typer.Option(
        None,
        "--real-share",
        min=0.0,
        max=1.0,
        help="from-labels: fraction of cases drawn from LABEL_MAPS, the rest from --phantom-sources "
        "[uniform over all maps].",
    ),
    ct_prior: float = typer.Option(
        0.5,
        "--ct-prior",
        min=0.0,
        max=1.0,
        help="from-labels: fraction of cases whose intensities follow CT's (else fully random, MR-like too).",
    ),
) -> None:
    """Generate a synthetic dataset to train from scratch (default: CT-like abdomens).

    abdomen: HU volumes with ten labelled organs (TotalSegmentator ids): a body outline, spine, ribs, bowel,
    and liver, spleen, kidneys, stomach, pancreas, gallbladder, aorta, IVC and bladder at varying positions
    and sizes, a random contrast phase, partial-volume blur and noise.

    brain-tumour: skull-stripped heads in four MR channels with one glioma (necrotic core, enhancing rim,
    oedema; BraTS labels, regions WT / TC / ET) whose grade the image decides: HGG cases show an enhancing
    rim around necrosis on T1ce, LGG cases do not. Grades are written to case_labels.json.

    from-labels: label maps (TotalSegmentator's, with their header table; an nnU-Net labelsTr, named by its
    dataset.json; else TotalSegmentator's 117-class map) deformed (affine + elastic), cut to a random field of
    view and spacing and painted with random intensities per structure, bias field, blur, gamma and noise
    (SynthSeg-style). Structures named like the ten organs become their labels, every other structure
    labelled background with its own intensity; an unknown structure name is refused.

    The result feeds `organdetr preprocess` unchanged.
    """
    from rich.console import Console

    *label_maps, out = paths
    if kind == Kind.from_labels:
        if size or spacing or spacing_jitter is not None or size_jitter:
            raise typer.BadParameter("--size / --spacing / --*-jitter do not apply to --kind from-labels")
        _from_labels(label_maps, out, cases, seed, workers, preview, phantom_sources, ct_prior, real_share)
        return
    if label_maps:
        raise typer.BadParameter("label maps are read by --kind from-labels only; give one OUT folder")

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


def _from_labels(
    label_maps, out, cases, seed, workers, preview, phantom_sources, ct_prior, real_share
) -> None:
    from dataclasses import replace

    from rich.console import Console

    from organdetr.datasets.synthetic.appearance import AppearanceConfig
    from organdetr.datasets.synthetic.from_labels import FromLabelsConfig, synthesize
    from organdetr.datasets.synthetic.from_labels_dataset import write_from_labels_dataset
    from organdetr.datasets.synthetic.label_sources import (
        TARGET_CLASSES,
        label_map_files,
        phantom_label_source,
        read_label_source,
    )
    from organdetr.datasets.synthetic.phantom import save_preview
    from organdetr.datasets.synthetic.writing import case_seeds

    if not label_maps and not phantom_sources:
        raise typer.BadParameter("--kind from-labels needs LABEL_MAPS... before OUT (or --phantom-sources N)")
    sources = [read_label_source(path) for path in label_map_files(label_maps)]
    sources += [phantom_label_source(s) for s in case_seeds(seed + 1, phantom_sources)]
    cfg = FromLabelsConfig(appearance=replace(AppearanceConfig(), p_ct_prior=ct_prior))
    root = write_from_labels_dataset(
        out, sources, cases, seed=seed, cfg=cfg, workers=workers, progress=True, real_share=real_share
    )
    console = Console(stderr=True)
    console.print(
        f"[bold]{root}[/]: {cases} cases synthesised from {len(sources)} label maps (seed {seed}), "
        "nnU-Net v2 raw layout."
    )
    if preview:
        case = synthesize(sources[0], seed, cfg)
        path = save_preview(
            case.image,
            case.labels,
            root / "preview.png",
            spacing=case.geometry.spacing,
            classes=TARGET_CLASSES,
            title=sources[0].name,
        )
        console.print(f"preview: {path}")
