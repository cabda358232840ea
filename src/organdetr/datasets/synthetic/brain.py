"""A synthetic brain-tumour MRI ("brain phantom"): four MR-like channels, BraTS labels and a grade.

:func:`generate_brain_case` draws one skull-stripped head from a seed, as BraTS ships them (background
exactly 0): a deformed brain ellipsoid with cortex (grey matter), white matter and CSF (ventricles and a
thin outer rim), and one glioma with BraTS' nested sub-regions, labelled with the BraTS 2018-2021 classes
made dense (``labels/brats.json``: 1 ``necrotic_core`` (NCR/NET), 2 ``peritumoral_edema``, 3
``enhancing_tumor``) and the regions WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.

**The grade is decided by the image**: a high-grade case (HGG) has a necrotic centre inside a rim that
enhances on T1ce (bright only there) within a large oedema; a low-grade case (LGG) has a non-enhancing
core (label 1, bright on T2 / FLAIR, T1ce = T1) in a smaller oedema and no label 3. So detection (the
tumour boxes), segmentation (regions) and classification (the T1ce rim) are all learnable from the four
channels and testable without downloads.

Channels T1, T1ce, T2, FLAIR (:data:`CHANNEL_NAMES`): per-tissue relative intensities
(:data:`TISSUE_INTENSITY`, MR-like contrasts: CSF dark on T1 / FLAIR and bright on T2, oedema bright on T2 /
FLAIR, ...), jittered per case, times a smooth bias field and an arbitrary per-channel scanner scale, plus
noise, a little partial-volume blur, stored as int16. Arrays are ``(i, j, k)`` in canonical LPS with the
head centred at world (0, 0, 0).

:func:`write_brain_dataset` writes the nnU-Net v2 raw layout with four channels, ``regions``,
``case_classes`` (LGG, HGG) and ``case_labels.json`` (``organdetr synth --kind brain-tumour``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from organdetr.core.geometry import Geometry
from organdetr.datasets.conversion import dense_class_map
from organdetr.datasets.labels import load_class_map, load_regions
from organdetr.datasets.nnunet import image_path, label_path, write_case_labels, write_dataset_json
from organdetr.datasets.synthetic.shapes import Grid, Superquadric, random_rotation, smooth_field
from organdetr.datasets.synthetic.writing import case_seeds, write_cases
from organdetr.io.images import write_image
from organdetr.runtime.atomic import write_figure
from organdetr.runtime.errors import InputError

CHANNEL_NAMES = ("T1", "T1ce", "T2", "FLAIR")
GRADES = ("LGG", "HGG")
NECROTIC_CORE, EDEMA, ENHANCING = 1, 2, 3  # dense BraTS ids (labels/brats.json 1, 2, 4 -> 1, 2, 3)

# tissue index -> relative intensity in (T1, T1ce, T2, FLAIR); 0 = background (0 after skull stripping)
TISSUES = ("background", "csf", "grey_matter", "white_matter", "edema", "non_enhancing", "necrosis", "rim")
TISSUE_INTENSITY = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # background
        [0.20, 0.22, 1.00, 0.12],  # CSF: dark T1, bright T2, suppressed on FLAIR
        [0.55, 0.57, 0.62, 0.60],  # grey matter
        [0.80, 0.82, 0.45, 0.48],  # white matter
        [0.50, 0.52, 0.85, 0.90],  # oedema: bright T2 / FLAIR
        [0.42, 0.44, 0.78, 0.82],  # non-enhancing tumour core (LGG): no enhancement (T1ce = T1)
        [0.25, 0.28, 0.95, 0.40],  # necrosis (HGG): fluid-like
        [0.52, 1.25, 0.70, 0.75],  # enhancing rim (HGG): bright only on T1ce
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class BrainPhantomConfig:
    """How brain cases vary.

    ``size`` voxels and ``spacing`` mm of the grid (64^3 at 3 mm = a 192 mm field of view), spacing varied
    by ``+-spacing_jitter`` (relative) per case; ``hgg_fraction`` of the cases are high grade. Tumour core
    semi-axes are drawn in ``core_mm`` (mm), the oedema is ``edema_scale`` (HGG) or ``lgg_edema_scale``
    times larger; ``necrosis_fraction`` is the necrotic centre's relative size in an HGG core.
    ``noise``: noise sigma relative to white matter; ``bias``: amplitude of the smooth multiplicative field.
    """

    size: tuple[int, int, int] = (64, 64, 64)
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    spacing_jitter: float = 0.05
    hgg_fraction: float = 0.5
    core_mm: tuple[float, float] = (12.0, 22.0)
    edema_scale: tuple[float, float] = (1.6, 2.1)
    lgg_edema_scale: tuple[float, float] = (1.25, 1.6)
    necrosis_fraction: tuple[float, float] = (0.45, 0.65)
    noise: float = 0.03
    bias: float = 0.15

    def __post_init__(self) -> None:
        if len(self.size) != 3 or min(self.size) < 16 or max(self.size) > 512:
            raise ValueError(f"size must be 3 axes of 16..512 voxels, got {self.size}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be 3 positive values in mm, got {self.spacing}")
        if not 0.0 <= self.spacing_jitter < 0.5 or not 0.0 <= self.hgg_fraction <= 1.0:
            raise ValueError("spacing_jitter must be in [0, 0.5) and hgg_fraction in [0, 1]")
        for name in ("core_mm", "edema_scale", "lgg_edema_scale", "necrosis_fraction"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high")
        if self.necrosis_fraction[1] >= 0.9 or self.edema_scale[0] <= 1 or self.lgg_edema_scale[0] <= 1:
            raise ValueError("necrosis_fraction must stay below 0.9 and the oedema scales above 1")
        if self.noise < 0 or not 0 <= self.bias < 0.5:
            raise ValueError("noise must be >= 0 and bias in [0, 0.5)")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def brats_classes() -> tuple[dict[int, str], dict[str, list[int]]]:
    """The dense BraTS class map and WT / TC / ET regions (``labels/brats.json`` through the converter's
    dense remapping), as a converted BraTS 2018-2021 dataset has them."""
    classes, lut = dense_class_map(load_class_map("brats"))
    regions = {name: sorted(int(lut[i]) for i in ids) for name, ids in load_regions("brats").items()}
    return classes, regions


@dataclass(frozen=True)
class BrainCaseInfo:
    """What was drawn for one case: the grade and the tumour centre (world mm)."""

    grade: str
    tumour_centre_mm: tuple[float, float, float]


def generate_brain_case(
    seed: int, cfg: BrainPhantomConfig | None = None
) -> tuple[np.ndarray, np.ndarray, Geometry, BrainCaseInfo]:
    """One case: ``(channels int16 [4, I, J, K], labels uint8 [I, J, K], geometry, info)``.

    Deterministic for a given ``seed`` and ``cfg``; channels in :data:`CHANNEL_NAMES` order.
    """
    cfg = cfg or BrainPhantomConfig()
    rng = np.random.default_rng(seed)
    geometry = _sample_geometry(rng, cfg)
    grid = Grid(geometry.size, geometry.spacing, geometry.origin)
    grade = "HGG" if rng.uniform() < cfg.hgg_fraction else "LGG"
    tissue, brain = _brain(rng, grid)
    labels = np.zeros(geometry.size, dtype=np.uint8)
    centre = _tumour(rng, grid, cfg, grade, tissue, labels, brain)
    image = _intensities(rng, tissue, brain, geometry, cfg)
    info = BrainCaseInfo(grade, tuple(round(float(c), 2) for c in centre))
    return image, labels, geometry, info


def _sample_geometry(rng: np.random.Generator, cfg: BrainPhantomConfig) -> Geometry:
    jitter = rng.uniform(1 - cfg.spacing_jitter, 1 + cfg.spacing_jitter)
    spacing = np.asarray(cfg.spacing, dtype=np.float64) * jitter
    size = np.asarray(cfg.size)
    origin = -(size - 1) / 2.0 * spacing
    return Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(round(float(s), 4) for s in spacing),
        origin=tuple(round(float(o), 3) for o in origin),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )


def _level(shape: Superquadric, grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """The shape's level field on the whole grid (``inf`` outside its bounding block)."""
    level = np.full(grid.size, np.inf, dtype=np.float32)
    for patch in shape.patches(grid, rng):
        level[patch.slices] = patch.f
    return level


