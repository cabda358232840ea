"""Multi-channel input end to end: nnU-Net channel files -> cache -> dataset -> model, in channel order."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from organdetr.core.geometry import Geometry
from organdetr.data.cache_dataset import CacheDataset
from organdetr.data.properties import DataProperties
from organdetr.datasets.nnunet import image_path, label_path, load_dataset, write_dataset_json
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput, group_channels
from organdetr.io.images import write_image
from organdetr.models import detector_from_config
from organdetr.preprocessing.cache import load_case
from organdetr.preprocessing.intensity import normalise_zscore
from organdetr.preprocessing.plans import PreprocessConfig, default_channel_norm, make_plans
from organdetr.preprocessing.run import preprocess_dataset
from organdetr.runtime.errors import InputError
from organdetr.training.config import load_config

SIZE = 32
GEOMETRY = Geometry((SIZE,) * 3, (4.0, 4.0, 4.0), (-60.0, -60.0, -60.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}


def marker_dataset(root, cases=("a", "b")):
    """Four channels; channel ``c`` is a head-like block of 100 with a bright cube at i = 6c .. 6c + 5."""
    for case in cases:
        for c in range(4):
            image = np.zeros((SIZE,) * 3, np.int16)
            image[2:-2, 2:-2, 2:-2] = 100
            image[6 * c + 2 : 6 * c + 8, 10:16, 10:16] = 900
            write_image(image_path(root, case, channel=c), image, GEOMETRY)
        labels = np.zeros((SIZE,) * 3, np.uint8)
        labels[10:20, 10:20, 10:20] = 1
        write_image(label_path(root, case), labels, GEOMETRY)
    write_dataset_json(root, {1: "tumour"}, len(cases), name="Markers", channel_names=CHANNELS)
    return root


def marker_position(volume: np.ndarray) -> int:
    """The i index where the bright cube starts."""
    profile = volume[:, 12, 12]
    return int(np.argmax(profile > profile.max() * 0.5))


def test_every_channel_reaches_the_model_in_order(tmp_path):
    raw = marker_dataset(tmp_path / "raw")
    dataset = load_dataset(raw)
    assert dataset.channels == ["T1", "T1ce", "T2", "FLAIR"]
    assert [p.name for p in dataset.cases[0].images] == [f"a_000{c}.nii.gz" for c in range(4)]
    summary = preprocess_dataset(
        raw, tmp_path / "cache", PreprocessConfig(input_size=(SIZE,) * 3), progress=False
    )
    assert summary.done == ["a", "b"]
    again = preprocess_dataset(
        raw, tmp_path / "cache", PreprocessConfig(input_size=(SIZE,) * 3), progress=False
    )
    assert again.skipped == ["a", "b"] and not again.done  # [C, I, J, K] cases verify against the plans
    plans = json.loads((tmp_path / "cache" / "plans.json").read_text())
    assert plans["channels"] == ["T1", "T1ce", "T2", "FLAIR"] and plans["channel_norm"] == ["zscore"] * 4
    image, _, record = load_case(tmp_path / "cache", "a")
    assert image.shape == (4, SIZE, SIZE, SIZE)
    assert [marker_position(image[c]) for c in range(4)] == [2, 8, 14, 20]
    assert record["images"] == [str(p) for p in dataset.cases[0].images]

    ds = CacheDataset(tmp_path / "cache")
    tensor, _ = ds[0]
    assert ds.in_channels == 4 and tuple(tensor.shape) == (4, SIZE, SIZE, SIZE)
    np.testing.assert_array_equal(tensor.numpy(), image)

    seen = []
    cfg = load_config("mtmed3d_tiny", ["mtmed3d.tasks=[det, seg]"])
    detector = detector_from_config(cfg, 1, (SIZE,) * 3, DataProperties.from_plans(plans))
    detector.encoder.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    detector.eval()
    detector.detect(tensor[None])
    assert torch.equal(seen[0][0], tensor)  # all four channels, in channel order, into the Swin encoder

    detr = detector_from_config(load_config("tiny"), 1, (SIZE,) * 3, DataProperties.from_plans(plans))
    assert next(detr.parameters()).shape[1] == 4  # the DETR backbone's stem also takes the four channels

    # predict: channel files given in any order become one scan with channels 0..3
    files = [image_path(raw, "a", channel=c) for c in (2, 0, 3, 1)]
    scans = group_channels([ScanInput(p, p.name) for p in files], 4)
    assert [s.case_id for s in scans] == ["a"] and [p.name for p in scans[0].channels] == [
        f"a_000{c}.nii.gz" for c in range(4)
    ]
    predictor = Predictor(detector, plans)
    prepared = predictor.prepare(scans[0])
    np.testing.assert_allclose(prepared.grid, image, atol=1e-5)
    assert predictor.display_channel == 3  # FLAIR is what the pictures show


def test_channel_problems_name_the_file(tmp_path):
    raw = marker_dataset(tmp_path / "raw")
    image_path(raw, "b", channel=2).unlink()
    with pytest.raises(InputError, match=r"b_0002.nii.gz.*channel 2 of case 'b' is missing"):
        load_dataset(raw)
    raw = marker_dataset(tmp_path / "raw2")
    shifted = Geometry((SIZE,) * 3, (4.0, 4.0, 4.0), (-50.0, -60.0, -60.0), GEOMETRY.direction)
    write_image(image_path(raw, "b", channel=3), np.zeros((SIZE,) * 3, np.int16), shifted)
    summary = preprocess_dataset(
        raw, tmp_path / "cache", PreprocessConfig(input_size=(SIZE,) * 3), progress=False
    )
    assert summary.done == ["a"]
    assert "b_0003.nii.gz" in summary.failed[0][1] and "channel 3 is not on the grid" in summary.failed[0][1]
    with pytest.raises(InputError, match=r"a_0001.nii.gz.*reads 4 channels"):
        group_channels([ScanInput(image_path(raw, "a", channel=1), "a")], 4)


def test_single_channel_plans_keep_their_keys_and_ct_stays_windowed():
    legacy = {
        "target_spacing", "input_size", "fit", "hu_window", "interpolation", "min_voxels",
        "largest_component", "image_dtype", "version", "normalization", "classes", "world_frame", "source",
    }  # fmt: skip
    assert set(make_plans(PreprocessConfig(), {1: "liver"})) == legacy
    assert set(make_plans(PreprocessConfig(), {1: "liver"}, channels=["CT"])) == legacy
    assert default_channel_norm(["CT"]) == () and default_channel_norm(["MR"]) == ()
    assert default_channel_norm(["CT", "PET"]) == ("hu_window", "zscore")
    with pytest.raises(ValueError, match="channel_norm"):
        PreprocessConfig(channel_norm=("hu", "zscore"))


def test_zscore_uses_the_non_zero_voxels():
    image = np.zeros((10, 10, 10), np.float32)
    image[2:8, 2:8, 2:8] = np.linspace(100, 300, 216).reshape(6, 6, 6)
    out = normalise_zscore(image.copy())
    inside = out[2:8, 2:8, 2:8]
    assert abs(float(inside.mean())) < 1e-5 and abs(float(inside.std()) - 1.0) < 1e-4
    assert np.all(out[0] == 0)
