"""Preprocessing: a CT (+ labels) -> the model's input grid, and the on-disk cache of such cases.

Per case (:func:`preprocess_volume`): canonical LPS orientation, ONE resampling straight from the
original grid to the model grid (``fit="resize"``: the whole scan onto ``input_size`` voxels, the
effective spacing recorded; ``fit="pad"``: ``target_spacing`` mm, centre pad/crop to ``input_size``,
the offset recorded), HU clipping to ``hu_window`` and scaling to ``[0, 1]``. Labels are resampled
nearest-neighbour; boxes are recomputed on the grid, and the original-scan boxes are kept.

Datasets (:func:`preprocess_dataset`): nnU-Net v2 raw folder -> cache (layout in docs/conventions.md),
parallel over cases, resumable, atomic (arrays first, the case JSON last), failures listed at the end.

Multi-channel datasets (several ``channel_names``, e.g. BraTS' T1 / T1ce / T2 / FLAIR): every channel must
share channel 0's grid; each is resampled by the same mapping and normalised by its own scheme
(``PreprocessConfig.channel_norm``; by default HU window for a ``CT`` channel, z-score for any other, e.g.
MR), and the cached image is ``[C, I, J, K]``. A single-channel dataset keeps the ``[I, J, K]`` HU-window
cache of earlier versions unless ``channel_norm`` says otherwise. Case-level labels (``case_classes`` /
``case_labels.json``) and ``regions`` of the dataset are carried into ``plans.json`` and the case records.

The cache is verified, not trusted because a file exists: each case JSON records every array's shape,
dtype, byte size and SHA-256 (:func:`write_case`); :func:`verify_case` checks them (a mismatch makes
``preprocess`` redo the case and ``train`` name the file). One writer at a time: ``preprocess`` holds the
cache's exclusive lock (``organdetr.runtime.locking``; a second writer, or a writer beside a training run, is
refused), removes what killed writers left, never mixes cases of other plans, and its ``--workers`` die
with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from organdetr.core.boxes.labels import OrganBox, boxes_from_labels
from organdetr.core.boxes.world import world_box_to_voxel
from organdetr.core.geometry import (
    Geometry,
    GridMapping,
    axis_codes,
    pad_grid,
    reorient_geometry,
    resize_grid,
)
from organdetr.core.volume import Volume, resample
from organdetr.io.images import read_image, read_label_map
from organdetr.runtime.atomic import remove_stale_temps, write_json, write_npy
from organdetr.runtime.errors import DiskFullError, InputError

CACHE_VERSION = 1
FITS = ("resize", "pad")
CHANNEL_NORMS = ("hu_window", "zscore")
ZSCORE_MIN_FOREGROUND = 0.01
"""z-score statistics come from the non-zero voxels (the head of a skull-stripped MR) when at least this
fraction of the grid is non-zero, else from every voxel."""
# plans keys that must match for a cache to be resumed (``source`` may move)
_PLAN_KEYS = (
    "version", "target_spacing", "input_size", "fit", "hu_window", "normalization", "interpolation",
    "min_voxels", "largest_component", "image_dtype", "classes",
    "channel_norm", "channels", "regions", "case_classes",
)  # fmt: skip


@dataclass(frozen=True)
class PreprocessConfig:
    """How scans are mapped onto the model's input grid.

    target_spacing: (3,) mm in (i, j, k) = (L, P, S) after canonical reorientation; used by ``fit="pad"``.
    input_size: (3,) voxels ``(I, J, K)`` of the model input grid.
    fit: ``"resize"`` (whole scan squeezed onto the grid) or ``"pad"`` (target spacing, centre pad/crop).
    hu_window: HU range kept; values are clipped to it and scaled to ``[0, 1]``; padding is ``hu_window[0]``.
    interpolation: image interpolation, ``"linear"`` or ``"bspline"`` (labels are always nearest).
    min_voxels / largest_component: organ box options (see
    :func:`organdetr.core.boxes.labels.boxes_from_labels`).
    image_dtype: ``"float32"`` or ``"float16"`` for the cached image.
    channel_norm: per-channel normalisation, one of :data:`CHANNEL_NORMS` per channel (``hu_window``: clip
        to ``hu_window``, scale to [0, 1]; ``zscore``: (x - mean) / std over the non-zero voxels, 0 outside,
        as nnU-Net does for MR). Empty = the single-channel HU window cache of earlier versions.
    """

    target_spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)
    input_size: tuple[int, int, int] = (96, 96, 96)
    fit: str = "resize"
    hu_window: tuple[float, float] = (-1000.0, 1000.0)
    interpolation: str = "linear"
    min_voxels: int = 1
    largest_component: bool = False
    image_dtype: str = "float32"
    channel_norm: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_norm", tuple(str(n) for n in self.channel_norm))
        bad = [n for n in self.channel_norm if n not in CHANNEL_NORMS]
        if bad:
            raise ValueError(f"channel_norm entries must be one of {CHANNEL_NORMS}, got {bad}")
        object.__setattr__(self, "target_spacing", tuple(float(s) for s in self.target_spacing))
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        object.__setattr__(self, "hu_window", tuple(float(h) for h in self.hu_window))
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ValueError(f"target_spacing must be 3 positive numbers (mm), got {self.target_spacing}")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be 3 positive integers, got {self.input_size}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {self.fit!r}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"interpolation must be 'linear' or 'bspline', got {self.interpolation!r}")
        if self.image_dtype not in ("float32", "float16"):
            raise ValueError(f"image_dtype must be 'float32' or 'float16', got {self.image_dtype!r}")
        if self.min_voxels < 1:
            raise ValueError(f"min_voxels must be >= 1, got {self.min_voxels}")


def make_plans(
    cfg: PreprocessConfig,
    classes: dict[int, str],
    source: str | Path | None = None,
    *,
    channels: list[str] | None = None,
    regions: dict[str, tuple[int, ...]] | None = None,
    case_classes: list[str] | None = None,
) -> dict:
    """The cache's ``plans.json`` content for ``cfg`` and the class map.

    Multi-channel / region / case-label keys appear only when the dataset has them, so a single-channel
    cache's plans are those of earlier versions: ``channels`` (names in channel order), ``channel_norm``,
    ``regions`` (name -> label ids), ``case_classes`` (``{"0": name, ...}``).
    """
    plans = asdict(cfg)
    plans.pop("channel_norm")
    plans.update(
        {
            "version": CACHE_VERSION,
            "target_spacing": list(cfg.target_spacing),
            "input_size": list(cfg.input_size),
            "hu_window": list(cfg.hu_window),
            "normalization": {"scheme": "hu_window", "clip": list(cfg.hu_window), "output_range": [0.0, 1.0]},
            "classes": {str(i): classes[i] for i in sorted(classes)},
            "world_frame": "LPS",
            "source": None if source is None else str(source),
        }
    )
    if cfg.channel_norm:
        names = channels if channels and len(channels) == len(cfg.channel_norm) else None
        names = names or [f"channel_{c}" for c in range(len(cfg.channel_norm))]
        plans["channel_norm"] = list(cfg.channel_norm)
        plans["normalization"] = {
            "scheme": "per_channel",
            "channels": [
                _norm_description(n, scheme, cfg) for n, scheme in zip(names, cfg.channel_norm, strict=True)
            ],
        }
    if channels is not None and len(channels) > 1:
        plans["channels"] = list(channels)
    if regions:
        plans["regions"] = {name: [int(i) for i in ids] for name, ids in regions.items()}
    if case_classes:
        plans["case_classes"] = {str(i): name for i, name in enumerate(case_classes)}
    return plans


def _norm_description(name: str, scheme: str, cfg: PreprocessConfig) -> dict:
    if scheme == "hu_window":
        return {"name": name, "scheme": "hu_window", "clip": list(cfg.hu_window), "output_range": [0.0, 1.0]}
    return {"name": name, "scheme": "zscore", "statistics": "non-zero voxels of the case", "background": 0.0}


def default_channel_norm(channel_names: list[str]) -> tuple[str, ...]:
    """Per-channel scheme from the channel names: ``CT`` -> HU window, anything else (MR ...) -> z-score.

    A single-channel dataset gets ``()`` (the HU-window cache of earlier versions, whatever its name).
    """
    if len(channel_names) <= 1:
        return ()
    return tuple("hu_window" if n.strip().upper() == "CT" else "zscore" for n in channel_names)


def config_from_plans(plans: dict) -> PreprocessConfig:
    """The :class:`PreprocessConfig` a cache was made with (predict preprocesses new scans the same way)."""
    return PreprocessConfig(**{k: plans[k] for k in PreprocessConfig.__dataclass_fields__ if k in plans})


def num_channels(plans: dict) -> int:
    """Image channels of a cache (1 for the single-channel caches of earlier versions)."""
    return len(plans.get("channel_norm") or [None])


# ----------------------------------------------------------------------------- one case


def normalise_hu(image: np.ndarray, hu_window: tuple[float, float]) -> np.ndarray:
    """Clip float ``image`` to ``hu_window`` and scale to ``[0, 1]`` (in place; returns it)."""
    low, high = hu_window
    np.clip(image, low, high, out=image)
    image -= low
    image *= 1.0 / (high - low)
    return image


def normalise_zscore(image: np.ndarray) -> np.ndarray:
    """z-score float ``image`` in place over its non-zero voxels (all voxels when fewer than
    :data:`ZSCORE_MIN_FOREGROUND` are non-zero); voxels outside that foreground become 0. Returns it."""
    foreground = image != 0
    if foreground.mean() < ZSCORE_MIN_FOREGROUND:
        foreground = np.ones(image.shape, dtype=bool)
    values = image[foreground].astype(np.float64)
    mean, std = float(values.mean()), float(values.std())
    image -= mean
    image *= 1.0 / max(std, 1e-8)
    image[~foreground] = 0.0
    return image


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
            raise InputError(
                path, f"channel {c} is not on the grid of {other} ({_grid_difference(volume, reference)})"
            )
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
    }
    if labels is None:
        return image, None, record
    grid_label, boxes, dropped = _resample_labels(
        volumes[0], labels, mapping, cfg, classes, paths[0], label_path
    )
    record["boxes"] = boxes
    record["dropped"] = dropped
    return image, grid_label, record


def _grid_difference(volume: Volume, reference: Geometry) -> str:
    problems = []
    for name in ("size", "spacing", "origin", "direction"):
        a, b = getattr(volume.geometry, name), getattr(reference, name)
        if not np.allclose(a, b, rtol=0, atol=1e-2 if name != "direction" else 1e-4):
            problems.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
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
            box_voxel, voxels_grid = _original_box_on_grid(box, mapping), 0
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


def _original_box_on_grid(box: OrganBox, mapping: GridMapping) -> np.ndarray | None:
    """An original-scan box mapped onto the grid and clipped to it; ``None`` if nothing is left."""
    canonical = world_box_to_voxel(box.box_mm, mapping.source_geometry())
    scale, offset = np.asarray(mapping.scale), np.asarray(mapping.offset)
    lo = (canonical[:3] - 0.5 - offset) / scale + 0.5
    hi = (canonical[3:] - 0.5 - offset) / scale + 0.5
    size = np.asarray(mapping.geometry.size, dtype=np.float64)
    lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    if np.any(hi - lo <= 0):
        return None
    return np.concatenate([lo, hi])


def _check_same_grid(labels: Geometry, image: Geometry, label_path, image_path) -> None:
    """InputError naming the label file unless it shares the image's grid."""
    if labels.is_close(image, mm_tol=1e-2, dir_tol=1e-4):
        return
    problems = []
    for name in ("size", "spacing", "origin", "direction"):
        a, b = getattr(labels, name), getattr(image, name)
        if not np.allclose(a, b, rtol=0, atol=1e-2 if name != "direction" else 1e-4):
            problems.append(f"{name} {_fmt(a)} vs {_fmt(b)}")
    other = Path(image_path).name if image_path is not None else "the image"
    raise InputError(label_path, f"label geometry differs from {other}: {'; '.join(problems)}")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


