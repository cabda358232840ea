"""The ablation / baseline runner behind ``organdetr benchmark SUITE``.

A *suite* (``organdetr/configs/ablation/<name>.yaml`` or any YAML path) names a base training config and
a list of variants, each a set of ``--set``-style overrides::

    description: Encoder variants (same backbone, DQM matching)
    base: tiny                        # preset name or YAML path (relative to the suite file)
    set: [optim.lr=0.001]             # optional, applied to every variant
    variants:
      - {name: msa, set: [model.encoder=msa]}
      - {name: fpn, set: [model.encoder=fpn]}
      - {name: prior-mm, prior: mm}     # no training: the mean training box per organ

``run_suite`` then, on one synthetic phantom set (``organdetr.datasets.synthetic.phantom``, fixed seed, split
into
train / validation / test cases):

1. trains every variant for every seed with the same budget (``iterations`` optimizer steps), through the
   same engine as ``organdetr train`` (``engine.fit``), validating along the way (convergence curve);
2. evaluates the final weights on the test cases with the engine's ``evaluate`` (COCO-style, boxes in
   mm, max 1 detection per class) - clean, at +10 % zoom and at +10 % translation (each axis) of the test
   scans (boxes re-derived from the transformed labels); segmenting variants (``seg2box``, ``maskmed``:
   detectors with ``segment``) are also scored on their label maps (Dice, NSD, HD95 in mm on the cache
   grid, ``evaluation.segmentation``; NSD tolerance ``nsd_tolerance_mm``, default one voxel);
3. profiles the first seed's detectors: parameters, FLOPs (``FlopCounterMode``, see
   ``organdetr.experiments.profiling``), peak memory and latency per scan, all timed interleaved in this
   process;
4. writes ``table.md``, ``results.json``, ``convergence.png`` and one run folder per (variant, seed).

Runs already finished in the output folder are reused (a rerun after an interruption only trains what
is missing); a run cut off midway resumes from its last checkpoint.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import ndimage

from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError

SUITES_PACKAGE = "configs/ablation"
METRICS: tuple[str, ...] = ("mAP", "AP50", "AP75", "mAR", "mAP_10_50")
SEG_METRICS: tuple[str, ...] = ("dice", "nsd", "hd95_mm")  # segmenting variants only
PERTURBATIONS: dict[str, dict] = {"zoom+10%": {"zoom": 1.1}, "shift+10%": {"shift_fraction": 0.1}}


# ----------------------------------------------------------------------------------------------------
# suites


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
        raise InputError(path, f"{key} must be a list of KEY.PATH=VALUE strings, got {value!r}")
    return list(value)


def load_suite(name_or_path: str | Path) -> Suite:
    """Parse and check a suite (packaged name or YAML path); ``InputError`` naming the file otherwise."""
    path = _suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(path, f"cannot read suite ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise InputError(path, "a suite is a YAML mapping with base: and variants:")
    unknown = sorted(set(data) - {"description", "base", "set", "variants"})
    if unknown:
        raise InputError(path, f"unknown key(s) {unknown}; allowed: description, base, set, variants")
    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise InputError(path, "variants: must be a non-empty list of {name: ..., set: [...]}")
    variants = []
    from organdetr.models.baselines.prior import PRIOR_KINDS

    for i, item in enumerate(raw_variants):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("name"), str)
            or set(item) - {"name", "set", "prior"}
        ):
            raise InputError(
                path,
                f"variants[{i}] must be {{name: str, set: [KEY=VALUE, ...]}} or "
                f"{{name: str, prior: mm|fov}}, got {item!r}",
            )
        prior = item.get("prior")
        if prior is not None and (prior not in PRIOR_KINDS or item.get("set")):
            raise InputError(
                path, f"variants[{i}].prior must be one of {list(PRIOR_KINDS)} (and no set:), got {prior!r}"
            )
        variants.append(
            Variant(item["name"], _string_list(item.get("set"), f"variants[{i}].set", path), prior)
        )
    names = [v.name for v in variants]
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise InputError(path, f"variant names must be unique, non-empty and contain no '/': {names}")
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


# ----------------------------------------------------------------------------------------------------
# budget and data


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


def split_case_ids(case_ids: list[str], cfg: BenchmarkConfig) -> dict[str, list[str]]:
    """Fixed train / val / test split of the (sorted) phantom cases; each part gets at least one case."""
    n = len(case_ids)
    n_test = max(1, round(cfg.test_fraction * n))
    n_val = max(1, round(cfg.val_fraction * n))
    if n - n_test - n_val < 1:
        raise InputError(None, f"{n} cases cannot make train, validation and test sets; use --cases >= 3")
    order = np.random.default_rng(cfg.data_seed).permutation(n)
    ids = [case_ids[i] for i in order]
    return {
        "test": sorted(ids[:n_test]),
        "val": sorted(ids[n_test : n_test + n_val]),
        "train": sorted(ids[n_test + n_val :]),
    }


def prepare_data(out_dir: Path, cfg: BenchmarkConfig) -> tuple[Path, dict[str, list[str]]]:
    """Synthesise the phantom set and preprocess it to ``size^3`` (reused when already there)."""
    from organdetr.datasets.synthetic.phantom import PhantomConfig, write_synthetic_dataset
    from organdetr.preprocessing.cache import PreprocessConfig, list_cases, load_plans, preprocess_dataset

    raw, cache = out_dir / "data" / "raw", out_dir / "data" / "cache"
    expected = (cfg.size,) * 3
    ready = (cache / "plans.json").is_file() and len(list_cases(cache)) == cfg.cases
    if ready and tuple(load_plans(cache)["input_size"]) != expected:
        raise InputError(cache, f"holds a {load_plans(cache)['input_size']} cache; this run wants {expected}")
    if not ready:
        # the default (varied field of view) phantom, rendered at about the model's in-plane resolution
        phantom = PhantomConfig(size=expected)
        if not (raw / "dataset.json").is_file():
            write_synthetic_dataset(raw, cfg.cases, seed=cfg.data_seed, cfg=phantom, workers=cfg.workers)
        summary = preprocess_dataset(
            raw,
            cache,
            PreprocessConfig(input_size=expected, fit="resize", hu_window=cfg.hu_window),
            workers=cfg.workers,
            progress=False,
        )
        if summary.failed:
            case, message = summary.failed[0]
            raise InputError(
                raw, f"preprocessing failed for {len(summary.failed)} case(s), first {case}: {message}"
            )
    case_ids = list_cases(cache)
    if len(case_ids) != cfg.cases:
        raise InputError(cache, f"has {len(case_ids)} cases, expected {cfg.cases}; use a fresh --output")
    return cache, split_case_ids(case_ids, cfg)


def perturb_params(kind: str, size: tuple[int, int, int]):
    """The fixed ``AugmentParams`` of a robustness perturbation (``PERTURBATIONS`` key)."""
    from organdetr.data.augment import AugmentParams

    spec = PERTURBATIONS[kind]
    shift = tuple(spec.get("shift_fraction", 0.0) * s for s in size)
    return AugmentParams(zoom=spec.get("zoom", 1.0), shift=shift)


def write_perturbed_cache(cache: Path, out: Path, case_ids: list[str], kind: str) -> Path:
    """Copy ``case_ids`` of ``cache`` into ``out`` with image and labels transformed by ``kind``.

    Ground-truth boxes are recomputed from the transformed labels (an organ pushed partly out of the grid
    gets a smaller box; one pushed out entirely leaves the ground truth) and mapped to mm through the case
    record as the preprocessing does. Reused when complete.
    """
    from organdetr.core.geometry import grid_box_to_original
    from organdetr.data.augment import augment_pair
    from organdetr.preprocessing.cache import list_cases, load_case, load_plans, write_case

    if (out / "plans.json").is_file() and list_cases(out) == sorted(case_ids):
        return out
    plans = load_plans(cache)
    for case_id in case_ids:
        image, label, record = load_case(cache, case_id, mmap=False)
        params = perturb_params(kind, tuple(image.shape))
        new_image, new_label = augment_pair(
            torch.from_numpy(np.asarray(image, dtype=np.float32)),
            torch.from_numpy(np.asarray(label).astype(np.int64)),
            params,
        )
        new_label_np = new_label.numpy().astype(label.dtype)
        slices = ndimage.find_objects(new_label_np.astype(np.int32))
        boxes = []
        for box in record["boxes"]:
            lid = int(box["label_id"])
            sl = slices[lid - 1] if lid <= len(slices) else None
            if sl is None:
                continue
            box_voxel = np.array([s.start for s in sl] + [s.stop for s in sl], dtype=np.float64)
            box_original, box_mm = grid_box_to_original(box_voxel, record)
            voxels = int((new_label_np[sl] == lid).sum())
            boxes.append(
                {
                    **box,
                    "box_voxel": box_voxel.tolist(),
                    "box_voxel_original": np.asarray(box_original).tolist(),
                    "box_mm": np.asarray(box_mm).tolist(),
                    "voxels": voxels,
                }
            )
        new_record = {**record, "boxes": boxes, "perturbation": kind}
        write_case(out, case_id, new_image.numpy().astype(image.dtype), new_label_np, new_record)
    atomic.write_json(out / "plans.json", plans)
    return out


# ----------------------------------------------------------------------------------------------------
# training and evaluation of one run


def build_train_config(
    suite: Suite, variant: Variant, seed: int, cache: Path, split: dict[str, list[str]], cfg: BenchmarkConfig
):
    """The ``TrainConfig`` of one (variant, seed) run: suite base + overrides + the runner's budget."""
    from organdetr.training.config import apply_overrides, config_from_dict, read_config_dict

    data, path = read_config_dict(suite.base)
    data = apply_overrides(
        data, [*suite.overrides, *variant.overrides, *cfg.extra_overrides], path=suite.path
    )
    steps_per_epoch = math.ceil(len(split["train"]) / cfg.batch_size)
    epochs = math.ceil(cfg.iterations / steps_per_epoch)
    data.setdefault("data", {}).update(
        cache_dir=str(cache),
        train_cases=split["train"],
        val_cases=split["val"],
        batch_size=cfg.batch_size,
        num_workers=0,
    )
    train = data.setdefault("train", {})
    train.update(
        epochs=epochs,
        seed=seed,
        device=cfg.device,
        progress=False,
        val_every=max(1, round(epochs / cfg.val_points)),
        checkpoint_every=epochs,
        log_every=max(1, min(int(train.get("log_every", 10)), cfg.iterations // 10 or 1)),
    )
    optim = data.setdefault("optim", {})
    optim["warmup_steps"] = min(int(optim.get("warmup_steps", 0)), cfg.iterations // 5)
    return config_from_dict(data, path=suite.path or path)


def train_run(train_cfg, run_dir: Path, iterations: int) -> Path:
    """Train (or finish, or reuse) one run; returns its ``last`` checkpoint folder."""
    from organdetr.training.checkpoint import read_state
    from organdetr.training.fit import fit

    last = run_dir / "last"
    if last.is_dir():
        if int(read_state(last).get("step", 0)) >= iterations:
            return last
        fit(train_cfg, run_dir, resume=True, stop_at_step=iterations)
    else:
        fit(train_cfg, run_dir, stop_at_step=iterations)
    return last


def write_perturbed_caches(
    cache: Path, parent: Path, case_ids: list[str], prefix: str = ""
) -> dict[str, Path]:
    """``{"clean": cache, kind: parent / (prefix + slug)}``: every ``PERTURBATIONS`` kind written (or
    reused) for ``case_ids`` by :func:`write_perturbed_cache`."""
    folders = {"clean": cache}
    for kind in PERTURBATIONS:
        folders[kind] = write_perturbed_cache(cache, parent / f"{prefix}{_slug(kind)}", case_ids, kind)
    return folders


def robustness_scores(
    detector, folders: dict[str, Path], case_ids: list[str], device: torch.device, keys: tuple[str, ...]
) -> dict:
    """``{"metrics": {condition: {key: value}}, "mAP_change": {kind: relative change}}`` of ``detector`` on
    ``case_ids`` of every folder of :func:`write_perturbed_caches` (values rounded to 3 decimals; the change
    is ``None`` when the clean mAP is 0)."""
    table = {}
    for condition, folder in folders.items():
        m = evaluate_on(detector, folder, case_ids, device)
        table[condition] = {k: round(float(m[k]), 3) for k in keys}
    clean = table["clean"]["mAP"]
    change = {k: round(table[k]["mAP"] / clean - 1, 3) if clean > 0 else None for k in PERTURBATIONS}
    return {"metrics": table, "mAP_change": change}


def evaluate_on(detector, cache: Path, case_ids: list[str], device: torch.device) -> dict[str, float]:
    """COCO-style metrics (engine ``evaluate``, max 1 detection per class) of ``detector`` on cached cases."""
    from organdetr.data.cache_dataset import CacheDataset, collate
    from organdetr.training.validation import evaluate

    dataset = CacheDataset(cache, case_ids, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, collate_fn=collate)
    return evaluate(detector, loader, dataset, device, max_detections=1)


def segmentation_metrics_on(
    detector, cache: Path, case_ids: list[str], device: torch.device, nsd_tolerance_mm: float | None = None
) -> dict[str, float]:
    """Mean Dice, NSD and HD95 (mm) of a segmenting detector's label maps against the cached labels, on the
    cache grid (its spacing); ``nsd_tolerance_mm`` ``None``: the grid's largest voxel spacing."""
    from organdetr.data.cache_dataset import class_map_from_plans
    from organdetr.evaluation.segmentation import evaluate_segmentation
    from organdetr.preprocessing.cache import load_case, load_plans

    classes = class_map_from_plans(load_plans(cache), cache / "plans.json")
    lut = np.asarray([0, *classes], dtype=np.int64)  # dense class + 1 -> label id
    preds, gts, spacings = [], [], []
    for case_id in case_ids:
        image, label, record = load_case(cache, case_id, mmap=False)
        batch = torch.from_numpy(np.asarray(image, dtype=np.float32))[None, None].to(device)
        with torch.no_grad():
            preds.append(lut[detector.segment(batch)[0].cpu().numpy()])
        gts.append(np.asarray(label).astype(np.int64))
        spacings.append(record["grid"]["spacing"])
    tolerance = nsd_tolerance_mm if nsd_tolerance_mm is not None else float(np.max(spacings))
    result = evaluate_segmentation(preds, gts, classes, np.asarray(spacings), tolerance)
    return {**result.summary, "nsd_tolerance_mm": tolerance}


def read_val_curve(run_dir: Path) -> list[dict[str, float]]:
    """``[{step, mAP, ...}]`` from a run's ``val_log.csv`` (empty when it has none)."""
    import csv

    path = run_dir / "val_log.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in rows]


# ----------------------------------------------------------------------------------------------------
# the suite


@dataclass
class RunResult:
    variant: str
    seed: int
    test: dict[str, dict[str, float]]  # condition ("clean", "zoom+10%", ...) -> metrics
    curve: list[dict[str, float]]
    train_seconds: float


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def machine_description(threads: int) -> str:
    """One line naming the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return (
        f"{cpu} ({os.cpu_count()} logical CPUs, torch threads {threads}){gpu}, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


def run_suite(
    suite_name: str | Path,
    out_dir: str | Path,
    cfg: BenchmarkConfig | None = None,
    *,
    command: str = "",
    progress: bool = True,
) -> dict:
    """Run a whole suite into ``out_dir`` (see the module docstring); returns the results dict."""
    from rich.console import Console

    cfg = cfg or BenchmarkConfig()
    suite = load_suite(suite_name)
    out_dir = Path(out_dir)
    console = Console(stderr=True, quiet=not progress)
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)

    console.print(
        f"[bold]suite {suite.name}[/]: {len(suite.variants)} variants x {len(cfg.seeds)} seeds, "
        f"{cfg.iterations} iterations, {cfg.cases} cases at {cfg.size}^3"
    )
    cache, split = prepare_data(out_dir, cfg)
    folders = write_perturbed_caches(cache, out_dir / "data", split["test"], prefix="test_")
    perturbed = {kind: folder for kind, folder in folders.items() if kind != "clean"}
    runs: list[RunResult] = []
    final: dict[str, Path] = {}
    trained = [v for v in suite.variants if v.prior is None]
    for variant in suite.variants:
        if variant.prior is not None:
            runs.append(_evaluate_prior(variant, cache, perturbed, split))
            console.print(f"prior {variant.name}: test mAP {runs[-1].test['clean'].get('mAP', math.nan):.3f}")
    total = len(trained) * len(cfg.seeds)
    for n, (variant, seed) in enumerate(((v, s) for v in trained for s in cfg.seeds), start=1):
        run_dir = out_dir / "runs" / f"{variant.name}-seed{seed}"
        console.print(f"[{n}/{total}] train {variant.name} seed {seed} -> {run_dir}")
        train_cfg = build_train_config(suite, variant, seed, cache, split, cfg)
        started = time.perf_counter()
        last = train_run(train_cfg, run_dir, cfg.iterations)
        seconds = time.perf_counter() - started
        runs.append(_evaluate_run(variant.name, seed, last, cache, perturbed, split, device, seconds, cfg))
        final.setdefault(variant.name, last)
        console.print(f"      test mAP {runs[-1].test['clean'].get('mAP', math.nan):.3f}  ({seconds:.0f} s)")
    console.print("profiling (params, FLOPs, memory, interleaved latency) ...")
    cost = profile_variants(final, cfg, device) if final else {}
    results = _assemble(suite, cfg, split, runs, cost, command)
    write_reports(results, out_dir)
    console.print(f"results: {out_dir / 'table.md'}")
    return results


def _slug(kind: str) -> str:
    return kind.replace("+", "_plus_").replace("%", "pct")


def prior_metrics(
    kind: str, train_cache: Path, train_ids: list[str], test_cache: Path, test_ids: list[str]
) -> dict:
    """COCO-style metrics (max 1 detection per class, mm) of the image-blind prior ``kind`` fitted on the
    training cases of ``train_cache`` and scored on the test cases of ``test_cache``."""
    from organdetr.evaluation import GroundTruth, evaluate_detections
    from organdetr.models.baselines.prior import fit_box_prior, prior_detections
    from organdetr.preprocessing.cache import load_case, load_plans

    prior = fit_box_prior(load_case(train_cache, c, mmap=True)[2] for c in train_ids)
    records = [load_case(test_cache, c, mmap=True)[2] for c in test_ids]
    names = list(load_plans(test_cache)["classes"].values())
    truth = [
        GroundTruth(r["case_id"], b["name"], np.asarray(b["box_mm"])) for r in records for b in r["boxes"]
    ]
    result = evaluate_detections(prior_detections(prior, records, kind), truth, names, max_detections=1)
    return {k: float(v) for k, v in result.summary.items() if isinstance(v, int | float) and math.isfinite(v)}


def _evaluate_prior(variant: Variant, cache: Path, perturbed: dict[str, Path], split) -> RunResult:
    """A prior 'run': fitted on the training cases, scored on the clean and every perturbed test set."""
    folders = {"clean": cache, **perturbed}
    test = {
        condition: prior_metrics(variant.prior, cache, split["train"], folder, split["test"])
        for condition, folder in folders.items()
    }
    return RunResult(variant.name, 0, test, [], 0.0)


def _evaluate_run(name, seed, last, cache, perturbed, split, device, seconds, cfg) -> RunResult:
    from organdetr.training.checkpoint import load_detector

    detector, _, _ = load_detector(last, device, use_ema=True)
    segments = callable(getattr(detector, "segment", None))
    test = {}
    for kind, folder in {"clean": cache, **perturbed}.items():
        test[kind] = evaluate_on(detector, folder, split["test"], device)
        if segments:
            test[kind].update(
                segmentation_metrics_on(detector, folder, split["test"], device, cfg.nsd_tolerance_mm)
            )
    return RunResult(name, seed, test, read_val_curve(last.parent), seconds)


def profile_variants(final: dict[str, Path], cfg: BenchmarkConfig, device: torch.device) -> dict[str, dict]:
    """Params, FLOPs, peak memory and interleaved latency of each variant's trained detector (one scan)."""
    from organdetr.experiments.profiling import measure_latency, profile_detector
    from organdetr.training.checkpoint import load_detector

    detectors = {name: load_detector(path, device)[0] for name, path in final.items()}
    size = (cfg.size,) * 3
    cost = {name: profile_detector(det, size, device).to_dict() for name, det in detectors.items()}
    images = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0)).to(device)
    latency = measure_latency(
        {name: (lambda d=det: d.detect(images)) for name, det in detectors.items()},
        repeats=cfg.latency_repeats,
        warmup=1,
        device=device,
    )
    reference = latency[next(iter(latency))].median_s
    for name, stats in latency.items():
        cost[name]["latency"] = {**stats.to_dict(), "ratio_to_first": stats.median_s / reference}
    return cost


def _assemble(suite, cfg, split, runs, cost, command) -> dict:
    from organdetr.experiments.profiling import COUNTED_OPS

    summary: dict[str, dict] = {}
    for variant in suite.variants:
        mine = [r for r in runs if r.variant == variant.name]
        conditions = {}
        for condition in mine[0].test:
            keys = [m for m in (*METRICS, *SEG_METRICS) if m in METRICS or m in mine[0].test[condition]]
            conditions[condition] = {
                m: dict(
                    zip(("mean", "std"), _mean_std([r.test[condition].get(m) for r in mine]), strict=True)
                )
                for m in keys
            }
            if "nsd_tolerance_mm" in mine[0].test[condition]:
                conditions[condition]["nsd_tolerance_mm"] = mine[0].test[condition]["nsd_tolerance_mm"]
        summary[variant.name] = {
            "overrides": variant.overrides,
            "prior": variant.prior,
            "test": conditions,
            "cost": cost.get(variant.name),
        }
    return {
        "suite": suite.name,
        "description": suite.description,
        "base": suite.base,
        "command": command,
        "machine": machine_description(cfg.threads),
        "budget": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "split": {k: len(v) for k, v in split.items()},
        "split_cases": split,
        "flop_counter": {
            "tool": "torch.utils.flop_counter.FlopCounterMode",
            "counted_ops": list(COUNTED_OPS),
        },
        "variants": summary,
        "runs": [asdict(r) for r in runs],
    }


# ----------------------------------------------------------------------------------------------------
# reports


def _fmt(stat: dict, digits: int = 3) -> str:
    mean, std = stat["mean"], stat["std"]
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std and std > 0 else f"{mean:.{digits}f}"


def _count_seeds(results: dict, name: str) -> int:
    return sum(1 for r in results["runs"] if r["variant"] == name)


def render_table(results: dict) -> str:
    """``table.md``: the main table, the robustness table and how the numbers were made."""
    b = results["budget"]
    lines = [
        f"# Benchmark suite `{results['suite']}`",
        "",
        results["description"] or "",
        "",
        f"- command: `{results['command']}`" if results["command"] else "- command: (python API)",
        f"- machine: {results['machine']}",
        f"- data: {b['cases']} synthetic phantom cases (seed {b['data_seed']}) at {b['size']}^3; "
        "split train/val/test = {train}/{val}/{test}".format(**results["split"]),
        f"- budget: {b['iterations']} optimizer steps, batch {b['batch_size']}, seeds {b['seeds']} "
        "(mean ± std over seeds where more than one)",
        "- metrics: test cases, final weights, COCO-style in mm, max 1 detection per class; "
        "mAP = AP@.50:.05:.95, mAP_10_50 = nnDetection AP@.10:.05:.50",
        "- FLOPs: `torch.utils.flop_counter.FlopCounterMode` on one inference (`detect`, batch 1), "
        "2 FLOPs per multiply-add; counts matmul / conv / SDPA only (skips element-wise ops, norms, "
        "softmax outside SDPA, pooling, interpolation, NMS and other non-torch work)",
        "- latency: median of "
        f"{b['latency_repeats']} interleaved runs of `detect` on one scan in one process ({b['device']}); "
        "compare as ratios (x first row) - absolute times depend on machine load",
        "- peak memory (MiB): one inference; CUDA: allocator peak; CPU: peak of live tensors the forward "
        "creates (kernel scratch buffers not seen)",
        "",
        "| variant | mAP | AP50 | AP75 | mAR | mAP_10_50 | params (M) | FLOPs (G) | latency (ms) | "
        "latency (x) | peak mem (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in results["variants"].items():
        clean, cost = v["test"]["clean"], v["cost"]
        if cost is None:  # an image-blind prior: nothing to run
            lines.append(
                f"| {name} | " + " | ".join(_fmt(clean[m]) for m in METRICS) + " | - | - | - | - | - |"
            )
            continue
        mem = cost.get("peak_memory_bytes")
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(clean[m]) for m in METRICS)
            + f" | {cost['params'] / 1e6:.3f} | {cost['flops'] / 1e9:.2f} | "
            f"{cost['latency']['median_s'] * 1e3:.1f} | {cost['latency']['ratio_to_first']:.2f} | "
            + (f"{mem / 2**20:.1f}" if mem is not None else "n/a")
            + " |"
        )
    kinds = [k for k in next(iter(results["variants"].values()))["test"] if k != "clean"]
    lines += [
        "",
        "## Robustness (test scans transformed, boxes re-derived from the transformed labels)",
        "",
        "| variant | mAP clean | "
        + " | ".join(f"mAP {k}" for k in kinds)
        + " | "
        + " | ".join(f"AP50 {k}" for k in ["clean", *kinds])
        + " |",
        "|---|" + "---|" * (1 + 2 * len(kinds) + 1),
    ]
    for name, v in results["variants"].items():
        t = v["test"]
        lines.append(
            f"| {name} | {_fmt(t['clean']['mAP'])} | "
            + " | ".join(_fmt(t[k]["mAP"]) for k in kinds)
            + " | "
            + " | ".join(_fmt(t[k]["AP50"]) for k in ["clean", *kinds])
            + " |"
        )
    lines += _segmentation_table(results, kinds)
    lines += ["", "Variants:", ""]
    for name, v in results["variants"].items():
        if v.get("prior"):
            kind = v["prior"]
            lines.append(
                f"- **{name}**: image-blind prior `{kind}` "
                "(mean training box per organ, `organdetr.models.baselines.prior`)"
            )
            continue
        sets = ", ".join(f"`{s}`" for s in v["overrides"]) or "(base config)"
        lines.append(f"- **{name}** ({_count_seeds(results, name)} seed(s)): {sets}")
    lines.append("")
    return "\n".join(lines)


