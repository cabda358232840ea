"""The Detector protocol every architecture follows, and the builder protocol of the registry.

The training engine, checkpoints, ``organdetr predict`` and the benchmarks talk to every model (an
``nn.Module``) through these methods only, so an architecture is added by writing a detector that has them
and a :class:`DetectorBuilder` for it in :data:`organdetr.models.registry.ARCHITECTURES`:

* :class:`Detector` - ``loss`` and ``detect``, what every architecture has;
* :class:`NetworkDetector` - plus ``network`` (images -> raw outputs): every architecture but MTMed3D,
  which is its own network;
* :class:`Segmenter` - ``segment`` (seg2box, MaskMed, Organ-DETR with ``model.mask_head``, MTMed3D);
  :class:`CaseClassifier` - ``classify`` (MTMed3D). Both are optional: callers test for them with
  ``callable(getattr(detector, "segment", None))`` (and MTMed3D's ``tasks`` say what it was trained for).

Targets (per image): ``labels [M]`` int64 dense class, ``boxes [M, 6]`` normalised ``cxcyczwhd`` on the
input grid, and where the data has them ``seg [I, J, K]`` int64 (dense class + 1, 0 = background) and
``case_label`` (int64 scalar, -1 = unknown).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from organdetr.models.config import ModelConfig


@runtime_checkable
class Detector(Protocol):
    """``loss(images [B, C, I, J, K], targets) -> dict[str, Tensor]``: weighted named terms and ``"loss"``,
    their sum (what is back-propagated); ``detect(images) -> list[dict]``: per image ``labels [D]`` int64
    (dense class), ``scores [D]``, ``boxes [D, 6]`` voxel ``xyzxyz`` on the input grid."""

    def loss(self, images: Tensor, targets: list[dict]) -> dict[str, Tensor]: ...

    def detect(self, images: Tensor) -> list[dict[str, Tensor]]: ...


@runtime_checkable
class NetworkDetector(Detector, Protocol):
    """A :class:`Detector` whose ``network`` maps images to the raw outputs (what ONNX export traces)."""

    network: nn.Module


@runtime_checkable
class Segmenter(Protocol):
    """``segment(images [B, C, I, J, K]) -> [B, I, J, K]`` int64 label map (dense class + 1, 0 = none)."""

    def segment(self, images: Tensor) -> Tensor: ...


@runtime_checkable
class CaseClassifier(Protocol):
    """``classify(images [B, C, I, J, K]) -> [B, C_case]`` case-level class probabilities (softmax)."""

    def classify(self, images: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class DetectorSpec:
    """What a registry builder may read to build one detector.

    ``model``: the ``model`` section (``in_channels`` already set from the data); ``num_classes``: organ
    classes ``K``; ``input_size``: the ``(I, J, K)`` voxel grid; ``arch_cfg``: the architecture's own section
    (``None``: its defaults); ``matcher`` / ``loss``: the ``matcher`` / ``loss`` sections (Organ-DETR's;
    ``None``: defaults); ``data``: the cache's ``DataProperties`` (regions, case classes) or ``None``.
    """

    model: ModelConfig
    num_classes: int
    input_size: tuple[int, int, int]
    arch_cfg: Any = None
    matcher: Any = None
    loss: Any = None
    data: Any = None


class DetectorBuilder(Protocol):
    """``builder(spec: DetectorSpec) -> detector``: reads what its architecture needs from the spec, ignores
    the rest, and raises ValueError on a grid it cannot take."""

    def __call__(self, spec: DetectorSpec) -> nn.Module: ...


__all__ = ["CaseClassifier", "Detector", "DetectorBuilder", "DetectorSpec", "NetworkDetector", "Segmenter"]
