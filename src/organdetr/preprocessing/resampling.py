"""A scan (+ labels) -> the model grid: one resampling, normalised intensities, organ boxes on the grid.

Per case (:func:`preprocess_volume`): canonical LPS orientation, ONE resampling straight from the
original grid to the model grid (``fit="resize"``: the whole scan onto ``input_size`` voxels, the
effective spacing recorded; ``fit="pad"``: ``target_spacing`` mm, centre pad/crop to ``input_size``,
the offset recorded), HU clipping to ``hu_window`` and scaling to ``[0, 1]``. Labels are resampled
nearest-neighbour; boxes are recomputed on the grid, and the original-scan boxes are kept.

Multi-channel scans (:func:`preprocess_channels`, e.g. BraTS' T1 / T1ce / T2 / FLAIR): every channel must
share channel 0's grid; each is resampled by the same mapping and normalised by its own scheme
(``PreprocessConfig.channel_norm``), and the image is ``[C, I, J, K]``. :func:`preprocess_image` is the
same without labels (what predict uses).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.world import world_box_on_grid
from organdetr.core.geometry import (
    Geometry,
    GridMapping,
    axis_codes,
    pad_grid,
    reorient_geometry,
    resize_grid,
)
from organdetr.core.volume import Volume, resample
from organdetr.preprocessing.intensity import intensity_percentiles, normalise_hu, normalise_zscore
from organdetr.preprocessing.plans import PreprocessConfig
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import format_vector


def grid_mapping(geometry: Geometry, cfg: PreprocessConfig) -> GridMapping:
    """The model grid for a scan of ``geometry`` (canonical LPS direction) and its map back."""
    canonical = reorient_geometry(geometry)
    if cfg.fit == "resize":
        return resize_grid(canonical, cfg.input_size)
    return pad_grid(canonical, cfg.target_spacing, cfg.input_size)


def preprocess_image(volume: Volume | list[Volume], cfg: PreprocessConfig) -> tuple[np.ndarray, dict]:
    """An image without labels -> ``(image [I, J, K] float, record)`` (what predict uses); a list of channel
    volumes (multi-channel cache) -> ``(image [C, I, J, K], record)``."""
    if isinstance(volume, list):
        image, _, record = preprocess_channels(volume, cfg)
    else:
        image, _, record = preprocess_volume(volume, cfg)
    return image, record


def preprocess_channels(
    volumes: list[Volume],
    cfg: PreprocessConfig,
    labels: Volume | None = None,
    classes: dict[int, str] | None = None,
    *,
    image_paths: list[str | Path] | None = None,
    label_path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """A multi-channel scan (one volume per channel, channel order) -> the model grid.

    Returns ``(image [C, I, J, K], label [I, J, K] | None, record)`` like :func:`preprocess_volume`; each
    channel is resampled by channel 0's mapping and normalised by ``cfg.channel_norm[c]``. Every channel
    must share channel 0's grid (else :class:`InputError` naming that channel's file).
    """
    paths = list(image_paths) if image_paths is not None else [None] * len(volumes)
    norms = cfg.channel_norm or ("hu_window",) * len(volumes)
    if len(norms) != len(volumes):
        raise InputError(
            paths[0], f"{len(volumes)} channels but the plans normalise {len(norms)} (channel_norm {norms})"
        )
    reference = volumes[0].geometry
    for c, (volume, path) in enumerate(zip(volumes[1:], paths[1:], strict=True), start=1):
        if not volume.geometry.is_close(reference, mm_tol=1e-2, dir_tol=1e-4):
            other = Path(paths[0]).name if paths[0] is not None else "channel 0"
            difference = _grid_difference(volume.geometry, reference)
            raise InputError(path, f"channel {c} is not on the grid of {other} ({difference})")
    mapping = grid_mapping(reference, cfg)
    channels = []
    for volume, scheme in zip(volumes, norms, strict=True):
        fill = cfg.hu_window[0] if scheme == "hu_window" else 0.0
        grid = resample(
            volume.array, volume.geometry, mapping.geometry,
            interpolation=cfg.interpolation, default_value=fill, output_dtype=np.float32,
        )  # fmt: skip
        grid = normalise_hu(grid, cfg.hu_window) if scheme == "hu_window" else normalise_zscore(grid)
        channels.append(grid.astype(cfg.image_dtype, copy=False))
    image = np.stack(channels)
    record = {
        "image": None if paths[0] is None else str(paths[0]),
        "images": [None if p is None else str(p) for p in paths],
        "label": None if label_path is None else str(label_path),
        "world_frame": "LPS",
        "original": reference.to_dict(),
        "original_orientation": axis_codes(reference),
        "grid": mapping.geometry.to_dict(),
        "to_original": mapping.to_dict(),
        "intensity": intensity_percentiles(volume.array),  # the scan's p1 / p50 / p99 (HU for CT)
    }
    if labels is None:
        return image, None, record
    grid_label, boxes, dropped = _resample_labels(
        volumes[0], labels, mapping, cfg, classes, paths[0], label_path
    )
    record["boxes"] = boxes
    record["dropped"] = dropped
    return image, grid_label, record


def _grid_difference(geometry: Geometry, reference: Geometry) -> str:
    """``"spacing [a, b, c] vs [d, e, f]; ..."``: what differs between two grids (1e-2 mm, 1e-4 direction)."""
    problems = []
    for name in ("size", "spacing", "origin", "direction"):
        a, b = getattr(geometry, name), getattr(reference, name)
        if not np.allclose(a, b, rtol=0, atol=1e-2 if name != "direction" else 1e-4):
            problems.append(f"{name} {format_vector(a)} vs {format_vector(b)}")
    return "; ".join(problems)


def preprocess_volume(
    volume: Volume,
    cfg: PreprocessConfig,
    labels: Volume | None = None,
    classes: dict[int, str] | None = None,
    *,
    image_path: str | Path | None = None,
    label_path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """One scan (+ optional labels) -> the model grid.

    Returns ``(image [I, J, K] float32|float16 in [0, 1], label [I, J, K] uint8/uint16 | None, record)``
    where ``record`` is the case record of docs/conventions.md without the file fields
    (``original``, ``grid``, ``to_original``, ``boxes``, ``dropped``). ``labels`` must share the image
    grid; ``classes`` names the label ids (``None``: ``label_<id>``). Raises :class:`InputError`
    (naming ``label_path``) for a label map of another geometry, an unknown id or no organ voxels.
    """
    mapping = grid_mapping(volume.geometry, cfg)
    low = cfg.hu_window[0]
    image = resample(
        volume.array, volume.geometry, mapping.geometry,
        interpolation=cfg.interpolation, default_value=low, output_dtype=np.float32,
    )  # fmt: skip
    image = normalise_hu(image, cfg.hu_window).astype(cfg.image_dtype, copy=False)
    record = {
        "image": None if image_path is None else str(image_path),
        "label": None if label_path is None else str(label_path),
        "world_frame": "LPS",
        "original": volume.geometry.to_dict(),
        "original_orientation": axis_codes(volume.geometry),
        "grid": mapping.geometry.to_dict(),
        "to_original": mapping.to_dict(),
        "intensity": intensity_percentiles(volume.array),  # the scan's p1 / p50 / p99 (HU for CT)
    }
    if labels is None:
        return image, None, record
    grid_label, boxes, dropped = _resample_labels(
        volume, labels, mapping, cfg, classes, image_path, label_path
    )
    record["boxes"] = boxes
    record["dropped"] = dropped
    return image, grid_label, record


def _resample_labels(
    volume: Volume,
    labels: Volume,
    mapping: GridMapping,
    cfg: PreprocessConfig,
    classes: dict[int, str] | None,
    image_path: str | Path | None,
    label_path: str | Path | None,
) -> tuple[np.ndarray, list[dict], list[dict]]:
    """Labels onto the grid + box records (grid boxes from the resampled labels, original boxes kept)."""
    _check_same_grid(labels.geometry, volume.geometry, label_path, image_path)
    options = {"largest_component": cfg.largest_component, "path": label_path}
    original = boxes_from_labels(labels.array, volume.geometry, classes, min_voxels=cfg.min_voxels, **options)
    dtype = np.uint8 if labels.array.max() <= 255 else np.uint16
    grid_label = resample(
        labels.array.astype(dtype, copy=False), volume.geometry, mapping.geometry,
        interpolation="nearest", default_value=0, output_dtype=dtype,
    )  # fmt: skip
    on_grid = {
        b.label_id: b
        for b in boxes_from_labels(grid_label, mapping.geometry, classes, allow_empty=True, **options)
    }
    boxes, dropped = [], []
    for box in original:
        grid_box = on_grid.get(box.label_id)
        if grid_box is not None:
            box_voxel, voxels_grid = grid_box.box_voxel, grid_box.voxels
        else:  # too thin to survive nearest-neighbour resampling, or cropped away by fit="pad"
            box_voxel, voxels_grid = world_box_on_grid(box.box_mm, mapping), 0
            if box_voxel is None:
                dropped.append(
                    {"label_id": box.label_id, "name": box.name, "reason": "outside the input grid"}
                )
                continue
        boxes.append(
            {
                "label_id": box.label_id,
                "name": box.name,
                "box_voxel": [float(v) for v in box_voxel],
                "box_voxel_original": [float(v) for v in box.box_voxel],
                "box_mm": [round(float(v), 4) for v in box.box_mm],
                "voxels": box.voxels,
                "voxels_grid": int(voxels_grid),
            }
        )
    return grid_label, boxes, dropped


def _check_same_grid(labels: Geometry, image: Geometry, label_path, image_path) -> None:
    """InputError naming the label file unless it shares the image's grid."""
    if labels.is_close(image, mm_tol=1e-2, dir_tol=1e-4):
        return
    other = Path(image_path).name if image_path is not None else "the image"
    raise InputError(label_path, f"label geometry differs from {other}: {_grid_difference(labels, image)}")


__all__ = ["grid_mapping", "preprocess_channels", "preprocess_image", "preprocess_volume"]
