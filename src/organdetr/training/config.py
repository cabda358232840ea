"""Training configuration: nested typed dataclasses, loaded from YAML with strict validation.

``TrainConfig`` groups the model, matcher and loss configs of the model code with the engine's own
sections (data, augment, optim, train). YAML files (and ``--set a.b=c`` overrides) are checked on load:
an unknown key is an error naming the key path and the allowed keys, values are coerced to the field
types (``tuple``, ``Literal`` choices, ``X | None``) and each section's own ``__post_init__`` validation runs.

Presets ``tiny`` (unit tests), ``small`` (CPU demo) and ``paper`` live in ``organdetr/configs/*.yaml``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from organdetr.data.augment import AugmentConfig
from organdetr.models.baselines.seg2box import Seg2BoxConfig
from organdetr.models.config import ModelConfig
from organdetr.models.maskmed.config import MaskMedConfig
from organdetr.models.mtmed3d.config import MTMed3DConfig
from organdetr.models.organdetr.criterion import LossConfig
from organdetr.models.organdetr.matcher import MatcherConfig
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, collapse

ScheduleKind = Literal["cosine", "step", "constant"]
BoxTargets = Literal["labels", "exact"]
AmpMode = Literal["auto", "off", "bf16", "fp16"]


@dataclass
class DataConfig:
    """Where the preprocessed cache is and how it is split and loaded.

    ``box_targets``: ``"labels"`` boxes the organ's voxels on the cache grid (whole voxels); ``"exact"`` maps
    the organ's box in the original scan onto the grid and through zoom / shift / flip, to a fraction of a
    voxel (:class:`~organdetr.data.cache_dataset.CacheDataset`).

    The split: ``fold`` k trains on fold k's ``train`` cases of ``CACHE/splits_final.json`` (``organdetr
    split``) and validates on its ``val`` cases; else explicit ``train_cases`` / ``val_cases`` lists win;
    otherwise ``val_fraction`` of the cache's cases (at least one when there are >= 2 cases and the fraction
    is > 0), drawn with ``split_seed``, are held out for validation and the rest train.
    """

    cache_dir: str = ""
    train_cases: list[str] | None = None
    val_cases: list[str] | None = None
    val_fraction: float = 0.2
    split_seed: int = 0
    fold: int | None = None  # cross-validation fold of CACHE/splits_final.json (organdetr split)
    batch_size: int = 2  # per process (per GPU)
    num_workers: int = 2  # DataLoader worker processes per process
    box_targets: BoxTargets = "labels"  # training boxes: label voxels, or exact from the original scan
    synthesis: str = "none"  # "appearance": new random intensities per sample from its labels (issue 24)
    synthesis_p: float = 0.8  # probability that a training sample is resynthesised

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.fold is not None and self.fold < 0:
            raise ValueError(f"data.fold must be >= 0, got {self.fold}")
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.synthesis not in ("none", "appearance"):
            raise ValueError(f"data.synthesis must be 'none' or 'appearance', got {self.synthesis!r}")
        if not 0.0 <= self.synthesis_p <= 1.0:
            raise ValueError(f"data.synthesis_p must be in [0, 1], got {self.synthesis_p}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a cosine / step / constant schedule (per optimizer step)."""

    lr: float = 2e-4
    backbone_lr_scale: float = 1.0  # lr of parameters under ``*.backbone.*`` = lr * this
    transformer_lr_scale: float = 1.0  # lr of parameters under ``*.transformer.*`` = lr * this (MaskMed)
    offset_lr_scale: float = 1.0  # lr of deformable attention's sampling offsets = lr * this (DDETR: 0.1)
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.1  # max global grad norm (DETR); 0 = off
    schedule: ScheduleKind = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of lr
    step_milestones: tuple[float, ...] = (0.67,)  # step schedule: fractions of the total steps
    step_gamma: float = 0.1
    ema: bool = False  # keep an exponential moving average of the weights (used for validation/export)
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        self.step_milestones = tuple(float(m) for m in self.step_milestones)
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        scales = (self.backbone_lr_scale, self.transformer_lr_scale, self.offset_lr_scale)
        if min(*scales, self.weight_decay, self.grad_clip) < 0:
            raise ValueError(
                "optim.backbone_lr_scale, transformer_lr_scale, offset_lr_scale, weight_decay and grad_clip "
                "must be >= 0"
            )
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"optim.ema_decay must be in (0, 1), got {self.ema_decay}")
        if any(not 0.0 < m < 1.0 for m in self.step_milestones):
            raise ValueError(f"optim.step_milestones must be fractions in (0, 1), got {self.step_milestones}")


