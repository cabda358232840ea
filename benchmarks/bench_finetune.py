"""Fine-tuning (issue 23): does a model pre-trained on 5 organs, fine-tuned to all 10, reach the from-scratch
10-organ mAP in at most half the steps?

Per train seed (``--seeds``, 3 by default):

1. **scratch**: ``--preset`` trained on the 10-organ phantom cache for ``--steps`` steps (the harness of
   ``bench_training_budget.py``: demo phantoms of data seed ``--seed``, 80 / 20 split, held-out validation
   ``--val-points`` times); its last held-out mAP is the target.
2. **pretrain**: the same preset on *other* phantoms (data seed ``--pretrain-data-seed``) whose labels keep
   only ``--pretrain-organs`` (5 organs; the cache is rewritten with the other organs erased),
   ``--pretrain-steps`` steps.
3. **fine-tune**: ``train --init-from`` the pretrain run on the 10-organ cache, for ``--steps / 2`` steps (its
   own cosine schedule), validated ``--val-points`` times; the claim holds for the seed when a validation
   within those steps reaches the target.

Prints one JSON line per run and a summary line (``steps_to_target`` per seed, ``claim_holds``). Runs that
finished before (``last/`` at their step budget) are read back, not retrained, so the benchmark resumes.
The pretraining's own steps are not counted (the claim is about the fine-tuning budget).

Usage (the lead's full run; about 3 x (1000 + 1000 + 500) demo steps)::

    .venv/bin/python benchmarks/bench_finetune.py --out /tmp/finetune --steps 1000 --pretrain-steps 1000 \\
        --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench_training_budget import prepare, run_dir_for, train_run, val_curve
from organdetr.preprocessing.cache import list_cases, load_case, write_case
from organdetr.preprocessing.plans import class_map_from_plans, load_plans
from organdetr.runtime.atomic import write_json
from organdetr.training.checkpoint import read_state

PRETRAIN_ORGANS = ("spleen", "kidney_right", "kidney_left", "liver", "stomach")


def restrict_cache(cache: Path, out: Path, organs: tuple[str, ...]) -> Path:
    """A copy of ``cache`` in ``out`` that knows only ``organs``: the other label ids erased from the label
    maps and the case records, the class map cut to ``organs`` (reused when complete)."""
    plans = load_plans(cache)
    classes = class_map_from_plans(plans)
    missing = sorted(set(organs) - set(classes.values()))
    if missing:
        raise SystemExit(f"--pretrain-organs not in the cache: {', '.join(missing)}")
    keep = {label_id for label_id, name in classes.items() if name in organs}
    cases = list_cases(cache)
    if (out / "plans.json").is_file() and len(list_cases(out)) == len(cases):
        return out
    write_json(out / "plans.json", {**plans, "classes": {str(i): classes[i] for i in sorted(keep)}})
    lut = np.array([i if i in keep else 0 for i in range(max(classes) + 1)], dtype=np.uint16)
    for case_id in cases:
        image, label, record = load_case(cache, case_id, mmap=False)
        record = {**record, "boxes": [b for b in record.get("boxes", []) if b["label_id"] in keep]}
        write_case(out, case_id, image, lut[label].astype(label.dtype), record)
    return out


def finished_curve(run_dir: Path, steps: int) -> list[dict] | None:
    """The validation curve of a run already trained to ``steps`` (``None``: not there yet)."""
    try:
        done = int(read_state(run_dir / "last")["step"]) >= steps
    except Exception:  # no run yet, or a broken one: train (fit refuses a folder that holds a checkpoint)
        return None
    return val_curve(run_dir) if done else None


def run(spec: str, out: Path, cache: Path, train: list, test: list, args, steps: int) -> dict:
    """``train_run`` for ``steps`` steps, or the finished run's curve."""
    run_args = argparse.Namespace(**{**vars(args), "steps": steps})
    curve = finished_curve(run_dir_for(spec, out, args.train_seed), steps)
    if curve is not None:
        return {"run": spec, "train_seed": args.train_seed, "steps": steps, "val": curve, "reused": True}
    return train_run(spec, out, cache, train, test, run_args)


def steps_to_target(curve: list[dict], target: float) -> int | None:
    """The first validation step whose mAP reaches ``target`` (``None``: never)."""
    return next((row["step"] for row in curve if row["mAP"] >= target), None)


def one_seed(args, data: dict) -> dict:
    """Scratch, pretrain and fine-tune runs of ``args.train_seed``; the seed's summary."""
    preset = args.preset
    scratch = run(preset, args.out, *data["full"], args, args.steps)
    print(json.dumps({"kind": "scratch", **scratch}), flush=True)
    pretrain = run(preset, args.out / "pretrain", *data["five"], args, args.pretrain_steps)
    print(json.dumps({"kind": "pretrain", **pretrain}), flush=True)
    init = run_dir_for(preset, args.out / "pretrain", args.train_seed)
    spec = f"{preset}|finetune.init_from={init}"
    budget = max(1, args.steps // 2)
    tuned = run(spec, args.out / "finetune", *data["full"], args, budget)
    print(json.dumps({"kind": "finetune", **tuned}), flush=True)
    target = scratch["val"][-1]["mAP"]
    reached = steps_to_target(tuned["val"], target)
    return {"train_seed": args.train_seed, "target_mAP": target, "finetune_budget": budget,
            "steps_to_target": reached, "finetune_final_mAP": tuned["val"][-1]["mAP"],
            "holds": reached is not None and reached <= budget}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=1000, help="from-scratch steps (fine-tuning gets half)")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--pretrain-organs", default=",".join(PRETRAIN_ORGANS))
    parser.add_argument("--pretrain-data-seed", type=int, default=3, help="phantom seed, pretraining data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="train seeds")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--hu", type=float, nargs=2, default=(-200.0, 300.0))
    parser.add_argument("--spacing", type=float, nargs=3, default=None, help="fixed spacing, mm (fit=pad)")
    parser.add_argument("--seed", type=int, default=0, help="phantom and split seed, 10-organ data")
    parser.add_argument("--val-points", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spacing = tuple(args.spacing) if args.spacing else None
    full = prepare(args.out, args.cases, args.size, tuple(args.hu), args.seed, spacing)
    other, train5, test5 = prepare(
        args.out / "pretrain", args.cases, args.size, tuple(args.hu), args.pretrain_data_seed, spacing
    )
    organs = tuple(o.strip() for o in args.pretrain_organs.split(","))
    five = restrict_cache(other, args.out / "pretrain" / f"{other.name}_5organs", organs)
    results = [one_seed(argparse.Namespace(**{**vars(args), "train_seed": s}), {"full": full,
               "five": (five, train5, test5)}) for s in args.seeds]  # fmt: skip
    summary = {"summary": results, "claim_holds": all(r["holds"] for r in results),
               "pretrain_organs": list(organs)}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
