"""One resolver for devices, mixed precision and seeds, shared by training and inference.

``resolve_device("auto")`` is ``cuda:<local_rank>`` when torch sees a GPU, else the CPU; a CUDA device
asked for on a machine without one is an :class:`InputError`
naming the option that asked.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from organdetr.runtime.errors import InputError


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
        raise InputError(None, f"{option} {name!r} is not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"{option} {name!r}: no CUDA GPU is visible to torch (use cpu)")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``amp`` (``auto|bf16|fp16|off``) on ``device``; ``None`` = full fp32.

    Off on the CPU; on CUDA ``auto`` takes bf16 where the GPU supports it.
    """
    if device.type != "cuda" or amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if amp == "bf16" else torch.float16


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


__all__ = ["autocast_dtype", "resolve_device", "seed_everything"]
