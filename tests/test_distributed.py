"""DDP on CPU: two gloo processes train on different shards and end with identical weights."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from _cache_factory import make_cache  # tests/ is on sys.path (pytest rootdir import mode)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel

    from organdetr.data.cache_dataset import CacheDataset, EpochSampler, collate
    from organdetr.models import build_detector
    from organdetr.training import distributed
    from organdetr.training.config import load_config
    from organdetr.training.fit import fit
    from organdetr.training.loop import LossModule, StepContext, train_one_epoch
    from organdetr.training.optim import build_optimizer

    overrides = [f"data.cache_dir={cache}", "data.val_fraction=0", "data.batch_size=1", "train.epochs=2",
                 "train.progress=false", "train.log_every=1", "augment.p_spatial=1.0"]
    cfg = load_config("tiny", overrides)
    info = distributed.init_distributed("cpu")
    assert info.world_size == world_size and info.rank == rank
    try:
        # 1) the engine's pieces: each rank trains on its own shard; DDP must keep the weights identical
        torch.manual_seed(rank)  # different init per rank: DDP broadcasts rank 0's weights
        dataset = CacheDataset(cache, augment=cfg.augment)
        detector = build_detector(cfg.arch, cfg.model, cfg.matcher, cfg.loss, dataset.num_classes,
                                  dataset.input_size)
        model = DistributedDataParallel(LossModule(detector))
        torch.save({k: v.clone() for k, v in detector.state_dict().items()}, f"{out}/init{rank}.pt")
        optimizer = build_optimizer(detector, cfg.optim)
        ctx = StepContext(optimizer=optimizer, optim_cfg=cfg.optim, total_steps=4, device=torch.device("cpu"),
                          progress=False, log_every=1)
        for epoch in range(2):
            sampler = EpochSampler(len(dataset), seed=0, epoch=epoch, rank=rank, world_size=world_size)
            loader = torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=collate)
            ctx.epoch = epoch
            train_one_epoch(model, loader, ctx, detector)
        torch.save({k: v.clone() for k, v in detector.state_dict().items()}, f"{out}/rank{rank}.pt")
        # 2) the whole run under DDP
        fit(cfg, f"{out}/run")
    finally:
        distributed.cleanup()


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    cache = make_cache(tmp_path / "cache", num_cases=4, size=32)
    mp.spawn(_worker, args=(2, _free_port(), str(cache), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    init0, init1 = (torch.load(tmp_path / f"init{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(init0[k], init1[k]) for k in a)  # DDP broadcast rank 0's initial weights
    assert any(not torch.equal(init0[k], a[k]) for k in a)  # and training moved them

    state = json.loads((tmp_path / "run" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and state["steps_per_epoch"] == 2 and state["step"] == 4
    assert (tmp_path / "run" / "train_log.csv").is_file()


def test_single_process_helpers_are_no_ops():
    from organdetr.training import distributed

    assert distributed.current().world_size == 1
    assert distributed.all_reduce_mean({"a": 2.0}) == {"a": 2.0}
    assert distributed.all_gather_list([1, 2]) == [1, 2]
    assert distributed.broadcast_object("x") == "x"
    distributed.barrier()


def _pairs_worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    from organdetr.models.organdetr.criterion import LossConfig, build_criterion
    from organdetr.models.organdetr.matcher import MatcherConfig, build_matcher
    from organdetr.training import distributed

    distributed.init_distributed("cpu")
    try:
        criterion = build_criterion(3, build_matcher(MatcherConfig(kind="hungarian")), LossConfig())
        organs = 2 if rank == 0 else 6  # unequal shards: the normaliser must be the mean, 4
        target = {"labels": torch.zeros(organs, dtype=torch.long), "boxes": torch.full((organs, 6), 0.5)}
        with open(f"{out}/pairs{rank}.txt", "w") as f:
            f.write(str(criterion.num_pairs(10, [target])))
    finally:
        distributed.cleanup()


def test_matched_pair_count_is_averaged_over_processes(tmp_path):
    mp.spawn(_pairs_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    assert [float((tmp_path / f"pairs{r}.txt").read_text()) for r in (0, 1)] == [4.0, 4.0]