# ----------------------------------------------------------------------------- the cache


@dataclass
class PreprocessSummary:
    """Outcome of :func:`preprocess_dataset`: case ids done now, skipped (already cached), failed."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def _case_paths(cache_dir: Path, case_id: str) -> tuple[Path, Path, Path]:
    cases = cache_dir / "cases"
    return cases / f"{case_id}.json", cases / f"{case_id}_image.npy", cases / f"{case_id}_label.npy"


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of a ``.npy`` file from its header alone; InputError if unreadable."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
            return tuple(int(s) for s in shape), dtype, fh.tell()
    except FileNotFoundError:
        raise InputError(path, "array file is missing") from None
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npy array ({' '.join(str(err).split())[:200]})") from None


def _array_entry(path: Path) -> dict:
    """What the case JSON records of an array file: shape, dtype, byte size, SHA-256."""
    shape, dtype, _ = _npy_header(path)
    return {
        "shape": list(shape),
        "dtype": dtype.str,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def write_case(
    cache_dir: str | Path, case_id: str, image: np.ndarray, label: np.ndarray | None, record: dict
) -> dict:
    """Write one case into ``cache_dir/cases``: the arrays first, then the case JSON (last, atomically).

    ``record`` is the case record without its file fields; the JSON gets ``case_id``, ``image_file``,
    ``label_file`` and ``arrays`` (per file: shape, dtype, bytes, sha256). Returns the JSON written.
    """
    record_path, image_file, label_file = _case_paths(Path(cache_dir), case_id)
    write_npy(image_file, image)
    arrays = {image_file.name: _array_entry(image_file)}
    if label is not None:
        write_npy(label_file, label)
        arrays[label_file.name] = _array_entry(label_file)
    record = {key: value for key, value in record.items() if key not in ("arrays", "case_id")}
    record = {"case_id": case_id, **record, "image_file": image_file.name}
    record["label_file"] = label_file.name if label is not None else None
    record["arrays"] = arrays
    write_json(record_path, record)
    return record


def _read_record(record_path: Path, case_id: str) -> dict:
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(record_path, f"case {case_id!r} is not in the cache") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            record_path, f"unreadable case record ({' '.join(str(err).split())[:200]})"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("image_file"), str):
        raise InputError(record_path, "not a case record (needs 'image_file')")
    return record


def _verify_array(path: Path, entry: dict | None, expected_shape, checksum: bool) -> None:
    """One array file against its record entry (or, for records without one, against its own header)."""
    shape, dtype, offset = _npy_header(path)
    size = path.stat().st_size
    if entry is None:  # a record written without checksums: the header must at least fit the file
        needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != needed:
            raise InputError(path, f"array file has {size} bytes, its header needs {needed} (truncated?)")
    else:
        if size != entry.get("bytes"):
            raise InputError(path, f"array file has {size} bytes, the case record says {entry.get('bytes')}")
        if list(shape) != entry.get("shape") or dtype.str != entry.get("dtype"):
            raise InputError(
                path,
                f"array is {dtype.str} {list(shape)}, the case record says {entry.get('dtype')} "
                f"{entry.get('shape')}",
            )
        if checksum and file_sha256(path) != entry.get("sha256"):
            raise InputError(path, "array content does not match the SHA-256 in its case record (corrupt)")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise InputError(
            path, f"array shape {list(shape)} differs from plans.json input_size {list(expected_shape)}"
        )


def verify_case(
    cache_dir: str | Path,
    case_id: str,
    *,
    plans: dict | None = None,
    checksum: bool = True,
    finite: bool = False,
    require_checksums: bool = False,
) -> dict:
    """Check a cached case and return its record; :class:`InputError` names the first bad file.

    Checks: the case JSON is readable; each array it names exists with the recorded byte size, shape and
    dtype (header only) and, with ``checksum``, the recorded SHA-256; with ``plans``, the grid is the
    plans' ``input_size``; with ``finite``, the image holds no NaN/inf. Records written before checksums
    existed pass on the header checks unless ``require_checksums``.
    """
    cache_dir = Path(cache_dir)
    record_path, _, _ = _case_paths(cache_dir, case_id)
    record = _read_record(record_path, case_id)
    arrays = record.get("arrays")
    if require_checksums and not isinstance(arrays, dict):
        raise InputError(record_path, "case record has no array checksums (written by an older organdetr)")
    expected = None if plans is None else tuple(int(s) for s in plans["input_size"])
    if expected is not None and tuple(record.get("grid", {}).get("size", ())) != expected:
        raise InputError(
            record_path,
            f"case grid {record.get('grid', {}).get('size')} differs from plans.json "
            f"input_size {list(expected)}",
        )
    for name in (record.get("image_file"), record.get("label_file")):
        if not name:
            continue
        entry = arrays.get(name) if isinstance(arrays, dict) else None
        if isinstance(arrays, dict) and entry is None:
            raise InputError(record_path, f"case record has no checksum entry for {name}")
        shape = expected
        if expected is not None and name == record.get("image_file") and plans.get("channel_norm"):
            shape = (num_channels(plans), *expected)  # a multi-channel image is [C, I, J, K]
        _verify_array(record_path.parent / name, entry, shape, checksum)
    if finite:
        image_path = record_path.parent / record["image_file"]
        image = np.load(image_path, mmap_mode="r", allow_pickle=False)
        check_finite_array(image_path, image)
    return record


def verify_cases(
    cache_dir: str | Path, case_ids: list[str], plans: dict, *, progress: bool = False
) -> list[dict]:
    """:func:`verify_case` (checksums, shapes against ``plans``, NaN/inf) for every case; returns the records.

    Raises :class:`InputError` naming the first bad file (``train`` runs this before its first step).
    """
    from tqdm.auto import tqdm

    records = []
    with tqdm(case_ids, desc="verify cache", unit="case", disable=not progress, leave=False) as bar:
        for case_id in bar:  # the context closes (clears) the bar before an error is printed
            records.append(verify_case(cache_dir, case_id, plans=plans, checksum=True, finite=True))
    return records


def check_finite_array(path: str | Path, array: np.ndarray) -> None:
    """InputError naming ``path`` when a float ``array`` holds NaN or inf (scanned in slabs of 16 planes)."""
    if array.dtype.kind != "f":
        return
    bad = 0
    for start in range(0, max(1, array.shape[0]), 16):
        bad += int(np.count_nonzero(~np.isfinite(array[start : start + 16])))
    if bad:
        raise InputError(path, f"cached array holds {bad} NaN/inf values (corrupt cache; rerun preprocess)")


def is_complete(cache_dir: str | Path, case_id: str, plans: dict | None = None) -> bool:
    """A case is complete when its JSON exists and every array it names matches its record (checksums too)."""
    try:
        verify_case(cache_dir, case_id, plans=plans, require_checksums=True)
    except InputError:
        return False
    return True


def preprocess_case(
    case_id: str,
    image_path: Path,
    label_path: Path | None,
    out_dir: Path,
    cfg: PreprocessConfig,
    classes,
    channel_paths: tuple[Path, ...] = (),
    case_label: str | None = None,
) -> str:
    """Preprocess one case into ``out_dir/cases`` (arrays first, JSON last); returns ``case_id``.

    ``channel_paths``: every channel's file of a multi-channel case (then ``image_path`` is channel 0);
    ``case_label``: its case-level class name, stored in the record as ``"case_label"``.
    """
    labels = read_label_map(label_path) if label_path is not None else None
    if len(channel_paths) > 1 or cfg.channel_norm:
        paths = list(channel_paths) or [image_path]
        image, label, record = preprocess_channels(
            [read_image(p) for p in paths], cfg, labels, classes, image_paths=paths, label_path=label_path
        )
    else:
        image, label, record = preprocess_volume(
            read_image(image_path), cfg, labels, classes, image_path=image_path, label_path=label_path
        )
    if case_label is not None:
        record["case_label"] = case_label
    write_case(out_dir, case_id, image, label, record)
    return case_id


def _changed_plans(out_dir: Path, plans: dict) -> tuple[dict | None, list[str]]:
    """The cache's current plans (``None`` if none) and the plan keys that differ from ``plans``."""
    if not (out_dir / "plans.json").is_file():
        return None, []
    existing = load_plans(out_dir)
    return existing, [k for k in _PLAN_KEYS if existing.get(k) != plans.get(k)]


