"""nnU-Net v2 ``3d_fullres`` on the phantom data and step budget of an ``organdetr benchmark`` run.

Runs in its own environment (nnU-Net is not an organdetr dependency)::

    python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2==2.8.1
    /tmp/nnunet-venv/bin/python benchmarks/bench_nnunet.py RUN_DIR --iterations 300 --seeds 0,1,2
    .venv/bin/organdetr evaluate /tmp/nnunet/pred_seed0 /tmp/nnunet/raw/Dataset512_Phantom --seg --split ts

``RUN_DIR`` is the output folder of ``organdetr benchmark maskmed ...`` (its ``data/raw`` phantom dataset and
the train / test split in ``results.json``). The script builds an nnU-Net dataset of the training cases
(``imagesTr`` / ``labelsTr``) and the test cases (``imagesTs`` / ``labelsTs``), plans and preprocesses it
(``nnUNetv2_plan_and_preprocess -c 3d_fullres``), trains the planned network with nnU-Net's own trainer
shortened to ``--iterations`` optimizer steps (``num_epochs x num_iterations_per_epoch``, 25 steps per epoch
so that its poly learning-rate schedule still decays; fold ``all``, one validation batch per epoch), on the
CPU, then predicts the test images (no mirroring). It prints one JSON line per seed with the training time,
the parameter count and the prediction folder, which ``organdetr evaluate --seg`` scores like every other
label map.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

DATASET = "Dataset512_Phantom"


def build_dataset(run_dir: Path, work: Path, split_file: Path | None) -> Path:
    """``work/raw/Dataset512_Phantom``: symlinks to the run's phantom cases, split as the run split them
    (``results.json`` ``split_cases``, or ``split_file``: ``{"train": [..], "val": [..], "test": [..]}``)."""
    raw = run_dir / "data" / "raw"
    split = (
        json.loads(split_file.read_text())
        if split_file
        else json.loads((run_dir / "results.json").read_text())
    )
    split = split.get("split_cases", split)
    train = sorted(split["train"] + split["val"])  # nnU-Net does its own validation split: give it both
    target = work / "raw" / DATASET
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    for case in train + split["test"]:
        part = "Tr" if case in train else "Ts"
        for src, dst in (
            (raw / "imagesTr" / f"{case}_0000.nii.gz", target / f"images{part}" / f"{case}_0000.nii.gz"),
            (raw / "labelsTr" / f"{case}.nii.gz", target / f"labels{part}" / f"{case}.nii.gz"),
        ):
            if not dst.exists():
                dst.symlink_to(src.resolve())
    dataset = json.loads((raw / "dataset.json").read_text())
    dataset = {k: v for k, v in dataset.items() if k not in ("dataset", "numTest")}
    dataset["numTraining"] = len(train)
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return target


def train_and_predict(work: Path, iterations: int, seed: int, threads: int) -> dict:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    steps_per_epoch = 25

    class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_iterations_per_epoch = steps_per_epoch
            self.num_epochs = max(1, iterations // steps_per_epoch)
            self.num_val_iterations_per_epoch = 1

    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    preprocessed = work / "preprocessed" / DATASET
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    trainer = nnUNetTrainerBudget(plans, "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer.output_folder = str(work / f"train_seed{seed}")
    trainer.output_folder_base = trainer.output_folder
    trainer.log_file = None
    started, cpu = time.perf_counter(), time.process_time()
    trainer.run_training()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    predictor = nnUNetPredictor(
        use_mirroring=False, device=torch.device("cpu"), verbose=False, allow_tqdm=False
    )
    predictor.manual_initialization(
        trainer.network,
        trainer.plans_manager,
        trainer.configuration_manager,
        [trainer.network.state_dict()],
        dataset_json,
        type(trainer).__name__,
        None,
    )
    out = work / f"pred_seed{seed}"
    predictor.predict_from_files(
        str(work / "raw" / DATASET / "imagesTs"), str(out), save_probabilities=False, overwrite=True,
        num_processes_preprocessing=1, num_processes_segmentation_export=1,
    )  # fmt: skip
    return {
        "seed": seed,
        "iterations": trainer.num_epochs * trainer.num_iterations_per_epoch,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "params": sum(p.numel() for p in trainer.network.parameters()),
        "patch_size": list(trainer.configuration_manager.patch_size),
        "batch_size": trainer.configuration_manager.batch_size,
        "predictions": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet"))
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--split", type=Path, default=None, help="split JSON (default: RUN_DIR/results.json)")
    args = parser.parse_args()
    work = args.work.resolve()
    os.environ.setdefault("nnUNet_raw", str(work / "raw"))
    os.environ.setdefault("nnUNet_preprocessed", str(work / "preprocessed"))
    os.environ.setdefault("nnUNet_results", str(work / "results"))
    os.environ.setdefault("nnUNet_n_proc_DA", "1")  # one augmentation worker (shared CPUs)
    build_dataset(args.run_dir, work, args.split)
    if not (work / "preprocessed" / DATASET / "nnUNetPlans.json").is_file():
        bindir = Path(sys.executable).parent
        subprocess.run(
            [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "512", "-c", "3d_fullres", "-np", "1"],
            check=True,
        )
    for seed in (int(s) for s in args.seeds.split(",")):
        print(json.dumps(train_and_predict(work, args.iterations, seed, args.threads)), flush=True)


if __name__ == "__main__":
    main()
