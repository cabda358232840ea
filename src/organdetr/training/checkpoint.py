"""Checkpoints: safetensors weights + a small, safely loadable training state; atomic folder swaps.

A checkpoint is a folder (``RUN/last/`` or ``RUN/best/``)::

    model.safetensors     detector weights (safetensors: no pickle)
    ema.safetensors       EMA weights (when optim.ema)
    state.json            scalars: step, epoch, best metric, ... (written last)
    training_state.pt     optimizer / grad-scaler / EMA counter / RNG states (torch.save of tensors and
                          plain containers only; read back with torch.load(weights_only=True))
    config.yaml, plans.json   copies, so a checkpoint folder alone is enough to predict

Every file goes through ``organdetr.runtime.atomic``; the folder itself is written beside the old one
(``.<name>.tmp-<pid>/``) and swapped in with renames, so an interrupted save (even ``kill -9``) leaves the
previous checkpoint intact: ``.<name>.old`` is picked up (and renamed back by the next save) if the crash
happened between the two renames, and the next run removes the temporary folder. ``state.json`` lists
every other file with its byte size and SHA-256 (``"files"``); :func:`verify_checkpoint` checks them, and
:func:`resolve_checkpoint_dir` only returns a checkpoint that passes (falling back to the previous one).
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from organdetr.data.properties import DataProperties
from organdetr.models import detector_from_config
from organdetr.preprocessing.plans import check_plans, class_map_from_plans
from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import collapse
from organdetr.training.config import TrainConfig, load_config

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.json"
TRAINING_STATE_FILE = "training_state.pt"
CONFIG_FILE = "config.yaml"
PLANS_FILE = "plans.json"


# ----------------------------------------------------------------------------------------------------
# RNG state (weights_only-safe containers)


def rng_state() -> dict:
    """Python / NumPy / torch (CPU and CUDA) RNG states as tensors and plain containers."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_gauss": [int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate((state["python_version"], tuple(state["python"]), None))
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# save / load


def _swap_in(tmp_dir: Path, final: Path) -> None:
    old = final.parent / f".{final.name}.old"
    if old.exists():
        if final.exists():  # an earlier swap finished; its clean-up did not
            shutil.rmtree(old)
        else:  # an earlier swap died between its renames: .old is the newest checkpoint
            os.replace(old, final)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp_dir, final)
    atomic.fsync_folder(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _manifest(folder: Path) -> dict[str, dict]:
    """``{file name: {"bytes", "sha256"}}`` of the files in a checkpoint folder being written."""
    return {
        f.name: {"bytes": f.stat().st_size, "sha256": atomic.file_sha256(f)}
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name != STATE_FILE
    }


def save_checkpoint(
    ckpt_dir: str | Path,
    detector: nn.Module,
    state: dict[str, Any],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: nn.Module | None = None,
    config_yaml: str | None = None,
    plans: dict | None = None,
    include_rng: bool = True,
) -> Path:
    """Write a checkpoint folder atomically (see module doc) and return its path.

    ``state`` holds JSON scalars (step, epoch, best metric...). ``ema`` is a
    ``torch.optim.swa_utils.AveragedModel`` around ``detector``. ``optimizer`` / ``scaler`` / RNG go into
    ``training_state.pt`` (omit ``optimizer`` for weights-only checkpoints such as ``best``).
    """
    final = Path(ckpt_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        with atomic.atomic_path(tmp_dir / MODEL_FILE) as tmp:
            save_model(detector, str(tmp))
            os.chmod(tmp, 0o644)  # safetensors creates its own file (0600)
        state = dict(state)
        if ema is not None:
            with atomic.atomic_path(tmp_dir / EMA_FILE) as tmp:
                save_model(ema.module, str(tmp))
                os.chmod(tmp, 0o644)
            state["ema_n_averaged"] = int(ema.n_averaged.item())
        if optimizer is not None or scaler is not None or include_rng:
            blob: dict[str, Any] = {}
            if optimizer is not None:
                blob["optimizer"] = optimizer.state_dict()
            if scaler is not None and scaler.is_enabled():
                blob["scaler"] = scaler.state_dict()
            if include_rng:
                blob["rng"] = rng_state()
            with atomic.atomic_path(tmp_dir / TRAINING_STATE_FILE) as tmp:
                torch.save(blob, tmp)
        if config_yaml is not None:
            atomic.write_text(tmp_dir / CONFIG_FILE, config_yaml)
        if plans is not None:
            atomic.write_json(tmp_dir / PLANS_FILE, plans)
        state["files"] = _manifest(tmp_dir)
        atomic.write_json(tmp_dir / STATE_FILE, state)
        _swap_in(tmp_dir, final)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final


CHECKPOINT_NAMES = ("best", "last", ".last.old", ".best.old")


def verify_checkpoint(ckpt_dir: str | Path, *, checksum: bool = True) -> dict:
    """``state.json`` of a complete checkpoint; :class:`InputError` naming the missing, truncated or
    corrupt file (sizes and, with ``checksum``, SHA-256 against the ``"files"`` list in ``state.json``).

    Checkpoints written before the list existed pass when their weights and state are there.
    """
    ckpt_dir = Path(ckpt_dir)
    state = read_state(ckpt_dir)
    files = state.get("files")
    if not isinstance(files, dict):
        if not (ckpt_dir / MODEL_FILE).is_file():
            raise InputError(ckpt_dir / MODEL_FILE, "checkpoint weights are missing")
        return state
    for name, entry in files.items():
        path = ckpt_dir / name
        if not path.is_file():
            raise InputError(path, "checkpoint file is missing (incomplete checkpoint)")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise InputError(path, f"checkpoint file has {size} bytes, state.json says {entry.get('bytes')}")
        if checksum and atomic.file_sha256(path) != entry.get("sha256"):
            raise InputError(path, "checkpoint file does not match the SHA-256 in state.json (corrupt)")
    return state


def _is_checkpoint(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file()


def resolve_checkpoint_dir(path: str | Path, names: tuple[str, ...] = CHECKPOINT_NAMES) -> Path:
    """A verified checkpoint folder from a run folder or a checkpoint folder (or its model.safetensors).

    In a run folder the first of ``names`` (``best``, ``last``, then the ``.old`` copies an interrupted
    save keeps) that passes :func:`verify_checkpoint` wins; skipping a broken one is warned about. A
    checkpoint folder given directly must pass itself.
    """
    path = Path(path)
    if path.is_file() and path.name == MODEL_FILE:
        path = path.parent
    if not path.exists():
        raise InputError(path, "no such run or checkpoint folder")
    if _is_checkpoint(path):
        verify_checkpoint(path)
        return path
    broken: list[InputError] = []
    for name in names:
        candidate = path / name
        if not _is_checkpoint(candidate):
            continue
        try:
            verify_checkpoint(candidate)
        except InputError as err:
            broken.append(err)
            continue
        if broken:
            warnings.warn(f"skipped a broken checkpoint ({broken[0]}); using {candidate}", stacklevel=2)
        return candidate
    if broken:
        raise broken[0]
    raise InputError(path, f"not a checkpoint: no {MODEL_FILE} + {STATE_FILE} here or in best/ or last/")


def read_state(ckpt_dir: str | Path) -> dict:
    """The ``state.json`` scalars of a checkpoint folder."""
    path = Path(ckpt_dir) / STATE_FILE
    return read_json(path, "unreadable checkpoint state", not_object="checkpoint state is not a JSON object")


def load_weights(module: nn.Module, path: str | Path, device: str | torch.device = "cpu") -> None:
    """Load a safetensors file into ``module`` (strict); ``InputError`` naming the file on mismatch."""
    path = Path(path)
    try:
        load_model(module, str(path), strict=True, device=str(device))
    except SafetensorError as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    except (RuntimeError, OSError, ValueError) as err:
        msg = collapse(str(err))
        raise InputError(path, f"weights do not fit this model ({msg[:300]})") from None


def load_checkpoint(
    ckpt_dir: str | Path,
    detector: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    ema: nn.Module | None = None,
    restore_rng: bool = False,
    device: str | torch.device = "cpu",
) -> dict:
    """Load weights (and optionally optimizer / scaler / EMA / RNG) from a checkpoint; return ``state.json``.

    Nothing is unpickled: weights come from safetensors, the training state from
    ``torch.load(weights_only=True)``.
    """
    ckpt = resolve_checkpoint_dir(ckpt_dir)
    state = {k: v for k, v in read_state(ckpt).items() if k != "files"}
    load_weights(detector, ckpt / MODEL_FILE, device)
    if ema is not None:
        if (ckpt / EMA_FILE).is_file():
            load_weights(ema.module, ckpt / EMA_FILE, device)
            ema.n_averaged.fill_(int(state.get("ema_n_averaged", 0)))
        else:
            ema.module.load_state_dict(detector.state_dict())
    if optimizer is not None or scaler is not None or restore_rng:
        path = ckpt / TRAINING_STATE_FILE
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refusals are pickle.UnpicklingError; bad files RuntimeError
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise InputError(path, f"unreadable or unsafe training state, refused ({first[:300]})") from None
        if not isinstance(blob, dict):
            raise InputError(path, "training state is not a dict of optimizer / scaler / RNG states")
        if optimizer is not None and "optimizer" not in blob:
            raise InputError(path, "checkpoint holds no optimizer state (a weights-only checkpoint?)")
        try:
            if optimizer is not None:
                optimizer.load_state_dict(blob["optimizer"])
            if scaler is not None and "scaler" in blob:
                scaler.load_state_dict(blob["scaler"])
            if restore_rng and "rng" in blob:
                set_rng_state(blob["rng"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise InputError(
                path,
                f"training state does not fit this run's optimizer ({collapse(str(err), 200)}); was the "
                "config changed since? start a new run (another --output)",
            ) from None
    return state


def checkpoint_config_files(ckpt: Path) -> tuple[Path, Path]:
    """``(config.yaml, plans.json)`` of a checkpoint folder (its own copies, else its run folder's);
    :class:`InputError` when either is missing."""
    config_path = next((d / CONFIG_FILE for d in (ckpt, ckpt.parent) if (d / CONFIG_FILE).is_file()), None)
    plans_path = next((d / PLANS_FILE for d in (ckpt, ckpt.parent) if (d / PLANS_FILE).is_file()), None)
    if config_path is None or plans_path is None:
        raise InputError(ckpt, f"checkpoint lacks {CONFIG_FILE} / {PLANS_FILE} (here or in its run folder)")
    return config_path, plans_path


def load_detector(
    run_dir_or_ckpt: str | Path, device: str | torch.device = "cpu", *, use_ema: bool = True
) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a trained detector for inference -> ``(detector in eval mode, TrainConfig, plans)``.

    ``run_dir_or_ckpt``: a run folder (its ``best/`` checkpoint, else ``last/``), a checkpoint folder or
    its ``model.safetensors``. EMA weights are used when the run kept them (``use_ema``).
    """
    ckpt = resolve_checkpoint_dir(run_dir_or_ckpt)
    config_path, plans_path = checkpoint_config_files(ckpt)
    cfg = load_config(config_path)
    plans = check_plans(read_json(plans_path, "unreadable plans"), plans_path)
    classes = class_map_from_plans(plans, plans_path)
    input_size = tuple(int(s) for s in plans["input_size"])
    detector = detector_from_config(cfg, len(classes), input_size, DataProperties.from_plans(plans))
    weights = ckpt / EMA_FILE if use_ema and (ckpt / EMA_FILE).is_file() else ckpt / MODEL_FILE
    load_weights(detector, weights, "cpu")
    return detector.to(device).eval(), cfg, plans


__all__ = [
    "CHECKPOINT_NAMES",
    "checkpoint_config_files",
    "load_checkpoint",
    "load_detector",
    "load_weights",
    "read_state",
    "resolve_checkpoint_dir",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]
