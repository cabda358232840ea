"""Time reading + preprocessing the real TotalSegmentator scan (one core), and the DICOM series read.

Usage: .venv/bin/python benchmarks/bench_preprocess.py [--repeats N] [--data ../shared/data]
Prints best-of-N wall times for fit="pad" at 2 mm (whole scan, 192x160x176 grid) and fit="resize"
(96^3), read + reorient + resample + normalise + boxes, and for reading the 20-slice JPEG2000 series.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import SimpleITK as sitk
import torch

from _timing import best_of
from organdetr.io.images import read_image, read_label_map, read_label_table
from organdetr.preprocessing.plans import PreprocessConfig
from organdetr.preprocessing.resampling import preprocess_volume

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("ORGANDETR_SHARED_DATA", DEFAULT_DATA))
    )
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    torch.set_num_threads(1)
    folder = args.data / "totalsegmentator"
    ct, seg = folder / "example_ct.nii.gz", folder / "example_seg_fast_force_split.nii.gz"
    configs = {
        "pad, 2 mm, 192x160x176": PreprocessConfig(
            fit="pad", target_spacing=(2, 2, 2), input_size=(192, 160, 176)
        ),
        "resize, 96^3": PreprocessConfig(fit="resize", input_size=(96, 96, 96)),
    }
    for name, cfg in configs.items():

        def run(cfg=cfg):
            volume, labels = read_image(ct), read_label_map(seg)
            return preprocess_volume(volume, cfg, labels, read_label_table(seg))

        _, _, record = run()
        seconds = best_of(args.repeats, run)
        print(f"{name}: read + preprocess (image + labels + {len(record['boxes'])} boxes) {seconds:.3f} s")
    dicom = folder / "example_ct_dicom"
    print(
        f"DICOM series read (512x512x20, JPEG2000): {best_of(args.repeats, lambda: read_image(dicom)):.3f} s"
    )


if __name__ == "__main__":
    main()
