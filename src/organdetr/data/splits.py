"""Cross-validation splits of a cache, in nnU-Net v2's ``splits_final.json`` format.

The file is a JSON list with one ``{"train": [case ids], "val": [case ids]}`` object per fold, the format
nnU-Net v2 reads from its preprocessed dataset folder (``nnUNetTrainer.do_split``), so a split made here can
be copied there and one made by nnU-Net copied here (cache case ids are the dataset's case identifiers).

:func:`crossval_splits` draws the folds exactly as nnU-Net does when it creates the file itself
(``nnunetv2.utilities.crossval_split.generate_crossval_split``: scikit-learn ``KFold(n_splits,
shuffle=True, random_state=seed)`` over the sorted case ids, seed 12345): the same cases give the same
folds in both tools. ``CACHE/splits_final.json`` is written by ``organdetr split`` and read by
``organdetr train --fold k`` (``data.fold``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organdetr.runtime.atomic import write_json
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json

SPLITS_FILE = "splits_final.json"
NNUNET_SPLIT_SEED = 12345  # nnU-Net v2's default seed for its 5-fold split

Splits = list[dict[str, list[str]]]


def crossval_splits(case_ids: list[str], folds: int = 5, seed: int = NNUNET_SPLIT_SEED) -> Splits:
    """``folds`` train / val splits of ``case_ids``: every case in exactly one ``val`` list.

    Same draw as scikit-learn's ``KFold(folds, shuffle=True, random_state=seed)`` over the sorted ids
    (nnU-Net v2's): a seeded shuffle of the positions, cut into ``folds`` runs whose first ``n % folds`` are
    one longer; both lists of a fold keep the sorted order.
    """
    keys = sorted(case_ids)
    if not 2 <= folds <= len(keys):
        raise ValueError(f"{folds} folds need 2 <= folds <= the number of cases ({len(keys)})")
    order = np.arange(len(keys))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(folds, len(keys) // folds)
    sizes[: len(keys) % folds] += 1
    splits: Splits = []
    start = 0
    for size in sizes:
        val = set(order[start : start + size].tolist())
        start += size
        splits.append(
            {
                "train": [k for i, k in enumerate(keys) if i not in val],
                "val": [k for i, k in enumerate(keys) if i in val],
            }
        )
    return splits


def _check_splits(data: object, path: Path) -> Splits:
    """``data`` as a list of ``{"train": [...], "val": [...]}`` with string ids (InputError otherwise)."""
    if not isinstance(data, list) or not data:
        raise InputError(path, "not a splits file: needs a non-empty list of {'train': [...], 'val': [...]}")
    for k, fold in enumerate(data):
        ok = isinstance(fold, dict) and all(
            isinstance(fold.get(key), list) and all(isinstance(c, str) for c in fold[key])
            for key in ("train", "val")
        )
        if not ok:
            raise InputError(path, f"fold {k} is not {{'train': [case ids], 'val': [case ids]}}")
        overlap = sorted(set(fold["train"]) & set(fold["val"]))
        if overlap:
            raise InputError(
                path, f"fold {k} trains and validates on the same case(s): {', '.join(overlap[:5])}"
            )
    return data


def read_splits(path: str | Path) -> Splits:
    """A ``splits_final.json`` (a cache folder names its own), checked (one-line InputError otherwise)."""
    path = Path(path)
    if path.is_dir():
        path = path / SPLITS_FILE
    if not path.is_file():
        raise InputError(path, "no cross-validation splits here (make them with `organdetr split CACHE`)")
    return _check_splits(read_json(path, "not a readable splits file"), path)


def write_splits(cache_dir: str | Path, splits: Splits, *, overwrite: bool = False) -> Path:
    """Write ``CACHE/splits_final.json`` atomically. An existing file that holds other splits is kept
    (InputError) unless ``overwrite``; the same splits again are a no-op. Returns the path."""
    path = Path(cache_dir) / SPLITS_FILE
    if path.is_file() and not overwrite:
        if read_json(path, "not a readable splits file") == splits:
            return path
        raise InputError(
            path, "holds different splits (models trained on them would mix); --overwrite replaces"
        )
    write_json(path, splits)
    return path


def fold_cases(cache_dir: str | Path, fold: int, case_ids: list[str]) -> tuple[list[str], list[str]]:
    """Fold ``fold``'s ``(train, val)`` case ids from ``CACHE/splits_final.json``; InputError naming the
    file when the fold does not exist or names a case the cache does not hold."""
    path = Path(cache_dir) / SPLITS_FILE
    splits = read_splits(path)
    if not 0 <= fold < len(splits):
        raise InputError(path, f"fold {fold} does not exist ({len(splits)} folds: 0-{len(splits) - 1})")
    train, val = splits[fold]["train"], splits[fold]["val"]
    missing = sorted(set(train + val) - set(case_ids))
    if missing:
        raise InputError(path, f"fold {fold} names case(s) the cache does not hold: {', '.join(missing[:5])}")
    return list(train), list(val)


def validation_fold_of(splits: Splits) -> dict[str, int]:
    """Case id -> the fold that validates it (each case once: InputError-free callers check with
    :func:`check_out_of_fold`)."""
    return {case: k for k, fold in enumerate(splits) for case in fold["val"]}


def check_out_of_fold(splits: Splits, path: str | Path) -> None:
    """InputError unless every case of the splits is validated by exactly one fold."""
    seen: dict[str, int] = {}
    for k, fold in enumerate(splits):
        for case in fold["val"]:
            if case in seen:
                raise InputError(path, f"case {case} is validated by folds {seen[case]} and {k}")
            seen[case] = k
    unvalidated = sorted({c for fold in splits for c in fold["train"]} - set(seen))
    if unvalidated:
        raise InputError(path, f"case(s) validated by no fold: {', '.join(unvalidated[:5])}")


__all__ = [
    "NNUNET_SPLIT_SEED",
    "SPLITS_FILE",
    "Splits",
    "check_out_of_fold",
    "crossval_splits",
    "fold_cases",
    "read_splits",
    "validation_fold_of",
    "write_splits",
]
