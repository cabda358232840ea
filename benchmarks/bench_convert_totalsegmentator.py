"""Time `organdetr convert totalsegmentator` on one synthetic subject with all 117 structure masks.

Usage: .venv/bin/python benchmarks/bench_convert_totalsegmentator.py --size 160 160 160 --repeats 3

Builds <tmp>/src/s0001/{ct.nii.gz, segmentations/<117 masks>.nii.gz} (40 non-empty boxes, the rest
empty, as in a real TotalSegmentator subject), then times the merge of the masks into one label map
and the whole conversion of the case (read, merge, check, write image + label), best of N.
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np

from _timing import best_of
from organdetr.core.geometry import Geometry
from organdetr.datasets.conversion import convert_case, dense_class_map
from organdetr.datasets.labels import load_class_map
from organdetr.datasets.source import SourceCase
from organdetr.datasets.totalsegmentator import merge_structure_masks
from organdetr.io.images import write_image


def build_subject(root: Path, size: tuple[int, int, int]) -> SourceCase:
    geometry = Geometry(size, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    rng = np.random.default_rng(0)
    write_image(root / "ct.nii.gz", rng.integers(-1000, 1500, size).astype(np.int16), geometry)
    for label_id, name in load_class_map("totalsegmentator").items():
        mask = np.zeros(size, np.uint8)
        if label_id % 3 == 0:  # ~40 non-empty structures
            lo = rng.integers(0, np.array(size) // 2)
            hi = lo + rng.integers(4, np.array(size) // 3)
            mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
        write_image(root / "segmentations" / f"{name}.nii.gz", mask, geometry)
    return SourceCase("s0001", root / "ct.nii.gz", root / "segmentations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 160))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(args.size)
    classes = load_class_map("totalsegmentator")
    with tempfile.TemporaryDirectory() as tmp:
        case = build_subject(Path(tmp) / "src" / "s0001", size)
        geometry = Geometry(size, (1.5, 1.5, 1.5), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
        merge = best_of(args.repeats, lambda: merge_structure_masks(case, geometry, classes=classes))
        _, lut = dense_class_map(classes)
        job = partial(
            convert_case,
            case,
            Path(tmp) / "out",
            read_label=partial(merge_structure_masks, classes=classes),
            lut=lut,
            valid_ids=frozenset(classes),
            dataset="totalsegmentator",
            resume=False,
        )
        total = best_of(args.repeats, job)
    voxels = int(np.prod(size))
    print(f"size {size} ({voxels / 1e6:.1f} M voxels), 117 masks, best of {args.repeats}")
    print(f"merge 117 masks:   {merge:.2f} s")
    print(f"convert one case:  {total:.2f} s (read + merge + check + write image and label)")


if __name__ == "__main__":
    main()