@dataclass
class LoopConfig:
    """The training loop: length, validation and checkpoint cadence, precision, seeding, logging."""

    epochs: int = 100
    steps: int | None = None  # optimizer-step budget: ends training there, the lr schedule spans exactly it
    val_every: int = 1  # validate every N epochs (0 = never: no best/, load_detector uses last/)
    checkpoint_every: int = 1  # save the "last" checkpoint every N epochs (and always at the end)
    # auto = bf16 on a CUDA GPU that supports it; on a CPU with bf16 instructions bf16 only where the first
    # batch's step measures clearly faster (training.precision), else fp32. bf16 on a CPU: as asked
    amp: AmpMode = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    log_every: int = 10  # optimizer steps between CSV / TensorBoard rows
    max_detections: int = 1  # per class, for validation mAP
    best_metric: str = "mAP"  # validation metric that picks best/ (higher is better): mAP, Dice, cls_AUC, ...
    progress: bool = True  # progress bar (rank 0 only)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"train.steps must be >= 1 (or null: epochs decide), got {self.steps}")
        if self.val_every < 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("train.val_every must be >= 0; checkpoint_every and log_every >= 1")


@dataclass
class FinetuneConfig:
    """Start from another run's weights (``train --init-from RUN``) and freeze named parts for a while.

    ``init_from``: a run folder (its ``best/``, else ``last/``) or checkpoint folder whose tensors load where
    name and shape match (:mod:`organdetr.training.init_from`), or a plain weight file (``.safetensors``,
    ``.pt``, ``.pth``: a pretrained backbone) matched after stripping a common prefix
    (:mod:`organdetr.training.init_weights`); read at the start of a fresh run only (a
    resume continues from ``RUN/last``). ``freeze``: parts kept fixed for the first ``freeze_steps`` optimizer
    steps, by name component (``backbone``, ``encoder``, ``decoder``, or any module name in the weights).
    """

    init_from: str | None = None
    freeze: tuple[str, ...] = ()
    freeze_steps: int = 0

    def __post_init__(self) -> None:
        self.freeze = tuple(str(part) for part in self.freeze)
        if self.freeze_steps < 0:
            raise ValueError(f"finetune.freeze_steps must be >= 0, got {self.freeze_steps}")
        if bool(self.freeze_steps) != bool(self.freeze):
            raise ValueError(
                "finetune.freeze (the parts, e.g. [backbone]) and finetune.freeze_steps (> 0) go together"
            )


