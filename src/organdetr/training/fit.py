"""A whole training run: ``fit`` (run folder, data, model, resume, the epoch loop, checkpoints, logs).

``fit`` resumes exactly: the data order and every augmentation draw depend only on ``(seed, epoch,
position)``, and weights, optimizer, grad scaler, EMA and RNG states come back from ``RUN/last/``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from organdetr.data.cache_dataset import CacheDataset, split_cases
from organdetr.data.properties import DataProperties
from organdetr.data.resynthesis import Resynthesis
from organdetr.evaluation.presence import threshold_state
from organdetr.models import detector_from_config
from organdetr.models.organdetr.proposals import anchor_sizes_from_boxes
from organdetr.preprocessing.cache import list_cases, verify_cases
from organdetr.preprocessing.intensity import with_intensity_reference
from organdetr.preprocessing.plans import load_plans
from organdetr.runtime import atomic
from organdetr.runtime.devices import (
    autocast_dtype,
    measures_cpu_amp,
    resolve_device,
    seed_everything,
)
from organdetr.runtime.errors import InputError
from organdetr.runtime.locking import folder_lock
from organdetr.training import distributed
from organdetr.training.checkpoint import load_checkpoint, resolve_checkpoint_dir, save_checkpoint
from organdetr.training.config import TrainConfig, dump_config, replace_section
from organdetr.training.distributed import DistInfo
from organdetr.training.init_from import freezer_for, start_from_run
from organdetr.training.loaders import train_loader
from organdetr.training.loop import LossModule, StepContext, epoch_summary, train_one_epoch
from organdetr.training.optim import build_optimizer
from organdetr.training.precision import settle_train_amp
from organdetr.training.run_folder import check_run_folder, resume_config_path, run_folder
from organdetr.training.train_log import TrainLogger
from organdetr.training.validation import best_metric_value, metrics_summary, validate


def fit(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_at_step: int | None = None,
) -> Path:
    """Train ``cfg`` into ``run_dir``; returns ``run_dir``. Launch under ``torchrun`` for DDP.

    ``run_dir`` receives ``config.yaml`` (resolved config), ``plans.json`` (the cache's), ``last/`` and
    ``best/`` checkpoints (best by validation mAP), ``train_log.csv``, ``val_log.csv``, ``tensorboard/`` and
    ``curves.png``. ``resume`` continues from ``run_dir/last`` exactly where it stopped. ``stop_at_step``
    ends the run early after that many optimizer steps (saving ``last``), as an interruption would.

    The run holds ``run_dir``'s exclusive lock and a shared lock on the cache (a second run into the same
    folder, or a ``preprocess`` rewriting the cache, is refused), and every case is verified before the
    first step (checksums, shapes, NaN/inf: :func:`organdetr.preprocessing.cache.verify_cases`).
    """
    run_dir = Path(run_dir)
    if not cfg.data.cache_dir:
        raise InputError(
            None, "data.cache_dir is not set (use --set data.cache_dir=CACHE or the config file)"
        )
    cache_dir = Path(cfg.data.cache_dir)
    plans = load_plans(cache_dir)  # a missing cache is named before anything is created
    check_run_folder(run_dir, cache_dir, plans, resume=resume)
    with folder_lock(cache_dir, exclusive=False, purpose="organdetr train"), run_folder(run_dir):
        return _fit(cfg, run_dir, cache_dir, resume=resume, stop_at_step=stop_at_step)


# ----------------------------------------------------------------------------------------------------
# the pieces of a run


@dataclass
class RunData:
    """What a run trains on, and where: the cache's plans, this process's place, its device, the cases."""

    plans: dict
    dist: DistInfo
    device: torch.device
    train_ds: CacheDataset
    val_ds: CacheDataset | None


@dataclass
class TrainParts:
    """The detector and what updates it: optimizer, mixed precision (dtype, grad scaler), EMA."""

    detector: nn.Module
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None


@dataclass(frozen=True)
class Schedule:
    """How long the run trains: optimizer steps per epoch, epochs started, the lr schedule's length, and
    the step it stops at early (``stop_at_step`` / a ``train.steps`` budget; ``None``: after the epochs)."""

    steps_per_epoch: int
    epochs: int
    total_steps: int
    stop_at_step: int | None


class Checkpointer:
    """The run's checkpoints: ``last/`` (weights, optimizer, grad scaler, EMA, RNG) and ``best/`` (weights,
    whenever the validation metric beats the best so far). ``state`` holds the scalars every checkpoint's
    ``state.json`` carries (best metric and its step, the metric's name, what a resume loaded)."""

    def __init__(
        self,
        run_dir: Path,
        parts: TrainParts,
        data: RunData,
        schedule: Schedule,
        config_yaml: str,
        state: dict,
        *,
        saved_step: int | None,
    ):
        self.run_dir, self.parts, self.data, self.schedule = run_dir, parts, data, schedule
        self.config_yaml, self.state = config_yaml, state
        self.saved_step = saved_step  # the step ``last/`` holds (``None``: none written by this run yet)

    def save(self, name: str, step: int, *, full: bool) -> None:
        """Write ``RUN/<name>`` at ``step`` (main rank; ``full``: with optimizer, scaler and RNG states)."""
        snapshot = {
            **self.state,
            "step": step,
            "epoch": step / self.schedule.steps_per_epoch,
            "steps_per_epoch": self.schedule.steps_per_epoch,
            "total_steps": self.schedule.total_steps,
            "world_size": self.data.dist.world_size,
            "time": time.time(),
        }
        if self.data.dist.is_main:
            save_checkpoint(
                self.run_dir / name,
                self.parts.detector,
                snapshot,
                optimizer=self.parts.optimizer if full else None,
                scaler=self.parts.scaler if full else None,
                ema=self.parts.ema,
                config_yaml=self.config_yaml,
                plans=self.data.plans,
                include_rng=full,
            )
        distributed.barrier()

    def save_last(self, step: int) -> None:
        """Write ``last/`` (the full training state) at ``step``."""
        self.save("last", step, full=True)
        self.saved_step = step

    def offer_best(self, value: float | None, step: int) -> bool:
        """Write ``best/`` when ``value`` beats the best metric so far; ``True`` when it did."""
        best = self.state["best_metric"]
        if value is not None and (best is None or value > best):
            self.state["best_metric"], self.state["best_step"] = value, step
            self.save("best", step, full=False)
            return True
        return False


@dataclass
class _Run:
    """Everything the epoch loop works with, built once by :func:`_fit`."""

    cfg: TrainConfig
    data: RunData
    parts: TrainParts
    schedule: Schedule
    model: nn.Module  # the LossModule (DDP-wrapped under torchrun)
    ctx: StepContext
    logger: TrainLogger
    checkpointer: Checkpointer


# ----------------------------------------------------------------------------------------------------
# set-up steps


def _fit(cfg: TrainConfig, run_dir: Path, cache_dir: Path, *, resume: bool, stop_at_step: int | None) -> Path:
    plans = load_plans(cache_dir)
    dist_info, device = _start_process(cfg)
    data = _load_data(cfg, cache_dir, plans, dist_info, device)
    cfg, parts = _build_parts(cfg, data)
    state = _start_state(cfg, run_dir, parts, device, resume=resume)
    if not resume:  # fine-tuning: the weights of finetune.init_from where names and shapes match
        start_from_run(cfg, run_dir, parts.detector, parts.ema, plans, main=dist_info.is_main)
    parts.amp_dtype = settle_train_amp(
        cfg, parts.detector, data.train_ds, data.device, parts.amp_dtype, state,
        resume=resume, distributed=data.dist.enabled, announce=data.dist.is_main and cfg.train.progress,
    )  # fmt: skip
    config_yaml = dump_config(cfg)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", config_yaml)
        atomic.write_json(run_dir / "plans.json", data.plans)
    model = _loss_model(parts.detector, dist_info, device)
    schedule = _schedule(cfg, len(data.train_ds), dist_info.world_size, stop_at_step)
    logger = TrainLogger(run_dir, enabled=dist_info.is_main, resume_step=state["step"] if resume else None)
    ctx = StepContext(
        optimizer=parts.optimizer,
        optim_cfg=cfg.optim,
        total_steps=schedule.total_steps,
        device=device,
        step=state["step"],
        amp_dtype=parts.amp_dtype,
        scaler=parts.scaler,
        ema=parts.ema,
        logger=logger,
        log_every=cfg.train.log_every,
        progress=cfg.train.progress,
        stop_at_step=schedule.stop_at_step,
        freezer=freezer_for(cfg, parts.detector),
    )
    saved_step = ctx.step if resume else None
    checkpointer = Checkpointer(run_dir, parts, data, schedule, config_yaml, state, saved_step=saved_step)
    try:
        _train_epochs(_Run(cfg, data, parts, schedule, model, ctx, logger, checkpointer))
    finally:
        logger.plot()
        logger.close()
    return run_dir


def _start_process(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Join the torchrun job (if any), pick this process's device, seed every RNG."""
    cuda = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
    dist_info = distributed.init_distributed("cuda" if cuda else "cpu")
    device = resolve_device(cfg.train.device, dist_info.local_rank, option="train.device")
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    return dist_info, device


def _load_data(
    cfg: TrainConfig, cache_dir: Path, plans: dict, dist_info: DistInfo, device: torch.device
) -> RunData:
    """Split the cache's cases, verify every one of them, and open the training / validation datasets."""
    train_ids, val_ids = split_cases(
        list_cases(cache_dir),
        cfg.data.val_fraction,
        cfg.data.split_seed,
        cfg.data.train_cases,
        cfg.data.val_cases,
        cache_dir,
        cfg.data.fold,
    )
    if not train_ids:
        raise InputError(cache_dir, "no complete training cases in the cache (run `organdetr preprocess`)")
    verify_cases(cache_dir, [*train_ids, *val_ids], plans, progress=cfg.train.progress and dist_info.is_main)
    synthesis = Resynthesis(cfg.data.synthesis_p) if cfg.data.synthesis == "appearance" else None
    train_ds = CacheDataset(cache_dir, train_ids, cfg.augment, cfg.data.box_targets, synthesis)
    val_ds = CacheDataset(cache_dir, val_ids, None, cfg.data.box_targets) if val_ids else None
    plans = with_intensity_reference(plans, (train_ds.record(i) for i in range(len(train_ds))))  # predict
    return RunData(plans, dist_info, device, train_ds, val_ds)


def _build_parts(cfg: TrainConfig, data: RunData) -> tuple[TrainConfig, TrainParts]:
    """The detector for the cache's classes and channels, its optimizer, grad scaler and EMA.

    Returns the config with ``model.in_channels`` taken from the data, and the parts.
    """
    properties = DataProperties.from_plans(data.plans)
    if cfg.model.in_channels != properties.in_channels:  # model.in_channels comes from the data
        cfg = replace_section(cfg, "model", in_channels=properties.in_channels)
    train_ds = data.train_ds
    cfg = _with_data_anchors(cfg, train_ds)
    detector = detector_from_config(cfg, train_ds.num_classes, train_ds.input_size, properties)
    detector = detector.to(data.device)
    optimizer = build_optimizer(detector, cfg.optim)
    # train.amp=auto on the CPU starts in fp32; settle_train_amp measures once the weights are loaded
    measured = measures_cpu_amp(cfg.train.amp, data.device)
    amp_dtype = None if measured else autocast_dtype(cfg.train.amp, data.device)
    scaler = torch.amp.GradScaler(data.device.type, enabled=amp_dtype == torch.float16)
    ema = (
        AveragedModel(detector, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
        if cfg.optim.ema
        else None
    )
    return cfg, TrainParts(detector, optimizer, amp_dtype, scaler, ema)


def _with_data_anchors(cfg: TrainConfig, train_ds: CacheDataset) -> TrainConfig:
    """``model.anchors: data`` with no ``anchor_sizes`` yet: size the proposal anchors from the training
    organs (:func:`~organdetr.models.organdetr.proposals.anchor_sizes_from_boxes`); the sizes are saved in the
    run's config, so a resume or a checkpoint rebuilds the same network."""
    model = cfg.model
    if cfg.arch != "organdetr" or model.anchors != "data" or model.anchor_sizes:
        return cfg
    sizes = anchor_sizes_from_boxes(train_ds.median_box_sizes(), model.memory_levels)
    return replace_section(cfg, "model", anchor_sizes=sizes)


def _resume_state(run_dir: Path) -> Path | None:
    """The verified ``last`` checkpoint (or the ``.last.old`` an interrupted save kept); ``None`` if there is
    none; InputError naming the broken file when every one there is broken."""
    if not any((run_dir / name / "state.json").is_file() for name in ("last", ".last.old")):
        return None
    return resolve_checkpoint_dir(run_dir, names=("last", ".last.old"))


def _start_state(
    cfg: TrainConfig, run_dir: Path, parts: TrainParts, device: torch.device, *, resume: bool
) -> dict:
    """The run's checkpoint scalars: fresh (refused when ``run_dir`` already holds a checkpoint) or, with
    ``resume``, those of ``last/``, whose weights, optimizer, scaler, EMA and RNG states are loaded."""
    state = {"step": 0, "best_metric": None, "best_step": None, "metric": cfg.train.best_metric}
    if not resume and _resume_state(run_dir) is not None:
        raise InputError(run_dir, "run folder already holds a checkpoint; use --resume or another --output")
    if resume:
        ckpt = _resume_state(run_dir)
        if ckpt is None:
            raise InputError(run_dir, "nothing to resume: no last/ checkpoint in this run folder")
        state.update(
            load_checkpoint(
                ckpt,
                parts.detector,
                optimizer=parts.optimizer,
                scaler=parts.scaler,
                ema=parts.ema,
                restore_rng=True,
                device=device,
            )
        )
    return state


def _loss_model(detector: nn.Module, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """The :class:`LossModule` the loop trains, wrapped in DDP under torchrun."""
    model: nn.Module = LossModule(detector)
    if dist_info.enabled:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return model


def _schedule(cfg: TrainConfig, num_cases: int, world_size: int, stop_at_step: int | None) -> Schedule:
    """Steps per epoch of this rank's shard; ``train.epochs``, or a ``train.steps`` budget (the epochs it
    starts, the lr schedule over exactly it, and a stop there)."""
    per_rank = math.ceil(num_cases / world_size)
    steps_per_epoch = math.ceil(per_rank / cfg.data.batch_size)
    epochs, total_steps = cfg.train.epochs, cfg.train.epochs * steps_per_epoch
    if cfg.train.steps is not None:
        epochs, total_steps = math.ceil(cfg.train.steps / steps_per_epoch), cfg.train.steps
        stop_at_step = cfg.train.steps if stop_at_step is None else min(stop_at_step, cfg.train.steps)
    return Schedule(steps_per_epoch, epochs, total_steps, stop_at_step)


# ----------------------------------------------------------------------------------------------------
# the epoch loop


def _train_epochs(run: _Run) -> None:
    """Train from ``ctx.step`` (mid-epoch after a resume) to the end or the early stop; save ``last/``."""
    ctx, per_epoch = run.ctx, run.schedule.steps_per_epoch
    budget = run.cfg.train.steps
    for epoch in range(ctx.step // per_epoch, run.schedule.epochs):
        ctx.epoch = epoch
        loader = train_loader(
            run.data.train_ds, run.cfg, epoch, ctx.step - epoch * per_epoch, run.data.dist, run.data.device
        )
        started = time.perf_counter()
        train_one_epoch(run.model, loader, ctx, run.parts.detector)
        budget_done = budget is not None and ctx.step >= budget
        if ctx.step < (epoch + 1) * per_epoch and not budget_done:
            break  # stopped mid-epoch (stop_at_step)
        is_last = epoch + 1 == run.schedule.epochs or budget_done
        _finish_epoch(run, epoch, is_last=is_last, seconds=time.perf_counter() - started)
        if ctx.stop_at_step is not None and ctx.step >= ctx.stop_at_step:
            break
    if run.checkpointer.saved_step != ctx.step:
        run.checkpointer.save_last(ctx.step)


def _finish_epoch(run: _Run, epoch: int, *, is_last: bool, seconds: float) -> None:
    """End of an epoch: validate when due (saving ``best/``), print the epoch line, save ``last/`` if due."""
    cfg = run.cfg
    summary = epoch_summary(epoch, run.schedule.epochs, run.ctx, seconds)
    if (
        run.data.val_ds is not None
        and cfg.train.val_every
        and ((epoch + 1) % cfg.train.val_every == 0 or is_last)
    ):
        summary += _validate_epoch(run, run.data.val_ds, epoch)
    if run.data.dist.is_main and cfg.train.progress:
        tqdm.write(summary)
    if (epoch + 1) % cfg.train.checkpoint_every == 0 or is_last:
        run.checkpointer.save_last(run.ctx.step)


def _validate_epoch(run: _Run, val_ds: CacheDataset, epoch: int) -> str:
    """Validate (the EMA weights when kept), log the metrics, save ``best/`` on a new best; the epoch line's
    validation part."""
    parts, step = run.parts, run.ctx.step
    model = parts.ema.module if parts.ema is not None else parts.detector
    metrics = validate(run.cfg, val_ds, model, run.data.device, parts.amp_dtype, run.data.dist)
    run.logger.log_val(step, epoch + 1, metrics)
    value = best_metric_value(metrics, run.cfg.train.best_metric, val_ds.cache_dir)
    run.checkpointer.state["score_threshold"] = threshold_state(metrics)  # predict's default, per checkpoint
    summary = metrics_summary(metrics)
    if run.checkpointer.offer_best(value, step):
        summary += "  (best)"
    return summary


__all__ = ["Checkpointer", "RunData", "Schedule", "TrainParts", "fit", "resume_config_path"]