def _segmentation_table(results: dict, kinds: list[str]) -> list[str]:
    """Dice / NSD / HD95 of the variants that segment (none: no table)."""
    segmenting = {n: v for n, v in results["variants"].items() if "dice" in v["test"]["clean"]}
    if not segmenting:
        return []
    tolerance = next(iter(segmenting.values()))["test"]["clean"].get("nsd_tolerance_mm")
    lines = [
        "",
        "## Segmentation (segmenting variants: test label maps vs the cached labels, cache grid)",
        "",
        f"Dice, NSD at {tolerance:g} mm, HD95 in mm per organ (evaluation.segmentation: an organ missed or "
        "spurious scores Dice 0 / HD95 = volume diagonal), mean over organs; mean ± std over seeds.",
        "",
        "| variant | Dice | NSD | HD95 (mm) | " + " | ".join(f"Dice {k}" for k in kinds) + " |",
        "|---|---|---|---|" + "---|" * len(kinds),
    ]
    for name, v in segmenting.items():
        t = v["test"]
        lines.append(
            f"| {name} | {_fmt(t['clean']['dice'])} | {_fmt(t['clean']['nsd'])} | "
            f"{_fmt(t['clean']['hd95_mm'], 1)} | " + " | ".join(_fmt(t[k]["dice"]) for k in kinds) + " |"
        )
    return lines


