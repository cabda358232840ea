"""Training scans synthesised from real label maps with randomised shape and appearance (SynthSeg-style).

:func:`synthesize` turns one :class:`~organdetr.datasets.synthetic.label_sources.LabelSource` into one case:

1. **Structures.** The source's ids become dense structure indices; with ``body_from_labels`` its label 0
   is split into ``outside_body`` and ``body_unlabelled`` (inside the body: within a drawn margin of
   ``body_margin_mm`` of any labelled structure, holes filled per axial slice), so that air and the
   unlabelled fat between organs get their own intensities.
2. **Space.** An affine (isotropic ``scale``, per-axis ``stretch``, ``rotate_deg`` about i, j, k) and a smooth
   elastic displacement (``elastic_mm`` amplitude on control points ``elastic_nodes_mm`` apart) move the
   anatomy about the source's centre; a new grid is drawn around it: spacing (``spacing_in_plane``,
   ``spacing_slice``), scan range (a ``fov_k`` fraction of the moved anatomy's cranio-caudal extent, at a
   random height: organs get cut) and in-plane field of view (``fov_in_plane`` x the extent, ``off_centre``).
   The structure map is resampled onto it (nearest neighbour, ``scipy.ndimage.map_coordinates``; outside the
   source is ``outside_body``). ``deform=False`` keeps the affine and field at identity (the grid is still
   drawn); ``vary_grid=False`` keeps the source's own grid (no resampling at all).
3. **Targets.** Structures whose names map onto the model's organs (``label_sources.map_classes``) give
   the label map (:data:`TARGET_CLASSES` ids, 0 elsewhere) and the boxes come from it
   (:func:`organdetr.core.boxes.labels.boxes_from_labels`, the one place boxes come from a label map).
4. **Appearance.** :func:`organdetr.datasets.synthetic.appearance.render_appearance` (Gaussian per structure,
   texture, bias field, blur, gamma, noise).

Everything is drawn from one ``numpy.random.Generator``: the same seed gives the same case. Arrays are
``(i, j, k)`` canonical LPS; the output geometry has the identity direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from organdetr.core.boxes.labels import OrganBox, boxes_from_labels
from organdetr.core.geometry import Geometry
from organdetr.datasets.synthetic.appearance import BODY, OUTSIDE, AppearanceConfig, render_appearance
from organdetr.datasets.synthetic.label_sources import TARGET_CLASSES, LabelSource
from organdetr.datasets.synthetic.shapes import smooth_field

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class FromLabelsConfig:
    """How a synthesised case varies (each range drawn uniformly per case; mm, degrees, fractions)."""

    deform: bool = True
    vary_grid: bool = True
    scale: tuple[float, float] = (0.85, 1.15)
    stretch: float = 0.10
    rotate_deg: tuple[float, float, float] = (6.0, 6.0, 12.0)
    elastic_mm: tuple[float, float] = (0.0, 8.0)
    elastic_nodes_mm: float = 70.0
    spacing_in_plane: tuple[float, float] = (1.5, 4.0)
    spacing_slice: tuple[float, float] = (1.5, 6.0)
    # scan range down to a tenth of the anatomy (~35 mm of an abdomen): real scans include thin slabs (the
    # pack's TS-B: 38 mm, its MR: 60 mm) and a low bound of 0.35 (~120 mm) never showed one; at 0.1 the MR's
    # AP10 rose 0.67 -> 0.89 and TS-B's AP50 0.00 -> 0.17 (2000 steps, one seed; BENCHMARKS.md "Issue 24")
    fov_k: tuple[float, float] = (0.1, 1.0)
    fov_in_plane: tuple[float, float] = (0.85, 1.15)
    off_centre: float = 0.10
    max_size: int = 128
    body_margin_mm: tuple[float, float] = (5.0, 35.0)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)

    def __post_init__(self) -> None:
        pairs = ("scale", "elastic_mm", "spacing_in_plane", "spacing_slice", "fov_k", "fov_in_plane")
        for name in (*pairs, "body_margin_mm"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(
                    f"{name} must be a (low, high) range with 0 <= low <= high, got {(low, high)}"
                )
        if self.scale[0] <= 0 or self.spacing_in_plane[0] <= 0 or self.spacing_slice[0] <= 0:
            raise ValueError("scale and spacing ranges must be positive")
        if not 0 < self.fov_k[1] <= 1.0 or self.fov_k[0] <= 0:
            raise ValueError(f"fov_k must lie in (0, 1], got {self.fov_k}")
        if not 0 <= self.stretch < 0.5 or self.off_centre < 0 or self.elastic_nodes_mm <= 0:
            raise ValueError("stretch must be in [0, 0.5), off_centre >= 0, elastic_nodes_mm > 0")
        if not 8 <= self.max_size <= 512:
            raise ValueError(f"max_size must be in [8, 512], got {self.max_size}")

    @classmethod
    def identity(cls, appearance: AppearanceConfig | None = None) -> FromLabelsConfig:
        """The source's own grid and anatomy: only the appearance varies (tests, pictures)."""
        return cls(deform=False, vary_grid=False, appearance=appearance or AppearanceConfig())

    def to_dict(self) -> dict:
        """JSON-ready dict (stored in the dataset.json of a written dataset)."""
        return asdict(self)


