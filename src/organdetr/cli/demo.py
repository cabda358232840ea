"""`organdetr demo`: phantoms -> preprocess -> train on CPU -> evaluate -> predict a real CT -> report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, run and report.")] = Path(
        "organdetr_demo"
    ),
    cases: Annotated[
        int, typer.Option(help="Synthetic scans (20% held out). Default 200, --quick 8.")
    ] = None,
    steps: Annotated[
        int,
        typer.Option(
            help="Optimizer steps per model (Organ-DETR and seg2box alike). Default 1000, --quick 60."
        ),
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Also train the seg2box baseline for the same steps (the priors are free).")
    ] = True,
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny models, 32^3 grid of 13 x 13 x 12 mm, ~1 min (a smoke test)")
    ] = False,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads for torch.")] = 2,
    concurrent: Annotated[
        bool,
        typer.Option(
            "--concurrent/--sequential",
            help="With 2+ threads, train seg2box beside Organ-DETR in a second process (threads split), "
            "not after it: same steps, fewer minutes.",
        ),
    ] = True,
    shared_data: Annotated[
        Path, typer.Option(help="Real-data pack (default: ../shared/data or $ORGANDETR_SHARED_DATA).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the phantoms, the split and training.")] = 0,
    data: Annotated[
        str,
        typer.Option(
            help="Training data: phantom (the procedural phantoms) or from-labels (scans synthesised from "
            "TotalSegmentator's label map of the pack's TS-A and phantoms' label maps, random shape and "
            "appearance; the real scans stay test scans)."
        ),
    ] = "phantom",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run the whole pipeline on CPU in minutes and write OUT/report/REPORT.md.

    Builds synthetic abdomen phantoms, preprocesses them, trains Organ-DETR and the seg2box baseline for a
    fixed number of steps (the result does not depend on the machine's load; the expected time is printed
    first), scores held-out phantoms (3D mAP in mm) beside two image-blind priors, predicts a real CT when
    the shared data pack is present, and writes metrics, PR and loss curves and pictures into OUT/report/.
    """
    from organdetr.experiments.demo import DemoConfig, find_shared_data, run_demo
    from organdetr.runtime.outputs import check_output_folder

    check_output_folder(out, "demo folder")
    if shared_data is not None:
        find_shared_data(shared_data)  # InputError now (not after minutes of training) when it is unusable
    changes = {
        "out_dir": out,
        "threads": threads,
        "shared_data": shared_data,
        "seed": seed,
        "progress": progress,
        "baselines": baselines,
        "concurrent": concurrent,
        "data": data,
    }
    if cases is not None:
        changes["cases"] = cases
    if steps is not None:
        changes["steps"] = steps
    cfg = DemoConfig.quick(**changes) if quick else DemoConfig(**changes)
    typer.echo(
        f"organdetr demo: {cfg.cases} {cfg.data_text()}, {cfg.preset} model on a {cfg.grid_text()}, "
        f"{cfg.steps} steps per model, output {cfg.out_dir}"
    )
    result = run_demo(cfg, echo=typer.echo)
    summary = result.metrics
    shown = ", ".join(
        f"{k} {summary[k]:.3f}" for k in ("mAP", "AP50", "AP75", "mAR") if isinstance(summary.get(k), float)
    )
    typer.echo(
        f"\ndone in {result.timings['total'] / 60:.1f} min: {result.train_steps} training steps; "
        f"held-out Organ-DETR {shown}"
    )
    for name, row in result.comparison.items():
        if name != "Organ-DETR" and isinstance(row.get("mAP"), float):
            typer.echo(f"             {name}: mAP {row['mAP']:.3f}, AP50 {row.get('AP50', float('nan')):.3f}")
    report_dir = result.report.parent
    typer.echo(f"report:      {result.report}")
    typer.echo(f"metrics:     {report_dir / 'metrics.md'}")
    typer.echo(
        f"pictures:    {report_dir / 'overlays'}"
        + (f" and {report_dir / 'real_ct'}" if result.real_ct else "")
    )
    typer.echo(
        f"checkpoint:  {cfg.out_dir / 'run'}  (try: organdetr predict {cfg.out_dir / 'run'} SCAN -o OUT)"
    )
