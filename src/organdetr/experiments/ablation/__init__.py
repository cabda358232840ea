"""The ablation / baseline runner behind ``organdetr benchmark SUITE``.

A *suite* (``organdetr/configs/ablation/<name>.yaml`` or any YAML path) names a base training config and
a list of variants, each a set of ``--set``-style overrides (:mod:`~organdetr.experiments.ablation.suite`);
:func:`run_suite` (:mod:`~organdetr.experiments.ablation.runs`) trains every variant for every seed with
the same budget on one synthetic phantom set (:mod:`~organdetr.experiments.ablation.data`), scores the
final weights on the clean and perturbed test cases (:mod:`~organdetr.experiments.ablation.scoring`),
profiles the detectors and writes ``table.md``, ``results.json`` and ``convergence.png``
(:mod:`~organdetr.experiments.ablation.report`).

This package re-exports the public names of its modules for users; the modules import each other directly.
"""

from __future__ import annotations

from organdetr.experiments.ablation.data import (
    PERTURBATIONS,
    perturb_params,
    prepare_data,
    split_case_ids,
    write_perturbed_cache,
    write_perturbed_caches,
)
from organdetr.experiments.ablation.report import plot_convergence, render_table, write_reports
from organdetr.experiments.ablation.runs import (
    RunResult,
    build_train_config,
    profile_variants,
    run_suite,
)
from organdetr.experiments.ablation.scoring import robustness_scores, segmentation_metrics_on
from organdetr.experiments.ablation.suite import (
    METRICS,
    SEG_METRICS,
    BenchmarkConfig,
    Suite,
    Variant,
    available_suites,
    load_suite,
)

__all__ = [
    "METRICS",
    "PERTURBATIONS",
    "robustness_scores",
    "write_perturbed_caches",
    "SEG_METRICS",
    "BenchmarkConfig",
    "RunResult",
    "Suite",
    "Variant",
    "available_suites",
    "build_train_config",
    "load_suite",
    "perturb_params",
    "plot_convergence",
    "prepare_data",
    "profile_variants",
    "render_table",
    "run_suite",
    "segmentation_metrics_on",
    "split_case_ids",
    "write_perturbed_cache",
    "write_reports",
]
