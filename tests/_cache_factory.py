"""Tiny synthetic preprocessed caches and random checkpoints for the tests (written with organdetr itself)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.preprocessing.cache import write_case
from organdetr.preprocessing.plans import PreprocessConfig, make_plans
from organdetr.preprocessing.resampling import preprocess_volume
from organdetr.runtime.atomic import write_json

CLASSES = {1: "liver", 2: "kidney_left", 3: "kidney_right", 4: "spleen"}
# (label id, HU, centre fraction (i, j, k), half size fraction) - cuboids / ellipsoids of distinct intensity
ORGANS = [
    (1, 200, (0.35, 0.40, 0.50), (0.20, 0.18, 0.22), "box"),
    (2, 600, (0.75, 0.65, 0.40), (0.10, 0.10, 0.14), "ellipsoid"),
    (3, 400, (0.25, 0.70, 0.40), (0.10, 0.10, 0.14), "ellipsoid"),
    (4, -300, (0.72, 0.30, 0.70), (0.12, 0.10, 0.10), "box"),
]


def phantom(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image HU int16 [S,S,S], labels uint8 [S,S,S])`` with the four organs, jittered by ``seed``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(size) + 0.5,) * 3, indexing="ij"), -1) / size
    image = np.full((size,) * 3, -800.0)
    labels = np.zeros((size,) * 3, np.uint8)
    for label_id, hu, centre, half, shape in ORGANS:
        c = np.asarray(centre) + rng.uniform(-0.04, 0.04, 3)
        h = np.asarray(half) * rng.uniform(0.9, 1.1, 3)
        d = np.abs(grid - c) / h
        mask = (d.max(-1) <= 1) if shape == "box" else ((d**2).sum(-1) <= 1)
        image[mask] = hu
        labels[mask] = label_id
    image += rng.normal(0, 20, image.shape)
    return image.astype(np.int16), labels


def make_cache(root: Path, num_cases: int = 2, size: int = 32, seed: int = 0) -> Path:
    """A cache folder with ``num_cases`` phantoms on a ``size^3`` grid (1.5 mm voxels, resize fit)."""
    cfg = PreprocessConfig(input_size=(size,) * 3, target_spacing=(1.5,) * 3)
    cache = Path(root)
    write_json(cache / "plans.json", make_plans(cfg, CLASSES))
    for n in range(num_cases):
        image, labels = phantom(size, seed + n)
        geom = Geometry((size,) * 3, (1.5, 1.5, 1.5), (-20.0, 10.0, 5.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        grid_image, grid_label, record = preprocess_volume(
            Volume(image, geom), cfg, Volume(labels, geom), CLASSES
        )
        write_case(cache, f"case_{n:03d}", grid_image, grid_label, record)
    return cache


def save_random_checkpoint(
    run: Path, classes: dict[int, str], grid: tuple[int, int, int], *overrides: str
) -> Path:
    """A randomly initialised ``tiny`` detector (config ``overrides``, e.g. ``"arch=retinanet"``) saved as
    run folder ``run`` (weights + config + plans)."""
    import torch

    from organdetr.models import detector_from_config
    from organdetr.training.checkpoint import save_checkpoint
    from organdetr.training.config import dump_config, load_config

    torch.manual_seed(0)
    cfg = load_config("tiny", list(overrides))
    detector = detector_from_config(cfg, len(classes), grid)
    plans = make_plans(PreprocessConfig(input_size=grid), classes)
    save_checkpoint(
        run / "last", detector, {"step": 0}, config_yaml=dump_config(cfg), plans=plans, include_rng=False
    )
    return run
