"""Organ-DETR training-step cost: parameters, forward+backward time and peak memory (CPU or GPU).

Usage::

    .venv/bin/python benchmarks/bench_model.py --preset demo --size 64 --batch 2 --steps 3 --threads 1
    .venv/bin/python benchmarks/bench_model.py --preset paper --size 160 --batch 1 --steps 1 --threads 2
    .venv/bin/python benchmarks/bench_model.py --preset demo --set model.encoder=fpn --set model.n_points=2

One training step = ``detector.loss(images, targets)`` (forward, DQM matching, all losses incl. auxiliary
decoder and multiscale segmentation losses) + ``backward()``; no optimiser step. Time is the median over
``--steps`` after one warm-up step, as wall clock and as this process's CPU time (``time.process_time``:
on a shared machine the CPU time, divided by the threads, is the better guide to an idle machine's wall
time). Peak memory on CPU is the growth of the process's peak resident set
size (``resource.getrusage(...).ru_maxrss``) across the warm-up and timed steps, above the RSS after the
model, input and targets were built: it contains activations, gradients, the autograd graph and allocator
slack (an upper bound of activation memory). On CUDA it is ``torch.cuda.max_memory_allocated`` above the
allocation before the first step. Each invocation is a fresh process, so ``ru_maxrss`` is not polluted by
an earlier configuration.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch

from organdetr.models import detector_from_config
from organdetr.training.config import load_config


def _synthetic_targets(batch: int, size: int, num_classes: int, device: torch.device) -> list[dict]:
    """``num_classes`` non-overlapping cubic organs per image (boxes normalised cxcyczwhd, seg labels)."""
    per_axis = max(2, round(num_classes ** (1 / 3) + 0.5))
    cell = size // per_axis
    seg = torch.zeros(size, size, size, dtype=torch.int64)
    boxes = []
    for c in range(num_classes):
        i, j, k = c % per_axis, (c // per_axis) % per_axis, c // per_axis**2
        lo = torch.tensor([i, j, k]) * cell + cell // 4
        hi = lo + cell // 2
        seg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = c + 1
        boxes.append(torch.cat([(lo + hi) / 2, hi - lo]).float() / size)
    target = {"labels": torch.arange(num_classes), "boxes": torch.stack(boxes), "seg": seg}
    return [{k: v.to(device) for k, v in target.items()} for _ in range(batch)]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="small", help="config preset (tiny, small, demo, paper, detr, seg2box)"
    )
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    parser.add_argument("--size", type=int, default=64, help="cubic input size (voxels)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp", choices=("off", "bf16"), default="off", help="bf16: the step under torch.autocast"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    size = (args.size,) * 3
    cfg = load_config(args.preset, args.set)
    detector = detector_from_config(cfg, args.classes, size).to(device)
    detector.train()
    images = torch.randn(args.batch, 1, *size, device=device)
    targets = _synthetic_targets(args.batch, args.size, args.classes, device)
    params = sum(p.numel() for p in detector.parameters())

    base_rss = _rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times, cpu_times = [], []
    for step in range(args.steps + 1):
        detector.zero_grad(set_to_none=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            loss = detector.loss(images, targets)["loss"]
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step > 0:  # first step is warm-up
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    if device.type == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        peak_kind = "cuda max_memory_allocated"
    else:
        peak_mib = _rss_mib() - base_rss
        peak_kind = "ru_maxrss growth"
    result = {
        "preset": args.preset,
        "set": args.set,
        "input": list(size),
        "batch": args.batch,
        "classes": args.classes,
        "params_M": round(params / 1e6, 3),
        "step_s_median": round(statistics.median(times), 3),
        "step_s_all": [round(t, 3) for t in times],
        "cpu_s_median": round(statistics.median(cpu_times), 3),
        "peak_MiB": round(peak_mib, 1),
        "peak_kind": peak_kind,
        "threads": args.threads,
        "amp": args.amp,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
