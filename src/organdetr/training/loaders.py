"""The DataLoaders of a run: an epoch's shard of the training cases (resumable mid-epoch) and the
validation shard, with worker seeds that leave the global RNG alone."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from organdetr.data.cache_dataset import CacheDataset, EpochSampler, collate
from organdetr.training.config import TrainConfig
from organdetr.training.distributed import DistInfo


def make_loader(
    dataset: Dataset, sampler: Sampler, batch_size: int, num_workers: int, seed: int, device: torch.device
) -> DataLoader:
    """A DataLoader over ``sampler``'s keys; its workers are seeded from ``seed``."""
    generator = torch.Generator().manual_seed(seed)  # worker seeds must not consume the global RNG
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
    )


def train_loader(
    dataset: CacheDataset,
    cfg: TrainConfig,
    epoch: int,
    done_batches: int,
    dist_info: DistInfo,
    device: torch.device,
) -> DataLoader:
    """This rank's batches of ``epoch`` (shuffled by ``(train.seed, epoch)``), less the ``done_batches``
    already trained before a resume."""
    sampler = EpochSampler(
        len(dataset),
        seed=cfg.train.seed,
        epoch=epoch,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        skip=done_batches * cfg.data.batch_size,
    )
    return make_loader(
        dataset, sampler, cfg.data.batch_size, cfg.data.num_workers, cfg.train.seed + epoch, device
    )


def val_loader(
    dataset: CacheDataset, cfg: TrainConfig, dist_info: DistInfo, device: torch.device
) -> DataLoader:
    """This rank's shard of the validation cases, in order (no augmentation draws)."""
    sampler = EpochSampler(
        len(dataset), seed=0, shuffle=False, rank=dist_info.rank, world_size=dist_info.world_size
    )
    return make_loader(dataset, sampler, cfg.data.batch_size, cfg.data.num_workers, 0, device)


__all__ = ["make_loader", "train_loader", "val_loader"]
