"""Training and validation: ``train_one_epoch``, ``evaluate`` and ``fit`` (the whole run).

The engine talks to every architecture through the Detector protocol (``organdetr.models.build_detector``):
``detector.loss(images, targets) -> dict`` of weighted terms plus ``"loss"``, and
``detector.detect(images) -> list[dict(labels, scores, boxes voxel xyzxyz)]``.

Training is counted in optimizer steps; an epoch is one pass over this rank's shard of the training cases.
``fit`` resumes exactly: the data order and every augmentation draw depend only on ``(seed, epoch,
position)``, and weights, optimizer, grad scaler, EMA and RNG states come back from ``RUN/last/``.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from organdetr.data.cache_dataset import CacheDataset, EpochSampler, collate, split_cases
from organdetr.evaluation.segmentation import dice_score
from organdetr.preprocessing.cache import list_cases, verify_cases
from organdetr.preprocessing.plans import load_plans
from organdetr.runtime import atomic
from organdetr.runtime.atomic import remove_stale_temps
from organdetr.runtime.errors import InputError
from organdetr.runtime.locking import LOCK_NAME, folder_lock
from organdetr.runtime.outputs import check_output_folder
from organdetr.training import distributed
from organdetr.training.checkpoint import load_checkpoint, read_state, resolve_checkpoint_dir, save_checkpoint
from organdetr.training.config import OptimConfig, TrainConfig, dump_config, replace_section
from organdetr.training.train_log import TrainLogger

# ----------------------------------------------------------------------------------------------------
# devices, precision, seeds


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is visible, else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"train.device={name!r} but no CUDA GPU is visible to torch")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``train.amp`` on ``device`` (``None`` = full fp32). Always off on CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


# ----------------------------------------------------------------------------------------------------
# optimizer and schedule


def build_optimizer(detector: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; ``*.backbone.*`` parameters get ``lr * backbone_lr_scale``, ``*.transformer.*`` parameters
    ``lr * transformer_lr_scale`` (separate rates for a model's CNN and attention parts, as MaskMed
    trains them); no decay on norms / biases."""
    scales = {"transformer": cfg.transformer_lr_scale, "backbone": cfg.backbone_lr_scale, "head": 1.0}
    groups: dict[tuple[str, bool], list[Tensor]] = {}
    for name, param in detector.named_parameters():
        if not param.requires_grad:
            continue
        part = next((p for p in ("backbone", "transformer") if f".{p}." in f".{name}"), "head")
        no_decay = param.ndim <= 1 or name.endswith("_embed")
        groups.setdefault((part, no_decay), []).append(param)
    param_groups = []
    order = list(scales)[::-1]  # head, backbone, transformer: the group order of older checkpoints first
    for (part, no_decay), params in sorted(
        groups.items(), key=lambda item: (order.index(item[0][0]), item[0][1])
    ):
        lr = cfg.lr * scales[part]
        param_groups.append(
            {
                "params": params,
                "lr": lr,
                "initial_lr": lr,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": part + ("_no_decay" if no_decay else ""),
            }
        )
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at optimizer ``step`` (0-based): linear warm-up then the schedule."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        fraction = step / max(1, total_steps)
        return cfg.step_gamma ** sum(fraction >= m for m in cfg.step_milestones)
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


# ----------------------------------------------------------------------------------------------------
# one epoch


