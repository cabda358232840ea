"""`organdetr boxes SCAN_LABEL`: the organ boxes of a labelled scan (voxel + LPS mm + voxel count)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer


class BoxFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


CSV_COLUMNS = [
    "label_id", "name", "voxels", "volume_ml",
    "i0", "j0", "k0", "i1", "j1", "k1",
    "x0_mm", "y0_mm", "z0_mm", "x1_mm", "y1_mm", "z1_mm", "mean_hu",
]  # fmt: skip


def boxes(
    scan_label: Path = typer.Argument(..., help="Label map: NIfTI, NRRD, MHA/MHD or a DICOM folder."),
    image: Path | None = typer.Option(
        None, "--image", help="The CT of this label map: its grid must match; adds mean HU per organ."
    ),
    classes: str | None = typer.Option(
        None,
        "--classes",
        help="Class names: a dataset (totalsegmentator, word, amos, ...) or a JSON file "
        "({id: name} or an nnU-Net dataset.json). Default: the NIfTI's own label table, else label_<id>.",
    ),
    min_voxels: int = typer.Option(1, "--min-voxels", min=1, help="Drop organs with fewer voxels."),
    largest_component: bool = typer.Option(
        False, "--largest-component", help="Keep only each organ's largest connected component."
    ),
    fmt: BoxFormat | None = typer.Option(
        None, "--format", help="table | json | csv (default: from the -o suffix, else table)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable JSON on stdout (= --format json)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write to FILE instead of stdout."),
) -> None:
    """Print or export one box per organ of a label map: voxel box [min, max), LPS mm box, voxel count.

    Voxel boxes index the file's own array (i, j, k); mm boxes are LPS world coordinates of the voxel
    edges. Example: organdetr boxes seg.nii.gz --image ct.nii.gz --classes totalsegmentator -o boxes.csv
    """
    from organdetr.core.boxes.labels import boxes_from_labels
    from organdetr.io.images import read_image, read_label_map
    from organdetr.runtime.outputs import check_output_file

    fmt = BoxFormat.json if json_out else fmt or _format_from_suffix(output)
    if output is not None:
        check_output_file(output)
    labels = read_label_map(scan_label)
    class_map = _resolve_classes(classes, scan_label)
    found = boxes_from_labels(
        labels.array,
        labels.geometry,
        class_map,
        min_voxels=min_voxels,
        largest_component=largest_component,
        path=scan_label,
    )
    mean_hu = None
    if image is not None:
        mean_hu = _mean_hu(read_image(image), labels, [b.label_id for b in found], image, scan_label)
    report = _report(scan_label, image, labels.geometry, found, mean_hu)
    if fmt is BoxFormat.json:
        import json

        text = json.dumps(report, indent=2) + "\n"
    elif fmt is BoxFormat.csv:
        text = _csv(report["boxes"])
    else:
        text = _table(report, to_text=output is not None)
    if output is None:
        if text:
            typer.echo(text, nl=False)
        return
    from organdetr.runtime.atomic import write_text

    write_text(output, text)
    typer.echo(f"{len(found)} organ boxes -> {output}", err=True)


def _format_from_suffix(output: Path | None) -> BoxFormat:
    suffix = output.suffix.lower() if output is not None else ""
    return {".json": BoxFormat.json, ".csv": BoxFormat.csv}.get(suffix, BoxFormat.table)


def _resolve_classes(classes: str | None, label_file: Path) -> dict[int, str] | None:
    """--classes as a dataset name or JSON file; else the NIfTI header table; else None (label_<id>)."""
    from organdetr.datasets.labels import CLASS_MAP_NAMES, load_class_map
    from organdetr.io.images import read_label_table

    if classes is None:
        return read_label_table(label_file)
    if classes in CLASS_MAP_NAMES:
        return load_class_map(classes)
    path = Path(classes)
    if not path.is_file():
        raise typer.BadParameter(
            f"{classes!r} is neither a known dataset ({', '.join(CLASS_MAP_NAMES)}) nor a JSON file",
            param_hint="--classes",
        )
    return _class_map_file(path)


def _class_map_file(path: Path) -> dict[int, str]:
    """``{"1": "liver", ...}``, ``{"labels": {id: name}}`` or an nnU-Net dataset.json (name -> id)."""
    from organdetr.runtime.errors import InputError
    from organdetr.runtime.json_files import read_json

    content = read_json(path, "not valid JSON")
    table = content.get("labels", content) if isinstance(content, dict) else None
    if not isinstance(table, dict) or not table:
        raise InputError(path, "expected a JSON object mapping label id -> name (or a dataset.json)")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in table.values()):  # nnU-Net name -> id
        return {int(v): str(k) for k, v in table.items() if v != 0}
    try:
        return {int(k): str(v) for k, v in table.items() if int(k) != 0}
    except ValueError:
        raise InputError(path, 'keys must be integer label ids (e.g. {"1": "liver"})') from None


def _mean_hu(image, labels, ids: list[int], image_path: Path, label_path: Path) -> dict[int, float]:
    """Mean image value per organ (one pass, scipy.ndimage.mean); the grids must match."""
    from scipy import ndimage

    from organdetr.runtime.errors import InputError

    if not image.geometry.is_close(labels.geometry, mm_tol=1e-2):
        raise InputError(
            label_path, f"label grid differs from the image {image_path.name} (size/spacing/origin)"
        )
    if not ids:
        return {}
    means = ndimage.mean(image.array, labels=labels.array, index=ids)
    return {label_id: float(m) for label_id, m in zip(ids, means, strict=True)}


def _report(label_file: Path, image: Path | None, geometry, found, mean_hu) -> dict[str, Any]:
    import numpy as np

    from organdetr.core.geometry import axis_codes

    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    rows = []
    for box in found:
        row = box.to_dict()
        row["volume_ml"] = round(box.voxels * voxel_ml, 3)
        if mean_hu is not None:
            row["mean_hu"] = round(mean_hu[box.label_id], 1)
        rows.append(row)
    return {
        "file": str(label_file),
        "image": None if image is None else str(image),
        "world_frame": "LPS",
        "orientation": axis_codes(geometry),
        "geometry": geometry.to_dict(),
        "boxes": rows,
    }


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        voxel = [int(v) if float(v).is_integer() else v for v in row["box_voxel"]]
        writer.writerow(
            [row["label_id"], row["name"], row["voxels"], row["volume_ml"], *voxel, *row["box_mm"]]
            + [row.get("mean_hu", "")]
        )
    return buffer.getvalue()


def _table(report: dict, *, to_text: bool) -> str:
    """Rich table on stdout (returns ""), or as plain text when writing to a file. It fits the console
    (80 columns when piped): columns that do not fit are left out and named, never squeezed to nothing."""
    import io

    from rich.console import Console

    from organdetr.runtime.tables import Column, fitted_table

    geometry = report["geometry"]
    size = "x".join(str(s) for s in geometry["size"])
    spacing = " x ".join(f"{s:g}" for s in geometry["spacing"])
    has_hu = any("mean_hu" in row for row in report["boxes"])
    columns = [Column("id", "right"), Column("organ"), Column("voxels", "right"), Column("ml", "right")]
    columns += [Column("mean HU", "right")] if has_hu else []
    columns += [Column("LPS mm min / max", "right"), Column("voxel box i, j, k", "right")]
    rows = []
    for row in report["boxes"]:
        v, mm = [int(x) for x in row["box_voxel"]], row["box_mm"]
        cells = [str(row["label_id"]), row["name"], f"{row['voxels']:,}", f"{row['volume_ml']:.1f}"]
        cells += [f"{row['mean_hu']:.0f}"] if has_hu else []
        cells.append(", ".join(f"{x:.1f}" for x in mm[:3]) + "\n" + ", ".join(f"{x:.1f}" for x in mm[3:]))
        cells.append(f"[{v[0]}, {v[1]}, {v[2]}] - [{v[3]}, {v[4]}, {v[5]})")
        rows.append(cells)
    console = (
        Console(file=io.StringIO(), width=160, no_color=True, force_terminal=False) if to_text else Console()
    )
    table = fitted_table(
        f"{Path(report['file']).name}: {len(report['boxes'])} organs",
        columns,
        rows,
        console.width,
        keep=2,
        caption=f"grid {size} voxels, {spacing} mm, {report['orientation']}; mm = LPS world, voxel edges",
        elsewhere="--json or --format csv has them",
    )
    console.print(table)
    return console.file.getvalue() if to_text else ""
