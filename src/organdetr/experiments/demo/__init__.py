"""`organdetr demo`: the whole pipeline on CPU in minutes, ending in a report folder.

Steps (each timed, each with a progress bar; :mod:`~organdetr.experiments.demo.run`):

1. synthesise an abdomen-like phantom dataset (nnU-Net layout; ``organdetr synth``; varied field of view,
   so that organ positions differ from scan to scan);
2. preprocess the cases into a cache (``organdetr preprocess``);
3. train Organ-DETR (``demo`` preset) on CPU for a fixed number of optimizer steps (``organdetr train``);
4. train the ``seg2box`` baseline (a U-Net whose masks give the boxes) for the same steps on the same data:
   with two or more threads beside Organ-DETR, in a second process
   (:mod:`~organdetr.experiments.demo.training`);
5. predict the held-out cases from their raw NIfTI files (``organdetr predict``) and score both models and
   the two image-blind priors (mean training box per organ, :mod:`organdetr.models.baselines.prior`) against
   boxes from the
   label maps (``organdetr evaluate``: COCO-style 3D mAP in mm; :mod:`~organdetr.experiments.demo.evaluate`);
6. predict a real CT (``../shared/data`` when present): shows real geometry (RAS NIfTI, DICOM series)
   handled end to end. A model trained on phantoms does NOT find real organs well; the report says so
   (:mod:`~organdetr.experiments.demo.real_ct`);
7. write ``OUT/report/``: ``REPORT.md`` (the model beside the priors and seg2box), ``metrics.md`` /
   ``metrics.json``, ``pr_curves.png``, ``loss_curve.png``, ``overlays/`` and ``real_ct/``
   (:mod:`~organdetr.experiments.demo.report`).

The budget is a step count, never wall-clock time: the result does not depend on the machine's load. The
expected time is measured (a few steps of each model) and printed before training starts.

This package re-exports the public names of its modules for users; the modules import each other directly.
"""

from __future__ import annotations

from organdetr.experiments.demo.evaluate import PRIOR_ROWS
from organdetr.experiments.demo.real_ct import SHARED_DATA_ENV, find_shared_data
from organdetr.experiments.demo.report import comparison_markdown, summary_markdown
from organdetr.experiments.demo.run import ABDOMEN_WINDOW, DemoConfig, DemoResult, run_demo
from organdetr.experiments.demo.training import measure_step_seconds

__all__ = [
    "ABDOMEN_WINDOW",
    "PRIOR_ROWS",
    "SHARED_DATA_ENV",
    "DemoConfig",
    "DemoResult",
    "find_shared_data",
    "measure_step_seconds",
    "comparison_markdown",
    "run_demo",
    "summary_markdown",
]
