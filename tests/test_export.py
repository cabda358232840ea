"""organdetr.inference.export / `organdetr export`: ONNX Runtime gives the same boxes as PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from organdetr.cli import app
from organdetr.inference.export import export_checkpoint, load_session, onnx_detect, onnx_plans
from organdetr.runtime.errors import InputError
from organdetr.training.checkpoint import load_detector

CLASSES = {1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
GRID = (32, 32, 32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return save_random_checkpoint(tmp_path_factory.mktemp("run"), CLASSES, GRID)


def test_onnx_runtime_boxes_match_pytorch(tmp_path, checkpoint):
    path = export_checkpoint(checkpoint, tmp_path / "model.onnx")
    session = load_session(path)
    assert onnx_plans(session)["classes"] == {str(k): v for k, v in CLASSES.items()}
    detector, _, _ = load_detector(checkpoint, "cpu")
    images = np.random.default_rng(1).random((2, 1, *GRID), dtype=np.float32)  # batch 2: dynamic axis
    ours = onnx_detect(session, images)
    with torch.no_grad():
        reference = detector.detect(torch.from_numpy(images))
    for got, want in zip(ours, reference, strict=True):
        assert torch.equal(got["labels"], want["labels"])
        assert float((got["boxes"] - want["boxes"]).abs().max()) < 1e-4  # voxels
        assert float((got["scores"] - want["scores"]).abs().max()) < 1e-4


def test_export_cli(tmp_path, checkpoint):
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(checkpoint), str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "max box difference" in result.output


def test_load_session_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(InputError, match="bad.onnx"):
        load_session(bad)


def test_export_refuses_non_detr_checkpoint_in_one_line(tmp_path):
    run = save_random_checkpoint(tmp_path / "retina", CLASSES, GRID, "arch=retinanet")
    with pytest.raises(InputError, match="DETR-style detectors only"):
        export_checkpoint(run, tmp_path / "r.onnx")
    assert not (tmp_path / "r.onnx").exists()
