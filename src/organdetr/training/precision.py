"""``train.amp=auto`` on the CPU: bf16 or fp32, by timing the run's real training step.

On a CPU with bf16 instructions ``train.amp=auto`` times one forward + backward of the real detector on the
first training batch in fp32 and in bf16 (:func:`organdetr.runtime.devices.choose_cpu_amp`) and trains in
bf16 only when it is clearly faster. The measurement leaves no trace in the run: the batch is read from the
dataset directly (the loader's order and augmentation draws are untouched), gradients are cleared, and the
RNG states and the detector's buffers (BatchNorm running statistics) are put back, so a run gives the same
numbers whether or not it measured. A resumed run keeps the choice its ``state.json`` holds (exact resume).
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from organdetr.data.cache_dataset import CacheDataset, collate
from organdetr.runtime.devices import AmpChoice, choose_cpu_amp, measures_cpu_amp
from organdetr.training.checkpoint import rng_state, set_rng_state
from organdetr.training.config import TrainConfig
from organdetr.training.loop import targets_to

MEASURE_STEPS = 3  # timed forward + backward steps per precision (after one warm-up each)


def settle_train_amp(
    cfg: TrainConfig,
    detector: nn.Module,
    train_ds: CacheDataset,
    device: torch.device,
    dtype: torch.dtype | None,
    state: dict,
    *,
    resume: bool,
    distributed: bool,
    announce: bool,
) -> torch.dtype | None:
    """The autocast dtype a run trains with: ``dtype`` as configured, or for ``train.amp=auto`` on the CPU
    the measured choice (:func:`choose_train_amp`). Records the choice as ``state["amp"]`` (every
    checkpoint's ``state.json``) and prints it when ``announce``."""
    if measures_cpu_amp(cfg.train.amp, device):
        choice = choose_train_amp(
            detector,
            train_ds,
            cfg.data.batch_size,
            device,
            distributed=distributed,
            resumed=state.get("amp") if resume else None,
        )
    else:
        choice = AmpChoice(dtype, None, f"train.amp={cfg.train.amp} on {device.type}")
    state["amp"] = choice.as_dict()
    if announce:
        tqdm.write(f"amp: {choice.describe()}")
    return choice.dtype


def choose_train_amp(
    detector: nn.Module,
    train_ds: CacheDataset,
    batch_size: int,
    device: torch.device,
    *,
    distributed: bool = False,
    resumed: dict | None = None,
) -> AmpChoice:
    """The precision of a ``train.amp=auto`` run on the CPU (:func:`measures_cpu_amp`).

    ``resumed`` is the ``"amp"`` entry of a resumed run's ``state.json`` (kept as it is). A distributed CPU
    run trains in fp32 on every rank (ranks timing apart could pick different precisions).
    """
    if resumed:
        kept = AmpChoice.from_dict(resumed)
        return AmpChoice(kept.dtype, kept.ratio, f"{kept.reason}; kept on resume")
    if distributed:
        return AmpChoice(None, None, "distributed CPU run: fp32 on every rank")
    non_finite: list[bool] = []
    choice = choose_cpu_amp(
        _measured_step(detector, train_ds, batch_size, device, non_finite), steps=MEASURE_STEPS
    )
    if choice.dtype is not None and any(non_finite):
        reason = f"bf16 measured {choice.ratio:.2f}x but gave non-finite gradients"
        return AmpChoice(None, choice.ratio, reason)
    return choice


def _measured_step(
    detector: nn.Module, train_ds: CacheDataset, batch_size: int, device: torch.device, non_finite: list
):
    """A zero-argument forward + backward of ``detector`` on the dataset's first ``batch_size`` cases
    (augmented with a fixed seed, as training sees them), undoing its side effects after every call.

    Appends to ``non_finite`` whether a bf16 call's gradients hold NaN/inf: torch 2.13's CPU bf16 Conv3d
    weight gradient is intermittently non-finite on volumes of 1-2 voxels a side (the deepest levels of a
    64^3 input), so a run that sees it during the measurement stays in fp32.
    """
    count = min(batch_size, len(train_ds))
    images, targets = collate([train_ds[(i, 0)] for i in range(count)])
    images, targets = images.to(device), targets_to(targets, device)

    def step() -> None:
        rng = rng_state()
        buffers = [b.detach().clone() for b in detector.buffers()]
        was_training = detector.training
        detector.train()
        try:
            detector.loss(images, targets)["loss"].backward()
            if torch.is_autocast_enabled("cpu"):
                grads = [p.grad for p in detector.parameters() if p.grad is not None]
                non_finite.append(not all(bool(torch.isfinite(g).all()) for g in grads))
        finally:
            detector.zero_grad(set_to_none=True)
            detector.train(was_training)
            with torch.no_grad():
                for saved, buffer in zip(buffers, detector.buffers(), strict=True):
                    buffer.copy_(saved)
            set_rng_state(rng)

    return step


__all__ = ["MEASURE_STEPS", "choose_train_amp", "settle_train_amp"]
