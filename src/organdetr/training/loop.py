"""One training epoch: the loss module DDP wraps, the step context and ``train_one_epoch``.

The loop talks to every architecture through the Detector protocol (``organdetr.models.build_detector``):
``detector.loss(images, targets) -> dict`` of weighted terms plus ``"loss"``. Training is counted in
optimizer steps; an epoch is one pass over this rank's shard of the training cases.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from organdetr.training import distributed
from organdetr.training.config import OptimConfig
from organdetr.training.init_from import Freezer
from organdetr.training.optim import lr_factor, set_lr
from organdetr.training.train_log import TrainLogger


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
    freezer: Freezer | None = None  # finetune.freeze: parts kept fixed for the first steps
    history: list[dict] = field(default_factory=list)
    epoch_means: dict[str, float] = field(default_factory=dict)  # mean loss terms of the last epoch


LOSS_SHORT_NAMES = {
    "loss": "loss",
    "loss_class": "cls",
    "loss_bbox": "l1",
    "loss_giou": "giou",
    "loss_seg": "seg",
}


def train_one_epoch(model: nn.Module, loader: Iterable, ctx: StepContext, detector: nn.Module) -> int:
    """Train over ``loader`` (until ``ctx.stop_at_step``); returns the new global step.

    ``model(images, targets) -> dict`` is the (possibly DDP-wrapped) :class:`LossModule`; ``detector`` is the
    bare detector (for the EMA). Raises ``FloatingPointError`` on a non-finite loss.
    """
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
    running: dict[str, float] = {}  # sums since the last logged row
    count = 0
    epoch_sum: dict[str, float] = {}
    epoch_count = 0
    for images, targets in bar:
        if ctx.stop_at_step is not None and ctx.step >= ctx.stop_at_step:
            break
        losses, grad_norm = _train_step(model, images, targets, ctx, detector)
        count += 1
        values = {k: float(v.detach()) for k, v in losses.items() if v.ndim == 0}
        for k, v in values.items():
            running[k] = running.get(k, 0.0) + v
            epoch_sum[k] = epoch_sum.get(k, 0.0) + v
        epoch_count += 1
        if main:
            bar.set_postfix(
                {LOSS_SHORT_NAMES[k]: f"{v:.3f}" for k, v in values.items() if k in LOSS_SHORT_NAMES},
                refresh=False,
            )
        if ctx.step % ctx.log_every == 0:
            _log_means(ctx, {k: v / count for k, v in running.items()}, grad_norm)
            running, count = {}, 0
    bar.close()
    ctx.epoch_means = {k: v / epoch_count for k, v in epoch_sum.items()} if epoch_count else {}
    return ctx.step


def _train_step(
    model: nn.Module, images: Tensor, targets: list[dict], ctx: StepContext, detector: nn.Module
) -> tuple[dict[str, Tensor], Tensor | None]:
    """One optimizer step on a batch (lr, forward under autocast, backward, step, EMA); ``ctx.step`` + 1.

    Returns the loss terms and the gradient norm before clipping (``None`` without clipping).
    """
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
    grad_norm = _backward_and_update(model, loss, ctx)
    if ctx.ema is not None:
        ctx.ema.update_parameters(detector)
    ctx.step += 1
    return losses, grad_norm


def _backward_and_update(model: nn.Module, loss: Tensor, ctx: StepContext) -> Tensor | None:
    """Backward (through the fp16 grad scaler when it is on), clip to ``optim.grad_clip``, optimizer step."""
    ctx.optimizer.zero_grad(set_to_none=True)
    scaler = ctx.scaler if ctx.scaler is not None and ctx.scaler.is_enabled() else None
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    if ctx.freezer is not None:
        ctx.freezer.apply(ctx.step)
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
    return grad_norm


def _log_means(ctx: StepContext, means: dict[str, float], grad_norm: Tensor | None) -> None:
    """Log one row: the loss terms averaged over the steps since the last row (and ranks), lr, grad norm."""
    mean = distributed.all_reduce_mean(means)
    mean["lr"] = ctx.optimizer.param_groups[-1]["lr"]
    if grad_norm is not None:
        mean["grad_norm"] = float(grad_norm)
    ctx.history.append({"step": ctx.step, **mean})
    if ctx.logger is not None:
        ctx.logger.log_train(ctx.step, ctx.epoch, mean)


def epoch_summary(epoch: int, epochs: int, ctx: StepContext, seconds: float) -> str:
    """The epoch's line for the console: step, mean loss and its main terms, time."""
    means = ctx.epoch_means
    terms = " ".join(
        f"{LOSS_SHORT_NAMES[k]} {v:.3f}" for k, v in means.items() if k in LOSS_SHORT_NAMES and k != "loss"
    )
    loss = means.get("loss", float("nan"))
    return f"epoch {epoch + 1}/{epochs}  step {ctx.step}  loss {loss:.3f} ({terms})  {seconds:.1f}s"


__all__ = ["LOSS_SHORT_NAMES", "LossModule", "StepContext", "epoch_summary", "targets_to", "train_one_epoch"]
