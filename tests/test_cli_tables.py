"""Tables fit 80 columns (issue 22, point 7): ``organdetr boxes`` and ``organdetr evaluate`` in an
80-column terminal or piped to a file show every organ name (columns are left out and named, never squeezed
to zero width), and both give machine-readable JSON on stdout with ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from organdetr.runtime.tables import Column, fitted_table, shown_columns
from test_evaluation_io import BOX, write_cache, write_prediction

ORGANDETR = [
    sys.executable,
    "-c",
    "import sys; from organdetr.cli import main; sys.argv[0] = 'organdetr'; main()",
]


def _piped(*args, columns: str | None = "80") -> str:
    """``organdetr ARGS`` with stdout piped (not a terminal), ``COLUMNS`` set or unset."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | {"PYTHONIOENCODING": "utf-8"}
    if columns is not None:
        env["COLUMNS"] = columns
    proc = subprocess.run(
        [*ORGANDETR, *map(str, args)], capture_output=True, encoding="utf-8", env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _names_shown(text: str, names: list[str]) -> None:
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80, text
    for name in names:
        assert f" {name} " in text, (name, text)  # a whole cell, not folded into pieces


def test_boxes_fit_80_columns_piped_and_json(shared_data):
    folder = shared_data / "totalsegmentator"
    seg, ct = folder / "example_seg.nii.gz", folder / "example_ct_sm.nii.gz"
    report = json.loads(_piped("boxes", seg, "--image", ct, "--json"))
    names = [b["name"] for b in report["boxes"]]
    assert len(names) == 41 and "portal_vein_and_splenic_vein" in names
    for columns in ("80", None):  # COLUMNS=80, and a pipe without COLUMNS (rich assumes 80)
        text = _piped("boxes", seg, "--image", ct, columns=columns)
        _names_shown(text, names)
        header = next(line for line in text.splitlines() if " organ " in line)
        assert "id" in header and "voxels" in header and "mean HU" in header
        assert "not shown at 80 columns" in text and "voxel box" in text  # named, with where to find it
    wide = _piped("boxes", seg, columns="200")
    assert "not shown" not in wide and "LPS mm min / max" in wide and "voxel box" in wide


def test_evaluate_fits_80_columns_and_prints_json(tmp_path):
    cache = write_cache(tmp_path / "cache", {"a": [("liver", BOX), ("spleen", BOX)], "b": [("liver", BOX)]})
    write_prediction(tmp_path / "pred", "a", [("liver", 0.9, BOX), ("spleen", 0.8, [0, 0, 0, 10, 10, 7])])
    text = _piped("evaluate", tmp_path / "pred", cache, "-o", tmp_path / "r1")
    _names_shown(text, ["liver", "spleen", "mean"])
    assert "AP50" in text
    printed = json.loads(_piped("evaluate", tmp_path / "pred", cache, "-o", tmp_path / "r2", "--json"))
    assert printed == json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert printed["per_class"]["spleen"]["AP"] == 0.5


def test_fitted_table_keeps_first_columns_and_drops_the_rest_whole():
    from rich.console import Console

    columns = [Column("organ"), Column("a" * 30), Column("b", "right"), Column("c" * 30)]
    rows = [["portal_vein_and_splenic_vein", "x", "1", "y"], ["liver", "x", "2", "y"]]
    assert shown_columns(columns, rows, 80) == [0, 1, 2]
    assert shown_columns(columns, rows, 40) == [0, 2]  # the wide column goes, the narrow one after it stays
    assert shown_columns(columns, rows, 10) == [0]  # the first column always
    console = Console(width=40, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(fitted_table("t", columns, rows, 40))
    text = " ".join(console.export_text().split())  # the caption wraps at 40 columns
    assert (
        "portal_vein_and_splenic_vein" in text and f"not shown at 40 columns: {'a' * 30}, {'c' * 30}" in text
    )
