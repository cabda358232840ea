"""Builds Organ-DETR (and its ablations) from the ``model`` / ``matcher`` / ``loss`` sections.

:func:`build_model` gives the bare network (:class:`~.network.OrganDETR`); :func:`build_organdetr_detector`
is the registry's builder of ``"organdetr"``: the network for ``num_classes`` classes, the set criterion
with its matcher, behind the Detector protocol (:class:`~.detector.DETRDetector`, or
:class:`~.mask_detr.MaskDETRDetector` with ``model.mask_head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from organdetr.models.config import ModelConfig, check_input_size
from organdetr.models.organdetr.criterion import LossConfig, build_criterion
from organdetr.models.organdetr.detector import DETRDetector
from organdetr.models.organdetr.mask_detr import MaskDETRDetector
from organdetr.models.organdetr.matcher import MatcherConfig, build_matcher
from organdetr.models.organdetr.network import OrganDETR
from organdetr.models.protocols import DetectorSpec


def build_model(cfg: ModelConfig, input_size: Sequence[int] | None = None) -> OrganDETR:
    """The Organ-DETR network for ``cfg`` (``cfg.num_classes`` must be set; ``input_size`` (I, J, K) is
    needed by a fixed-grid backbone, ``model.backbone: primus``)."""
    return OrganDETR(cfg, input_size)


def build_organdetr_detector(spec: DetectorSpec) -> DETRDetector:
    """Organ-DETR for ``num_classes`` organ classes on an ``input_size`` (I, J, K) grid divisible by the
    coarsest stride (:class:`~organdetr.models.protocols.DetectorBuilder`). ``spec.matcher`` / ``spec.loss``:
    defaults when ``None``. ``arch_cfg`` and ``data`` are not read (``spec.model.in_channels`` already holds
    the data's channels). With ``model.mask_head`` the detector segments too."""
    model_cfg, num_classes = spec.model, spec.num_classes
    check_input_size(model_cfg, spec.input_size)
    if model_cfg.queries_for(num_classes) < num_classes:
        raise ValueError(
            f"num_queries={model_cfg.num_queries} < num_classes={num_classes}: every organ needs its own "
            f"query (DQM wants 1 + ceil(lambda * N / M) each); set model.num_queries >= {2 * num_classes}"
        )
    network = build_model(replace(model_cfg, num_classes=num_classes), spec.input_size)
    sigmoid = model_cfg.class_head == "sigmoid"
    matcher_cfg = spec.matcher if spec.matcher is not None else MatcherConfig()
    loss_cfg = spec.loss if spec.loss is not None else LossConfig()
    criterion = build_criterion(num_classes, build_matcher(matcher_cfg, sigmoid), loss_cfg, sigmoid)
    if model_cfg.mask_head:  # class, box and mask per query; segments too
        return MaskDETRDetector(network, criterion)
    return DETRDetector(network, criterion)


__all__ = ["build_model", "build_organdetr_detector"]