def _refuse_other_plans(out_dir: Path, changed: list[str]) -> None:
    raise InputError(
        out_dir / "plans.json",
        f"cache was made with different settings ({', '.join(changed)}); "
        "use another output folder or --overwrite",
    )


def _init_worker(parent_pid: int) -> None:
    import SimpleITK as sitk

    from organdetr.runtime.workers import die_with_parent

    die_with_parent(parent_pid)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _one_line(case_id: str, err: BaseException) -> str:
    if isinstance(err, InputError):
        return str(err)
    return f"{case_id}: {type(err).__name__}: {' '.join(str(err).split())}"


def _create_folder(out_dir: Path) -> None:
    from organdetr.runtime.outputs import check_output_folder

    check_output_folder(out_dir, "cache folder")
    try:
        (out_dir / "cases").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(out_dir, f"cannot create the cache folder ({err.strerror or err})") from None


def preprocess_dataset(
    dataset_root: str | Path,
    out_dir: str | Path,
    cfg: PreprocessConfig,
    workers: int = 1,
    resume: bool = True,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> PreprocessSummary:
    """Preprocess every training case of an nnU-Net v2 raw dataset into the cache ``out_dir``.

    Resumable: cases that pass :func:`verify_case` (checksums included) are skipped (``resume``); any
    other is redone. A ``plans.json`` made with other settings is an :class:`InputError` unless
    ``overwrite``; so is a cache another process is writing (or training from), and a cache folder that
    cannot be written when there is something to write (a complete read-only cache passes). Each case is
    atomic (arrays first, JSON last). Bad cases do not stop the batch: they are returned in
    ``PreprocessSummary.failed`` as ``(case_id, message)``; a full disk stops it (``DiskFullError``).
    """
    from tqdm.auto import tqdm

    from organdetr.datasets.nnunet import load_dataset
    from organdetr.runtime.locking import folder_lock
    from organdetr.runtime.outputs import probe_writable

    dataset = load_dataset(dataset_root)
    out_dir = Path(out_dir)
    if not cfg.channel_norm and len(dataset.channels) > 1:
        cfg = replace(cfg, channel_norm=default_channel_norm(dataset.channels))
    if cfg.channel_norm and len(cfg.channel_norm) != len(dataset.channels):
        raise InputError(
            Path(dataset_root) / "dataset.json",
            f"{len(dataset.channels)} channels {dataset.channels} but channel_norm gives "
            f"{len(cfg.channel_norm)} schemes {list(cfg.channel_norm)}",
        )
    plans = make_plans(
        cfg,
        dataset.classes,
        Path(dataset_root).resolve(),
        channels=dataset.channels,
        regions=dataset.regions,
        case_classes=dataset.case_classes,
    )
    _, changed = _changed_plans(out_dir, plans) if out_dir.is_dir() else (None, [])
    if changed and not overwrite:
        _refuse_other_plans(out_dir, changed)  # before creating or locking anything
    if not out_dir.is_dir():
        _create_folder(out_dir)
    summary = PreprocessSummary()
    with folder_lock(out_dir, exclusive=True, purpose="organdetr preprocess") as locked:
        existing, changed = _changed_plans(out_dir, plans)  # again: another writer may just have finished
        if changed and not overwrite:
            _refuse_other_plans(out_dir, changed)
        problem = probe_writable(out_dir / "cases") if locked else f"{out_dir} is read-only"
        if problem is None:
            remove_stale_temps(out_dir)
            remove_stale_temps(out_dir / "cases")
        if changed:  # --overwrite: stale cases must never count as complete under the new plans
            if problem is not None:
                raise InputError(out_dir, f"cannot replace the cache: {problem}")
            for record_path in (out_dir / "cases").glob("*.json"):
                record_path.unlink()
        todo = []
        for case in dataset.cases:
            if resume and is_complete(out_dir, case.case_id, plans):
                summary.skipped.append(case.case_id)
            else:
                todo.append(case)
        plans_stale = existing is None or {**existing, "source": None} != {**plans, "source": None}
        if problem is not None and (todo or plans_stale):
            raise InputError(
                out_dir, f"cannot write the cache: {problem} ({len(todo)} case(s) to preprocess)"
            )
        if problem is None and existing != plans:
            write_json(out_dir / "plans.json", plans)
        jobs = [
            (c.case_id, c.image, c.label, out_dir, cfg, dataset.classes, c.channels, c.case_label)
            for c in todo
        ]
        _run_jobs(jobs, workers, summary, progress and bool(jobs), tqdm)
    summary.done.sort()
    summary.failed.sort()
    return summary


def _run_jobs(jobs: list[tuple], workers: int, summary: PreprocessSummary, progress: bool, tqdm) -> None:
    """Run :func:`preprocess_case` over ``jobs`` (in ``workers`` processes); a full disk stops the batch."""
    bar = tqdm(total=len(jobs), desc="preprocess", unit="case", disable=not progress)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                try:
                    summary.done.append(preprocess_case(*job))
                except DiskFullError:
                    raise
                except Exception as err:
                    summary.failed.append((job[0], _one_line(job[0], err)))
                bar.update()
            return
        workers = min(workers, len(jobs), os.cpu_count() or 1)
        pool = ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(os.getpid(),)
        )
        try:
            futures = {pool.submit(preprocess_case, *job): job[0] for job in jobs}
            for future in as_completed(futures):
                try:
                    summary.done.append(future.result())
                except DiskFullError:
                    raise
                except Exception as err:
                    summary.failed.append((futures[future], _one_line(futures[future], err)))
                bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    except BaseException:
        bar.leave = False  # the error line replaces the bar
        raise
    finally:
        bar.close()


