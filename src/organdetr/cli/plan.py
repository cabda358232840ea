"""`organdetr plan DATASET`: fingerprint a raw dataset and write the plan `preprocess` and `train` use."""

from __future__ import annotations

from pathlib import Path

import typer


def plan(
    dataset: Path = typer.Argument(
        ..., help="nnU-Net v2 raw dataset folder (with dataset.json), as preprocess reads."
    ),
    output: Path = typer.Option(
        None,
        "--output",
        "-o",
        help="Plan file or folder (default: DATASET/organdetr_plan.json, where preprocess looks for it).",
    ),
    gpu_memory: float = typer.Option(
        None,
        "--gpu-memory",
        min=0.5,
        help="GPU memory in GB to plan for (e.g. 24): the smallest grid that resolves the smallest organ "
        "among those whose estimated training memory fits 80 % of it. Default: plan for this CPU (the demo "
        "preset at 64^3).",
    ),
    measure: bool = typer.Option(
        True,
        "--measure/--no-measure",
        help="On the CPU, time two training steps of the chosen preset here and report seconds per step.",
    ),
    max_cases: int = typer.Option(
        50, "--max-cases", min=1, help="Cases the fingerprint reads (evenly spaced)."
    ),
) -> None:
    """Fingerprint DATASET (spacings, sizes, orientations, intensities, organ sizes) and write a plan: grid,
    spacing, fit, HU window, preset, queries and anchors, each with its reason (printed and in the JSON).

    `organdetr preprocess DATASET OUT` then uses DATASET/organdetr_plan.json (or --plan FILE) for every option
    not given, and copies it into the cache, where `organdetr train --cache OUT` finds it (its preset when no
    CONFIG is given, and its model settings). Options given explicitly win.
    """
    from rich.console import Console

    from organdetr.experiments.planning import PlanOptions, make_plan, plan_table, write_plan
    from organdetr.preprocessing.planning import PLAN_FILE

    target = output if output is not None else dataset / PLAN_FILE
    result = make_plan(dataset, PlanOptions(gpu_memory_gb=gpu_memory, measure=measure, max_cases=max_cases))
    path = write_plan(result, target)
    console = Console()
    console.print(plan_table(result))
    console.print(f"plan: {path}")
