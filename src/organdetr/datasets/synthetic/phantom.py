"""A synthetic abdominal CT ("phantom") with organ labels, for training and testing from scratch.

:func:`generate_case` draws one case from a seed: a body outline with subcutaneous fat and abdominal
wall, spine, ribs, pelvis, psoas, bowel loops with gas, colon, lung bases, and ten labelled organs
(TotalSegmentator ids, :data:`PHANTOM_CLASSES`) as smooth deformed shapes at anatomically plausible,
varying positions and sizes (see :mod:`organdetr.datasets.synthetic.anatomy`). CT numbers follow a random
contrast phase (native, arterial or portal venous); the image is blurred a little (partial volume;
labels stay sharp) and gets noise. Some organs are missing now and then (gallbladder 10 %) so "absent
class" handling is exercised.

:func:`write_synthetic_dataset` writes many cases in the nnU-Net v2 raw layout, so every other verb
(``preprocess``, ``train``, ``evaluate`` ...) reads it unchanged; :func:`save_preview` draws a case.

Arrays are ``(i, j, k)`` in canonical LPS (identity direction); the world origin sits near the
middle of the volume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from organdetr.core.colours import organ_colours, window_image
from organdetr.core.geometry import Geometry
from organdetr.datasets.nnunet import image_path, label_path, write_dataset_json
from organdetr.datasets.synthetic.anatomy import render
from organdetr.datasets.synthetic.organs import Variation
from organdetr.datasets.synthetic.shapes import Grid, smooth_field
from organdetr.datasets.synthetic.tissues import LABEL_IDS, PHASES, tissue_hu
from organdetr.datasets.synthetic.writing import case_seeds, write_cases
from organdetr.io.images import write_image
from organdetr.runtime.atomic import write_figure
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

PHANTOM_CLASSES: dict[int, str] = {i: name for name, i in sorted(LABEL_IDS.items(), key=lambda kv: kv[1])}
"""Label id -> organ name, ids from TotalSegmentator's "total" map (spleen 1 ... inferior_vena_cava 63)."""

DEFAULT_MISSING = {"gallbladder": 0.10, "kidney_left": 0.03, "kidney_right": 0.03, "spleen": 0.02}

HU_RANGE = (-1024, 3071)
"""CT numbers are clipped to the 12-bit scanner range."""

SCAN_RANGES: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "thorax_abdomen_pelvis": (0.15, (-245.0, -200.0), (270.0, 320.0)),
    "abdomen_pelvis": (0.35, (-245.0, -195.0), (165.0, 225.0)),
    "abdomen": (0.20, (-90.0, -30.0), (165.0, 225.0)),
    "upper_abdomen": (0.15, (10.0, 60.0), (140.0, 200.0)),
    "lower_abdomen_pelvis": (0.15, (-245.0, -200.0), (-40.0, 30.0)),
}
"""Scan protocols of the varied field of view: name -> (probability, z range of the lower edge, z range of
the upper edge), in the anatomy's template mm (z = 0 near L2, superior positive; scaled by the body size).
The liver spans about z 35..175, kidneys -65..60, bladder -185..-115 (see ``phantom_anatomy``)."""


