"""Where a trained Organ-DETR loses its box precision: per decoder layer, per axis, and in its query ranking.

The measurements behind issue 20's four causes, on any cache (the held-out split or the 40-scan test set of
``bench_training_budget.py``), against the *exact* organ boxes (the original scan's boxes mapped onto the
grid, ``data.box_targets: exact``: what the metric scores against, to a fraction of a voxel):

* ``layer_iou``: median IoU, at each decoder layer, of the query the detector reports for each present organ
  (the best-scoring query of its class; the same query index followed through the layers) - does the
  decoder refine?
* ``best_query_iou``: median IoU of the best of all queries for each organ at the last layer, and
  ``score_iou_corr``: the correlation, over the queries of each organ's class, of the class score with the
  IoU (averaged over organs) - does the score pick the best box?
* ``extent_bias_vox``: mean signed error of the reported box's extent per axis ``(i, j, k)`` in voxels
  (positive: too large, the bias rotation augmentation teaches); ``face_error_vox``: mean absolute error of
  the low / high faces per axis.
* ``per_organ``: AP50 / AP75 of every organ (COCO-style in mm, one detection per organ, the cache's truth).

Usage::

    .venv/bin/python benchmarks/bench_box_diagnostics.py RUN [RUN ...] --cache CACHE [--threads 1]

Prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from organdetr.core.boxes.ops import box_cxcyczwhd_to_xyzxyz, box_iou_3d
from organdetr.data.cache_dataset import CacheDataset
from organdetr.models.organdetr.postprocess import class_probabilities
from organdetr.preprocessing.cache import list_cases
from organdetr.training.checkpoint import load_detector
from organdetr.training.validation import per_class_metrics


@torch.no_grad()
def diagnose(run: Path, cache: Path) -> dict:
    """The measurements of the module docstring for the detector of ``run`` on every case of ``cache``."""
    detector, cfg, _ = load_detector(run, "cpu")
    dataset = CacheDataset(cache, sorted(list_cases(cache)), None, "exact")
    size = torch.tensor(dataset.input_size, dtype=torch.float32).repeat(2)
    layer_ious: list[list[float]] = []
    best, corr, extent, faces = [], [], [], []
    for index in range(len(dataset)):
        image, target = dataset[index]
        out = detector.network(image[None])
        layers = [a["pred_boxes"][0] for a in out.get("aux_outputs", [])] + [out["pred_boxes"][0]]
        prob = class_probabilities(out["pred_logits"], detector.network.class_activation)[0]  # [N, K]
        gt = box_cxcyczwhd_to_xyzxyz(target["boxes"]) * size  # [M, 6] voxels
        for organ, label in enumerate(target["labels"].tolist()):
            query = int(prob[:, label].argmax())
            ious = [float(box_iou_3d(box_cxcyczwhd_to_xyzxyz(b) * size, gt[organ : organ + 1])[0][query, 0])
                    for b in layers]  # fmt: skip
            layer_ious.append(ious)
            last = box_cxcyczwhd_to_xyzxyz(layers[-1]) * size
            all_iou = box_iou_3d(last, gt[organ : organ + 1])[0][:, 0]
            best.append(float(all_iou.max()))
            if all_iou.std() > 0 and prob[:, label].std() > 0:
                corr.append(float(np.corrcoef(prob[:, label].numpy(), all_iou.numpy())[0, 1]))
            error = (last[query] - gt[organ]).numpy()
            extent.append(error[3:] - error[:3])
            faces.append(np.abs(error))
    per_organ = per_class_metrics(detector, CacheDataset(cache, dataset.case_ids, None), torch.device("cpu"))
    layer = np.asarray(layer_ious)
    faces_arr = np.asarray(faces)
    return {
        "run": str(run),
        "cache": str(cache),
        "organs": len(layer),
        "box_targets": cfg.data.box_targets,
        "layer_iou": [round(float(v), 3) for v in np.median(layer, axis=0)],
        "best_query_iou": round(float(np.median(best)), 3),
        "score_iou_corr": round(float(np.mean(corr)), 3) if corr else None,
        "extent_bias_vox": [round(float(v), 2) for v in np.mean(extent, axis=0)],
        "face_error_vox": {
            axis: [round(float(faces_arr[:, a].mean()), 2), round(float(faces_arr[:, a + 3].mean()), 2)]
            for a, axis in enumerate("ijk")
        },
        "per_organ": {
            name: {k: round(float(v[k]), 3) for k in ("AP50", "AP75")} for name, v in per_organ.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (best/, else last/)")
    parser.add_argument("--cache", type=Path, required=True, help="cache whose cases are scored (all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print(json.dumps(diagnose(run, args.cache)), flush=True)


if __name__ == "__main__":
    main()