class LossModule(nn.Module):
    """``forward(images, targets) = detector.loss(...)``: what DDP wraps so gradients are all-reduced."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        return self.detector.loss(images, targets)


def targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    """Move the tensor fields of each target dict to ``device`` (other fields pass through)."""
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
        for t in targets
    ]


@dataclass
class StepContext:
    """What ``train_one_epoch`` needs besides the model and data (the run's mutable counters live here)."""

    optimizer: torch.optim.Optimizer
    optim_cfg: OptimConfig
    total_steps: int
    device: torch.device
    step: int = 0
    epoch: int = 0
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    ema: nn.Module | None = None
    logger: TrainLogger | None = None
    log_every: int = 10
    progress: bool = True
    stop_at_step: int | None = None
    history: list[dict] = field(default_factory=list)
    epoch_means: dict[str, float] = field(default_factory=dict)  # mean loss terms of the last epoch


_SHORT = {"loss": "loss", "loss_class": "cls", "loss_bbox": "l1", "loss_giou": "giou", "loss_seg": "seg"}


def train_one_epoch(model: nn.Module, loader: Iterable, ctx: StepContext, detector: nn.Module) -> int:
    """Train over ``loader`` (until ``ctx.stop_at_step``); returns the new global step.

    ``model(images, targets) -> dict`` is the (possibly DDP-wrapped) :class:`LossModule`; ``detector`` is the
    bare detector (for the EMA). Raises ``FloatingPointError`` on a non-finite loss.
    """
    from tqdm.auto import tqdm

    model.train()
    main = distributed.current().is_main
    total = len(loader) if hasattr(loader, "__len__") else None
    bar = tqdm(
        loader,
        total=total,
        desc=f"epoch {ctx.epoch + 1}",
        disable=not (ctx.progress and main),
        dynamic_ncols=True,
        leave=False,
    )
    running: dict[str, float] = {}
    count = 0
    epoch_sum: dict[str, float] = {}
    epoch_count = 0
    for images, targets in bar:
        if ctx.stop_at_step is not None and ctx.step >= ctx.stop_at_step:
            break
        images = images.to(ctx.device, non_blocking=True)
        targets = targets_to(targets, ctx.device)
        set_lr(ctx.optimizer, lr_factor(ctx.step, ctx.total_steps, ctx.optim_cfg))
        with torch.autocast(
            ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None
        ):
            losses = model(images, targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            terms = ", ".join(f"{k}={v.item():.4g}" for k, v in losses.items() if v.ndim == 0)
            raise FloatingPointError(
                f"non-finite loss at step {ctx.step} ({terms}); lower optim.lr, set train.amp=off, "
                "or check the data; the last checkpoint is intact"
            )
        ctx.optimizer.zero_grad(set_to_none=True)
        scaler = ctx.scaler if ctx.scaler is not None and ctx.scaler.is_enabled() else None
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(ctx.optimizer)
        else:
            loss.backward()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.optim_cfg.grad_clip)
            if ctx.optim_cfg.grad_clip > 0
            else None
        )
        if scaler is not None:
            scaler.step(ctx.optimizer)
            scaler.update()
        else:
            ctx.optimizer.step()
        if ctx.ema is not None:
            ctx.ema.update_parameters(detector)
        ctx.step += 1
        count += 1
        values = {k: float(v.detach()) for k, v in losses.items() if v.ndim == 0}
        for k, v in values.items():
            running[k] = running.get(k, 0.0) + v
            epoch_sum[k] = epoch_sum.get(k, 0.0) + v
        epoch_count += 1
        if main:
            bar.set_postfix({_SHORT[k]: f"{v:.3f}" for k, v in values.items() if k in _SHORT}, refresh=False)
        if ctx.step % ctx.log_every == 0:
            mean = distributed.all_reduce_mean({k: v / count for k, v in running.items()})
            mean["lr"] = ctx.optimizer.param_groups[-1]["lr"]
            if grad_norm is not None:
                mean["grad_norm"] = float(grad_norm)
            ctx.history.append({"step": ctx.step, **mean})
            if ctx.logger is not None:
                ctx.logger.log_train(ctx.step, ctx.epoch, mean)
            running, count = {}, 0
    bar.close()
    ctx.epoch_means = {k: v / epoch_count for k, v in epoch_sum.items()} if epoch_count else {}
    return ctx.step


