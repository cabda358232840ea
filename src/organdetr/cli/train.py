"""`organdetr train CONFIG`: train a detector on a preprocessed cache (single process or torchrun DDP)."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def train(
    config: str = typer.Argument(
        None,
        help="YAML config file or preset name (tiny, small, paper). Omit with --resume, or with a --cache "
        "made from a plan (its preset).",
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config value, e.g. --set optim.lr=1e-4 (repeatable; YAML values)."
    ),
    cache: Path = typer.Option(
        None, "--cache", help="Preprocessed cache folder (same as --set data.cache_dir=)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Run folder (default: runs/<config>-<time>)."),
    resume: Path = typer.Option(
        None, "--resume", help="Continue the run in this folder from its last checkpoint."
    ),
    fold: int = typer.Option(
        None,
        "--fold",
        min=0,
        help="Cross-validation fold k of CACHE/splits_final.json (organdetr split): train on its 'train' "
        "cases, validate on its 'val' cases (same as --set data.fold=k).",
    ),
    init_from: Path = typer.Option(
        None,
        "--init-from",
        help="Fine-tune: start from this run's weights (its best/, else last/) where names and shapes match; "
        "class-dependent tensors are re-initialised, except the rows of organs both class lists share "
        "(copied). Or a plain weight file (.safetensors, .pt, .pth: e.g. a pretrained MedNeXt or Primus "
        "backbone), names matched after stripping a common prefix. Writes RUN/init_from.json (same as "
        "--set finetune.init_from=).",
    ),
    freeze: list[str] = typer.Option(
        None,
        "--freeze",
        help="Keep this part fixed for the first --freeze-steps steps: backbone, encoder, decoder or any "
        "module name in the weights (repeatable).",
    ),
    freeze_steps: int = typer.Option(
        None, "--freeze-steps", min=1, help="Optimizer steps --freeze lasts (then the part trains)."
    ),
    use_plan: bool = typer.Option(
        True,
        "--use-plan/--no-plan",
        help="Use CACHE/organdetr_plan.json (copied there by preprocess from `organdetr plan`): its preset "
        "when CONFIG is omitted, and its queries and anchors for that preset (--set wins).",
    ),
) -> None:
    """Train a detector; writes config.yaml, checkpoints (last/, best/), CSV/TensorBoard logs, curves.png.

    Multi-GPU: torchrun --nproc_per_node N $(which organdetr) train small --cache CACHE
    """
    from organdetr.preprocessing.planning import planned_training
    from organdetr.runtime.errors import InputError
    from organdetr.training.config import load_config, read_config_dict
    from organdetr.training.fit import fit, resume_config_path
    from organdetr.training.init_from import finetune_overrides

    overrides = list(set_ or [])
    if cache is not None:
        overrides.append(f"data.cache_dir={cache}")
    if fold is not None:
        overrides.append(f"data.fold={fold}")
    if init_from is not None and resume is not None:
        raise InputError(init_from, "--init-from starts a new run; --resume continues one (give one of them)")
    overrides += finetune_overrides(init_from, freeze, freeze_steps)
    if resume is None and cache is not None and use_plan:
        config, planned, note = planned_training(cache, config)
        overrides = planned + overrides
        if note:
            typer.echo(note, err=True)
    if resume is not None:
        if output is not None and output.resolve() != resume.resolve():
            raise InputError(output, "--output and --resume name different run folders")
        cfg = load_config(config if config is not None else resume_config_path(resume), overrides)
        run_dir = resume
    else:
        if config is None:
            raise typer.BadParameter("give a CONFIG (file or preset name) or --resume RUN_DIR")
        cfg = load_config(config, overrides)
        _, path = read_config_dict(config)
        stem = path.stem if cfg.data.fold is None else f"{path.stem}-fold{cfg.data.fold}"
        run_dir = output or Path("runs") / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    fit(cfg, run_dir, resume=resume is not None)
    typer.echo(f"run folder: {run_dir}")
