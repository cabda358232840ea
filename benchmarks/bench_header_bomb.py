"""Peak memory (RSS) of `organdetr boxes` on header bombs: files of a few bytes that claim gigabytes.

Each case is a file whose header claims 1250^3 int16 voxels (3.9 GB) while the file holds almost nothing;
`organdetr boxes FILE` runs in a child process and its own peak RSS (``os.wait4`` rusage) and wall time are
reported. The header is checked before anything is allocated, so every bomb must be refused (exit code 2)
at the interpreter's baseline memory. The last case is a *real* 3.9 GB stream of zeros (3.8 MB gzip), which no
size check can call a lie: the memory cap (``ORGANDETR_MAX_IMAGE_BYTES``, here 1G) refuses it.

    .venv/bin/python benchmarks/bench_header_bomb.py            # exits 1 if any case peaks >= 1 GiB
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

SHAPE = (1250, 1250, 1250)
LIMIT_BYTES = 2**30


def nifti_header(shape) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_qform(np.diag([0.8, 0.8, 1.0, 1.0]), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def text_bomb(path: Path, key: bytes, value: bytes, end: bytes) -> Path:
    """A small image written by SimpleITK whose size field is replaced by ``value``."""
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16)), str(path), useCompression=False)
    head, sep, data = path.read_bytes().partition(end)
    lines = [key + value if line.startswith(key) else line for line in head.split(b"\n")]
    path.write_bytes(b"\n".join(lines) + sep + data)
    return path


def zero_stream(path: Path) -> Path:
    """A NIfTI whose 3.9 GB of voxels really are in the file (zeros, deflated to ~3.8 MB)."""
    voxel_bytes = int(np.prod(SHAPE)) * 2
    crc, left, chunk = 0, voxel_bytes, bytes(1 << 26)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = nifti_header(SHAPE)
    with open(path, "wb") as fh:
        fh.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip member header
        fh.write(deflate.compress(header))
        crc = zlib.crc32(header)
        while left:
            block = chunk[: min(left, len(chunk))]
            fh.write(deflate.compress(block))
            crc = zlib.crc32(block, crc)
            left -= len(block)
        fh.write(deflate.flush())
        fh.write(crc.to_bytes(4, "little") + ((len(header) + voxel_bytes) % 2**32).to_bytes(4, "little"))
    return path


def run_boxes(path: Path, env: dict) -> tuple[int, float, float, str]:
    """``(exit code, peak RSS GiB, wall s, stderr's last line)`` of ``organdetr boxes path``."""
    cmd = [str(Path(sys.executable).parent / "organdetr"), "boxes", str(path), "-o", str(path) + ".json"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    last = (err.strip().splitlines() or [""])[-1]
    return proc.returncode, usage.ru_maxrss / 2**20, wall, last


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        size = " ".join(str(s) for s in SHAPE).encode()
        good = tmp / "small.nii.gz"
        labels = np.zeros((64, 64, 64), np.uint8)
        labels[10:30, 10:30, 10:30] = 1
        sitk.WriteImage(sitk.GetImageFromArray(labels), str(good))
        cases = [
            ("baseline: a valid 64^3 label map", good, {}),
            ("NIfTI .nii.gz header only", tmp / "bomb.nii.gz", {}),
            ("NIfTI .nii header only", tmp / "bomb.nii", {}),
            ("MetaImage .mha, DimSize edited", tmp / "bomb.mha", {}),
            ("NRRD raw, sizes edited", tmp / "bomb.nrrd", {}),
            (
                "real 3.9 GB zero stream (.nii.gz), cap 1G",
                tmp / "zeros.nii.gz",
                {"ORGANDETR_MAX_IMAGE_BYTES": "1G"},
            ),
        ]
        (tmp / "bomb.nii.gz").write_bytes(gzip.compress(nifti_header(SHAPE)))
        (tmp / "bomb.nii").write_bytes(nifti_header(SHAPE))
        text_bomb(tmp / "bomb.mha", b"DimSize = ", size, b"ElementDataFile = LOCAL\n")
        text_bomb(tmp / "bomb.nrrd", b"sizes: ", size, b"\n\n")
        zero_stream(tmp / "zeros.nii.gz")
        print(f"claimed voxel data: {int(np.prod(SHAPE)) * 2} bytes (1250^3 int16)\n")
        print("| file | size on disk | exit | peak RSS | wall | message |")
        print("|---|---:|---:|---:|---:|---|")
        worst = 0.0
        for label, path, extra in cases:
            code, peak, wall, message = run_boxes(path, {**os.environ, **extra})
            worst = max(worst, peak) if "baseline" not in label else worst
            short = message.replace(str(tmp) + "/", "")[:150]
            print(
                f"| {label} | {path.stat().st_size:,} B | {code} | {peak:.3f} GiB | {wall:.1f} s | {short} |"
            )
        print(f"\nworst bomb peak RSS {worst:.3f} GiB (limit {LIMIT_BYTES / 2**30:.0f} GiB)")
        if worst * 2**30 >= LIMIT_BYTES:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
