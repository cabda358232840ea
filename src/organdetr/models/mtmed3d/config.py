"""``MTMed3DConfig``: the ``mtmed3d`` section of a training config (tasks, balancing, Swin encoder, heads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from organdetr.runtime.text import brief

MTMED3D_TASKS: tuple[str, ...] = ("det", "seg", "cls")
BALANCING_SCHEMES: tuple[str, ...] = ("fixed", "uncertainty", "gradnorm")
CLS_HEADS: tuple[str, ...] = ("densenet", "pooled")


@dataclass
class MTMed3DConfig:
    """MTMed3D (Li, Iyengar and Xu, arXiv 2511.12373): one Swin Transformer encoder, three CNN task heads.

    ``tasks``: any non-empty subset of ``det`` (FPN + PANet fusion, RetinaNet-style anchors with ATSS
    matching, focal + smooth-L1 loss, NMS), ``seg`` (Swin-UNETR decoder with skip connections, CE + Dice;
    sigmoid BCE + Dice per region when the dataset declares regions) and ``cls`` (case-level class, focal
    loss); the single-task models of the paper's comparison are ``[det]``, ``[seg]`` and ``[cls]``.

    ``balancing`` of the task losses: ``fixed`` (``task_weights``), ``uncertainty`` (Kendall et al. 2018:
    ``sum exp(-s_t) L_t + s_t`` with learned log-variances ``s_t``) or ``gradnorm`` (Chen et al. 2018:
    learned weights that equalise the tasks' gradient norms on the encoder's patch embedding, which every
    head shares; ``gradnorm_alpha`` is its restoring force). ``task_weights`` are in (det, seg, cls) order;
    for gradnorm they are the initial weights.

    Encoder (MONAI ``SwinUNETR`` / ``SwinTransformer``): ``feature_size`` (a multiple of 12), ``depths`` and
    ``num_heads`` of its four stages, ``window_size``; ``norm`` of the Swin-UNETR convolution blocks
    (``instance``, SwinUNETR's own, needs at least 2 voxels per axis at stride 32, i.e. a 64^3 grid;
    ``group``: GroupNorm(4), also on a 32^3 grid). Its five outputs have strides 2, 4, 8, 16, 32, so the
    input grid must be divisible by 32. ``det_levels`` picks the encoder outputs the detection neck fuses
    (0 = stride 2 ... 4 = stride 32), ``det_channels`` its width (a multiple of 8: MONAI's heads use
    GroupNorm(8)). ``anchor_shapes`` are in units of each level's stride, as ``RetinaNetConfig``'s.

    ``cls_head``: ``densenet`` (the authors' design: a DenseNet fed with the segmentation probabilities and
    the image; ``densenet_*`` set its size, MONAI's DenseNet121 by default, whose four blocks reduce the
    grid 32-fold - use three blocks on a 32^3 grid; it needs the segmentation decoder, which is then built
    even for ``tasks: [cls]``) or ``pooled`` (the cheaper variant: global
    average pools of the three deepest encoder outputs, then an MLP).
    """

    tasks: tuple[str, ...] = MTMED3D_TASKS
    balancing: Literal["fixed", "uncertainty", "gradnorm"] = "fixed"
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gradnorm_alpha: float = 1.5
    feature_size: int = 24
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    drop_path: float = 0.0
    norm: Literal["instance", "group"] = "instance"
    det_levels: tuple[int, ...] = (1, 2, 3)
    det_channels: int = 64
    anchor_shapes: tuple[tuple[float, float, float], ...] = ((2, 2, 2), (3, 3, 3), (4, 4, 4))
    atss_candidates: int = 4
    negatives_per_image: int = 64
    positive_fraction: float = 0.3
    focal_gamma: float = 2.0
    nms_thresh: float = 0.22
    detections_per_class: int | None = 1
    seg_dice: bool = True
    cls_head: Literal["densenet", "pooled"] = "densenet"
    densenet_init_features: int = 64
    densenet_growth_rate: int = 32
    densenet_blocks: tuple[int, ...] = (6, 12, 24, 16)
    pooled_hidden: int = 128

    def __post_init__(self) -> None:
        self.tasks = tuple(str(t) for t in self.tasks)
        self.task_weights = tuple(float(w) for w in self.task_weights)
        self.depths = tuple(int(d) for d in self.depths)
        self.num_heads = tuple(int(h) for h in self.num_heads)
        self.det_levels = tuple(int(level) for level in self.det_levels)
        self.densenet_blocks = tuple(int(b) for b in self.densenet_blocks)
        self.anchor_shapes = tuple(tuple(float(v) for v in shape) for shape in self.anchor_shapes)
        if not self.tasks or set(self.tasks) - set(MTMED3D_TASKS) or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(
                f"mtmed3d.tasks must be a non-empty subset of {list(MTMED3D_TASKS)}, got {self.tasks}"
            )
        if self.balancing not in BALANCING_SCHEMES:
            raise ValueError(
                f"mtmed3d.balancing must be one of {BALANCING_SCHEMES}, got {brief(self.balancing)}"
            )
        if self.norm not in ("instance", "group"):
            raise ValueError(f"mtmed3d.norm must be 'instance' or 'group', got {brief(self.norm)}")
        if self.cls_head not in CLS_HEADS:
            raise ValueError(f"mtmed3d.cls_head must be one of {CLS_HEADS}, got {brief(self.cls_head)}")
        if min(self.task_weights) <= 0 or self.gradnorm_alpha < 0:
            raise ValueError("mtmed3d.task_weights must be > 0 and gradnorm_alpha >= 0")
        if self.feature_size < 12 or self.feature_size % 12:
            raise ValueError(f"mtmed3d.feature_size must be a multiple of 12, got {self.feature_size}")
        if len(self.depths) != 4 or len(self.num_heads) != 4 or min(self.depths) < 1:
            raise ValueError("mtmed3d.depths and num_heads need 4 entries (one per Swin stage), depths >= 1")
        if any((self.feature_size * 2**s) % h for s, h in enumerate(self.num_heads)):
            raise ValueError(
                f"mtmed3d.num_heads {self.num_heads} must divide the stage widths "
                f"{[self.feature_size * 2**s for s in range(4)]}"
            )
        if not self.det_levels or sorted(set(self.det_levels)) != list(self.det_levels):
            raise ValueError(f"mtmed3d.det_levels must be increasing encoder outputs, got {self.det_levels}")
        if min(self.det_levels) < 0 or max(self.det_levels) > 4:
            raise ValueError(f"mtmed3d.det_levels must be in 0..4 (strides 2..32), got {self.det_levels}")
        if self.det_channels < 8 or self.det_channels % 8:
            raise ValueError(f"mtmed3d.det_channels must be a multiple of 8, got {self.det_channels}")
        if not self.anchor_shapes or any(len(a) != 3 or min(a) <= 0 for a in self.anchor_shapes):
            raise ValueError(
                f"mtmed3d.anchor_shapes must be positive (i, j, k) triples, got {self.anchor_shapes}"
            )
        if self.window_size < 1 or not 0.0 <= self.drop_path < 1.0 or self.focal_gamma < 0:
            raise ValueError("mtmed3d.window_size must be >= 1, drop_path in [0, 1), focal_gamma >= 0")
        if self.detections_per_class is not None and self.detections_per_class < 1:
            raise ValueError("mtmed3d.detections_per_class must be >= 1 or null")
        if len(self.densenet_blocks) < 1 or min(self.densenet_blocks) < 1 or self.pooled_hidden < 1:
            raise ValueError("mtmed3d.densenet_blocks must be positive block sizes, pooled_hidden >= 1")

    @property
    def det_strides(self) -> tuple[int, ...]:
        """Voxel strides of the detection levels, finest first."""
        return tuple(2 ** (level + 1) for level in self.det_levels)

    @property
    def needs_seg_decoder(self) -> bool:
        return "seg" in self.tasks or ("cls" in self.tasks and self.cls_head == "densenet")


__all__ = ["BALANCING_SCHEMES", "CLS_HEADS", "MTMED3D_TASKS", "MTMed3DConfig"]
