"""Peak memory (RSS) and time of `organdetr predict` on a large synthetic CT.

Writes a 512 x 512 x N int16 CT (NIfTI) with a few HU blobs, a randomly initialised checkpoint
(``--preset``, grid ``--grid``^3), then runs ``organdetr predict`` in a child process and reports its
peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss``) and wall time. The scan itself is
``512*512*N*2`` bytes; the point is that prediction needs a small multiple of that, not of the
full-resolution float tensor (the scan is resampled onto the model grid before the model sees it).

    .venv/bin/python benchmarks/bench_predict_memory.py --slices 400
    .venv/bin/python benchmarks/bench_predict_memory.py --slices 1000 --no-overlay
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_scan(path: Path, slices: int) -> None:
    from organdetr.core.geometry import Geometry
    from organdetr.io.images import write_image

    array = np.full((512, 512, slices), -1000, dtype=np.int16)
    array[96:416, 128:400, :] = 30  # body
    array[150:260, 180:300, slices // 4 : slices // 2] = 60  # liver-like
    array[300:360, 200:260, slices // 3 : slices // 2] = 45  # spleen-like
    write_image(
        path,
        array,
        Geometry((512, 512, slices), (0.8, 0.8, 1.0), (-200.0, -200.0, -500.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
    )


def write_checkpoint(run: Path, preset: str, grid: int) -> None:
    import torch

    from organdetr.models import build_detector
    from organdetr.preprocessing.plans import PreprocessConfig, make_plans
    from organdetr.training.checkpoint import save_checkpoint
    from organdetr.training.config import dump_config, load_config

    torch.manual_seed(0)
    classes = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
    cfg = load_config(preset)
    detector = build_detector(cfg.arch, cfg.model, cfg.matcher, cfg.loss, len(classes), (grid,) * 3)
    plans = make_plans(PreprocessConfig(input_size=(grid,) * 3), classes)
    save_checkpoint(
        run / "last", detector, {"step": 0}, config_yaml=dump_config(cfg), plans=plans, include_rng=False
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--grid", type=int, default=64)
    parser.add_argument("--no-overlay", action="store_true")
    parser.add_argument("--box-mask", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        write_scan(tmp / "big.nii.gz", args.slices)
        write_checkpoint(tmp / "run", args.preset, args.grid)
        print(
            f"setup {time.perf_counter() - t0:.1f} s; scan 512x512x{args.slices} int16 = "
            f"{512 * 512 * args.slices * 2 / 2**30:.2f} GiB in memory"
        )
        cmd = [
            str(Path(sys.executable).parent / "organdetr"),
            "predict",
            str(tmp / "run"),
            str(tmp / "big.nii.gz"),
            "-o",
            str(tmp / "out"),
            "--device",
            "cpu",
            "--no-progress",
        ]
        cmd += ["--no-overlay"] if args.no_overlay else []
        cmd += ["--save-box-mask"] if args.box_mask else []
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(
            f"predict: wall {wall:.1f} s, peak RSS {peak_kib / 2**20:.2f} GiB "
            f"(overlay={'off' if args.no_overlay else 'on'}, box mask={'on' if args.box_mask else 'off'})"
        )


if __name__ == "__main__":
    main()
