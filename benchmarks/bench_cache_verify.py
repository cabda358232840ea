"""What verifying a cache costs: ``verify_cases`` (train, before the first step) and ``is_complete``
(preprocess, on reuse) over cases of a given grid, against just reading the arrays.

Writes ``--cases`` cases of ``--size``^3 float32 images + uint8 labels with
``organdetr.preprocessing.cache.write_case`` (checksums recorded), then times, best of ``--repeats`` (files
in the page
cache, as on a rerun): reading every array once (``np.load``), ``is_complete`` (sizes, headers, SHA-256) and
``verify_cases`` (that plus the NaN/inf scan of each image).

    .venv/bin/python benchmarks/bench_cache_verify.py --cases 8 --size 160
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from organdetr.preprocessing.cache import is_complete, verify_cases, write_case
    from organdetr.preprocessing.plans import PreprocessConfig, make_plans

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    grid = (args.size,) * 3
    plans = make_plans(PreprocessConfig(input_size=grid), {1: "liver"})
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        ids = [f"case_{i:03d}" for i in range(args.cases)]
        for case_id in ids:
            record = {"grid": {"size": list(grid)}}
            write_case(cache, case_id, rng.random(grid, dtype=np.float32), np.zeros(grid, np.uint8), record)
        mib = sum(p.stat().st_size for p in (cache / "cases").glob("*.npy")) / 2**20

        def best(fn) -> float:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        read = best(lambda: [np.load(p).sum() for p in sorted((cache / "cases").glob("*.npy"))])
        complete = best(lambda: [is_complete(cache, c, plans) for c in ids])
        verify = best(lambda: verify_cases(cache, ids, plans))
    print(f"{args.cases} cases of {args.size}^3 (float32 image + uint8 label): {mib:.0f} MiB of arrays")
    for name, seconds in (("read every array", read), ("is_complete", complete), ("verify_cases", verify)):
        per_case = seconds / args.cases * 1000
        print(f"  {name:18s} {seconds:6.3f} s  {per_case:7.1f} ms/case  {mib / seconds:6.0f} MiB/s")


if __name__ == "__main__":
    main()
