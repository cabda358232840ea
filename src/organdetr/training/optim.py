"""The optimizer and its schedule: AdamW parameter groups and the learning-rate factor of each step."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from organdetr.training.config import OptimConfig


def build_optimizer(detector: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW; ``*.backbone.*`` parameters get ``lr * backbone_lr_scale``, ``*.transformer.*`` parameters
    ``lr * transformer_lr_scale`` (separate rates for a model's CNN and attention parts, as MaskMed
    trains them); no decay on norms / biases. With ``offset_lr_scale != 1`` the deformable attention's
    sampling-offset projections get ``lr * offset_lr_scale`` (Deformable DETR trains them at 0.1x: a large
    step moves every sampling point of a query at once, away from the features its box head has learned to
    read); they then form the last groups, after those of older checkpoints."""
    scales = {"transformer": cfg.transformer_lr_scale, "backbone": cfg.backbone_lr_scale, "head": 1.0}
    if cfg.offset_lr_scale != 1.0:
        scales["offsets"] = cfg.offset_lr_scale
    groups: dict[tuple[str, bool], list[Tensor]] = {}
    for name, param in detector.named_parameters():
        if not param.requires_grad:
            continue
        part = next((p for p in ("backbone", "transformer") if f".{p}." in f".{name}"), "head")
        if "offsets" in scales and ".sampling_offsets." in f".{name}":
            part = "offsets"
        no_decay = param.ndim <= 1 or name.endswith("_embed")
        groups.setdefault((part, no_decay), []).append(param)
    param_groups = []
    order = ["head", "backbone", "transformer", "offsets"]  # the group order of older checkpoints first
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
    """Set every parameter group's lr to its ``initial_lr * factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


__all__ = ["build_optimizer", "lr_factor", "set_lr"]
