"""On-the-fly spatial and intensity augmentation of an (image, label) pair on the model grid.

One affine per sample (zoom, small rotation, translation, optional left-right flip) is applied to the
image (trilinear) and the labels (nearest) with a single ``torch.nn.functional.grid_sample`` each, so the
two stay aligned; boxes are then recomputed from the transformed labels by the caller (organs pushed out
of the volume disappear). Intensity jitter (scale, shift, Gaussian noise) acts on the image only.

Left-right flip mirrors axis ``i`` (patient left-right in the canonical LPS grid) and swaps the dense
class indices of ``*_left`` / ``*_right`` organ pairs; it is off by default, because a flipped scan
without the swap teaches the model that the left kidney can be on the right.

Rotation (``rotate_axes``): ``"ijk"`` turns about all three axes, ``"k"`` only in the axial plane (about the
cranio-caudal axis ``k`` of the canonical LPS grid), the way scans actually vary. A rotation biases the box
targets (issue 20): the box of a rotated organ is larger than the rotated box of the organ, by +1.2 / +1.3 /
+0.2 voxels of extent (i / j / k) per sample at 10 degrees about all three axes, while test scans are never
rotated, so a model trained on them predicts boxes too large by about that much.

Exact boxes. :func:`transform_boxes` carries continuous (sub-voxel) boxes through the same affine: exactly for
zoom, translation and flip (an axis-aligned box stays axis-aligned), as the box around the moved corners when
there is a rotation (an upper bound, see above).

Units: translations are fractions of the grid size per axis, rotations degrees, zoom a relative factor
(``0.15`` = scale drawn in ``[0.85, 1.15]``; > 1 enlarges the anatomy). Axis order is ``(i, j, k)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from organdetr.runtime.text import brief

RotateAxes = Literal["ijk", "k"]


@dataclass
class AugmentConfig:
    """Augmentation ranges (each drawn uniformly per sample); ``enabled: false`` turns all of it off."""

    enabled: bool = True
    p_spatial: float = 0.8  # probability of applying the affine (zoom + rotation + translation)
    zoom: float = 0.15  # scale in [1 - zoom, 1 + zoom] (isotropic)
    rotate_deg: float = 10.0  # rotation about each axis in [-rotate_deg, rotate_deg]
    rotate_axes: RotateAxes = "ijk"  # "ijk": about all three axes; "k": in the axial plane only
    translate: float = 0.08  # shift per axis in [-translate, translate] * size voxels
    flip_lr: float = 0.0  # probability of a left-right flip (axis i) with left/right label swap
    intensity_scale: float = 0.1  # image * U(1 - s, 1 + s)
    intensity_shift: float = 0.1  # image + U(-s, s) (normalised intensity units)
    noise_std: float = 0.0  # additive Gaussian noise sigma (normalised intensity units)

    def __post_init__(self) -> None:
        for name in ("p_spatial", "flip_lr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be a probability in [0, 1]")
        if self.rotate_axes not in ("ijk", "k"):
            raise ValueError(f"augment.rotate_axes must be 'ijk' or 'k', got {brief(self.rotate_axes)}")
        if not 0.0 <= self.zoom < 1.0:
            raise ValueError(f"augment.zoom must be in [0, 1), got {self.zoom}")
        for name in ("rotate_deg", "translate", "intensity_scale", "intensity_shift", "noise_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0")


@dataclass(frozen=True)
class AugmentParams:
    """One draw of the augmentation. ``shift`` is the content displacement in voxels ``(i, j, k)``."""

    zoom: float = 1.0
    angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about the i, j, k axes
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)
    flip_lr: bool = False
    intensity_scale: float = 1.0
    intensity_shift: float = 0.0
    noise_std: float = 0.0

    @property
    def is_spatial_identity(self) -> bool:
        return self.zoom == 1.0 and not any(self.angles_deg) and not any(self.shift) and not self.flip_lr


def sample_params(cfg: AugmentConfig, size: tuple[int, int, int], rng: np.random.Generator) -> AugmentParams:
    """Draw one :class:`AugmentParams` for a grid of ``size`` (I, J, K) voxels."""
    if not cfg.enabled:
        return AugmentParams()
    zoom, angles, shift = 1.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    if rng.random() < cfg.p_spatial:
        zoom = float(rng.uniform(1 - cfg.zoom, 1 + cfg.zoom))
        angles = tuple(float(a) for a in rng.uniform(-cfg.rotate_deg, cfg.rotate_deg, 3))
        if cfg.rotate_axes == "k":
            angles = (0.0, 0.0, angles[2])
        shift = tuple(
            float(t * s) for t, s in zip(rng.uniform(-cfg.translate, cfg.translate, 3), size, strict=True)
        )
    flip = bool(rng.random() < cfg.flip_lr)
    return AugmentParams(
        zoom=zoom,
        angles_deg=angles,
        shift=shift,
        flip_lr=flip,
        intensity_scale=float(rng.uniform(1 - cfg.intensity_scale, 1 + cfg.intensity_scale)),
        intensity_shift=float(rng.uniform(-cfg.intensity_shift, cfg.intensity_shift)),
        noise_std=cfg.noise_std,
    )


def rotation_matrix(angles_deg: tuple[float, float, float]) -> np.ndarray:
    """``R = R_k @ R_j @ R_i`` (3, 3) for rotations about the i, j, k axes (degrees)."""
    a, b, c = np.deg2rad(angles_deg)
    ri = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rj = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rk = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rk @ rj @ ri


def sampling_matrix(params: AugmentParams) -> np.ndarray:
    """(3, 3) ``A``: output voxel ``p`` reads input ``A @ (p - c) + c - shift`` (``c`` = grid centre).

    ``A`` is the inverse of ``flip @ R * zoom``, so the anatomy moves as ``p = A^-1 (q - c + shift) + c``:
    a pure translation moves it by ``+shift`` voxels. Zoom and rotation are isotropic in voxel units (the
    cache grid is near-isotropic, see ``PreprocessConfig.target_spacing``).
    """
    forward = rotation_matrix(params.angles_deg) * params.zoom
    if params.flip_lr:
        forward = np.diag([-1.0, 1.0, 1.0]) @ forward
    return np.linalg.inv(forward)


def affine_grid(params: AugmentParams, size: tuple[int, int, int]) -> Tensor:
    """Sampling grid ``[1, I, J, K, 3]`` for ``grid_sample(align_corners=True)`` (grid order k, j, i)."""
    size_arr = np.asarray(size, dtype=np.float64)
    half = np.maximum(size_arr - 1, 1) / 2  # D: normalised -> voxel offset from centre
    A = sampling_matrix(params)
    theta_ijk = np.diag(1 / half) @ A @ np.diag(half)  # normalised in -> normalised out
    trans_ijk = -np.asarray(params.shift) / half
    perm = [2, 1, 0]  # grid_sample's x, y, z are the tensor's last, middle, first spatial axes
    theta = np.zeros((3, 4))
    theta[:, :3] = theta_ijk[np.ix_(perm, perm)]
    theta[:, 3] = trans_ijk[perm]
    theta_t = torch.as_tensor(theta, dtype=torch.float32)[None]
    return F.affine_grid(theta_t, [1, 1, *size], align_corners=True)


def transform_boxes(boxes: np.ndarray, params: AugmentParams, size: tuple[int, int, int]) -> np.ndarray:
    """Continuous voxel boxes ``[M, 6]`` ``(i0, j0, k0, i1, j1, k1)`` (half-open: voxel ``v`` spans
    ``[v, v + 1)``) of the input grid -> where :func:`augment_pair` moves them, clipped to the grid.

    The anatomy at input voxel index ``q`` moves to ``p = A^-1 (q - c + shift) + c`` (:func:`sampling_matrix`,
    ``c`` the grid centre in voxel indices; index = edge coordinate - 0.5). The result is the box around the
    eight moved corners: the exact moved box for zoom, translation and flip, an upper bound under rotation.
    A box moved entirely off the grid has zero extent on some axis (the caller drops it).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 6)
    if params.is_spatial_identity or boxes.size == 0:
        return boxes.copy()
    size_arr = np.asarray(size, dtype=np.float64)
    centre = (size_arr - 1) / 2
    forward = np.linalg.inv(sampling_matrix(params))  # input index offset -> output index offset
    corner_bits = np.array([[(n >> 2) & 1, (n >> 1) & 1, n & 1] for n in range(8)], dtype=bool)  # [8, 3]
    corners = np.where(corner_bits[None], boxes[:, None, 3:], boxes[:, None, :3])  # [M, 8, 3] edges
    moved = (corners - 0.5 - centre + np.asarray(params.shift)) @ forward.T + centre + 0.5
    lo, hi = moved.min(axis=1), moved.max(axis=1)
    return np.concatenate([np.clip(lo, 0, size_arr), np.clip(hi, 0, size_arr)], axis=1)


