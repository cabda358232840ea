"""`organdetr predict` with several models, cross-validation folds or test-time mirroring (option plumbing
over :mod:`organdetr.inference.ensemble` and :mod:`organdetr.inference.folds`)."""

from __future__ import annotations

from pathlib import Path

import typer


def members_and_inputs(checkpoint, inputs, folds) -> tuple[list[Path], list[Path]]:
    """``(run folders, scan inputs)`` of the command line: ``RUN1 [RUN2 ...] SCAN...`` (the leading run
    folders are the members) or ``--folds RUNS SCAN...`` (every fold run of RUNS). Loads nothing."""
    from organdetr.inference.ensemble import split_members
    from organdetr.inference.folds import fold_runs
    from organdetr.runtime.errors import InputError

    positionals = [Path(p) for p in (checkpoint, *(inputs or ())) if p is not None]
    if folds is not None:
        if positionals and split_members(positionals)[0]:
            raise InputError(
                positionals[0], "a run folder beside --folds: give the members one way, not both"
            )
        return [r.run for r in fold_runs(folds)], positionals
    runs, scans = split_members(positionals)
    if not runs:
        raise InputError(
            positionals[0] if positionals else None, "not a run or checkpoint folder (CHECKPOINT)"
        )
    return runs, scans


def load_predictor(runs, tta, tta_axes, device, amp):
    """One run without ``--tta``: its :class:`Predictor`; else an :class:`EnsemblePredictor` of the runs
    (mirrored along ``tta_axes`` with ``--tta``), announced with its cost."""
    from organdetr.inference.ensemble import EnsemblePredictor, flip_views
    from organdetr.inference.predictor import Predictor

    views = flip_views(tta_axes) if tta else [()]
    if len(runs) == 1 and not tta:
        return Predictor.from_checkpoint(runs[0], device, amp)
    predictor = EnsemblePredictor.from_checkpoints(runs, views, device, amp)
    typer.echo(f"ensemble: {predictor.describe()}")
    warn_unseen_mirrors(predictor)
    return predictor


def warn_unseen_mirrors(predictor) -> None:
    """One warning line when ``--tta`` mirrors an axis the model never saw mirrored in training."""
    unseen = predictor.unseen_mirror_axes()
    if unseen:
        typer.echo(
            f"warning: --tta mirrors along {''.join(unseen)}, which training never mirrored (augment.flip_lr "
            "flips i only): the model sees anatomy it never saw and such views usually lower accuracy "
            "(BENCHMARKS.md, issue 23); train with augment.flip_lr > 0 and use --tta-axes i",
            err=True,
        )


def predict_out_of_fold(folds, tta, tta_axes, device, amp, predict) -> tuple[int, list]:
    """Every case of the folds' cache predicted by the fold model that validated it (mirrored with
    ``--tta``); ``predict(predictor, scans)`` runs and writes a batch. -> (cases, failures)."""
    from organdetr.inference.ensemble import EnsemblePredictor, flip_views
    from organdetr.inference.folds import fold_runs, out_of_fold_scans
    from organdetr.inference.folds import predict_out_of_fold as pooled_prediction
    from organdetr.inference.predictor import Predictor

    if folds is None:
        raise typer.BadParameter("needs --folds RUNS (the fold runs of one cross-validation)")
    plan = out_of_fold_scans(fold_runs(folds))
    views = flip_views(tta_axes) if tta else [()]

    def load(run):
        if not tta:
            return Predictor.from_checkpoint(run.run, device, amp)
        predictor = EnsemblePredictor.from_checkpoints([run.run], views, device, amp)
        warn_unseen_mirrors(predictor)
        return predictor

    total = sum(len(scans) for _, scans in plan)
    typer.echo(f"out of fold: {total} case(s) of {plan[0][0].cache_dir}, each by the 1 of {len(plan)} "
               f"fold models that did not train on it ({len(views)} view(s) each)")  # fmt: skip
    summary = pooled_prediction(plan, load, predict)
    return total, summary.failed