FOREGROUND_PERCENTILES = (0.5, 99.5)
"""nnU-Net's CT intensity window: these percentiles of the intensities inside the labelled organs."""


def foreground_window(
    dataset_root: str | Path,
    *,
    percentiles: tuple[float, float] = FOREGROUND_PERCENTILES,
    max_cases: int = 30,
    samples_per_case: int = 20_000,
    seed: int = 0,
) -> tuple[float, float]:
    """The intensity window of an nnU-Net v2 raw dataset's labelled foreground (nnU-Net's CT scheme).

    Reads up to ``max_cases`` training cases (evenly spaced), samples ``samples_per_case`` voxels inside
    their label maps and returns the ``percentiles`` of those intensities, rounded to whole HU. Organs are
    soft tissue, so this window keeps their contrast (a -1000..1000 HU window spends most of the range on
    air and bone): on the demo phantoms it made Organ-DETR learn several times faster per step
    (BENCHMARKS.md). Raises :class:`InputError` when no case has a labelled voxel.
    """
    from organdetr.datasets.nnunet import load_dataset
    from organdetr.io.images import read_image, read_label_map

    dataset = load_dataset(dataset_root)
    cases = dataset.cases
    picked = [
        cases[int(i)] for i in np.unique(np.linspace(0, len(cases) - 1, min(max_cases, len(cases))).round())
    ]
    rng = np.random.default_rng(seed)
    samples = []
    for case in picked:
        if case.label is None:
            continue
        image, labels = read_image(case.image), read_label_map(case.label)
        if image.array.shape != labels.array.shape:
            continue  # preprocess reports the mismatch, naming the files
        values = image.array[labels.array > 0]
        if values.size:
            samples.append(rng.choice(values, size=min(samples_per_case, values.size), replace=False))
    if not samples:
        raise InputError(
            dataset_root, "no labelled voxel in the training cases: pass an explicit --hu window"
        )
    lo, hi = np.percentile(np.concatenate(samples).astype(np.float64), percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return float(np.floor(lo)), float(np.ceil(hi))


def load_plans(cache_dir: str | Path) -> dict:
    """``cache_dir/plans.json``; InputError if missing or unreadable."""
    path = Path(cache_dir) / "plans.json"
    if not path.is_file():
        raise InputError(path, "plans.json not found (is this a folder made by `organdetr preprocess`?)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from None


def list_cases(cache_dir: str | Path) -> list[str]:
    """Ids of the cases the cache holds a record for (``cases/<id>.json``), sorted.

    A record whose arrays are broken is listed (and named by :func:`verify_case` / :func:`load_case`),
    never silently dropped; a case whose JSON was never written (an interrupted run) is not.
    """
    cases = Path(cache_dir) / "cases"
    if not cases.is_dir():
        return []
    return sorted(p.stem for p in cases.glob("*.json") if not p.name.startswith("."))


def load_case(
    cache_dir: str | Path, case_id: str, mmap: bool = True
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """``(image [I, J, K], label [I, J, K] | None, record)`` of a cached case.

    Arrays are memory-mapped read-only when ``mmap``. InputError naming the file if the case is missing,
    an array is missing or truncated, or its shape/dtype differ from the record (cheap header checks;
    :func:`verify_case` also checks the content).
    """
    record_path, _, _ = _case_paths(Path(cache_dir), case_id)
    record = _read_record(record_path, case_id)
    arrays = record.get("arrays") if isinstance(record.get("arrays"), dict) else {}
    mode = "r" if mmap else None
    loaded = []
    for name in (record["image_file"], record.get("label_file")):
        if not name:
            loaded.append(None)
            continue
        path = record_path.parent / name
        try:
            array = np.load(path, mmap_mode=mode, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(path, f"array of case {case_id!r} is missing") from None
        except (OSError, ValueError, EOFError) as err:
            raise InputError(
                path, f"unreadable or truncated array ({' '.join(str(err).split())[:200]})"
            ) from None
        entry = arrays.get(name)
        if entry is not None and (
            list(array.shape) != entry.get("shape") or array.dtype.str != entry.get("dtype")
        ):
            raise InputError(
                path,
                f"array is {array.dtype.str} {list(array.shape)}, the case record says "
                f"{entry.get('dtype')} {entry.get('shape')}",
            )
        loaded.append(array)
    return loaded[0], loaded[1], record
