"""Ablation suites: parse and check a suite file (variants, shared overrides) and the budget of a run.

A *suite* (``organdetr/configs/ablation/<name>.yaml`` or any YAML path) names a base training config and
a list of variants, each a set of ``--set``-style overrides::

    description: Encoder variants (same backbone, DQM matching)
    base: tiny                        # preset name or YAML path (relative to the suite file)
    set: [optim.lr=0.001]             # optional, applied to every variant
    variants:
      - {name: msa, set: [model.encoder=msa]}
      - {name: fpn, set: [model.encoder=fpn]}
      - {name: prior-mm, prior: mm}     # no training: the mean training box per organ
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from organdetr.models.baselines.prior import PRIOR_KINDS
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, collapse

SUITES_PACKAGE = "configs/ablation"
METRICS: tuple[str, ...] = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")
SEG_METRICS: tuple[str, ...] = ("dice", "nsd", "hd95_mm")  # segmenting variants only


@dataclass
class Variant:
    """One row of the table: a name and the config overrides that make it, or an image-blind prior
    (``prior``: ``"mm"`` or ``"fov"``, see :mod:`organdetr.models.baselines.prior`) that is fitted, not
    trained."""

    name: str
    overrides: list[str] = field(default_factory=list)
    prior: str | None = None


@dataclass
class Suite:
    """A parsed suite file: base config (preset name or path), shared overrides, variants."""

    name: str
    base: str
    variants: list[Variant]
    overrides: list[str] = field(default_factory=list)
    description: str = ""
    path: Path | None = None


def available_suites() -> list[str]:
    """Names of the packaged suites (``organdetr/configs/ablation/*.yaml``)."""
    folder = resources.files("organdetr").joinpath(SUITES_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _suite_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = Path(str(resources.files("organdetr").joinpath(SUITES_PACKAGE, f"{name_or_path}.yaml")))
    if packaged.is_file():
        return packaged
    raise InputError(path, f"no such suite file and not a packaged suite ({', '.join(available_suites())})")


def _string_list(value, key: str, path: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise InputError(path, f"{key} must be a list of KEY.PATH=VALUE strings, got {brief(value)}")
    return list(value)


def _parse_variants(raw_variants, path: Path) -> list[Variant]:
    """The checked ``variants:`` list of a suite file (unique names, overrides or a known prior)."""
    if not isinstance(raw_variants, list) or not raw_variants:
        raise InputError(path, "variants: must be a non-empty list of {name: ..., set: [...]}")
    variants = []
    for i, item in enumerate(raw_variants):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or set(item) - {"name", "set", "prior"}
        ):
            raise InputError(
                path,
                f"variants[{i}] must be {{name: str, set: [KEY=VALUE, ...]}} or "
                f"{{name: str, prior: mm|fov}}, got {brief(item)}",
            )
        prior = item.get("prior")
        if prior is not None and (prior not in PRIOR_KINDS or item.get("set")):
            raise InputError(
                path,
                f"variants[{i}].prior must be one of {list(PRIOR_KINDS)} (and no set:), got {brief(prior)}",
            )
        variants.append(
            Variant(item["name"], _string_list(item.get("set"), f"variants[{i}].set", path), prior)
        )
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise InputError(path, f"variant names must be unique, non-empty and contain no '/': {names}")
    return variants


def load_suite(name_or_path: str | Path) -> Suite:
    """Parse and check a suite (packaged name or YAML path); ``InputError`` naming the file otherwise."""
    path = _suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot read suite ({collapse(str(err))})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a suite is a YAML mapping with base: and variants:")
    unknown = sorted(set(data) - {"description", "base", "set", "variants"})
    if unknown:
        raise InputError(path, f"unknown key(s) {unknown}; allowed: description, base, set, variants")
    variants = _parse_variants(data.get("variants"), path)
    base = str(data.get("base", "tiny"))
    relative = path.parent / base
    return Suite(
        name=path.stem,
        base=str(relative) if relative.is_file() else base,
        variants=variants,
        overrides=_string_list(data.get("set"), "set", path),
        description=str(data.get("description", "")),
        path=path,
    )


@dataclass
class BenchmarkConfig:
    """Budget of one suite run (the CLI flags)."""

    iterations: int = 200  # optimizer steps per (variant, seed)
    cases: int = 16  # synthetic cases in all (train + validation + test)
    size: int = 32  # model input grid: size^3 voxels (must suit the preset's strides)
    seeds: tuple[int, ...] = (0,)
    data_seed: int = 0  # phantom seed (the same data for every variant and training seed)
    batch_size: int = 2
    val_points: int = 8  # validations per run (the convergence curve)
    test_fraction: float = 0.25
    val_fraction: float = 0.15
    latency_repeats: int = 5
    threads: int = 2
    workers: int = 1  # processes for phantom synthesis / preprocessing
    device: str = "cpu"
    hu_window: tuple[float, float] = (-200.0, 300.0)  # the demo's abdominal window (demo.ABDOMEN_WINDOW)
    nsd_tolerance_mm: float | None = None  # segmenting variants; None = the cache grid's largest spacing
    extra_overrides: list[str] = field(default_factory=list)  # applied to every variant, after the suite

    def __post_init__(self) -> None:
        self.seeds = tuple(int(s) for s in self.seeds)
        if self.iterations < 1 or self.batch_size < 1 or self.val_points < 1 or self.latency_repeats < 1:
            raise ValueError("iterations, batch_size, val_points and latency_repeats must be >= 1")
        if self.cases < 3:
            raise ValueError(f"cases must be >= 3 (train, validation and test), got {self.cases}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}")
        if self.size < 8:
            raise ValueError(f"size must be >= 8 voxels, got {self.size}")


__all__ = [
    "METRICS",
    "SEG_METRICS",
    "BenchmarkConfig",
    "Suite",
    "Variant",
    "available_suites",
    "load_suite",
]
