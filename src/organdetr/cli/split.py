"""`organdetr split CACHE --folds 5`: cross-validation folds of a cache as nnU-Net v2's splits_final.json."""

from __future__ import annotations

from pathlib import Path

import typer


def split(
    cache: Path = typer.Argument(
        ..., help="Preprocessed cache folder (organdetr preprocess); the file goes here."
    ),
    folds: int = typer.Option(
        5, "--folds", min=2, help="Number of folds (each case validated by exactly one)."
    ),
    seed: int = typer.Option(
        12345, "--seed", help="Shuffle seed (12345 = nnU-Net v2's: the same cases give nnU-Net's own folds)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing splits_final.json that holds different splits."
    ),
) -> None:
    """Write CACHE/splits_final.json: a list of {"train": [...], "val": [...]} per fold (nnU-Net v2 format).

    The folds are drawn as nnU-Net v2 draws them (KFold over the sorted case ids, shuffled with --seed), so
    the file can be copied into nnU-Net's preprocessed dataset folder and back. Then train fold k with
    `organdetr train CONFIG --cache CACHE --fold k`, predict the held-out cases of every fold with
    `organdetr predict --folds RUNS --out-of-fold -o OOF` and score them with `organdetr evaluate OOF CACHE`.
    """
    from organdetr.data.splits import crossval_splits, write_splits
    from organdetr.preprocessing.cache import list_cases
    from organdetr.preprocessing.plans import load_plans
    from organdetr.runtime.errors import InputError

    load_plans(cache)  # a cache, or one line saying it is not
    case_ids = list_cases(cache)
    if not 2 <= folds <= len(case_ids):
        raise InputError(cache, f"{folds} folds need at least {folds} cases; the cache holds {len(case_ids)}")
    splits = crossval_splits(case_ids, folds, seed)
    path = write_splits(cache, splits, overwrite=overwrite)
    sizes = ", ".join(str(len(fold["val"])) for fold in splits)
    typer.echo(f"{len(case_ids)} cases in {folds} folds (validation cases per fold: {sizes}) -> {path}")
