"""Tests for the segmentation Detector protocol (models.segmentation) and the seg2box baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _cache_factory import make_plans, save_random_checkpoint
from organdetr.cli import app
from organdetr.core.boxes.labels import largest_component_boxes
from organdetr.core.geometry import Geometry
from organdetr.core.volume import grid_labels_to_original
from organdetr.io.images import read_image, read_label_map, write_image
from organdetr.models import detector_from_config
from organdetr.models.segmentation_detector import SegmentationDetector
from organdetr.preprocessing.plans import PreprocessConfig
from organdetr.training.checkpoint import load_detector, save_checkpoint
from organdetr.training.config import dump_config, load_config

K = 3


def test_largest_component_gives_the_box_and_mean_probability_the_score():
    labels = np.zeros((10, 10, 10), np.int64)
    labels[1:4, 1:4, 1:4] = 1  # class 0: 27 voxels ...
    labels[6:8, 6:8, 6:8] = 1  # ... and a smaller stray component (8 voxels): ignored
    labels[2:9, 5, 0:3] = 3  # class 2: one bar
    probs = np.full((K + 1, 10, 10, 10), 0.1, np.float32)
    probs[1][1:4, 1:4, 1:4] = 0.9
    probs[1][6:8, 6:8, 6:8] = 0.2
    probs[3][2:9, 5, 0:3] = 0.6
    found = largest_component_boxes(labels, probs, K)
    assert found["labels"].tolist() == [0, 2]  # class 1 has no voxel: no detection; sorted by score
    np.testing.assert_array_equal(found["boxes"][0], [1, 1, 1, 4, 4, 4])  # half-open voxel box
    np.testing.assert_array_equal(found["boxes"][1], [2, 5, 0, 9, 6, 3])
    np.testing.assert_allclose(found["scores"], [0.9, 0.6], rtol=1e-6)


class _Perfect(torch.nn.Module):
    """Logits that reproduce a fixed label map (and a learnable scale, so the loss has a gradient)."""

    def __init__(self, labels: torch.Tensor):
        super().__init__()
        self.register_buffer("onehot", torch.nn.functional.one_hot(labels, K + 1).movedim(-1, 0).float())
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, images):
        return (self.onehot * 20 * self.scale).expand(len(images), -1, -1, -1, -1)


def test_segmentation_detector_protocol():
    labels = torch.zeros(8, 8, 8, dtype=torch.int64)
    labels[2:5, 1:6, 3:7] = 2
    labels[6:8, 6:8, 0:2] = 1
    labels[0, 7, 7] = 3
    detector = SegmentationDetector(_Perfect(labels), K)
    images = torch.zeros(2, 1, 8, 8, 8)
    losses = detector.loss(images, [{"seg": labels}, {"seg": labels}])
    assert set(losses) == {"loss", "loss_seg"} and losses["loss"].item() < 1e-3
    losses = detector.loss(images, [{"seg": torch.zeros_like(labels)}] * 2)
    assert losses["loss"].item() > 1.0
    losses["loss"].backward()
    assert detector.network.scale.grad.abs() > 0
    assert torch.equal(detector.segment(images)[1], labels)
    (result, _) = detector.detect(images)
    assert sorted(result["labels"].tolist()) == [0, 1, 2]
    box = result["boxes"][result["labels"].tolist().index(1)]
    torch.testing.assert_close(box, torch.tensor([2.0, 1, 3, 5, 6, 7]))
    assert (result["scores"] > 0.99).all()


def test_seg2box_builds_from_its_preset_and_trains():
    cfg = load_config("seg2box", ["seg2box.features=[4, 4, 8, 8, 16, 4]"])
    detector = detector_from_config(cfg, K, (32, 32, 32))
    assert isinstance(detector, SegmentationDetector)
    assert detector(torch.zeros(1, 1, 32, 32, 32)).shape == (1, K + 1, 32, 32, 32)
    seg = torch.zeros(32, 32, 32, dtype=torch.int64)
    seg[4:12, 4:12, 4:12] = 1
    loss = detector.loss(torch.randn(1, 1, 32, 32, 32), [{"seg": seg}])["loss"]
    loss.backward()
    assert all(p.grad is not None for p in detector.parameters())
    with pytest.raises(ValueError, match="features"):
        load_config("seg2box", ["seg2box.features=[4, 4]"]).seg2box  # noqa: B018


def test_seg2box_trains_in_channels_last_and_its_checkpoint_round_trips(tmp_path):
    """The U-Net's conv weights are channels-last (faster on the CPU); the output equals the same weights in
    the default layout, and a saved checkpoint (contiguous safetensors) loads back to the same output."""
    cfg = load_config("seg2box", ["seg2box.features=[4, 4, 8, 8, 16, 4]"])
    torch.manual_seed(0)
    detector = detector_from_config(cfg, K, (32, 32, 32)).eval()
    convs = [m for m in detector.modules() if isinstance(m, torch.nn.Conv3d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs)
    image = torch.randn(1, 1, 32, 32, 32)
    plain = detector_from_config(cfg, K, (32, 32, 32)).eval()
    plain.load_state_dict({k: v.contiguous() for k, v in detector.state_dict().items()})
    plain.network.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        expected = detector(image)
        torch.testing.assert_close(plain(image), expected, rtol=1e-4, atol=1e-4)
    plans = make_plans(PreprocessConfig(input_size=(32, 32, 32)), {i + 1: f"organ{i}" for i in range(K)})
    save_checkpoint(
        tmp_path / "run" / "last", detector, {"step": 0}, config_yaml=dump_config(cfg), plans=plans
    )
    loaded, _, _ = load_detector(tmp_path / "run" / "last", "cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(image), expected)


def test_seg2box_on_a_coarse_grid_sees_the_pooled_image_and_answers_on_the_input_grid():
    """``seg2box.input_stride=2``: the U-Net is built for and fed the 2x average-pooled image, its logits are
    upsampled to the input grid (so the loss and the boxes stay there; 64^3: BasicUNet's
    instance norm needs 2^3 voxels at its deepest level of the 32^3 it sees), it learns a cube from that loss
    alone, and a stride other than 1, 2, 4 is refused."""
    from organdetr.models.baselines.seg2box import CoarseGridSegmenter

    cfg = load_config("seg2box", ["seg2box.features=[4, 4, 8, 8, 16, 4]", "seg2box.input_stride=2"])
    torch.manual_seed(0)
    detector = detector_from_config(cfg, K, (64, 64, 64))
    assert isinstance(detector.network, CoarseGridSegmenter)
    seen = []
    detector.network.network.register_forward_hook(lambda _m, args, _o: seen.append(args[0]))
    image = torch.randn(1, 1, 64, 64, 64)
    assert detector(image).shape == (1, K + 1, 64, 64, 64)
    torch.testing.assert_close(seen[0], torch.nn.functional.avg_pool3d(image, 2))
    assert seen[0].shape == (1, 1, 32, 32, 32)

    seg = torch.zeros(1, 64, 64, 64, dtype=torch.int64)
    seg[0, 20:44, 16:38, 24:46] = 2  # class 1 (dense 2): a box on even voxel boundaries
    image = torch.where(seg > 0, 1.0, 0.0)[:, None] + 0.05 * torch.randn(1, 1, 64, 64, 64)
    optimizer = torch.optim.Adam(detector.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        detector.loss(image, [{"seg": seg[0]}])["loss"].backward()
        optimizer.step()
    detector.eval()
    found = detector.detect(image)[0]
    assert found["labels"].tolist() == [1]
    box = found["boxes"][0].float()
    torch.testing.assert_close(box, torch.tensor([20.0, 16, 24, 44, 38, 46]), atol=1, rtol=0)
    with pytest.raises(ValueError, match="input_stride"):
        load_config("seg2box", ["seg2box.input_stride=3"]).seg2box  # noqa: B018


def test_grid_labels_back_to_an_oblique_original_grid():
    """Nearest-neighbour mapping of a model-grid label map onto a RAS scan's own grid: geometry exact."""
    from organdetr.core.volume import Volume
    from organdetr.preprocessing.plans import PreprocessConfig
    from organdetr.preprocessing.resampling import preprocess_volume

    size = (20, 16, 12)
    geometry = Geometry(size, (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    labels = np.zeros(size, np.uint8)
    labels[4:12, 3:9, 2:8] = 5
    image = np.where(labels > 0, 100, -100).astype(np.int16)
    cfg = PreprocessConfig(input_size=(20, 16, 12), fit="resize")
    _, grid_labels, record = preprocess_volume(
        Volume(image, geometry), cfg, Volume(labels, geometry), {5: "x"}
    )
    back = grid_labels_to_original(grid_labels, record)
    assert back.shape == size and back.dtype == grid_labels.dtype
    np.testing.assert_array_equal(back, labels)  # same extent and voxel count: exact round trip


@pytest.mark.parametrize(
    "overrides",
    [
        ("arch=seg2box", "seg2box.features=[4, 4, 8, 8, 16, 4]"),
        ("arch=maskmed", "maskmed.features=[4, 8, 16]", "maskmed.d_model=12", "maskmed.nhead=2"),
    ],
    ids=["seg2box", "maskmed"],
)
def test_predict_writes_the_label_map_of_a_segmenting_model(tmp_path, overrides):
    classes = {1: "liver", 7: "spleen"}
    run = save_random_checkpoint(tmp_path / "run", classes, (32, 32, 32), *overrides)
    size = (40, 36, 30)
    geometry = Geometry(size, (1.5, 1.2, 3.0), (30.0, 20.0, -50.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    scan = tmp_path / "scan.nii.gz"
    write_image(scan, np.random.default_rng(0).normal(0, 100, size).astype(np.int16), geometry)
    result = CliRunner().invoke(
        app, ["predict", str(run), str(scan), "-o", str(tmp_path / "out"), "--no-overlay"]
    )
    assert result.exit_code == 0, result.output
    seg_path = tmp_path / "out" / "scan_seg.nii.gz"
    seg = read_label_map(seg_path)
    original = read_image(scan).geometry
    assert seg.geometry.size == original.size
    np.testing.assert_allclose(seg.geometry.spacing, original.spacing, atol=1e-6)
    np.testing.assert_allclose(seg.geometry.origin, original.origin, atol=1e-6)
    np.testing.assert_allclose(seg.geometry.direction, original.direction, atol=1e-6)
    assert set(np.unique(seg.array).tolist()) <= {0, 1, 7}  # the dataset's label ids
    import json

    prediction = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert prediction["segmentation"] == "scan_seg.nii.gz"
    assert all(d["label_id"] in classes for d in prediction["detections"])
    # --organs liver --statistics: the label map keeps only the liver, its statistics come from the mask
    result = CliRunner().invoke(
        app,
        ["predict", str(run), str(scan), "-o", str(tmp_path / "liver"), "--no-overlay", "--organs", "liver",
         "--statistics", "--score-threshold", "0"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    liver_seg = read_label_map(tmp_path / "liver" / "scan_seg.nii.gz").array
    assert set(np.unique(liver_seg).tolist()) <= {0, 1}
    np.testing.assert_array_equal(liver_seg == 1, seg.array == 1)
    stats = json.loads((tmp_path / "liver" / "scan.json").read_text())["statistics"]
    assert [r["organ"] for r in stats] == ["liver"]  # the random model (seed 0) segments some liver
    for row in stats:
        assert row["volume_from"] == "mask" and row["voxels"] == int((liver_seg == 1).sum())
        assert row["volume_ml"] == pytest.approx(row["voxels"] * 1.5 * 1.2 * 3.0 / 1000, abs=1e-3)