@dataclass
class SynthCase:
    """One synthesised case: ``image`` float32 HU ``[I, J, K]``, ``labels`` uint8 model organ ids on the same
    grid, ``geometry``, the organs' ``boxes`` (from ``labels``) and ``info`` (what was drawn)."""

    image: np.ndarray
    labels: np.ndarray
    geometry: Geometry
    boxes: list[OrganBox]
    info: dict


def synthesize(
    source: LabelSource, seed: int | np.random.Generator, cfg: FromLabelsConfig | None = None
) -> SynthCase:
    """One case from ``source`` (see the module docstring); deterministic for an integer ``seed``."""
    cfg = cfg or FromLabelsConfig()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    structures, names = structure_map(source, rng, cfg.body_margin_mm)
    geometry = source.geometry
    if cfg.vary_grid:
        geometry, coords = sample_grid(rng, source.geometry, cfg)
        structures = ndimage.map_coordinates(structures, coords, order=0, mode="constant", cval=0)
    organ_lookup = np.concatenate(
        [[0, 0], source.mapping.lookup(max(source.classes))[sorted(source.classes)]]
    )
    labels = organ_lookup.astype(np.uint8)[structures]
    image = render_appearance(rng, structures, names, geometry.spacing, cfg.appearance)
    boxes = boxes_from_labels(labels, geometry, TARGET_CLASSES, allow_empty=True)
    info = {"source": source.name, "size": list(geometry.size), "spacing": list(geometry.spacing)}
    return SynthCase(image, labels, geometry, boxes, info)


def structure_map(
    source: LabelSource, rng: np.random.Generator, body_margin_mm: tuple[float, float]
) -> tuple[np.ndarray, list[str]]:
    """Dense structure indices ``uint16 [I, J, K]`` on the source grid and their names: 0 ``outside_body``,
    1 ``body_unlabelled``, then the source's structures in id order."""
    ids = sorted(source.classes)
    lookup = np.zeros(max(ids) + 1, dtype=np.uint16)
    lookup[ids] = np.arange(2, 2 + len(ids), dtype=np.uint16)
    dense = lookup[source.labels]
    if source.body_from_labels:
        body = body_mask(source, float(rng.uniform(*body_margin_mm)))
        dense[(dense == 0) & body] = 1
    return dense, [OUTSIDE, BODY, *(source.classes[i] for i in ids)]


def body_mask(source: LabelSource, margin_mm: float) -> np.ndarray:
    """Bool ``[I, J, K]``: within ``margin_mm`` of a labelled voxel, holes filled in every axial slice."""
    near = source.distance_to_labels_mm() <= margin_mm
    for k in range(near.shape[2]):
        near[:, :, k] = ndimage.binary_fill_holes(near[:, :, k])
    return near