@dataclass
class TrainConfig:
    """Everything a training run needs; dumped as ``config.yaml`` into the run folder."""

    arch: str = "organdetr"  # organdetr | retinanet | seg2box | maskmed | mtmed3d
    model: ModelConfig = field(default_factory=ModelConfig)
    seg2box: Seg2BoxConfig = field(default_factory=Seg2BoxConfig)
    maskmed: MaskMedConfig = field(default_factory=MaskMedConfig)
    mtmed3d: MTMed3DConfig = field(default_factory=MTMed3DConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


PRESETS: tuple[str, ...] = (
    "tiny", "small", "demo", "paper", "detr", "seg2box", "maskmed", "maskmed_tiny",
    "mtmed3d", "mtmed3d_small", "mtmed3d_tiny",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# dict <-> dataclass with validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert ``value`` to the annotated type ``tp``; ``ValueError`` naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0] if errors else f"{key}: got {brief(value)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and ("on" if value else "off") in choices:
            value = "on" if value else "off"  # YAML 1.1 reads a bare off / on (train.amp=off) as a boolean
        if value not in choices:
            raise ValueError(f"{key}: {brief(value)} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: expected a list, got {brief(value)}")
        args = typing.get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(value) != len(args):
                raise ValueError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true/false, got {brief(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {brief(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: expected a number, got {brief(value)}")
        if not math.isfinite(value):
            raise ValueError(f"{key}: expected a finite number, got {brief(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}: expected a string, got {brief(value)}")
        return value
    if isinstance(tp, type) and is_dataclass(tp):
        return _build(tp, value, key)
    raise ValueError(f"{key}: unsupported field type {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys (missing keys keep defaults)."""
    section = prefix or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{section}: expected a mapping of keys, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in fields(cls) if f.init]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        path = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ValueError(f"unknown key '{path}'; allowed keys in {section}: {', '.join(allowed)}")
    kwargs = {
        name: _coerce(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{section}: {err}") from None


def config_from_dict(data: dict, *, path: str | Path | None = None) -> TrainConfig:
    """Validated ``TrainConfig`` from a plain dict; ``InputError(path, ...)`` on any bad key or value."""
    try:
        return _build(TrainConfig, data, "")
    except ValueError as err:
        raise InputError(path, str(err)) from None


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain-YAML-ready dict (tuples become lists)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [plain(v) for v in x]
        return x

    return plain(asdict(cfg))


RESOLVED_HEADER = "# organdetr: the resolved config of this run, written by organdetr train (edit a copy)\n"
"""First line of every config organdetr writes: a config.yaml without it is a user's file, never replaced."""


def dump_config(cfg: TrainConfig) -> str:
    """YAML text of ``cfg`` after :data:`RESOLVED_HEADER` (round-trips through :func:`load_config`)."""
    return RESOLVED_HEADER + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def written_by_organdetr(path: str | Path) -> bool:
    """Whether the config file ``path`` starts with :data:`RESOLVED_HEADER` (organdetr wrote it)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline() == RESOLVED_HEADER
    except OSError:
        return False


def apply_overrides(
    data: dict, overrides: list[str] | tuple[str, ...], *, path: str | Path | None = None
) -> dict:
    """Apply ``["a.b=c", ...]`` to the raw dict; values are YAML (``3``, ``1e-4``, ``[1,2]``, ``null``).

    Intermediate sections are created when missing; whether the key exists is checked by the later
    validation, so a typo reports the allowed keys there.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise InputError(path, f"--set expects KEY.PATH=VALUE, got {brief(item)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise InputError(path, f"--set {key}: cannot parse value {brief(raw)} ({err.problem})") from None
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise InputError(path, f"--set {key}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A YAML path as given, or the packaged preset of that name (``tiny``, ``small``, ``paper``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if str(name_or_path) in PRESETS:
        return Path(str(resources.files("organdetr") / "configs" / f"{name_or_path}.yaml"))
    raise InputError(path, f"no such config file and not a preset name (presets: {', '.join(PRESETS)})")


def read_config_dict(name_or_path: str | Path) -> tuple[dict, Path]:
    """Raw dict of a YAML config (or preset) and the file it came from."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot read config ({err})") from None
    except yaml.YAMLError as err:
        raise InputError(path, f"not valid YAML ({collapse(str(err))})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(path, "config must be a YAML mapping of sections (model:, data:, optim:, ...)")
    return data, path


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Load a YAML config or preset, apply ``--set`` overrides, validate. Raises ``InputError``."""
    data, path = read_config_dict(name_or_path)
    data = apply_overrides(data, overrides, path=path)
    return config_from_dict(data, path=path)


def replace_section(cfg: TrainConfig, section: str, **changes: Any) -> TrainConfig:
    """Copy of ``cfg`` with fields of one section changed (validated by the section's dataclass)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


__all__ = [
    "PRESETS",
    "RESOLVED_HEADER",
    "AmpMode",
    "DataConfig",
    "FinetuneConfig",
    "LoopConfig",
    "OptimConfig",
    "ScheduleKind",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "read_config_dict",
    "replace_section",
    "resolve_config_path",
    "written_by_organdetr",
]
