"""Writing a from-label synthesised dataset (``organdetr synth --kind from-labels``), nnU-Net v2 raw.

Case ``n`` draws its source label map and its whole synthesis from its own seed (``writing.case_seeds``), so
the dataset is the same for the same seed and sources whatever ``workers`` is. Images are int16 HU (rounded),
labels the model's organ ids (:data:`~organdetr.datasets.synthetic.label_sources.TARGET_CLASSES`,
TotalSegmentator ``total`` ids): every other verb (``preprocess``, ``train``, ``evaluate``) reads it as it
reads the phantom's datasets.

Sources are drawn uniformly, or with ``real_share`` that fraction of the cases from the label maps read from
files and the rest from the procedural phantoms' maps: uniform draws over one real map and twenty phantoms
gave the real anatomy ~5 % of the cases, and a model trained so found the phantoms' organs and not the real
map's own (BENCHMARKS.md, "Issue 24").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from organdetr.datasets.nnunet import image_path, label_path, write_dataset_json
from organdetr.datasets.synthetic.from_labels import FromLabelsConfig, synthesize
from organdetr.datasets.synthetic.label_sources import TARGET_CLASSES, LabelSource
from organdetr.datasets.synthetic.writing import case_seeds, write_cases
from organdetr.io.images import write_image
from organdetr.runtime.errors import InputError
from organdetr.runtime.outputs import check_output_folder


@dataclass(frozen=True)
class FromLabelsJob:
    """What every case of a dataset is drawn from: the source label maps and the synthesis config."""

    sources: tuple[LabelSource, ...]
    cfg: FromLabelsConfig
    weights: tuple[float, ...] | None = None  # probability of each source; None: uniform


def source_weights(sources: list[LabelSource], real_share: float | None) -> tuple[float, ...] | None:
    """Per-source probabilities giving the maps read from files (``path`` set: real anatomy) ``real_share``
    of the cases, evenly among them, and the procedural ones the rest; ``None`` (uniform) when ``real_share``
    is ``None`` or either group is empty. ValueError for a share outside [0, 1]."""
    if real_share is None:
        return None
    if not 0.0 <= real_share <= 1.0:
        raise ValueError(f"real_share must be in [0, 1], got {real_share}")
    real = [s.path is not None for s in sources]
    n_real = sum(real)
    if n_real in (0, len(sources)):
        return None
    n_proc = len(sources) - n_real
    return tuple(real_share / n_real if r else (1.0 - real_share) / n_proc for r in real)


def case_id(index: int) -> str:
    """``synth_0000``-style case id."""
    return f"synth_{index:04d}"


def write_from_labels_case(root: Path, index: int, seed: int, job: FromLabelsJob) -> dict:
    """Synthesise case ``index`` from ``seed`` (its source drawn first) and write it; returns its summary."""
    rng = np.random.default_rng(seed)
    if job.weights is None:  # the draw datasets written before real_share used: same seed, same dataset
        source = job.sources[int(rng.integers(len(job.sources)))]
    else:
        source = job.sources[int(rng.choice(len(job.sources), p=np.asarray(job.weights)))]
    case = synthesize(source, rng, job.cfg)
    cid = case_id(index)
    write_image(image_path(root, cid), np.rint(case.image).astype(np.int16), case.geometry)
    write_image(label_path(root, cid), case.labels, case.geometry)
    return {"case_id": cid, "seed": int(seed), "source": source.name, "organs": [b.name for b in case.boxes]}


def write_from_labels_dataset(
    out_dir: str | Path,
    sources: list[LabelSource],
    num_cases: int,
    *,
    seed: int = 0,
    cfg: FromLabelsConfig | None = None,
    workers: int = 1,
    progress: bool = False,
    real_share: float | None = None,
) -> Path:
    """Write ``num_cases`` cases synthesised from ``sources`` into the new or empty folder ``out_dir``.

    ``dataset.json`` (written last) records the seed, the sources, the config and each case's seed, source
    and organs. ``real_share``: see :func:`source_weights`. InputError (naming ``out_dir``) for a folder that
    holds anything, no sources or no cases.
    """
    cfg = cfg or FromLabelsConfig()
    root = check_output_folder(out_dir)
    if num_cases < 1:
        raise InputError(root, f"number of cases must be >= 1, got {num_cases}")
    if not sources:
        raise InputError(root, "no source label maps given")
    if root.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
        raise InputError(root, "output folder is not empty; choose a new folder")
    job = FromLabelsJob(tuple(sources), cfg, source_weights(sources, real_share))
    cases = write_cases(
        write_from_labels_case, root, case_seeds(seed, num_cases), job, workers, progress=progress
    )
    write_dataset_json(
        root,
        TARGET_CLASSES,
        num_cases,
        name=root.name or "FromLabels",
        description="CT-like scans synthesised from label maps with random shape and appearance "
        "(organdetr synth --kind from-labels, SynthSeg-style); labels use TotalSegmentator 'total' ids.",
        class_source="totalsegmentator",
        synthesis={
            "kind": "from-labels",
            "seed": int(seed),
            "sources": [s.name if s.path is None else str(s.path) for s in sources],
            "real_share": real_share,
            "config": cfg.to_dict(),
            "cases": cases,
        },
    )
    return root


__all__ = [
    "FromLabelsJob",
    "case_id",
    "source_weights",
    "write_from_labels_case",
    "write_from_labels_dataset",
]
