"""Primus under test where torchvision is missing: a stand-in for the import only.

Primus (``dynamic_network_architectures.architectures.primus``) imports timm's rotary embedding, and importing
timm imports torchvision (``torchvision.ops.misc.FrozenBatchNorm2d``, ``torchvision.transforms``) though
Primus never calls it. The CPU wheel index this project's test command uses has no torchvision for its CPU
torch, so without this every Primus case would skip. :func:`enable_primus` imports Primus once with empty
stand-in ``torchvision`` modules (an import finder) and removes them again right after (nothing else ever sees
a torchvision), then points organdetr's Primus module at the class. Where a real torchvision imports, or timm
/ einops / dynamic-network-architectures are absent, it changes nothing.

As a launcher, for benchmarks of Primus in one process (BENCHMARKS.md issue 25)::

    PYTHONPATH=src:benchmarks python tests/_torchvision_standin.py benchmarks/bench_convergence.py --runs ...
"""

from __future__ import annotations

import enum
import importlib
import importlib.abc
import importlib.util
import sys
import types


class _Placeholder:
    """What any name imported from the stand-in is: a class that refuses to be used."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision stand-in: not available (imported for timm's module level only)")


_INTERPOLATION = enum.Enum("InterpolationMode", {name: name.lower() for name in (
    "NEAREST", "NEAREST_EXACT", "BILINEAR", "BICUBIC", "BOX", "HAMMING", "LANCZOS")})  # fmt: skip


class _StandinFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``torchvision`` and every ``torchvision.*`` as an empty package whose every attribute is a
    :class:`_Placeholder` (timm's module level does ``from torchvision.x import Name``; only
    ``transforms.InterpolationMode``'s members are read, so it is an enum)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: _Placeholder if not attr.startswith("__") else _missing(attr)
        if spec.name == "torchvision":
            module.__version__ = "0.0+standin"
        if spec.name.startswith("torchvision.transforms"):  # timm maps its members at module level
            module.InterpolationMode = _INTERPOLATION
        return module

    def exec_module(self, module):
        return None


def _missing(attr: str):
    raise AttributeError(attr)


def enable_primus() -> bool:
    """True when Primus builds in this process (with the stand-in where torchvision alone was missing)."""
    from organdetr.models.blocks import backbones
    from organdetr.models.blocks.backbones import primus

    if primus.AVAILABLE:
        return True
    try:
        importlib.import_module("torchvision")
        return False  # a real torchvision that imports: Primus is missing for another reason
    except ImportError:
        pass
    finder = _StandinFinder()
    sys.meta_path.insert(0, finder)
    try:
        cls = importlib.import_module("dynamic_network_architectures.architectures.primus").Primus
    except ImportError:
        return False
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
    primus.Primus, primus.AVAILABLE, backbones.PRIMUS_AVAILABLE = cls, True, True
    return True


if __name__ == "__main__":  # python tests/_torchvision_standin.py SCRIPT ARGS: SCRIPT with Primus enabled
    import runpy

    if len(sys.argv) < 2:
        raise SystemExit("usage: python tests/_torchvision_standin.py SCRIPT [ARGS...]")
    print(f"Primus available: {enable_primus()} (a torchvision stand-in where it is missing)", flush=True)
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