def sample_grid(
    rng: np.random.Generator, source: Geometry, cfg: FromLabelsConfig
) -> tuple[Geometry, np.ndarray]:
    """Draw the anatomy's motion and the new grid: ``(geometry, coords [3, I, J, K] float32)``, the continuous
    source index (``(i, j, k)``, canonical LPS) that each new voxel samples."""
    spacing, origin, size = (np.asarray(v, np.float64) for v in (source.spacing, source.origin, source.size))
    centre = origin + (size - 1) / 2.0 * spacing
    matrix = _anatomy_matrix(rng, cfg) if cfg.deform else np.eye(3)
    edges = np.stack([origin - spacing / 2.0, origin + (size - 0.5) * spacing])
    corners = np.array([[edges[b][axis] for axis, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
    moved = (corners - centre) @ matrix.T + centre
    low, high = moved.min(axis=0), moved.max(axis=0)
    geometry = _draw_grid(rng, low, high, cfg)
    axes = [geometry.origin[a] + geometry.spacing[a] * np.arange(geometry.size[a]) for a in range(3)]
    world = np.stack(np.meshgrid(*axes, indexing="ij")).astype(np.float32)  # [3, I, J, K] mm
    inverse = np.linalg.inv(matrix).astype(np.float32)
    back = np.einsum("ab,bijk->aijk", inverse, world - centre.astype(np.float32)[:, None, None, None])
    back += centre.astype(np.float32)[:, None, None, None]
    amplitude = rng.uniform(*cfg.elastic_mm) if cfg.deform else 0.0
    if amplitude > 0:
        grid = zip(geometry.size, geometry.spacing, strict=True)
        nodes = tuple(max(int(n * sp / cfg.elastic_nodes_mm), 2) for n, sp in grid)
        for axis in range(3):
            back[axis] += smooth_field(rng, geometry.size, nodes, order=3) * np.float32(amplitude)
    back -= origin.astype(np.float32)[:, None, None, None]
    back /= spacing.astype(np.float32)[:, None, None, None]
    return geometry, back


def _anatomy_matrix(rng: np.random.Generator, cfg: FromLabelsConfig) -> np.ndarray:
    """``(3, 3)``: rotation x diag(scale x stretch), the anatomy's motion about the source's centre."""
    angles = [rng.uniform(-a, a) for a in cfg.rotate_deg]
    rotation = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    factors = rng.uniform(*cfg.scale) * rng.uniform(1 - cfg.stretch, 1 + cfg.stretch, size=3)
    return rotation @ np.diag(factors)


def _draw_grid(
    rng: np.random.Generator, low: np.ndarray, high: np.ndarray, cfg: FromLabelsConfig
) -> Geometry:
    """A grid over the moved anatomy's box ``[low, high]`` (mm): drawn spacing, scan range, field of view."""
    extent = high - low
    length = extent * np.array([*rng.uniform(*cfg.fov_in_plane, size=2), rng.uniform(*cfg.fov_k)])
    centre = (low + high) / 2.0 + extent * rng.uniform(-cfg.off_centre, cfg.off_centre, size=3)
    slack_k = (extent[2] - length[2]) / 2.0
    centre[2] = (low[2] + high[2]) / 2.0 + rng.uniform(-slack_k, slack_k)
    in_plane = rng.uniform(*cfg.spacing_in_plane)
    spacing = np.array([in_plane, in_plane, rng.uniform(*cfg.spacing_slice)])
    spacing = np.maximum(spacing, length / cfg.max_size)
    size = np.clip(np.ceil(length / spacing), 8, cfg.max_size).astype(int)
    origin = centre - (size - 1) / 2.0 * spacing
    return Geometry(
        size=tuple(int(s) for s in size),
        spacing=tuple(round(float(s), 4) for s in spacing),
        origin=tuple(round(float(o), 3) for o in origin),
        direction=IDENTITY,
    )


__all__ = ["FromLabelsConfig", "SynthCase", "body_mask", "sample_grid", "structure_map", "synthesize"]