def _brain(rng: np.random.Generator, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Tissue map ``[I, J, K]`` (indices into :data:`TISSUES`) and the brain mask."""
    fov = np.asarray(grid.size) * np.asarray(grid.spacing)
    adult = np.array([70.0, 85.0, 62.0])  # brain semi-axes (L-R, A-P, S-I) mm, scaled to the field of view
    semi = np.minimum(adult * fov.min() / 200.0 * rng.uniform(0.92, 1.05, 3), 0.47 * fov)
    rotation = random_rotation(rng, 6.0)
    brain_level = _level(Superquadric(np.zeros(3), semi, rotation, 2.2, 0.04, 4), grid, rng)
    brain = brain_level < 1.0
    tissue = np.zeros(grid.size, dtype=np.uint8)
    tissue[brain] = 3  # white matter
    tissue[brain & (brain_level > rng.uniform(0.78, 0.84))] = 2  # cortex
    tissue[brain & (brain_level > 0.96)] = 1  # outer CSF
    for side in (-1.0, 1.0):  # lateral ventricles
        centre = np.array([side * semi[0] * 0.18, -semi[1] * 0.05, semi[2] * 0.12])
        vent_semi = semi * np.array([0.09, 0.35, 0.22]) * rng.uniform(0.8, 1.2, 3)
        tissue[_level(Superquadric(centre, vent_semi, rotation, 2.0, 0.1, 3), grid, rng) < 1.0] = 1
    return tissue, brain


def _tumour(
    rng: np.random.Generator,
    grid: Grid,
    cfg: BrainPhantomConfig,
    grade: str,
    tissue: np.ndarray,
    labels: np.ndarray,
    brain: np.ndarray,
) -> np.ndarray:
    """Paint one glioma into ``tissue`` and ``labels`` (in place); returns its centre (mm)."""
    semi_core = rng.uniform(*cfg.core_mm, 3)
    inside = np.argwhere(
        ndimage.binary_erosion(brain, iterations=max(2, int(semi_core.min() / min(grid.spacing))))
    )
    if len(inside) == 0:
        inside = np.argwhere(brain)
    voxel = inside[rng.integers(len(inside))]
    centre = np.asarray(grid.origin) + np.asarray(grid.spacing) * voxel
    rotation = random_rotation(rng, 90.0)
    core_level = _level(Superquadric(centre, semi_core, rotation, 2.0, 0.12, 4), grid, rng)
    scale = rng.uniform(*(cfg.edema_scale if grade == "HGG" else cfg.lgg_edema_scale))
    offset = rng.uniform(-0.25, 0.25, 3) * semi_core
    edema_level = _level(
        Superquadric(centre + offset, semi_core * scale, random_rotation(rng, 90.0), 2.0, 0.2, 4), grid, rng
    )
    core = (core_level < 1.0) & brain
    edema = (edema_level < 1.0) & brain & ~core
    tissue[edema] = 4
    labels[edema] = EDEMA
    if grade == "HGG":
        necrosis = core & (core_level < rng.uniform(*cfg.necrosis_fraction))
        rim = core & ~necrosis
        tissue[rim], labels[rim] = 7, ENHANCING
        tissue[necrosis], labels[necrosis] = 6, NECROTIC_CORE
    else:
        tissue[core], labels[core] = 5, NECROTIC_CORE  # NCR/NET: the non-enhancing core
    return centre


def _intensities(
    rng: np.random.Generator,
    tissue: np.ndarray,
    brain: np.ndarray,
    geometry: Geometry,
    cfg: BrainPhantomConfig,
) -> np.ndarray:
    """Tissue map -> int16 ``[4, I, J, K]``: jittered contrasts, bias field, blur, noise, scanner scale."""
    table = TISSUE_INTENSITY * rng.uniform(0.92, 1.08, TISSUE_INTENSITY.shape).astype(np.float32)
    table[0] = 0.0
    spacing = np.asarray(geometry.spacing)
    nodes = tuple(max(int(n * sp / 60.0), 2) for n, sp in zip(tissue.shape, spacing, strict=True))
    channels = []
    for c in range(len(CHANNEL_NAMES)):
        image = table[tissue, c]
        bias = 1.0 + cfg.bias * smooth_field(rng, tissue.shape, nodes, order=1)
        image = ndimage.gaussian_filter(image * bias, 0.6, mode="nearest", truncate=2.0)
        image += cfg.noise * 0.8 * rng.standard_normal(tissue.shape, dtype=np.float32)
        image = np.abs(image) * rng.uniform(400.0, 1200.0)  # magnitude images, arbitrary scanner units
        image[~brain] = 0.0  # skull-stripped, as BraTS
        channels.append(np.rint(image))
    return np.stack(channels).astype(np.int16)


# ----------------------------------------------------------------------------- dataset writing


def case_id(index: int) -> str:
    """``brain_0000``-style case id."""
    return f"brain_{index:04d}"


def write_brain_case(root: Path, index: int, seed: int, cfg: BrainPhantomConfig) -> dict:
    """Generate case ``index`` and write its four channels and label (atomically); returns its summary."""
    channels, labels, geometry, info = generate_brain_case(seed, cfg)
    cid = case_id(index)
    write_image(label_path(root, cid), labels, geometry)
    for c in range(len(CHANNEL_NAMES) - 1, -1, -1):  # channel 0 last: it marks the case complete
        write_image(image_path(root, cid, channel=c), channels[c], geometry)
    return {
        "case_id": cid,
        "seed": seed,
        "grade": info.grade,
        "tumour_centre_mm": list(info.tumour_centre_mm),
    }


def write_brain_dataset(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    cfg: BrainPhantomConfig | None = None,
    workers: int = 1,
    *,
    progress: bool = False,
) -> Path:
    """Write ``num_cases`` brain cases as a four-channel nnU-Net v2 raw dataset in ``out_dir``.

    Layout: ``imagesTr/brain_XXXX_000{0..3}.nii.gz`` (T1, T1ce, T2, FLAIR), ``labelsTr/brain_XXXX.nii.gz``,
    ``case_labels.json`` (grade per case) and ``dataset.json`` (written last: channel names, labels,
    ``regions``, ``case_classes``, the seed, config and each case's seed and grade). ``out_dir`` must be new,
    empty or an earlier brain phantom dataset.
    """
    cfg = cfg or BrainPhantomConfig()
    root = Path(out_dir)
    if num_cases < 1:
        raise InputError(root, f"number of cases must be >= 1, got {num_cases}")
    _check_target(root)
    seeds = case_seeds(seed, num_cases)
    cases = write_cases(write_brain_case, root, seeds, cfg, workers, progress=progress, desc="synth brain")
    classes, regions = brats_classes()
    write_case_labels(root, {c["case_id"]: c["grade"] for c in cases})
    write_dataset_json(
        root,
        classes,
        num_cases,
        name=root.name or "BrainPhantom",
        channel_names={str(c): n for c, n in enumerate(CHANNEL_NAMES)},
        description="Synthetic skull-stripped brain MRI with a glioma (organdetr brain phantom); BraTS "
        "2018-2021 labels made dense, grade decided by the image (HGG: enhancing rim + necrosis).",
        class_source="brats",
        regions=regions,
        case_classes={g: i for i, g in enumerate(GRADES)},
        brain_phantom={"seed": int(seed), "config": cfg.to_dict(), "cases": cases},
    )
    return root


def _check_target(root: Path) -> None:
    """Refuse to write into a folder holding anything but an earlier brain phantom dataset."""
    if not root.exists():
        return
    if not root.is_dir():
        raise InputError(root, "output exists and is not a folder")
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if not entries:
        return
    marker = root / "dataset.json"
    ours = marker.is_file() and '"brain_phantom"' in marker.read_text("utf-8")
    others = [
        p
        for p in entries
        if p.name not in ("imagesTr", "labelsTr", "dataset.json", "case_labels.json", "preview.png")
    ]
    if not ours or others:
        raise InputError(
            root, "output folder is not empty and is not a brain phantom dataset; choose a new folder"
        )


# ----------------------------------------------------------------------------- preview picture


def save_brain_preview(
    channels: np.ndarray, labels: np.ndarray, path: str | Path, *, title: str | None = None
) -> Path:
    """PNG: the axial slice through the tumour in each channel (percentile window), label contours on
    FLAIR. ``channels [4, I, J, K]``, ``labels [I, J, K]`` in canonical LPS; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = int(np.argmax(np.count_nonzero(labels, axis=(0, 1)))) if labels.any() else labels.shape[2] // 2
    classes, _ = brats_classes()
    colours = {NECROTIC_CORE: "tab:red", EDEMA: "tab:green", ENHANCING: "yellow"}
    fig, axes = plt.subplots(1, len(CHANNEL_NAMES) + 1, figsize=(3.2 * (len(CHANNEL_NAMES) + 1), 3.6), dpi=80)
    for ax, (name, image) in zip(
        axes, [*zip(CHANNEL_NAMES, channels, strict=True), ("labels", None)], strict=True
    ):
        shown = channels[CHANNEL_NAMES.index("FLAIR")] if image is None else image
        picture = shown[:, :, k].T  # axial, radiological: patient right on the left, anterior up
        values = shown[shown > 0]
        vmax = float(np.percentile(values, 99.5)) if values.size else 1.0
        ax.imshow(picture, cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
        if image is None:
            for label_id, colour in colours.items():
                mask = (labels[:, :, k] == label_id).T
                if mask.any():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
            ax.set_title(" / ".join(f"{classes[i]}" for i in colours), fontsize=7)
        else:
            ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return write_figure(fig, path, format="png")


__all__ = [
    "CHANNEL_NAMES",
    "GRADES",
    "TISSUE_INTENSITY",
    "BrainCaseInfo",
    "BrainPhantomConfig",
    "brats_classes",
    "case_id",
    "generate_brain_case",
    "save_brain_preview",
    "write_brain_case",
    "write_brain_dataset",
]