# ----------------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def evaluate(
    detector: nn.Module,
    loader: Iterable,
    dataset: CacheDataset,
    device: torch.device,
    *,
    amp_dtype: torch.dtype | None = None,
    max_detections: int = 1,
    progress: bool = False,
    mode: str = "coco",
) -> dict[str, float]:
    """Detect on the validation cases and score them in mm (COCO-style, ``evaluate_detections``; ``mode``
    ``"monai"`` reproduces MONAI's ``COCOMetric`` numbers).

    Detections (voxel boxes on the cache grid) are mapped to LPS mm with
    ``geometry.grid_box_to_original`` and compared with the cached ground-truth ``box_mm``. Under DDP every
    rank detects its shard and all ranks return the same summary (``mAP``, ``AP50``, ``AP75``, ``mAR``...).

    A multi-task detector (one with ``tasks`` and ``infer``, e.g. MTMed3D) is also scored on what else it
    was trained for, from the same forward pass: ``Dice`` (mean over the classes in each case's labels or
    prediction, cache grid) for ``seg`` and ``cls_accuracy`` / ``cls_balanced_accuracy`` / ``cls_AUC`` for
    ``cls`` (:mod:`organdetr.evaluation.classification`).
    """
    from tqdm.auto import tqdm

    from organdetr.core.boxes.world import grid_box_to_original
    from organdetr.evaluation import Detection, GroundTruth, evaluate_detections

    was_training = detector.training
    detector.eval()
    names = dataset.class_names
    per_case: list[tuple[str, list[Detection]]] = []
    tasks = tuple(getattr(detector, "tasks", ()))
    extra: list[tuple[str, dict]] = []  # per case: dice / case probabilities of multi-task detectors
    main = distributed.current().is_main
    for images, targets in tqdm(loader, desc="validate", disable=not (progress and main), leave=False):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs = (
                detector.infer(images.to(device))
                if tasks
                else {"detections": detector.detect(images.to(device))}
            )
        results = outputs["detections"]
        for b, target in enumerate(targets):
            if tasks:
                extra.append((target["case_id"], _task_scores(outputs, b, target, dataset.num_classes)))
        for result, target in zip(results, targets, strict=True):
            record = dataset.record(target["index"])
            boxes = result["boxes"].float().cpu().numpy().reshape(-1, 6)
            boxes_mm = grid_box_to_original(boxes, record)[1] if len(boxes) else boxes
            case = [
                Detection(target["case_id"], names[label], float(score), np.asarray(box_mm, dtype=np.float64))
                for label, score, box_mm in zip(
                    result["labels"].tolist(), result["scores"].tolist(), boxes_mm, strict=True
                )
            ]
            per_case.append((target["case_id"], case))
    # the sharded sampler pads by repeating cases: keep each case once
    unique = dict(reversed(distributed.all_gather_list(per_case)))
    detections = [d for case in unique.values() for d in case]
    ground_truth = [
        GroundTruth(dataset.case_ids[i], box["name"], np.asarray(box["box_mm"], dtype=np.float64))
        for i in range(len(dataset))
        for box in dataset.record(i)["boxes"]
    ]
    result = evaluate_detections(detections, ground_truth, names, max_detections=max_detections, mode=mode)
    detector.train(was_training)
    summary = {
        k: float(v) for k, v in result.summary.items() if isinstance(v, int | float) and math.isfinite(v)
    }
    if extra:
        summary.update(_task_summary(dict(reversed(distributed.all_gather_list(extra))), dataset))
    return summary


def _task_scores(outputs: dict, b: int, target: dict, num_classes: int) -> dict:
    """Dice per class present (seg) and case probabilities (cls) of image ``b`` of a batch."""
    scores: dict = {}
    if "seg" in outputs:
        pred, truth = outputs["seg"][b].cpu(), target["seg"].cpu()
        dice = [dice_score((pred == c).numpy(), (truth == c).numpy()) for c in range(1, num_classes + 1)]
        dice = [d for d in dice if not math.isnan(d)]  # classes in neither map are not scored
        scores["dice"] = float(np.mean(dice)) if dice else math.nan
    if "case_probs" in outputs:
        scores["case_probs"] = outputs["case_probs"][b].float().cpu().tolist()
        scores["case_label"] = int(target.get("case_label", torch.tensor(-1)))
    return scores


def _task_summary(per_case: dict[str, dict], dataset: CacheDataset) -> dict[str, float]:
    """Mean Dice over cases and the classification metrics of :func:`evaluate`'s multi-task outputs."""
    out: dict[str, float] = {}
    dice = [s["dice"] for s in per_case.values() if math.isfinite(s.get("dice", math.nan))]
    if dice:
        out["Dice"] = float(np.mean(dice))
    labelled = {c: s for c, s in per_case.items() if "case_probs" in s and s["case_label"] >= 0}
    if labelled and dataset.case_classes:
        from organdetr.evaluation.classification import evaluate_classification

        names = dataset.case_classes
        truth = {c: names[s["case_label"]] for c, s in labelled.items()}
        probs = {c: dict(zip(names, s["case_probs"], strict=True)) for c, s in labelled.items()}
        cls = evaluate_classification(truth, probs, names).summary()
        out.update({k: v for k, v in cls.items() if math.isfinite(v)})
    return out


# ----------------------------------------------------------------------------------------------------
# the whole run


def _make_loader(dataset, sampler, batch_size: int, num_workers: int, seed: int, device) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)  # worker seeds must not consume the global RNG
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )


def _resume_state(run_dir: Path) -> Path | None:
    """The verified ``last`` checkpoint (or the ``.last.old`` an interrupted save kept); ``None`` if there is
    none; InputError naming the broken file when every one there is broken."""
    if not any((run_dir / name / "state.json").is_file() for name in ("last", ".last.old")):
        return None
    return resolve_checkpoint_dir(run_dir, names=("last", ".last.old"))


