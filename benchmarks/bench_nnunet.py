"""nnU-Net v2 ``3d_fullres`` on the phantom data and step budget of an ``organdetr benchmark`` run.

Runs in its own environment (nnU-Net is not an organdetr dependency)::

    python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 nnunetv2==2.8.1
    /tmp/nnunet-venv/bin/python benchmarks/bench_nnunet.py RUN_DIR --iterations 300 --seeds 0,1,2
    .venv/bin/python benchmarks/score_seg_runs.py RUN_DIR --nnunet /tmp/nnunet   # beside the organdetr runs

``RUN_DIR`` is the output folder of ``organdetr benchmark maskmed ...`` (its ``data/raw`` phantom dataset and
the train / test split in ``results.json``). The script builds an nnU-Net dataset of the training cases
(``imagesTr`` / ``labelsTr``) and the test cases (``imagesTs`` / ``labelsTs``; label ids renumbered 0..C-1 as
nnU-Net requires, predictions mapped back to the dataset's ids), plans and preprocesses it
(``nnUNetv2_plan_and_preprocess -c 3d_fullres``), trains the planned network with nnU-Net's own trainer
shortened to ``--iterations`` optimizer steps (``num_epochs x num_iterations_per_epoch``, 25 steps per epoch
so that its poly learning-rate schedule still decays; fold ``all``, one validation batch per epoch), on the
CPU, then predicts the test images (no mirroring). It prints one JSON line per seed with the training time,
the parameter count and the prediction folder (label maps in the scans' geometry and the dataset's ids, which
``score_seg_runs.py`` or ``organdetr evaluate --seg`` score like every other label map).
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
    dataset = json.loads((raw / "dataset.json").read_text())
    ids = sorted(int(v) for v in dataset["labels"].values())  # the dataset's ids, 0 first
    for case in train + split["test"]:
        part = "Tr" if case in train else "Ts"
        image = target / f"images{part}" / f"{case}_0000.nii.gz"
        if not image.exists():
            image.symlink_to((raw / "imagesTr" / f"{case}_0000.nii.gz").resolve())
        label = target / f"labels{part}" / f"{case}.nii.gz"
        if not label.exists():
            relabel(raw / "labelsTr" / f"{case}.nii.gz", label, {old: new for new, old in enumerate(ids)})
    dataset = {k: v for k, v in dataset.items() if k not in ("dataset", "numTest")}
    dataset["labels"] = {name: ids.index(int(v)) for name, v in dataset["labels"].items()}
    dataset["organdetr_label_ids"] = ids  # nnU-Net class c = dataset id ids[c]
    dataset["numTraining"] = len(train)
    (target / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return target


def relabel(src: Path, dst: Path, mapping: dict[int, int]) -> None:
    """``dst``: the label map ``src`` with its ids replaced through ``mapping`` (same geometry). nnU-Net wants
    consecutive class ids 0..C-1; the phantom uses TotalSegmentator's (e.g. aorta = 52)."""
    import numpy as np
    import SimpleITK as sitk

    image = sitk.ReadImage(str(src))
    labels = sitk.GetArrayFromImage(image)
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8 if max(mapping.values()) < 256 else np.uint16)
    for old, new in mapping.items():
        lut[old] = new
    out = sitk.GetImageFromArray(lut[labels])
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst), useCompression=True)


def train_and_predict(work: Path, iterations: int, seed: int, threads: int) -> dict:
    import numpy as np
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    steps_per_epoch = 25

    class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801 - nnU-Net's naming
        # nnU-Net records its trainers' init arguments by name: keep the base class's signature
        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cpu")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_iterations_per_epoch = steps_per_epoch
            self.num_epochs = max(1, iterations // steps_per_epoch)
            self.num_val_iterations_per_epoch = 1

    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    preprocessed = work / "preprocessed" / DATASET
    plans = load_json(str(preprocessed / "nnUNetPlans.json"))
    plans["continue_training"] = False  # what run_training's get_trainer_from_args adds
    dataset_json = load_json(str(preprocessed / "dataset.json"))
    trainer = nnUNetTrainerBudget(plans, "3d_fullres", "all", dataset_json, device=torch.device("cpu"))
    trainer.output_folder = str(work / f"train_seed{seed}")
    trainer.output_folder_base = trainer.output_folder
    final = Path(trainer.output_folder) / "checkpoint_final.pth"
    timing = Path(trainer.output_folder) / "budget_timing.json"
    if final.is_file():  # trained before (this script's own file): predict again without retraining
        trainer.load_checkpoint(str(final))
        seconds, cpu_seconds = json.loads(timing.read_text()) if timing.is_file() else (None, None)
    else:
        started, cpu = time.perf_counter(), time.process_time()
        trainer.run_training()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
        timing.write_text(json.dumps([round(seconds, 1), round(cpu_seconds, 1)]))
    trainer.set_deep_supervision_enabled(False)  # what nnU-Net's own validation does before predicting
    trainer.network.eval()
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
    ids = dataset_json["organdetr_label_ids"]
    for path in sorted(out.glob("*.nii.gz")):  # back to the dataset's ids, what `evaluate --seg` checks
        relabel(path, path, dict(enumerate(ids)))
    return {
        "seed": seed,
        "iterations": trainer.num_epochs * trainer.num_iterations_per_epoch,
        "train_seconds": seconds and round(seconds, 1),
        "train_cpu_seconds": cpu_seconds and round(cpu_seconds, 1),  # this process only, not the DA worker
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