@dataclass(frozen=True)
class PhantomConfig:
    """How phantom cases vary.

    ``size`` voxels ``(I, J, K)`` and ``spacing`` mm of the nominal grid (96^3 at 4 mm = a 384 mm field of
    view); per case the in-plane and slice spacing each vary by ``+-spacing_jitter`` (relative), the size
    by ``+-size_jitter`` (relative, 0 = fixed) and the field of view centre by ``+-shift_mm``. Organs move
    by up to ``organ_shift_mm`` and scale by ``+-organ_scale_jitter``. ``noise_hu``: range of the noise
    standard deviation (HU); ``blur_mm``: range of the Gaussian partial-volume blur (sigma, mm).
    ``missing``: organ name -> probability that a case lacks it. ``phases``: contrast phases drawn from.

    ``field_of_view="varied"`` (default; see the module docstring) replaces the nominal grid: the in-plane
    grid has ``size[0] x size[1]`` voxels over ``fov_mm`` (drawn), slices are ``slice_ratio`` x the in-plane
    spacing apart over the drawn scan range, the patient lies ``table_offset_mm`` (x, y) off the field's
    centre, the world origin moves by ``world_offset_mm`` and the body scales by ``body_scale``;
    ``spacing``, ``spacing_jitter``, ``size_jitter`` and ``shift_mm`` then do not apply. ``"fixed"`` keeps
    the nominal grid.
    """

    field_of_view: str = "varied"
    size: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)
    spacing_jitter: float = 0.10
    size_jitter: float = 0.0
    shift_mm: float = 20.0
    organ_shift_mm: float = 15.0
    organ_scale_jitter: float = 0.15
    organ_rotation_deg: float = 12.0
    noise_hu: tuple[float, float] = (10.0, 20.0)
    blur_mm: tuple[float, float] = (1.2, 2.2)
    missing: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MISSING))
    phases: tuple[str, ...] = PHASES
    fov_mm: tuple[float, float] = (300.0, 440.0)
    slice_ratio: tuple[float, float] = (0.8, 1.5)
    table_offset_mm: tuple[float, float] = (40.0, 30.0)
    world_offset_mm: tuple[float, float, float] = (30.0, 30.0, 150.0)
    body_scale: tuple[float, float] = (0.85, 1.15)
    scan_ranges: tuple[str, ...] = tuple(SCAN_RANGES)

    def __post_init__(self) -> None:
        if self.field_of_view not in ("varied", "fixed"):
            raise ValueError(f"field_of_view must be 'varied' or 'fixed', got {brief(self.field_of_view)}")
        if not 0 < self.fov_mm[0] <= self.fov_mm[1] or not 0 < self.slice_ratio[0] <= self.slice_ratio[1]:
            raise ValueError("fov_mm and slice_ratio must be (low, high) ranges with 0 < low <= high")
        if not 0.5 <= self.body_scale[0] <= self.body_scale[1] <= 1.5:
            raise ValueError(f"body_scale must be a range within [0.5, 1.5], got {self.body_scale}")
        if min(self.table_offset_mm) < 0 or min(self.world_offset_mm) < 0:
            raise ValueError("table_offset_mm and world_offset_mm must be >= 0")
        if not self.scan_ranges or set(self.scan_ranges) - set(SCAN_RANGES):
            raise ValueError(f"scan_ranges must be a non-empty subset of {tuple(SCAN_RANGES)}")
        if len(self.size) != 3 or min(self.size) < 8:
            raise ValueError(f"size must be 3 axes of at least 8 voxels, got {self.size}")
        if max(self.size) > 512:
            raise ValueError(f"size {self.size} is larger than 512 voxels per axis")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values in mm, got {self.spacing}")
        for name in ("spacing_jitter", "size_jitter", "organ_scale_jitter"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {getattr(self, name)}")
        if self.shift_mm < 0 or self.organ_shift_mm < 0 or self.organ_rotation_deg < 0:
            raise ValueError("shift_mm, organ_shift_mm and organ_rotation_deg must be >= 0")
        if not 0 <= self.noise_hu[0] <= self.noise_hu[1] or not 0 <= self.blur_mm[0] <= self.blur_mm[1]:
            raise ValueError("noise_hu and blur_mm must be (low, high) ranges with 0 <= low <= high")
        unknown = sorted(set(self.missing) - set(LABEL_IDS))
        if unknown:
            raise ValueError(f"missing names unknown organs {unknown}; known: {sorted(LABEL_IDS)}")
        if any(not 0.0 <= p <= 1.0 for p in self.missing.values()):
            raise ValueError("missing probabilities must be in [0, 1]")
        if not self.phases or set(self.phases) - set(PHASES):
            raise ValueError(f"phases must be a non-empty subset of {PHASES}, got {self.phases}")

    def to_dict(self) -> dict:
        """JSON-ready dict (stored in the dataset.json of a written dataset)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def fixed(cls, **changes) -> PhantomConfig:
        """The earlier phantom (one abdomen-centred field of view), e.g. for comparisons with old runs."""
        return cls(field_of_view="fixed", **changes)


@dataclass(frozen=True)
class CaseInfo:
    """What was drawn for one case: contrast phase, the organs it lacks, and the scan range."""

    phase: str
    missing: tuple[str, ...]
    scan_range: str = "fixed"


def generate_case(seed: int, cfg: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One synthetic abdomen: ``(image int16 HU [I,J,K], labels uint8 [I,J,K], geometry)``.

    Deterministic for a given ``seed`` and ``cfg``. Labels use :data:`PHANTOM_CLASSES` ids; the geometry
    is canonical LPS (identity direction) with the volume centre near world (0, 0, 0).
    """
    image, labels, geometry, _ = generate_case_with_info(seed, cfg)
    return image, labels, geometry


def generate_case_with_info(
    seed: int, cfg: PhantomConfig | None = None
) -> tuple[np.ndarray, np.ndarray, Geometry, CaseInfo]:
    """:func:`generate_case` plus the :class:`CaseInfo` of what was drawn."""
    cfg = cfg or PhantomConfig()
    rng = np.random.default_rng(seed)
    tissue, labels, geometry, info = _draw_maps(rng, cfg)
    image = _ct_numbers(rng, tissue, geometry, cfg, info.phase)  # reads the spacing only
    return image, labels, geometry, info


def phantom_maps(seed: int, cfg: PhantomConfig | None = None) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """The maps of case ``seed`` before CT numbers: ``(tissue uint8 [I,J,K] (:class:`Tissue` values),
    labels uint8 [I,J,K], geometry)``, the same anatomy :func:`generate_case` paints for that seed."""
    tissue, labels, geometry, _ = _draw_maps(np.random.default_rng(seed), cfg or PhantomConfig())
    return tissue, labels, geometry


def _draw_maps(
    rng: np.random.Generator, cfg: PhantomConfig
) -> tuple[np.ndarray, np.ndarray, Geometry, CaseInfo]:
    """Grid, contrast phase, organs present and the painted tissue / label maps of one case."""
    body_scale, scan_range, world_offset = None, "fixed", np.zeros(3)
    if cfg.field_of_view == "varied":
        body_scale = float(rng.uniform(*cfg.body_scale))
        geometry, scan_range, world_offset = sample_scan(rng, cfg, body_scale)
    else:
        geometry = sample_geometry(rng, cfg)
    phase = str(rng.choice(cfg.phases))
    present = {name: bool(rng.uniform() >= cfg.missing.get(name, 0.0)) for name in LABEL_IDS}
    grid = Grid(geometry.size, geometry.spacing, geometry.origin)  # anatomy frame: the body's centre at 0
    variation = Variation(cfg.organ_shift_mm, cfg.organ_scale_jitter, cfg.organ_rotation_deg)
    tissue, labels, _ = render(grid, rng, present=present, variation=variation, body_scale=body_scale)
    missing = tuple(name for name, here in present.items() if not here)
    if world_offset.any():  # the scanner's frame: where the table happened to be
        origin = tuple(round(float(o), 3) for o in np.asarray(geometry.origin) + world_offset)
        geometry = Geometry(geometry.size, geometry.spacing, origin, geometry.direction)
    return tissue, labels, geometry, CaseInfo(phase=phase, missing=missing, scan_range=scan_range)


def sample_scan(
    rng: np.random.Generator, cfg: PhantomConfig, body_scale: float
) -> tuple[Geometry, str, np.ndarray]:
    """Varied field of view: ``(grid in the anatomy's frame, scan range name, world offset (3,) mm)``.

    The grid covers the drawn scan range in z and a drawn in-plane field of view whose centre is the
    patient's table offset; the world offset is added to the origin after rendering.
    """
    names = list(cfg.scan_ranges)
    weights = np.asarray([SCAN_RANGES[n][0] for n in names])
    name = str(rng.choice(names, p=weights / weights.sum()))
    _, lower, upper = SCAN_RANGES[name]
    z_lo, z_hi = rng.uniform(*lower) * body_scale, rng.uniform(*upper) * body_scale
    fov = rng.uniform(*cfg.fov_mm)
    in_plane = fov / np.asarray(cfg.size[:2], dtype=np.float64)
    slice_spacing = float(in_plane.mean() * rng.uniform(*cfg.slice_ratio))
    slices = max(int(math.ceil((z_hi - z_lo) / slice_spacing)), 8)
    size = np.array([cfg.size[0], cfg.size[1], min(slices, 512)])
    spacing = np.array([in_plane[0], in_plane[1], slice_spacing])
    offset = np.asarray(cfg.table_offset_mm)
    centre = np.array([*rng.uniform(-offset, offset), (z_lo + z_hi) / 2.0])
    origin = centre - (size - 1) / 2.0 * spacing
    world = rng.uniform(-1.0, 1.0, size=3) * np.asarray(cfg.world_offset_mm)
    geometry = Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(round(float(s), 4) for s in spacing),
        origin=tuple(round(float(o), 3) for o in origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return geometry, name, world


def sample_geometry(rng: np.random.Generator, cfg: PhantomConfig) -> Geometry:
    """Per-case grid: jittered spacing (in-plane and slice separately), size and field-of-view centre."""
    in_plane, through = rng.uniform(1 - cfg.spacing_jitter, 1 + cfg.spacing_jitter, size=2)
    spacing = np.asarray(cfg.spacing, dtype=np.float64) * np.array([in_plane, in_plane, through])
    size_factor = rng.uniform(1 - cfg.size_jitter, 1 + cfg.size_jitter, size=2)
    size = np.maximum(np.round(np.asarray(cfg.size) * size_factor[[0, 0, 1]]), 8).astype(int)
    centre = rng.uniform(-cfg.shift_mm, cfg.shift_mm, size=3) * np.array([0.5, 0.5, 1.0])
    origin = centre - (size - 1) / 2.0 * spacing
    return Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(round(float(s), 4) for s in spacing),
        origin=tuple(round(float(o), 3) for o in origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def _ct_numbers(rng, tissue: np.ndarray, geometry: Geometry, cfg: PhantomConfig, phase: str) -> np.ndarray:
    """Tissue map -> int16 HU: per-tissue means + slow texture, partial-volume blur, scanner noise."""
    means, texture = tissue_hu(rng, phase)
    spacing = np.asarray(geometry.spacing)
    nodes = tuple(max(int(n * sp / 40.0), 2) for n, sp in zip(tissue.shape, spacing, strict=True))
    slow = smooth_field(rng, tissue.shape, nodes, order=1)
    image = means[tissue]
    image += texture[tissue] * slow
    blur = rng.uniform(*cfg.blur_mm) / spacing
    image = ndimage.gaussian_filter(image, blur, mode="nearest", truncate=3.0)
    noise = rng.standard_normal(tissue.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, 0.5, truncate=2.0)  # reconstruction kernels correlate noise
    noise *= np.float32(rng.uniform(*cfg.noise_hu) / max(float(noise.std()), 1e-6))
    image += noise
    np.clip(np.rint(image, out=image), *HU_RANGE, out=image)
    return image.astype(np.int16)


# ----------------------------------------------------------------------------- dataset writing


def case_id(index: int) -> str:
    """``phantom_0000``-style case id."""
    return f"phantom_{index:04d}"


def write_case(root: Path, index: int, seed: int, cfg: PhantomConfig) -> dict:
    """Generate case ``index`` and write its image and label (atomically); returns its summary."""
    image, labels, geometry, info = generate_case_with_info(seed, cfg)
    cid = case_id(index)
    write_image(image_path(root, cid), image, geometry)
    write_image(label_path(root, cid), labels, geometry)
    return {
        "case_id": cid,
        "seed": seed,
        "phase": info.phase,
        "missing": list(info.missing),
        "scan_range": info.scan_range,
    }


def write_synthetic_dataset(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    cfg: PhantomConfig | None = None,
    workers: int = 1,
    *,
    progress: bool = False,
) -> Path:
    """Write ``num_cases`` phantom cases as an nnU-Net v2 raw dataset in ``out_dir``; returns ``out_dir``.

    Layout: ``imagesTr/phantom_XXXX_0000.nii.gz``, ``labelsTr/phantom_XXXX.nii.gz`` and ``dataset.json``
    (written last; it records the seed, the config and each case's seed, phase and missing organs).
    ``out_dir`` must be empty, new, or an earlier phantom dataset (whose cases are replaced); an
    :class:`InputError` protects any other folder.
    """
    cfg = cfg or PhantomConfig()
    root = Path(out_dir)
    if num_cases < 1:
        raise InputError(root, f"number of cases must be >= 1, got {num_cases}")
    _check_target(root, num_cases)
    cases = write_cases(write_case, root, case_seeds(seed, num_cases), cfg, workers, progress=progress)
    write_dataset_json(
        root,
        PHANTOM_CLASSES,
        num_cases,
        name=root.name or "Phantom",
        description="Synthetic abdominal CT (organdetr phantom); labels use TotalSegmentator 'total' ids.",
        class_source="totalsegmentator",
        phantom={"seed": int(seed), "config": cfg.to_dict(), "cases": cases},
    )
    return root


def _check_target(root: Path, num_cases: int) -> None:
    """Refuse to write into a folder holding anything but an earlier phantom dataset's files."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(root, "output exists and is not a folder")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    ours = {case_id(i) for i in range(num_cases)}
    stray = []
    for folder, suffix in (("imagesTr", "_0000.nii.gz"), ("labelsTr", ".nii.gz")):
        for file in (root / folder).glob("*") if (root / folder).is_dir() else []:
            if not (file.name.endswith(suffix) and file.name[: -len(suffix)] in ours):
                stray.append(file)
    is_phantom = (root / "dataset.json").is_file() and '"phantom"' in (root / "dataset.json").read_text(
        "utf-8"
    )
    others = [p for p in entries if p.name not in ("imagesTr", "labelsTr", "dataset.json", "preview.png")]
    if not is_phantom or stray or others:
        raise InputError(
            root,
            "output folder is not empty and is not a phantom dataset of at most this many cases; "
            "choose a new folder",
        )


# ----------------------------------------------------------------------------- preview picture


def save_preview(
    image: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    classes: dict[int, str] | None = None,
    title: str | None = None,
    window: tuple[float, float] = (400.0, 40.0),
) -> Path:
    """PNG of axial, coronal and sagittal slices (soft-tissue window) with each organ's contour.

    ``image`` HU and ``labels`` ``[I, J, K]`` in canonical LPS, ``spacing`` mm. Radiological convention:
    patient right on the image's left, anterior up (axial), superior up (coronal, sagittal). Each view
    cuts where the most organs show. Written atomically; returns ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    classes = PHANTOM_CLASSES if classes is None else classes
    present = [i for i in classes if np.any(labels == i)]
    if len(classes) <= 10:  # tab10: ten clearly distinct colours
        palette = matplotlib.colormaps["tab10"].colors
        colours = {name: (*palette[n][:3], 1.0) for n, name in enumerate(classes.values())}
    else:
        colours = organ_colours(list(classes.values()))
    shown = window_image(image, window)
    views = (("axial", 2, (1, 0), False), ("coronal", 1, (2, 0), True), ("sagittal", 0, (2, 1), True))
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6), dpi=80)
    for ax, (name, axis, (row, col), flip) in zip(axes, views, strict=True):
        index = _busiest_slice(labels, axis)
        picture = np.take(shown, index, axis=axis)
        label_slice = np.take(labels, index, axis=axis)
        if row > col:  # np.take keeps the remaining axes in increasing order
            picture, label_slice = picture.T, label_slice.T
        if flip:
            picture, label_slice = picture[::-1], label_slice[::-1]
        aspect = spacing[row] / spacing[col]
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, aspect=aspect, interpolation="nearest")
        for label_id in present:
            mask = label_slice == label_id
            if mask.any():
                ax.contour(
                    mask.astype(np.float32), levels=[0.5], colors=[colours[classes[label_id]]], linewidths=1.2
                )
        ax.set_title(f"{name} ({'ijk'[axis]} = {index})", fontsize=10)
        ax.set_axis_off()
    handles = [Line2D([], [], color=colours[classes[i]], lw=2, label=classes[i]) for i in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5) or 1, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95 if title else 1))
    return write_figure(fig, path, format="png")


def _busiest_slice(labels: np.ndarray, axis: int) -> int:
    """Index along ``axis`` whose slice shows the most distinct organs (ties: most labelled voxels)."""
    other = tuple(a for a in range(3) if a != axis)
    ids = [i for i in np.unique(labels) if i != 0]
    if not ids:
        return labels.shape[axis] // 2
    counts = np.stack([np.any(labels == i, axis=other) for i in ids]).sum(axis=0)
    voxels = np.count_nonzero(labels, axis=other)
    return int(np.lexsort((voxels, counts))[-1])
