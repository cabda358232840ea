"""Fine-tuning: start a fresh run from another run's weights (``train --init-from RUN``), freeze named parts.

:func:`init_from_run` loads every tensor of the other run whose name and shape match the new detector
(backbone, encoder, decoder...). Tensors that depend on the class list (class heads, denoising label
embeddings, segmentation heads, per-class queries) are found by building the new detector with one class
more (:func:`class_dependent_tensors`: the tensors whose shape changes, along which axis, by how much per
class). When the two runs' class lists differ, such a tensor keeps its fresh initialisation except for the
rows of the organs both lists share (mapped by name), which are copied from the old run; its class-free rows
(background, "no object", padding) are copied too. Tensors with several rows per class are re-initialised
whole. Nothing is unpickled: weights come from safetensors.

:class:`Freezer` keeps named parts fixed for the first ``finetune.freeze_steps`` optimizer steps: their
gradients are dropped before the optimizer step (AdamW skips a parameter without a gradient: no update, no
weight decay, no moment), which also holds under DDP.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from organdetr.data.properties import DataProperties
from organdetr.models import detector_from_config
from organdetr.preprocessing.plans import class_map_from_plans
from organdetr.runtime import atomic
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.training.checkpoint import (
    EMA_FILE,
    MODEL_FILE,
    checkpoint_config_files,
    resolve_checkpoint_dir,
)
from organdetr.training.config import TrainConfig, load_config
from organdetr.training.init_weights import is_weight_file, matched_weights, read_weight_file

REPORT_FILE = "init_from.json"

LOADED, CLASS_ROWS, REINIT, UNUSED = "loaded", "class rows copied", "re-initialised", "unused"


@dataclass(frozen=True)
class ClassAxis:
    """How a tensor depends on the class count ``K``: its ``axis`` has ``per_class * K + extra`` entries,
    the ``extra`` class-free ones first (``extra_first``: background) or last ("no object", padding)."""

    axis: int
    per_class: int
    extra: int
    extra_first: bool


@dataclass
class InitReport:
    """What :func:`init_from_run` did, tensor by tensor (``rows``: name, status, shape, note)."""

    source: str
    source_arch: str
    arch: str
    shared_classes: list[str]
    new_classes: list[str]
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)

    def to_json(self) -> dict:
        counts = {s: self.count(s) for s in (LOADED, CLASS_ROWS, REINIT, UNUSED)}
        return {
            "source": self.source, "source_arch": self.source_arch, "arch": self.arch,
            "shared_classes": self.shared_classes, "new_classes": self.new_classes,
            "counts": counts, "tensors": self.rows,
        }  # fmt: skip


def class_dependent_tensors(
    build: Callable[[int], nn.Module], num_classes: int, arch: str, reference: nn.Module | None = None
) -> dict[str, ClassAxis]:
    """The tensors of ``build(num_classes)`` whose shape depends on the class count, and how.

    ``build(k)`` returns a detector for ``k`` classes; it is called with ``num_classes + 1`` (or ``- 1``
    where one more does not build), and with ``num_classes`` unless ``reference`` is that detector, under a
    forked RNG, so the caller's random stream is untouched.
    Background-first layouts: every ``K + 1`` tensor of the segmenting architectures (background is class 0)
    and Organ-DETR's segmentation heads; Organ-DETR's other ``K + 1`` tensor (the denoising label embedding)
    keeps its padding slot last.
    """
    with torch.random.fork_rng(devices=[]):
        model = reference if reference is not None else build(num_classes)
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        other = num_classes + 1
        try:
            probe = {k: tuple(v.shape) for k, v in build(other).state_dict().items()}
        except (ValueError, InputError):
            if num_classes < 2:
                raise
            other = num_classes - 1
            probe = {k: tuple(v.shape) for k, v in build(other).state_dict().items()}
    axes: dict[str, ClassAxis] = {}
    for name, shape in shapes.items():
        changed = [i for i, (a, b) in enumerate(zip(shape, probe.get(name, shape), strict=False)) if a != b]
        if len(changed) > 1:  # class-sized along several axes: no row layout to map, re-initialised whole
            axes[name] = ClassAxis(changed[0], 0, 0, False)
        if len(changed) != 1:
            continue
        axis = changed[0]
        per_class = (shape[axis] - probe[name][axis]) // (num_classes - other)
        extra = shape[axis] - per_class * num_classes
        first = extra > 0 and (arch != "organdetr" or ".seg_heads." in f".{name}")
        axes[name] = ClassAxis(axis, per_class, extra, first)
    return axes


def _source_files(run: str | Path) -> tuple[Path, dict, str]:
    """``(checkpoint folder, plans, arch)`` of the run to start from (a verified checkpoint)."""
    ckpt = resolve_checkpoint_dir(run)
    config_path, plans_path = checkpoint_config_files(ckpt)
    plans = read_json(plans_path, "unreadable plans", not_object="plans is not a JSON object")
    class_map_from_plans(plans, plans_path)
    return ckpt, plans, load_config(config_path).arch


def _copy_class_rows(
    fresh: Tensor, old: Tensor, axis: ClassAxis, old_k: int, row_map: dict[int, int]
) -> Tensor | None:
    """``fresh`` with the shared organs' rows (``row_map``: new class index -> old) and the class-free rows
    taken from ``old``; ``None`` when the layouts do not line up (several rows per class, other sizes)."""
    other_dims = [s for i, s in enumerate(fresh.shape) if i != axis.axis]
    if axis.per_class != 1 or [s for i, s in enumerate(old.shape) if i != axis.axis] != other_dims:
        return None
    if old.shape[axis.axis] != old_k + axis.extra:
        return None
    out = fresh.clone()
    new_k = fresh.shape[axis.axis] - axis.extra
    new_shift, old_shift = (0, 0) if axis.extra_first else (new_k, old_k)
    for e in range(axis.extra):
        out.select(axis.axis, new_shift + e).copy_(old.select(axis.axis, old_shift + e))
    offset = axis.extra if axis.extra_first else 0
    for new_index, old_index in row_map.items():
        out.select(axis.axis, offset + new_index).copy_(old.select(axis.axis, offset + old_index))
    return out


def init_from_run(
    detector: nn.Module,
    arch: str,
    new_classes: dict[int, str],
    run: str | Path,
    class_axes: dict[str, ClassAxis],
) -> InitReport:
    """Load the tensors of ``run`` that fit ``detector`` (in place) and report each tensor's fate.

    ``new_classes``: the new cache's class map (label id -> organ name); the old run's comes from its
    ``plans.json``; its EMA weights are used where it kept them (as :func:`load_detector` does).
    ``class_axes``: :func:`class_dependent_tensors` of ``detector``. When no tensor loads,
    :class:`InputError` naming the run's weights (nothing to fine-tune from).
    """
    ckpt, old_plans, old_arch = _source_files(run)
    old_names = [name for _, name in sorted(class_map_from_plans(old_plans).items())]
    new_names = [name for _, name in sorted(new_classes.items())]
    same_classes = old_names == new_names
    row_map = {i: old_names.index(n) for i, n in enumerate(new_names) if n in old_names}
    weights = ckpt / EMA_FILE if (ckpt / EMA_FILE).is_file() else ckpt / MODEL_FILE  # as load_detector
    old = read_weight_file(weights)
    report = InitReport(str(weights), old_arch, arch, [new_names[i] for i in row_map], new_names)
    state = detector.state_dict()
    for name, fresh in state.items():
        status, note, value = _one_tensor(name, fresh, old.get(name), class_axes, same_classes, row_map,
                                          len(old_names))  # fmt: skip
        if value is not None:
            state[name] = value.to(fresh.dtype)
        report.rows.append({"name": name, "status": status, "shape": list(fresh.shape), "note": note})
    for name in old.keys() - state.keys():
        report.rows.append({"name": name, "status": UNUSED, "shape": list(old[name].shape),
                            "note": "not in the new model"})  # fmt: skip
    if not report.count(LOADED) + report.count(CLASS_ROWS):
        raise InputError(
            weights,
            f"no tensor of this {old_arch} run matches the {arch} model by name and shape; "
            "nothing to fine-tune from",
        )
    detector.load_state_dict(state, strict=True)
    return report


def _one_tensor(
    name: str,
    fresh: Tensor,
    old: Tensor | None,
    class_axes: dict[str, ClassAxis],
    same_classes: bool,
    row_map: dict[int, int],
    old_k: int,
) -> tuple[str, str, Tensor | None]:
    """``(status, note, value to load or None)`` for one tensor of the new model."""
    if old is None:
        return REINIT, "not in the run", None
    axis = class_axes.get(name)
    if axis is not None and not same_classes:
        copied = _copy_class_rows(fresh, old, axis, old_k, row_map) if row_map else None
        if copied is None:
            return REINIT, "depends on the class list", None
        return CLASS_ROWS, f"{len(row_map)} shared organs' rows copied, the others fresh", copied
    if tuple(old.shape) != tuple(fresh.shape):
        return REINIT, f"shape {list(old.shape)} in the run", None
    return LOADED, "", old


def start_from_run(
    cfg: TrainConfig,
    run_dir: Path,
    detector: nn.Module,
    ema: nn.Module | None,
    plans: dict,
    *,
    main: bool,
) -> InitReport | None:
    """A fresh run's ``finetune.init_from``: load the matching tensors into ``detector`` (and its EMA copy),
    write ``RUN/init_from.json`` and print the table (main rank). ``None`` when no run is named. A plain
    weight file (:func:`~organdetr.training.init_weights.is_weight_file`): :func:`init_from_weights`."""
    if not cfg.finetune.init_from:
        return None
    if is_weight_file(cfg.finetune.init_from):
        report = init_from_weights(detector, cfg.arch, Path(cfg.finetune.init_from))
        publish_report(report, run_dir, detector, ema, main=main)
        return report
    classes = class_map_from_plans(plans)
    input_size = tuple(int(s) for s in plans["input_size"])
    properties = DataProperties.from_plans(plans)

    def build(k: int) -> nn.Module:
        return detector_from_config(cfg, k, input_size, properties)

    axes = class_dependent_tensors(build, len(classes), cfg.arch, reference=detector)
    report = init_from_run(detector, cfg.arch, classes, cfg.finetune.init_from, axes)
    publish_report(report, run_dir, detector, ema, main=main)
    return report


def init_from_weights(detector: nn.Module, arch: str, path: Path) -> InitReport:
    """Load the tensors of the plain weight file ``path`` that match ``detector`` after stripping a common
    prefix (in place, :func:`~organdetr.training.init_weights.matched_weights`) and report each tensor's
    fate; :class:`InputError` when none matches."""
    state = detector.state_dict()
    source_prefix, model_prefix, loaded, source = matched_weights(state, path)
    if not loaded:
        raise InputError(path, f"no tensor of this file matches the {arch} model by name and shape")
    report = InitReport(str(path), f"weights (prefix {source_prefix!r} -> {model_prefix!r})", arch, [], [])
    for name, fresh in state.items():
        if name in loaded:
            state[name] = loaded[name].to(fresh.dtype)
        status, note = (LOADED, "") if name in loaded else (REINIT, "not in the file")
        report.rows.append({"name": name, "status": status, "shape": list(fresh.shape), "note": note})
    for name in sorted(source):
        report.rows.append({"name": name, "status": UNUSED, "shape": list(source[name].shape), "note": ""})
    detector.load_state_dict(state, strict=True)
    return report


def publish_report(
    report: InitReport, run_dir: Path, detector: nn.Module, ema: nn.Module | None, *, main: bool
) -> None:
    """After loading: the EMA copy takes ``detector``'s weights; the main rank writes ``RUN/init_from.json``
    and prints the table."""
    if ema is not None:
        ema.module.load_state_dict(detector.state_dict())
    if main:
        atomic.write_json(run_dir / REPORT_FILE, report.to_json())
        Console(stderr=True).print(report_table(report))


def report_table(report: InitReport) -> Table:
    """A rich table: tensors and values per model part and status (the full list is ``init_from.json``)."""
    table = Table(title=f"--init-from {report.source} ({report.source_arch} -> {report.arch})")
    for column in ("part", "status", "tensors", "values", "note"):
        numeric = column in ("tensors", "values")
        table.add_column(column, justify="right" if numeric else "left", overflow="fold", no_wrap=numeric)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in report.rows:
        parts = row["name"].split(".")
        part = ".".join(parts[:2] if parts[0] == "network" and len(parts) > 2 else parts[:1])
        groups.setdefault((part, row["status"]), []).append(row)
    for (part, status), rows in groups.items():
        values = sum(int(torch.Size(r["shape"]).numel()) for r in rows)
        notes = sorted({r["note"] for r in rows if r["note"]})
        table.add_row(part, status, str(len(rows)), f"{values:,}", "; ".join(notes)[:70])
    shared = ", ".join(report.shared_classes) or "none"
    table.caption = f"organs shared with the run (class rows copied): {shared}"
    return table


# ----------------------------------------------------------------------------------------------------
# freezing


def parameters_of_parts(detector: nn.Module, parts: tuple[str, ...]) -> list[nn.Parameter]:
    """The parameters whose dotted name has one of ``parts`` as a component (``backbone`` matches
    ``network.backbone.stem.weight``); :class:`InputError` naming a part that matches nothing."""
    named = list(detector.named_parameters())
    chosen: dict[str, nn.Parameter] = {}
    for part in parts:
        hits = {n: p for n, p in named if part in n.split(".")}
        if not hits:
            top = sorted({n.split(".")[1] if n.startswith("network.") else n.split(".")[0] for n, _ in named})
            raise InputError(None, f"--freeze {part}: no such part in this model (parts: {', '.join(top)})")
        chosen.update(hits)
    return list(chosen.values())


def finetune_overrides(
    init_from: Path | None, freeze: list[str] | None, freeze_steps: int | None
) -> list[str]:
    """``--set`` overrides of the ``finetune`` section from ``train``'s options (only those given)."""
    overrides = [] if init_from is None else [f"finetune.init_from={json.dumps(str(init_from))}"]
    if freeze:
        overrides.append(f"finetune.freeze={json.dumps(list(freeze))}")
    if freeze_steps is not None:
        overrides.append(f"finetune.freeze_steps={freeze_steps}")
    return overrides


def freezer_for(cfg: TrainConfig, detector: nn.Module) -> Freezer | None:
    """The run's :class:`Freezer` from ``finetune.freeze`` / ``freeze_steps`` (``None`` when nothing is)."""
    if not cfg.finetune.freeze:
        return None
    return Freezer(parameters_of_parts(detector, cfg.finetune.freeze), cfg.finetune.freeze_steps)


class Freezer:
    """Drops the gradients of ``params`` while ``step < until_step`` (call :meth:`apply` after backward)."""

    def __init__(self, params: list[nn.Parameter], until_step: int):
        self.params, self.until_step = params, until_step

    def apply(self, step: int) -> None:
        if step < self.until_step:
            for p in self.params:
                p.grad = None


__all__ = [
    "CLASS_ROWS",
    "LOADED",
    "REINIT",
    "UNUSED",
    "ClassAxis",
    "Freezer",
    "InitReport",
    "class_dependent_tensors",
    "finetune_overrides",
    "publish_report",
    "freezer_for",
    "init_from_run",
    "init_from_weights",
    "parameters_of_parts",
    "report_table",
    "start_from_run",
]
