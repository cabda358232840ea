"""Time `organdetr.datasets.synthetic.phantom`: seconds per generated case, and per case written as .nii.gz.

Usage: .venv/bin/python benchmarks/bench_phantom.py [--cases 10] [--size 96 96 96] [--spacing 4 4 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96))
    parser.add_argument("--spacing", type=float, nargs=3, default=(4.0, 4.0, 4.0))
    args = parser.parse_args()

    import SimpleITK as sitk

    from organdetr.datasets.synthetic.phantom import PhantomConfig, generate_case, write_case

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cfg = PhantomConfig(size=tuple(args.size), spacing=tuple(args.spacing))
    generate_case(10_000, cfg)  # warm-up (imports, caches)
    generate = []
    for seed in range(args.cases):
        start = time.perf_counter()
        generate_case(seed, cfg)
        generate.append(time.perf_counter() - start)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.cases):
            start = time.perf_counter()
            write_case(Path(tmp), seed, seed, cfg)
            written.append(time.perf_counter() - start)
    size = "x".join(str(s) for s in args.size)
    print(f"grid {size} @ {args.spacing} mm, {args.cases} cases, 1 thread")
    print(f"generate_case: median {statistics.median(generate):.3f} s, max {max(generate):.3f} s")
    print(f"generate + write .nii.gz (image + labels): median {statistics.median(written):.3f} s")


if __name__ == "__main__":
    main()
