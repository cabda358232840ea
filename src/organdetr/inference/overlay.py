"""Pictures of a scan with organ boxes: three orthogonal views, soft-tissue window, coloured boxes + legend.

The scan is shown in canonical LPS orientation in the radiological convention: axial and coronal views
have the patient's right on the image's left; anterior is up in the axial view, superior is up in the
coronal and sagittal views (the sagittal view has anterior on the left). Pixels are drawn at their
physical aspect ratio (spacing in mm).

Boxes are given in world mm (``box_mm``, LPS; the prediction JSON's field), so the same function draws
predictions and ground truth on any scan, whatever its on-disk orientation. Every box is drawn in all
three views as its projection: solid where the shown slice cuts the box, dotted where it does not.
Colours, the HU window and the slice the views cut through come from :mod:`organdetr.core.colours`;
matplotlib is imported when a picture is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from organdetr.core.boxes.world import world_box_to_voxel
from organdetr.core.colours import SOFT_TISSUE_WINDOW, label_colour, organ_colours, slice_centre, window_image
from organdetr.core.volume import Volume, reorient_to_lps
from organdetr.runtime.atomic import write_figure

# (view name, axis the slice is taken along, (row axis, column axis), row direction flipped)
_VIEWS = (
    ("axial", 2, (1, 0), False),  # rows j (anterior up), columns i (patient right on the left)
    ("coronal", 1, (2, 0), True),  # rows k (superior up), columns i
    ("sagittal", 0, (2, 1), True),  # rows k (superior up), columns j (anterior on the left)
)


def render_overlay(
    volume: Volume,
    detections: Sequence[dict],
    out_path: str | Path,
    *,
    ground_truth: Sequence[dict] = (),
    title: str | None = None,
    window: tuple[float, float] = SOFT_TISSUE_WINDOW,
    centre_index: Sequence[int] | None = None,
    dpi: int = 110,
) -> Path:
    """Write a PNG of ``volume`` (HU) in three orthogonal views with the detections' boxes.

    Args:
        volume: the scan, any orientation (reoriented to LPS for display, no copy).
        detections: dicts with ``label`` (organ name), ``box_mm`` (6, LPS xyzxyz) and optionally
            ``score``; drawn in colour, named in the legend with their score.
        out_path: PNG path (written atomically).
        ground_truth: optional dicts with ``label`` and ``box_mm``, drawn as thin white dashed boxes.
        title: figure title (default: none).
        window: (width, level) HU display window; default soft tissue W400/L40.
        centre_index: canonical LPS index ``(i, j, k)`` the views cut through; default: the centre of
            the union of all boxes drawn.

    Returns:
        ``out_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canonical = reorient_to_lps(volume)
    geometry = canonical.geometry
    det_boxes = _boxes_on_grid(detections, geometry)
    gt_boxes = _boxes_on_grid(ground_truth, geometry)
    if centre_index is None:
        centre = slice_centre(np.concatenate([det_boxes, gt_boxes]), geometry.size)
    else:
        centre = np.clip(np.asarray(centre_index, dtype=int), 0, np.asarray(geometry.size) - 1)
    colours = organ_colours([str(d["label"]) for d in detections])  # boxes without a label id: by order
    colours.update(  # the organ's colour in every export
        {str(d["label"]): (*label_colour(int(d["label_id"])), 1.0) for d in detections if "label_id" in d}
    )

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
    for ax, (name, axis, (row_axis, col_axis), flip_rows) in zip(axes, _VIEWS, strict=True):
        _draw_view(
            ax,
            canonical.array,
            geometry.spacing,
            name,
            axis,
            row_axis,
            col_axis,
            flip_rows,
            int(centre[axis]),
            window,
        )
        for box in gt_boxes:
            _draw_box(ax, box, axis, row_axis, col_axis, int(centre[axis]), "white", 0.8, "--")
        for det, box in zip(detections, det_boxes, strict=True):
            _draw_box(
                ax, box, axis, row_axis, col_axis, int(centre[axis]), colours[str(det["label"])], 1.6, "-"
            )
    _add_legend(fig, detections, colours, has_ground_truth=len(gt_boxes) > 0)
    if title:
        fig.suptitle(title, color="white", fontsize=12)
    fig.subplots_adjust(left=0.01, right=0.80, top=0.90, bottom=0.03, wspace=0.04)
    return write_figure(fig, out_path, dpi=dpi, facecolor="black", format="png")


def _boxes_on_grid(items: Sequence[dict], geometry) -> np.ndarray:
    """World boxes of ``items`` -> voxel boxes ``[N, 6]`` on the canonical grid."""
    if not items:
        return np.zeros((0, 6))
    box_mm = np.asarray([d["box_mm"] for d in items], dtype=np.float64).reshape(-1, 6)
    return world_box_to_voxel(box_mm, geometry)


def _draw_view(ax, array, spacing, name, axis, row_axis, col_axis, flip_rows, index, window) -> None:
    plane = np.take(array, index, axis=axis)  # 2D, remaining axes in increasing order
    remaining = [a for a in range(3) if a != axis]
    if remaining.index(row_axis) != 0:
        plane = plane.T  # rows = row_axis
    rows, cols = plane.shape
    # extent in continuous index units: voxel v spans [v - 0.5, v + 0.5)
    bottom, top = (-0.5, rows - 0.5) if flip_rows else (rows - 0.5, -0.5)
    ax.imshow(
        window_image(plane, window),
        cmap="gray",
        vmin=0.0,
        vmax=1.0,
        interpolation="bilinear",
        origin="lower" if flip_rows else "upper",
        extent=(-0.5, cols - 0.5, bottom, top),
        aspect=float(spacing[row_axis]) / float(spacing[col_axis]),
    )
    ax.set_title(f"{name} ({'ijk'[axis]} = {index})", color="white", fontsize=10)
    ax.set_axis_off()


def _draw_box(ax, box, axis, row_axis, col_axis, index, colour, width, style) -> None:
    from matplotlib.patches import Rectangle

    lo, hi = box[:3] - 0.5, box[3:] - 0.5  # continuous index edges
    cut = lo[axis] <= index <= hi[axis]
    ax.add_patch(
        Rectangle(
            (lo[col_axis], lo[row_axis]),
            hi[col_axis] - lo[col_axis],
            hi[row_axis] - lo[row_axis],
            fill=False,
            edgecolor=colour,
            linewidth=width if cut else width * 0.6,
            linestyle=style if cut else ":",
            alpha=1.0 if cut else 0.55,
        )
    )


def _add_legend(fig, detections, colours, *, has_ground_truth: bool) -> None:
    from matplotlib.lines import Line2D

    handles, labels = [], []
    for det in detections:
        name = str(det["label"])
        handles.append(Line2D([0], [0], color=colours[name], linewidth=2.5))
        score = det.get("score")
        labels.append(name if score is None else f"{name}  {float(score):.2f}")
    if has_ground_truth:
        handles.append(Line2D([0], [0], color="white", linewidth=1.0, linestyle="--"))
        labels.append("ground truth")
    if not handles:
        handles, labels = [Line2D([0], [0], color="none")], ["no detections"]
    fontsize = 9 if len(labels) <= 25 else 7
    fig.legend(
        handles,
        labels,
        loc="center left",
        bbox_to_anchor=(0.805, 0.5),
        frameon=False,
        labelcolor="white",
        fontsize=fontsize,
        ncol=1 if len(labels) <= 30 else 2,
        title="organ  score",
        title_fontsize=9,
    ).get_title().set_color("white")


__all__ = ["render_overlay"]
