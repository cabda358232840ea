"""ONNX export of a trained detector's network (images -> raw DETR outputs) and ONNX Runtime inference.

The exported graph maps ``images [B, 1, I, J, K]`` (float32, preprocessed as in ``plans.json``) to
``pred_logits [B, N, K+1]`` and ``pred_boxes [B, N, 6]`` (normalised cxcyczwhd); the batch axis is dynamic,
the grid size is fixed to the training grid. :func:`organdetr.models.organdetr.postprocess.postprocess`
turns ORT outputs into boxes exactly as for PyTorch (:func:`onnx_detect`). The model's ``plans.json``
(classes, grid, normalisation) is stored in the ONNX metadata under ``organdetr.plans`` and the class
activation (``sigmoid`` / ``softmax``) under ``organdetr.class_activation``, so the file alone is enough to
preprocess a scan and name its organs. Opset 20 is the default: the deformable decoder samples volumes with
5-D ``GridSample``, which ONNX has from opset 20.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from organdetr.models.organdetr.detector import DETRDetector
from organdetr.models.organdetr.postprocess import postprocess
from organdetr.runtime.atomic import atomic_path
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import parse_json
from organdetr.runtime.text import collapse
from organdetr.training.checkpoint import load_detector

OUTPUT_NAMES = ("pred_logits", "pred_boxes")
PLANS_METADATA_KEY = "organdetr.plans"
ACTIVATION_METADATA_KEY = "organdetr.class_activation"
DEFAULT_OPSET = 20
MIN_OPSET = 14
"""Oldest opset any detector exports to: ``scaled_dot_product_attention`` needs 14 (measured: 7-13 fail);
the deformable decoder needs 20 (its export then fails in one line naming the opset)."""


def max_opset() -> int:
    """Newest opset this torch's ONNX exporter writes."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 20


def check_opset(opset: int) -> int:
    """``opset`` if the detector can be exported to it, else InputError with the supported range."""
    if not MIN_OPSET <= opset <= max_opset():
        raise InputError(
            None,
            f"--opset {opset} is not supported: the detector exports to opsets {MIN_OPSET}..{max_opset()}",
        )
    return opset


class RawOutputs(nn.Module):
    """``network`` with a tuple output ``(pred_logits, pred_boxes)`` (ONNX wants tensors, not dicts)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(images)
        return out["pred_logits"], out["pred_boxes"]


def export_network(
    network: nn.Module,
    input_size: tuple[int, int, int],
    out_path: str | Path,
    *,
    plans: dict | None = None,
    opset: int = DEFAULT_OPSET,
    batch_size: int = 1,
) -> Path:
    """Export ``network`` (eval mode) for ``images [B, 1, *input_size]`` to ``out_path`` (atomic write).

    The batch axis is dynamic; ``plans`` (optional) is stored as JSON metadata.
    """
    import onnx

    check_opset(opset)
    wrapper = RawOutputs(network).eval()
    example = torch.zeros(batch_size, 1, *(int(s) for s in input_size), dtype=torch.float32)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # shape-constant branches are intended (the grid is fixed); the TorchScript exporter is deprecated
        # but 10x faster than the dynamo one for this graph and gives identical outputs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            _onnx_export(wrapper, example, tmp, opset)
        except Exception as err:  # the exporters raise their own types, with graph dumps as messages
            first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise InputError(out_path, f"ONNX export at opset {opset} failed ({first[:300]})") from None
        model = onnx.load(str(tmp))
        metadata = {ACTIVATION_METADATA_KEY: getattr(network, "class_activation", "softmax")}
        if plans is not None:
            metadata[PLANS_METADATA_KEY] = json.dumps(plans)
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return out_path


def _onnx_export(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    names = {"input_names": ["images"], "output_names": list(OUTPUT_NAMES), "opset_version": opset}
    try:
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=False,
            **names,
            dynamic_axes={"images": {0: "batch"}, "pred_logits": {0: "batch"}, "pred_boxes": {0: "batch"}},
        )
    except (ImportError, NotImplementedError, TypeError):  # a torch without the TorchScript exporter
        batch = torch.export.Dim("batch", min=1, max=1024)
        torch.onnx.export(
            wrapper,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
            **names,
        )


def load_exportable(checkpoint: str | Path):
    """``(detector, plans)`` of a run/checkpoint folder; InputError unless it is a DETR-style detector."""
    detector, _, plans = load_detector(checkpoint, "cpu")
    if not isinstance(detector, DETRDetector):
        kind = type(detector).__name__
        raise InputError(checkpoint, f"ONNX export supports DETR-style detectors only, this is {kind}")
    return detector, plans


def export_checkpoint(checkpoint: str | Path, out_path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Load a run/checkpoint folder and export its network (+ plans metadata) to ``out_path``."""
    detector, plans = load_exportable(checkpoint)
    input_size = tuple(int(s) for s in plans["input_size"])
    return export_network(detector.network, input_size, out_path, plans=plans, opset=opset)


def load_session(path: str | Path):
    """An ONNX Runtime CPU session for an exported model; InputError naming the file if unusable."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "ONNX file not found")
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for bad files
        raise InputError(path, f"not a loadable ONNX model ({collapse(str(err), 200)})") from None


def onnx_plans(session) -> dict | None:
    """The ``plans.json`` stored in an exported model's metadata (``None`` if absent)."""
    raw = session.get_modelmeta().custom_metadata_map.get(PLANS_METADATA_KEY)
    return None if raw is None else parse_json(raw, None, "unreadable plans in the model's metadata")


def onnx_detect(session, images: np.ndarray) -> list[dict[str, torch.Tensor]]:
    """Run the ORT session on ``images [B, 1, I, J, K]`` and postprocess like ``Detector.detect``."""
    logits, boxes = session.run(
        list(OUTPUT_NAMES), {"images": np.ascontiguousarray(images, dtype=np.float32)}
    )
    outputs = {"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}
    activation = session.get_modelmeta().custom_metadata_map.get(ACTIVATION_METADATA_KEY, "softmax")
    return postprocess(outputs, tuple(int(s) for s in images.shape[2:]), activation=activation)


__all__ = [
    "ACTIVATION_METADATA_KEY",
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "OUTPUT_NAMES",
    "PLANS_METADATA_KEY",
    "RawOutputs",
    "check_opset",
    "export_checkpoint",
    "export_network",
    "load_session",
    "max_opset",
    "onnx_detect",
    "onnx_plans",
]
