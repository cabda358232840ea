"""Issue 25: what each backbone costs under each architecture - parameters, FLOPs, CPU time per training step
and peak memory - at the demo's 64^3.

Usage::

    .venv/bin/python benchmarks/bench_backbones.py [--size 64] [--steps 2] [--threads 1] [--sizes S]
        [--kinds conv mednext_v2 resenc primus] [--archs organdetr seg2box maskmed]

Every (architecture, backbone, size) runs in a fresh process (``--one``), so that its peak resident set size
is its own. Architecture presets: ``organdetr`` = the ``demo`` preset (4 stages, fine level), ``seg2box`` =
the ``seg2box`` preset (``conv`` = MONAI BasicUNet), ``maskmed`` = the ``maskmed`` preset; ``model.backbone``
and ``model.backbone_size`` are set on top. One step = ``detector.loss`` + ``backward()`` on a synthetic
batch (``bench_model``'s targets; no optimiser step). ``gflop``: ``torch.utils.flop_counter`` over one step
(forward + backward; convolutions, matmuls and attention - norms and activations are not counted);
``cpu_s``: median process CPU time of ``--steps`` steps after a warm-up (divide by the threads for an idle
machine's wall time); ``peak_MiB``: growth of ``ru_maxrss`` over all steps above the built model's.
Backbones whose optional package is missing are reported as skipped (Primus without torchvision: put
``tests/`` on ``PYTHONPATH`` to measure it with ``tests/_torchvision_standin.py``). ``--set ARCH:KEY=VALUE``
adds a config override for one architecture (e.g. seg2box on the demo's pooled grid:
``--set seg2box:seg2box.input_stride=2 --set "seg2box:seg2box.features=[8, 8, 16, 32, 64, 8]"``). Prints one
JSON line per run, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench_model import _synthetic_targets
from organdetr.models import detector_from_config
from organdetr.training.config import load_config

PRESETS = {"organdetr": "demo", "seg2box": "seg2box", "maskmed": "maskmed"}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(
    arch: str, kind: str, size_name: str, size: int, steps: int, classes: int, extra: list[str] = ()
) -> dict:
    """One configuration's cost (see the module docstring); ``extra``: more ``KEY=VALUE`` overrides."""
    torch.manual_seed(0)
    grid = (size,) * 3
    overrides = [f"model.backbone={kind}", f"model.backbone_size={size_name}", *extra]
    cfg = load_config(PRESETS[arch], overrides)
    detector = detector_from_config(cfg, classes, grid).train()
    images = torch.randn(1, 1, *grid)
    targets = _synthetic_targets(1, size, classes, torch.device("cpu"))
    backbone = next((m for n, m in detector.named_modules() if n.endswith("backbone")), detector)
    base = _rss_mib()
    with FlopCounterMode(display=False) as counter:  # also the warm-up step
        detector.loss(images, targets)["loss"].backward()
    cpu = []
    for _ in range(steps):
        detector.zero_grad(set_to_none=True)
        start = time.process_time()
        detector.loss(images, targets)["loss"].backward()
        cpu.append(time.process_time() - start)
    return {
        "arch": arch,
        "backbone": kind,
        "size": size_name,
        "input": size,
        "params_M": round(sum(p.numel() for p in detector.parameters()) / 1e6, 3),
        "backbone_params_M": round(sum(p.numel() for p in backbone.parameters()) / 1e6, 3),
        "gflop_step": round(counter.get_total_flops() / 1e9, 2),
        "cpu_s": round(statistics.median(cpu), 2),
        "peak_MiB": round(_rss_mib() - base, 1),
        "threads": torch.get_num_threads(),
        **({"overrides": list(extra)} if extra else {}),
    }


def _run_one(args: argparse.Namespace, arch: str, kind: str, size_name: str) -> dict:
    command = [sys.executable, __file__, "--one", arch, kind, size_name, "--size", str(args.size)]
    command += ["--steps", str(args.steps), "--threads", str(args.threads), "--classes", str(args.classes)]
    command += [f"--set={item}" for item in args.set if item.startswith(f"{arch}:")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"arch": arch, "backbone": kind, "size": size_name, "skipped": reason}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _enable_primus_standin() -> None:
    """With ``tests/`` on ``PYTHONPATH``, Primus is measured where torchvision is missing (timm imports it;
    Primus never calls it): ``tests/_torchvision_standin.py``. Otherwise Primus needs a real torchvision."""
    try:
        from _torchvision_standin import enable_primus
    except ImportError:
        return
    enable_primus()


def _table(rows: list[dict]) -> str:
    lines = ["| arch | backbone | size | params M (backbone) | GFLOP / step | CPU s / step | peak MiB |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['arch']} | {r['backbone']} | {r['size']} | skipped: {r['skipped']} | | | |")
            continue
        lines.append(
            f"| {r['arch']} | {r['backbone']} | {r['size']} | {r['params_M']} ({r['backbone_params_M']}) | "
            f"{r['gflop_step']} | {r['cpu_s']} | {r['peak_MiB']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("ARCH", "BACKBONE", "SIZE"), help="measure one (internal)")
    parser.add_argument("--kinds", nargs="+", default=["conv", "mednext_v2", "resenc", "primus"])
    parser.add_argument("--archs", nargs="+", default=["organdetr", "seg2box"])
    parser.add_argument("--sizes", nargs="+", default=["S"])
    parser.add_argument("--size", type=int, default=64, help="cubic input size (voxels)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--set", action="append", default=[], metavar="ARCH:KEY=VALUE",
        help="a config override for one architecture, e.g. 'seg2box:seg2box.input_stride=2' (repeatable)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        arch, kind, size_name = args.one
        _enable_primus_standin()
        extra = [item.partition(":")[2] for item in args.set if item.startswith(f"{arch}:")]
        print(json.dumps(measure(arch, kind, size_name, args.size, args.steps, args.classes, extra)))
        return
    rows = []
    for arch in args.archs:
        for kind in args.kinds:
            for size_name in ["-"] if kind == "conv" else args.sizes:
                rows.append(_run_one(args, arch, kind, "S" if size_name == "-" else size_name))
                print(json.dumps(rows[-1]), flush=True)
    print(_table(rows))


if __name__ == "__main__":
    main()
