"""One resolver for devices, mixed precision and seeds, shared by training and inference.

``resolve_device("auto")`` is ``cuda:<local_rank>`` when torch sees a GPU, else the CPU; a CUDA device
asked for on a machine without one is an :class:`InputError`
naming the option that asked. Mixed precision: :func:`autocast_dtype` (CUDA bf16 where supported; on
the CPU ``auto`` is decided by :func:`choose_cpu_amp`, which times the caller's real step in fp32 and bf16).
"""

from __future__ import annotations

import os
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief


def resolve_device(name: str = "auto", local_rank: int = 0, *, option: str = "--device") -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when a GPU is visible, else CPU; otherwise ``torch.device(name)``.

    ``option`` names the setting in the error (``--device`` for predict, ``train.device`` for training).
    A bare ``cuda`` becomes ``cuda:<local_rank>`` (each DDP rank its own GPU).
    """
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(None, f"{option} {brief(name)} is not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"{option} {brief(name)}: no CUDA GPU is visible to torch (use cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


# The CPU flags of the instructions that make bf16 matrix maths fast (AVX-512 BF16 dot products, AMX tiles);
# without them torch emulates bf16 and autocast is usually slower than fp32.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# "0" / "1" overrides the /proc/cpuinfo check (tests pin it to "0" so results do not depend on the CPU).
CPU_BF16_ENV = "ORGANDETR_CPU_BF16"
# bf16 must be clearly faster to be worth its 8-bit mantissa: 15 % is beyond the few-percent run-to-run
# noise of a median of 3 steps on a shared machine, and below the 1.24x (AVX-512 BF16) and ~2.2x (AMX)
# measured for the demo model's training step, so those CPUs take it and marginal ones stay exact.
CPU_BF16_MIN_SPEEDUP = 1.15


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``amp`` (``auto|bf16|fp16|off``) on ``device``; ``None`` = full fp32.

    CUDA: ``auto`` takes bf16 where the GPU supports it, ``bf16`` / ``fp16`` as asked.
    CPU: ``bf16`` is bf16 (the user's explicit choice, even on a CPU without bf16 instructions, where it is
    slow); ``fp16`` falls back to fp32 with a warning (CPU fp16 autocast is slower than fp32 and needs a
    grad scaler; not an error, so one config serves GPU and CPU); ``auto`` is fp32 here: choosing bf16
    needs a measurement of the real step, :func:`choose_cpu_amp` (see :func:`measures_cpu_amp`).
    Other devices: fp32.
    """
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cpu":
        if amp == "fp16":
            warnings.warn("amp fp16 is not used on the CPU; training / predicting in fp32", stacklevel=2)
        return torch.bfloat16 if amp == "bf16" else None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


def measures_cpu_amp(amp: str, device: torch.device) -> bool:
    """Whether ``amp`` on ``device`` is decided by timing the real step (:func:`choose_cpu_amp`): ``auto`` on
    the CPU."""
    return amp == "auto" and device.type == "cpu"


def cpu_bf16_capable(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bf16 instructions (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``).

    ``False`` where the file is missing or unreadable (macOS, Windows, containers hiding it);
    ``ORGANDETR_CPU_BF16=0|1`` overrides the check.
    """
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


@dataclass(frozen=True)
class AmpChoice:
    """The precision picked for a CPU run: ``dtype`` (``None`` = fp32), ``ratio`` = fp32 seconds / bf16
    seconds per step (``None`` when not measured) and a one-line ``reason``."""

    dtype: torch.dtype | None
    ratio: float | None
    reason: str

    @property
    def name(self) -> str:
        """``bf16`` | ``fp16`` | ``fp32``."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def describe(self) -> str:
        """E.g. ``bf16 (measured 1.24x over fp32 on this CPU)``."""
        return f"{self.name} ({self.reason})"

    def as_dict(self) -> dict:
        """JSON-ready: ``{"dtype": "bf16", "ratio": 1.24, "reason": ...}``."""
        ratio = None if self.ratio is None else round(self.ratio, 3)
        return {"dtype": self.name, "ratio": ratio, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict) -> AmpChoice:
        """Inverse of :meth:`as_dict`."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(data.get("dtype", "fp32"))
        return cls(dtype, data.get("ratio"), str(data.get("reason", "")))


def choose_cpu_amp(
    step_fn: Callable[[], object], *, steps: int = 3, threshold: float = CPU_BF16_MIN_SPEEDUP
) -> AmpChoice:
    """bf16 or fp32 for the CPU, by timing ``step_fn`` (e.g. one forward + backward of the real model on a
    real batch) in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

    Without bf16 instructions (:func:`cpu_bf16_capable`) fp32 at once, ``step_fn`` is not called. Else each
    precision gets one warm-up call (allocator, oneDNN kernel selection) and ``steps`` timed calls; bf16 is
    chosen when median fp32 / median bf16 >= ``threshold``. ``step_fn`` runs inside the autocast context
    (a backward in it is unaffected: autograd replays the forward's dtypes). Times are wall-clock
    (``time.perf_counter``): what the user waits for; ``process_time`` would add up the intra-op threads.
    The caller undoes ``step_fn``'s side effects (gradients, RNG draws, running statistics).
    """
    if not cpu_bf16_capable():
        return AmpChoice(None, None, "no bf16 instructions on this CPU")
    fp32 = _median_seconds(step_fn, steps, None)
    bf16 = _median_seconds(step_fn, steps, torch.bfloat16)
    ratio = fp32 / max(bf16, 1e-9)
    if ratio >= threshold:
        return AmpChoice(torch.bfloat16, ratio, f"measured {ratio:.2f}x over fp32 on this CPU")
    return AmpChoice(None, ratio, f"bf16 measured only {ratio:.2f}x over fp32 on this CPU (< {threshold:g}x)")


def _median_seconds(step_fn: Callable[[], object], steps: int, dtype: torch.dtype | None) -> float:
    """Median wall seconds of ``steps`` calls of ``step_fn`` after a warm-up, under CPU autocast ``dtype``."""
    times = []
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        step_fn()
        for _ in range(max(1, steps)):
            start = time.perf_counter()
            step_fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with ``deterministic`` also force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


__all__ = [
    "CPU_BF16_ENV",
    "CPU_BF16_FLAGS",
    "CPU_BF16_MIN_SPEEDUP",
    "AmpChoice",
    "autocast_dtype",
    "choose_cpu_amp",
    "cpu_bf16_capable",
    "measures_cpu_amp",
    "resolve_device",
    "seed_everything",
]
