"""The detector reads the image: the same organ at clearly different places is found at each of them.

A position prior (the mean training box) cannot pass this test: the organ's positions are spread over the
whole grid, so their mean box overlaps none of them at IoU 0.7. Held-out scans put the organ at positions
never seen in training: six training positions are too few to learn sub-stride box regression
everywhere (measured IoU ~0.6 after 400 steps), but the box still follows the organ, far above what the
prior gets there.
"""

from __future__ import annotations

import pytest
import torch

from organdetr.core.boxes.ops import box_iou_3d, box_xyzxyz_to_cxcyczwhd
from organdetr.models import build_detector, model_preset
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig

SIZE = 32
TRAIN_CORNERS = [(3, 3, 3), (20, 4, 18), (4, 21, 6), (19, 19, 20), (12, 4, 4), (5, 12, 21)]
HELD_OUT_CORNERS = [(10, 18, 12), (18, 10, 5)]
ORGAN = (9, 8, 7)  # extent (i, j, k) in voxels


def _scan(corner, seed: int) -> tuple[torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.randn(1, SIZE, SIZE, SIZE, generator=g)
    seg = torch.zeros(SIZE, SIZE, SIZE, dtype=torch.int64)
    lo = torch.tensor(corner)
    hi = lo + torch.tensor(ORGAN)
    image[0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += 1.0
    seg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1
    box = torch.cat([lo, hi]).float()
    target = {"labels": torch.tensor([0]), "boxes": box_xyzxyz_to_cxcyczwhd(box / SIZE)[None], "seg": seg}
    return image, target


@pytest.fixture
def one_thread():
    """One torch thread: a tiny model is not faster on two, and a shared machine makes two much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_organ_found_wherever_it_is(one_thread):
    torch.manual_seed(0)
    train = [_scan(c, i) for i, c in enumerate(TRAIN_CORNERS)]
    cfg = model_preset("tiny", encoder="fpn")
    detector = build_detector("organdetr", cfg, MatcherConfig(), LossConfig(), 1, (SIZE,) * 3)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1e-3, weight_decay=1e-4)
    for step in range(320):
        batch = [train[(2 * step) % 6], train[(2 * step + 1) % 6]]
        images = torch.stack([b[0] for b in batch])
        loss = detector.loss(images, [b[1] for b in batch])["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
        optimizer.step()
    detector.eval()
    held_out = [_scan(c, 100 + i) for i, c in enumerate(HELD_OUT_CORNERS)]
    mean_box = torch.stack([t["boxes"][0] for _, t in train]).mean(0)
    prior = torch.cat([mean_box[:3] - mean_box[3:] / 2, mean_box[:3] + mean_box[3:] / 2]) * SIZE
    for name, scans, bar in (("training", train, 0.7), ("held-out", held_out, 0.5)):
        for image, target in scans:
            (result,) = detector.detect(image[None])
            truth = torch.cat([target["boxes"][0, :3] - target["boxes"][0, 3:] / 2,
                               target["boxes"][0, :3] + target["boxes"][0, 3:] / 2]) * SIZE  # fmt: skip
            iou = box_iou_3d(result["boxes"][:1], truth[None])[0][0, 0].item()
            prior_iou = box_iou_3d(prior[None], truth[None])[0][0, 0].item()
            assert iou > bar, f"{name} organ at {truth[:3].tolist()}: IoU {iou:.2f}"
            assert prior_iou < 0.7 and iou > prior_iou + 0.3  # the prior cannot do this