def plot_convergence(results: dict, path: Path) -> Path | None:
    """``convergence.png``: validation mAP (and mAP_10_50) against the optimizer step, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for name, variant in results["variants"].items():
        if variant.get("prior"):  # what a model must beat: a dashed level
            for ax, metric in zip(axes, ("mAP", "mAP_10_50"), strict=True):
                level = variant["test"]["clean"][metric]["mean"]
                if level is not None and math.isfinite(level):
                    ax.axhline(level, ls="--", lw=1, color="grey")
                    ax.annotate(name, (0, level), fontsize=7, color="grey", va="bottom")
            continue
        curves = [r["curve"] for r in results["runs"] if r["variant"] == name and r["curve"]]
        if not curves:
            continue
        steps = sorted({row["step"] for c in curves for row in c})
        for ax, metric in zip(axes, ("mAP", "mAP_10_50"), strict=True):
            per_step = [
                [row.get(metric, math.nan) for c in curves for row in c if row["step"] == s] for s in steps
            ]
            mean = [np.nanmean(v) if v else math.nan for v in per_step]
            line = ax.plot(steps, mean, marker="o", ms=3, label=name)[0]
            if len(curves) > 1:
                lo = [np.nanmin(v) for v in per_step]
                hi = [np.nanmax(v) for v in per_step]
                ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for ax, metric in zip(axes, ("mAP (.50:.95)", "mAP_10_50 (nnDetection)"), strict=True):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"suite {results['suite']}: validation mAP vs iteration (mean over seeds, band = min-max)")
    fig.tight_layout()
    return atomic.write_figure(fig, path, dpi=110)


def write_reports(results: dict, out_dir: Path) -> None:
    """``table.md``, ``results.json`` and ``convergence.png`` in ``out_dir`` (atomic writes)."""
    atomic.write_json(out_dir / "results.json", _json_ready(results))
    atomic.write_text(out_dir / "table.md", render_table(results))
    plot_convergence(results, out_dir / "convergence.png")


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


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