def left_right_swap_table(class_names: list[str]) -> np.ndarray:
    """Dense-index permutation ``[K + 1]`` for seg values (0 = background, ``c + 1`` = class ``c``).

    ``kidney_left`` <-> ``kidney_right`` (any ``*_left`` / ``*_right`` pair, also ``left_*`` / ``right_*``);
    unpaired classes map to themselves.
    """
    index = {name: i for i, name in enumerate(class_names)}
    table = np.arange(len(class_names) + 1)
    pairs = (("_left", "_right"), ("left_", "right_"))
    for name, i in index.items():
        for a, b in pairs:
            for src, dst in ((a, b), (b, a)):
                is_match = name.endswith(src) if src.startswith("_") else name.startswith(src)
                if not is_match:
                    continue
                other = name[: -len(src)] + dst if src.startswith("_") else dst + name[len(src) :]
                if other in index:
                    table[i + 1] = index[other] + 1
    return table


def augment_pair(
    image: Tensor,
    seg: Tensor,
    params: AugmentParams,
    swap_table: np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Apply ``params`` to ``image [I, J, K]`` (or ``[C, I, J, K]``, several channels) float32 and
    ``seg [I, J, K]`` int64 (dense class + 1).

    Returns the transformed pair (same shapes, dtypes). Outside the input the image is filled with its
    minimum (air, for CT; per channel) and the labels with background. Identity spatial parameters return
    the inputs' voxels exactly (no resampling). ``swap_table`` is required when ``params.flip_lr``.
    """
    if not params.is_spatial_identity:
        grid = affine_grid(params, tuple(seg.shape))
        if image.ndim == 4:  # channels share the one sampling grid
            fill = image.amin(dim=(1, 2, 3), keepdim=True)
            moved = F.grid_sample(
                (image - fill)[None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
            )
            image = moved[0] + fill
        else:
            fill = image.min()
            image = (
                F.grid_sample(
                    (image - fill)[None, None],
                    grid,
                    mode="bilinear",
                    padding_mode="zeros",
                    align_corners=True,
                )[0, 0]
                + fill
            )
        seg = (
            F.grid_sample(
                seg[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=True
            )[0, 0]
            .round()
            .long()
        )
        if params.flip_lr:
            if swap_table is None:
                raise ValueError("a left-right flip needs the class swap table (left_right_swap_table)")
            seg = torch.as_tensor(swap_table, dtype=torch.int64)[seg]
    if params.intensity_scale != 1.0 or params.intensity_shift != 0.0:
        image = image * params.intensity_scale + params.intensity_shift
    if params.noise_std > 0:
        image = image + params.noise_std * torch.randn(image.shape, generator=generator, dtype=image.dtype)
    return image.contiguous(), seg.contiguous()


__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "affine_grid",
    "augment_pair",
    "left_right_swap_table",
    "rotation_matrix",
    "sample_params",
    "sampling_matrix",
    "transform_boxes",
]
