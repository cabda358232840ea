"""The screenshot of ``organdetr boxes`` in an 80-column terminal for the docs (README, issue 22).

Runs the real verb on the TotalSegmentator example CT of ``../shared/data`` with ``COLUMNS=80`` and colours
forced, and records its output with rich as an SVG (``Console(record=True, width=80).save_svg``).

    .venv/bin/python benchmarks/boxes_screenshot.py docs/images/boxes_80_columns.svg
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalsegmentator"
CLI = "import sys; from organdetr.cli import main; sys.argv[0] = 'organdetr'; main()"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("svg", type=Path)
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("ORGANDETR_SHARED_DATA", SHARED.parent.parent))
    )
    args = parser.parse_args()
    folder = args.shared / "totalsegmentator"
    command = [
        "boxes",
        folder / "example_seg.nii.gz",
        "--image",
        folder / "example_ct_sm.nii.gz",
        "--min-voxels",
        "900",
    ]
    env = {**os.environ, "COLUMNS": "80", "FORCE_COLOR": "1"}
    run = [sys.executable, "-c", CLI, *map(str, command)]
    proc = subprocess.run(run, capture_output=True, text=True, env=env, check=True)
    console = Console(record=True, width=80, file=io.StringIO(), force_terminal=True)
    console.print(Text.from_ansi(proc.stdout), end="")
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    console.save_svg(
        str(args.svg), title="organdetr boxes example_seg.nii.gz --image example_ct_sm.nii.gz (80 columns)"
    )
    print(f"{args.svg}: {len(proc.stdout.splitlines())} lines at 80 columns")


if __name__ == "__main__":
    main()
