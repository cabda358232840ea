"""``train --init-from WEIGHTS``: start from a plain weight file of a backbone (a pretrained MedNeXt, Primus,
ResEnc... outside this toolkit), names matched after stripping a common prefix.

The file is a safetensors file or a torch state dict (``.pt`` / ``.pth`` / ``.bin``, read with
``torch.load(weights_only=True)``: nothing is unpickled beyond tensors and containers; a dict holding the
state dict under ``state_dict`` / ``model`` / ``network_weights`` (nnU-Net's checkpoints) is unwrapped).
:func:`match_prefixes` finds the source prefix ``P`` (e.g. ``module.`` or ``encoder.``) and the model
prefix ``Q`` (e.g. ``network.backbone.``) for which the most tensors ``P + rest`` of the file have a model
tensor ``Q + rest`` of the same shape; those load, the rest of the model keeps its initialisation.
:func:`organdetr.training.init_from.init_from_weights` loads them and reports as for a run, so the table and
``init_from.json`` are the run-to-run ones.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from organdetr.runtime.errors import InputError

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model", "network_weights", "model_state_dict")


def is_weight_file(path: str | Path) -> bool:
    """``--init-from`` names a plain weight file (not a run or checkpoint folder)."""
    return Path(path).suffix.lower() in WEIGHT_SUFFIXES and not Path(path).is_dir()


def read_weight_file(path: Path) -> dict[str, Tensor]:
    """The tensors of ``path`` by name; :class:`InputError` for an unreadable file or one without tensors."""
    if not path.is_file():
        raise InputError(path, "no such weight file")
    try:
        if path.suffix.lower() == ".safetensors":
            raw: object = load_file(str(path), device="cpu")
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (
        SafetensorError,
        OSError,
        RuntimeError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        EOFError,
    ) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(path, f"not a readable weight file ({first})") from None
    for key in _WRAPPER_KEYS:
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    tensors = {str(k): v for k, v in raw.items() if isinstance(v, Tensor)} if isinstance(raw, dict) else {}
    if not tensors:
        raise InputError(path, "holds no named tensors (a state dict was expected)")
    return tensors


def _prefixes(names: list[str], limit: int) -> set[str]:
    """``""`` and every dotted prefix (``"a."``, ``"a.b."``) up to ``limit`` components of ``names``."""
    out = {""}
    for name in names:
        parts = name.split(".")[:-1]
        out.update(".".join(parts[:i]) + "." for i in range(1, min(limit, len(parts)) + 1))
    return out


def match_prefixes(model: dict[str, Tensor], source: dict[str, Tensor]) -> tuple[str, str, dict[str, str]]:
    """``(P, Q, {model name: source name})`` for the source prefix ``P`` and model prefix ``Q`` that match
    the most tensors by ``P + rest -> Q + rest`` with equal shapes (ties: the shortest prefixes)."""
    best: tuple[int, int, str, str, dict[str, str]] = (0, 0, "", "", {})
    for p in sorted(_prefixes(list(source), 2)):
        stripped = {name[len(p) :]: name for name in source if name.startswith(p)}
        for q in sorted(_prefixes(list(model), 4)):
            pairs = {
                q + rest: name
                for rest, name in stripped.items()
                if q + rest in model and tuple(model[q + rest].shape) == tuple(source[name].shape)
            }
            key = (len(pairs), -len(p) - len(q))
            if key > best[:2]:
                best = (*key, p, q, pairs)
    return best[2], best[3], best[4]


def matched_weights(
    model: dict[str, Tensor], path: Path
) -> tuple[str, str, dict[str, Tensor], dict[str, Tensor]]:
    """``(source prefix, model prefix, {model name: tensor to load}, {source name: tensor left unused})``
    for the weight file ``path`` and the model's state dict ``model`` (:func:`match_prefixes`)."""
    source = read_weight_file(path)
    source_prefix, model_prefix, pairs = match_prefixes(model, source)
    loaded = {name: source[origin] for name, origin in pairs.items()}
    used = set(pairs.values())
    return source_prefix, model_prefix, loaded, {k: v for k, v in source.items() if k not in used}


__all__ = ["WEIGHT_SUFFIXES", "is_weight_file", "match_prefixes", "matched_weights", "read_weight_file"]