@contextlib.contextmanager
def _run_folder(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s exclusive lock (main rank only), created if needed; remove killed writers' temps.

    A run folder this call created is removed again when the run fails before writing anything into it.
    """
    if not distributed.is_main_process():
        yield
        return
    check_output_folder(run_dir, "run folder")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, exclusive=True, purpose="organdetr train"):
        remove_stale_temps(run_dir)
        try:
            yield
        except BaseException:
            if created and all(p.name == LOCK_NAME for p in run_dir.iterdir()):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


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
    load_plans(cache_dir)  # a missing cache is named before anything is created
    with folder_lock(cache_dir, exclusive=False, purpose="organdetr train"), _run_folder(run_dir):
        return _fit(cfg, run_dir, cache_dir, resume=resume, stop_at_step=stop_at_step)


def _fit(cfg: TrainConfig, run_dir: Path, cache_dir: Path, *, resume: bool, stop_at_step: int | None) -> Path:
    plans = load_plans(cache_dir)
    dist_info = distributed.init_distributed(
        "cuda"
        if cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    device = select_device(cfg.train.device, dist_info.local_rank)
    seed_everything(cfg.train.seed, cfg.train.deterministic)

    train_ids, val_ids = split_cases(
        list_cases(cache_dir),
        cfg.data.val_fraction,
        cfg.data.split_seed,
        cfg.data.train_cases,
        cfg.data.val_cases,
        cache_dir,
    )
    if not train_ids:
        raise InputError(cache_dir, "no complete training cases in the cache (run `organdetr preprocess`)")
    verify_cases(cache_dir, [*train_ids, *val_ids], plans, progress=cfg.train.progress and dist_info.is_main)
    train_ds = CacheDataset(cache_dir, train_ids, cfg.augment)
    val_ds = CacheDataset(cache_dir, val_ids, None) if val_ids else None

    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from organdetr.data.properties import DataProperties
    from organdetr.models import detector_from_config

    data = DataProperties.from_plans(plans)
    if cfg.model.in_channels != data.in_channels:  # model.in_channels comes from the data
        cfg = replace_section(cfg, "model", in_channels=data.in_channels)
    detector = detector_from_config(cfg, train_ds.num_classes, train_ds.input_size, data).to(device)
    optimizer = build_optimizer(detector, cfg.optim)
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = (
        AveragedModel(detector, multi_avg_fn=get_ema_multi_avg_fn(cfg.optim.ema_decay), use_buffers=True)
        if cfg.optim.ema
        else None
    )

    state = {"step": 0, "best_metric": None, "best_step": None, "metric": cfg.train.best_metric}
    if not resume and _resume_state(run_dir) is not None:
        raise InputError(run_dir, "run folder already holds a checkpoint; use --resume or another --output")
    if resume:
        ckpt = _resume_state(run_dir)
        if ckpt is None:
            raise InputError(run_dir, "nothing to resume: no last/ checkpoint in this run folder")
        state.update(
            load_checkpoint(
                ckpt, detector, optimizer=optimizer, scaler=scaler, ema=ema, restore_rng=True, device=device
            )
        )
    config_yaml = dump_config(cfg)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / "config.yaml", config_yaml)
        atomic.write_json(run_dir / "plans.json", plans)

    train_model: nn.Module = LossModule(detector)
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    batch = cfg.data.batch_size
    per_rank = math.ceil(len(train_ds) / dist_info.world_size)
    steps_per_epoch = math.ceil(per_rank / batch)
    epochs, total_steps = cfg.train.epochs, cfg.train.epochs * steps_per_epoch
    if cfg.train.steps is not None:  # a step budget: the epochs it starts, the schedule over exactly it
        epochs, total_steps = math.ceil(cfg.train.steps / steps_per_epoch), cfg.train.steps
        stop_at_step = cfg.train.steps if stop_at_step is None else min(stop_at_step, cfg.train.steps)
    logger = TrainLogger(run_dir, enabled=dist_info.is_main, resume_step=state["step"] if resume else None)
    ctx = StepContext(
        optimizer=optimizer,
        optim_cfg=cfg.optim,
        total_steps=total_steps,
        device=device,
        step=state["step"],
        amp_dtype=amp_dtype,
        scaler=scaler,
        ema=ema,
        logger=logger,
        log_every=cfg.train.log_every,
        progress=cfg.train.progress,
        stop_at_step=stop_at_step,
    )

    def save(name: str, full: bool) -> None:
        snapshot = {
            **state,
            "step": ctx.step,
            "epoch": ctx.step / steps_per_epoch,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            "world_size": dist_info.world_size,
            "time": time.time(),
        }
        if dist_info.is_main:
            save_checkpoint(
                run_dir / name,
                detector,
                snapshot,
                optimizer=optimizer if full else None,
                scaler=scaler if full else None,
                ema=ema,
                config_yaml=config_yaml,
                plans=plans,
                include_rng=full,
            )
        distributed.barrier()

    start_epoch = ctx.step // steps_per_epoch
    saved_step = ctx.step if resume else None
    try:
        for epoch in range(start_epoch, epochs):
            ctx.epoch = epoch
            done_in_epoch = ctx.step - epoch * steps_per_epoch
            sampler = EpochSampler(
                len(train_ds),
                seed=cfg.train.seed,
                epoch=epoch,
                rank=dist_info.rank,
                world_size=dist_info.world_size,
                skip=done_in_epoch * batch,
            )
            loader = _make_loader(
                train_ds, sampler, batch, cfg.data.num_workers, cfg.train.seed + epoch, device
            )
            started = time.perf_counter()
            train_one_epoch(train_model, loader, ctx, detector)
            budget_done = cfg.train.steps is not None and ctx.step >= cfg.train.steps
            if ctx.step < (epoch + 1) * steps_per_epoch and not budget_done:
                break  # stopped mid-epoch (stop_at_step)
            summary = _epoch_summary(epoch, epochs, ctx, time.perf_counter() - started)
            is_last = epoch + 1 == epochs or budget_done
            if (
                val_ds is not None
                and cfg.train.val_every
                and ((epoch + 1) % cfg.train.val_every == 0 or is_last)
            ):
                metrics = _validate(
                    cfg, val_ds, ema.module if ema is not None else detector, device, amp_dtype, dist_info
                )
                logger.log_val(ctx.step, epoch + 1, metrics)
                value = _best_metric_value(metrics, cfg.train.best_metric, val_ds.cache_dir)
                if metrics:
                    summary += f"  val mAP {metrics.get('mAP', float('nan')):.3f} "
                    summary += f"AP50 {metrics.get('AP50', float('nan')):.3f}"
                    for key in ("Dice", "cls_accuracy", "cls_AUC"):
                        if key in metrics:
                            summary += f" {key} {metrics[key]:.3f}"
                if value is not None and (state["best_metric"] is None or value > state["best_metric"]):
                    state["best_metric"], state["best_step"] = value, ctx.step
                    save("best", full=False)
                    summary += "  (best)"
            if dist_info.is_main and cfg.train.progress:
                from tqdm.auto import tqdm

                tqdm.write(summary)
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or is_last:
                save("last", full=True)
                saved_step = ctx.step
            if stop_at_step is not None and ctx.step >= stop_at_step:
                break
        if saved_step != ctx.step:
            save("last", full=True)
    finally:
        logger.plot()
        logger.close()
    return run_dir


def _best_metric_value(metrics: dict[str, float], name: str, cache_dir: Path) -> float | None:
    """``metrics[name]``; InputError naming the choices when validation does not produce it."""
    if not metrics or name in metrics:
        return metrics.get(name)
    if name == "mAP":  # the default: an architecture without boxes simply never saves best/
        return None
    raise InputError(
        cache_dir,
        f"train.best_metric={name!r} is not a validation metric here; choose one of {sorted(metrics)}",
    )


def _epoch_summary(epoch: int, epochs: int, ctx: StepContext, seconds: float) -> str:
    means = ctx.epoch_means
    terms = " ".join(f"{_SHORT[k]} {v:.3f}" for k, v in means.items() if k in _SHORT and k != "loss")
    loss = means.get("loss", float("nan"))
    return f"epoch {epoch + 1}/{epochs}  step {ctx.step}  loss {loss:.3f} ({terms})  {seconds:.1f}s"


def _validate(cfg, val_ds, model, device, amp_dtype, dist_info) -> dict[str, float]:
    sampler = EpochSampler(
        len(val_ds), seed=0, shuffle=False, rank=dist_info.rank, world_size=dist_info.world_size
    )
    loader = _make_loader(val_ds, sampler, cfg.data.batch_size, cfg.data.num_workers, 0, device)
    return evaluate(
        model,
        loader,
        val_ds,
        device,
        amp_dtype=amp_dtype,
        max_detections=cfg.train.max_detections,
        progress=cfg.train.progress,
    )


def resume_config_path(run_dir: str | Path) -> Path:
    """``RUN/config.yaml`` of a run to resume (``InputError`` when it is not a run folder)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "not a run folder (no config.yaml); cannot resume")
    return path


__all__ = [
    "LossModule",
    "StepContext",
    "autocast_dtype",
    "build_optimizer",
    "evaluate",
    "fit",
    "lr_factor",
    "read_state",
    "resume_config_path",
    "seed_everything",
    "select_device",
    "train_one_epoch",
]
