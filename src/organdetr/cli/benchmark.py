"""`organdetr benchmark SUITE`: train, evaluate and profile every variant of an ablation suite."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def _parse_seeds(values: list[str] | None) -> tuple[int, ...]:
    """``--seeds 0,1,2`` or ``--seeds 0 --seeds 1`` (or both) -> ``(0, 1, 2)``."""
    seeds: list[int] = []
    for value in values or ["0"]:
        for part in value.replace(",", " ").split():
            try:
                seeds.append(int(part))
            except ValueError:
                raise typer.BadParameter(
                    f"seeds must be integers, got {part!r}", param_hint="--seeds"
                ) from None
    return tuple(seeds)


def benchmark(
    suite: str = typer.Argument(
        None, help="Suite name (encoders, matching, baselines, maskmed, all) or a suite YAML file."
    ),
    output: Path = typer.Option(
        None,
        "--output",
        "-o",
        help="Results folder (default: benchmarks/results/<suite>). Reruns reuse finished runs.",
    ),
    iterations: int = typer.Option(
        200, min=1, help="Optimizer steps per variant and seed (same budget for all)."
    ),
    cases: int = typer.Option(16, min=3, help="Synthetic phantom cases in all (split train / val / test)."),
    size: int = typer.Option(32, help="Model input grid: SIZE^3 voxels."),
    seeds: list[str] = typer.Option(
        None, "--seeds", help="Training seeds, e.g. --seeds 0,1,2 (mean ± std in the table). Default 0."
    ),
    batch_size: int = typer.Option(2, help="Training batch size."),
    val_points: int = typer.Option(8, help="Validations per run (points of the convergence plot)."),
    latency_repeats: int = typer.Option(5, help="Interleaved timed runs per variant for the latency column."),
    threads: int = typer.Option(2, min=1, help="torch CPU threads."),
    workers: int = typer.Option(1, min=1, help="Processes for phantom synthesis and preprocessing."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N (training, evaluation and profiling)."),
    nsd_tolerance: float = typer.Option(
        None, "--nsd-tolerance", help="NSD tolerance (mm) for segmenting variants (default: one voxel)."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Extra config override for every variant, e.g. --set optim.lr=5e-4 (repeatable)."
    ),
    list_suites: bool = typer.Option(False, "--list", help="List the packaged suites and exit."),
) -> None:
    """Ablation runner: same seed, data and budget for every variant; writes table.md, results.json,
    convergence.png (validation mAP vs iteration) and one run folder per variant and seed.

    Example (a few CPU minutes): organdetr benchmark matching --iterations 150 --cases 12 --seeds 0,1
    """
    from organdetr.experiments.ablation import BenchmarkConfig, available_suites, load_suite, run_suite

    if list_suites:
        for name in available_suites():
            typer.echo(f"{name}: {load_suite(name).description}")
        return
    if suite is None:
        raise typer.BadParameter("give a SUITE (see --list)", param_hint="SUITE")
    try:
        cfg = BenchmarkConfig(
            iterations=iterations,
            cases=cases,
            size=size,
            seeds=_parse_seeds(seeds),
            batch_size=batch_size,
            val_points=val_points,
            latency_repeats=latency_repeats,
            threads=threads,
            workers=workers,
            device=device,
            nsd_tolerance_mm=nsd_tolerance,
            extra_overrides=list(set_ or []),
        )
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    from organdetr.runtime.outputs import check_output_folder

    out = check_output_folder(output or Path("benchmarks") / "results" / Path(suite).stem, "results folder")
    command = "organdetr " + " ".join(sys.argv[1:]) if sys.argv and "benchmark" in sys.argv else ""
    run_suite(suite, out, cfg, command=command, progress=True)
