"""Model cost: parameters, FLOPs, latency and peak memory of a forward pass.

* Parameters: ``count_parameters`` (every element of every parameter, shared ones once).
* FLOPs: ``count_flops`` runs the forward under ``torch.utils.flop_counter.FlopCounterMode``, which counts
  matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``), convolutions and scaled-dot-product attention,
  2 FLOPs per multiply-add. It does **not** count element-wise ops, activations, normalisation, softmax
  outside SDPA, pooling, interpolation / ``grid_sample``, reductions, or anything outside torch (e.g. the
  Hungarian solver, NMS bookkeeping). ``COUNTED_OPS`` lists exactly what it counts in this torch version.
* Latency: ``measure_latency`` times several callables *interleaved* (round-robin, after warm-up) so
  they share the same machine state; compare them as ratios, not with times taken in other runs.
* Peak memory: on CUDA the allocator's peak (``max_memory_allocated``) above the level before the call;
  on CPU the peak bytes of live tensor storages created during the call, tracked with a
  ``TorchDispatchMode`` (what the forward keeps alive; kernels' internal scratch buffers are not seen).
  The process RSS is useless for this on CPU: glibc reuses freed pages, so small forwards add nothing.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

COUNTED_OPS: tuple[str, ...] = tuple(sorted(str(op) for op in flop_registry))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (each shared parameter counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@dataclass
class FlopCount:
    """FLOPs of one call: ``total`` and per counted aten op (e.g. ``"aten.convolution"``)."""

    total: int
    by_op: dict[str, int]

    @property
    def gflops(self) -> float:
        return self.total / 1e9


@contextlib.contextmanager
def _parameters_frozen(module: nn.Module | None) -> Iterator[None]:
    """Temporarily ``requires_grad=False`` on ``module``'s parameters.

    ``FlopCounterMode``'s module tracker hooks every module input that requires grad and fails on views of
    parameters taken under ``no_grad`` (e.g. ``query_embed.weight.expand(...)``); frozen parameters have none.
    """
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of ``fn(*args, **kwargs)`` (a module or any callable) as ``FlopCounterMode`` counts them.

    Runs ``fn`` once under ``torch.no_grad()`` (forward only). See the module docstring for what is counted.
    """
    counter = FlopCounterMode(display=False)
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    with torch.no_grad(), _parameters_frozen(owner if isinstance(owner, nn.Module) else None), counter:
        fn(*args, **kwargs)
    by_op: dict[str, int] = {}
    for ops in counter.get_flop_counts().values():
        for op, flops in ops.items():
            name = str(op)
            by_op[name] = max(by_op.get(name, 0), int(flops))  # per-module tables repeat the global one
    return FlopCount(total=int(counter.get_total_flops()), by_op=by_op)


@dataclass
class LatencyStats:
    """Wall-clock seconds of one call: median, mean, min, max over ``repeats`` timed runs."""

    median_s: float
    mean_s: float
    min_s: float
    max_s: float
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    candidates: dict[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> dict[str, LatencyStats]:
    """Time each zero-argument callable ``repeats`` times, round-robin, after ``warmup`` calls each.

    Interleaving puts every candidate under the same load (other processes, thermal state), so their ratios
    are meaningful even on a shared machine; ``device`` (CUDA) is synchronised around each call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    device = torch.device(device) if device is not None else None
    with torch.no_grad():
        for fn in candidates.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - start)
    return {
        name: LatencyStats(
            median_s=statistics.median(t),
            mean_s=statistics.fmean(t),
            min_s=min(t),
            max_s=max(t),
            repeats=len(t),
        )
        for name, t in times.items()
    }


class _LiveTensorBytes(TorchDispatchMode):
    """Track the bytes of tensor storages created by aten ops inside the mode: current and peak.

    A storage counts from the first op output that uses it until the last such Python tensor is freed
    (weak-reference finalizers). Inputs made before entering, and kernels' internal scratch buffers
    (e.g. a convolution's workspace) are not seen: the peak is the tensors the forward itself keeps alive.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}  # storage data_ptr -> [python refs, nbytes]
        self._foreign: set[int] = set()

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                key = t.untyped_storage().data_ptr()
                if key not in self._refs:
                    self._foreign.add(key)  # made before the call (inputs, parameters): not ours
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._foreign:
                continue
            entry = self._refs.get(key)
            if entry is None:
                self._refs[key] = [1, nbytes]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            else:
                entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Peak memory (bytes) that ``fn()`` adds above what was in use before it, under ``torch.no_grad``.

    CUDA: the caching allocator's peak above the allocated bytes before the call. CPU: the peak of tensor
    storages created during the call and still referenced (see :class:`_LiveTensorBytes`); kernels'
    scratch buffers are not included, so it is a lower bound of the process's extra memory.
    """
    device = torch.device(device)
    gc.collect()
    with torch.no_grad():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            torch.cuda.synchronize(device)
            return int(torch.cuda.max_memory_allocated(device) - base)
        tracker = _LiveTensorBytes()
        with tracker:
            result = fn()
        del result
        return int(tracker.peak)


@dataclass
class ModelProfile:
    """Cost of one detector forward on a single scan (``[1, 1, I, J, K]``)."""

    params: int
    flops: int
    peak_memory_bytes: int
    input_size: tuple[int, int, int]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d


def profile_detector(
    detector: nn.Module,
    input_size: tuple[int, int, int],
    device: torch.device | str = "cpu",
    in_channels: int = 1,
) -> ModelProfile:
    """Parameters, FLOPs and peak memory of one inference on a ``[1, C, I, J, K]`` scan (eval mode).

    Inference is ``detector.detect`` when it has one (the Detector protocol: network + post-processing,
    e.g. NMS) else ``detector(images)``; parameters are those of the whole module.
    """
    device = torch.device(device)
    was_training = detector.training
    detector.eval()
    infer = getattr(detector, "detect", detector)
    images = torch.zeros(1, in_channels, *input_size, device=device)
    try:
        flops = count_flops(infer, images)  # also the warm-up call for the memory measurement
        peak = peak_memory_bytes(lambda: infer(images), device)
    finally:
        detector.train(was_training)
    return ModelProfile(
        params=count_parameters(detector),
        flops=flops.total,
        peak_memory_bytes=peak,
        input_size=tuple(int(s) for s in input_size),
    )


__all__ = [
    "COUNTED_OPS",
    "FlopCount",
    "LatencyStats",
    "ModelProfile",
    "count_flops",
    "count_parameters",
    "measure_latency",
    "peak_memory_bytes",
    "profile_detector",
]
