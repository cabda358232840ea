"""A cache's ``plans.json``, in one place: how scans were mapped onto the model grid and what the data holds.

:class:`PreprocessConfig` is the mapping (grid, fit, HU window, per-channel normalisation);
:func:`make_plans` writes it with the dataset's classes, channels, regions and case classes into the
``plans.json`` content, :func:`load_plans` reads it back, and the ``*_from_plans`` readers give what training,
prediction and the models need from it (:func:`config_from_plans`, :func:`num_channels`,
:func:`class_map_from_plans`, :func:`case_classes_from_plans`, :func:`regions_from_plans`,
:func:`dense_regions_from_plans`). :func:`changed_plans` / :func:`refuse_other_plans` keep a cache from
mixing cases made with other settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief, collapse

CACHE_VERSION = 1
FITS = ("resize", "pad")
CHANNEL_NORMS = ("hu_window", "zscore")
# plans keys that must match for a cache to be resumed (``source`` may move)
PLAN_KEYS = (
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
        if len(self.target_spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in self.target_spacing):
            raise ValueError(f"target_spacing must be 3 positive numbers (mm), got {self.target_spacing}")
        if len(self.input_size) != 3 or min(self.input_size) < 1:
            raise ValueError(f"input_size must be 3 positive integers, got {self.input_size}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {FITS}, got {brief(self.fit)}")
        if len(self.hu_window) != 2 or not all(map(math.isfinite, self.hu_window)) or not (
            self.hu_window[0] < self.hu_window[1]
        ):
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.interpolation not in ("linear", "bspline"):
            raise ValueError(f"interpolation must be 'linear' or 'bspline', got {brief(self.interpolation)}")
        if self.image_dtype not in ("float32", "float16"):
            raise ValueError(f"image_dtype must be 'float32' or 'float16', got {brief(self.image_dtype)}")
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


def load_plans(cache_dir: str | Path) -> dict:
    """``cache_dir/plans.json``; InputError if missing or unreadable."""
    path = Path(cache_dir) / "plans.json"
    if not path.is_file():
        raise InputError(path, "plans.json not found (is this a folder made by `organdetr preprocess`?)")
    return check_plans(read_json(path, "not valid JSON", not_object="plans.json is not a JSON object"), path)


def check_plans(plans: dict, path: str | Path | None) -> dict:
    """``plans`` when its grid, HU window and classes make sense; InputError naming ``path`` otherwise.

    A cache's or a checkpoint's ``plans.json`` may lie (negative or NaN spacing, NaN input size, a reversed
    HU window): it is refused in one line before anything is built from it.
    """
    if not isinstance(plans, dict):
        raise InputError(path, "plans.json is not a JSON object")
    try:
        config_from_plans(plans)
    except (ValueError, TypeError, OverflowError) as err:
        raise InputError(path, f"plans.json is not valid: {collapse(str(err), 300)}") from None
    class_map_from_plans(plans, path)
    return plans


def changed_plans(out_dir: Path, plans: dict) -> tuple[dict | None, list[str]]:
    """The cache's current plans (``None`` if none) and the plan keys that differ from ``plans``."""
    if not (out_dir / "plans.json").is_file():
        return None, []
    existing = load_plans(out_dir)
    return existing, [k for k in PLAN_KEYS if existing.get(k) != plans.get(k)]


def refuse_other_plans(out_dir: Path, changed: list[str]) -> None:
    """InputError naming the cache's plans.json: it was made with other settings (the ``changed`` keys)."""
    raise InputError(
        out_dir / "plans.json",
        f"cache was made with different settings ({', '.join(changed)}); "
        "use another output folder or --overwrite",
    )


# ----------------------------------------------------------------------------- reading the plans


def config_from_plans(plans: dict) -> PreprocessConfig:
    """The :class:`PreprocessConfig` a cache was made with (predict preprocesses new scans the same way)."""
    return PreprocessConfig(**{k: plans[k] for k in PreprocessConfig.__dataclass_fields__ if k in plans})


def num_channels(plans: dict) -> int:
    """Image channels of a cache (1 for the single-channel caches of earlier versions)."""
    return len(plans.get("channel_norm") or [None])


def class_map_from_plans(plans: dict, path: str | Path | None = None) -> dict[int, str]:
    """``plans["classes"]`` as ``{label_id: name}`` sorted by id (the dense index order)."""
    try:
        classes = {int(k): str(v) for k, v in plans["classes"].items()}
    except (KeyError, AttributeError, ValueError) as err:
        raise InputError(path, f"plans.json has no valid 'classes' map ({err})") from None
    if not classes or min(classes) < 1:
        raise InputError(path, "plans.json 'classes' must map label ids >= 1 to organ names")
    return dict(sorted(classes.items()))


def case_classes_from_plans(plans: dict) -> list[str]:
    """Case-level class names in index order (``plans["case_classes"]``; empty when the cache has none)."""
    table = plans.get("case_classes") or {}
    return [str(table[k]) for k in sorted(table, key=int)]


def regions_from_plans(plans: dict) -> dict[str, tuple[int, ...]]:
    """Region name -> label ids it unites (``plans["regions"]``; empty when the dataset declares none)."""
    return {str(name): tuple(int(i) for i in ids) for name, ids in (plans.get("regions") or {}).items()}


def dense_regions_from_plans(plans: dict) -> dict[str, tuple[int, ...]]:
    """Region name -> the dense class indices (0..K-1, the model's class order) it unites."""
    dense = {label_id: d for d, label_id in enumerate(class_map_from_plans(plans))}
    return {name: tuple(dense[i] for i in ids) for name, ids in regions_from_plans(plans).items()}


__all__ = [
    "CACHE_VERSION",
    "CHANNEL_NORMS",
    "FITS",
    "PLAN_KEYS",
    "PreprocessConfig",
    "case_classes_from_plans",
    "changed_plans",
    "check_plans",
    "class_map_from_plans",
    "config_from_plans",
    "default_channel_norm",
    "dense_regions_from_plans",
    "load_plans",
    "make_plans",
    "num_channels",
    "refuse_other_plans",
    "regions_from_plans",
]
