"""The package's layout as a contract: layers import only downward, no import circles, small modules.

``LAYERS`` is the one written order of the layers (docs/architecture.md explains each): a module may import
modules of its own layer or of lower ones, never of a higher one. Inside ``models`` the same rule holds
between ``MODEL_TIERS``, and one architecture package never imports another. Internal imports sit at module
level, except in ``cli/`` (start-up time), so that the import graph read here is the real one. Modules stay
under ``MAX_MODULE_LINES`` and functions outside ``cli/`` under ``MAX_FUNCTION_LINES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "organdetr"

# bottom -> top; the package root (organdetr/__init__.py: __version__ only) sits below everything
LAYERS: tuple[str, ...] = (
    "runtime",  # errors, atomic writes, locks, output checks, process pools, devices, text
    "core",  # geometry, volumes and resampling, box maths, colours: conventions as code
    "io",  # reading scans (files, DICOM series), header checks, input discovery
    "datasets",  # public datasets and importers -> nnU-Net raw; synthetic phantoms
    "preprocessing",  # plans, intensity, resampling, the verified cache
    "data",  # cache dataset and augmentation for training
    "evaluation",  # detection, segmentation and classification metrics and reports
    "formats",  # prediction writers: DICOM SEG / SR, Slicer, MONAI, nnDetection, HTML viewer
    "models",  # shared blocks and one package per architecture
    "training",  # config, loop, validation, fit, checkpoints, DDP
    "inference",  # predictor, prediction runs, DICOMweb workflow, ONNX export, pictures
    "experiments",  # demo, ablation suites, profiling
    "cli",  # one module per verb
)
# inside models: shared blocks < shared model modules < architecture packages < the registry (+ __init__)
ARCHITECTURE_TIER, REGISTRY_TIER = 2, 3
MODEL_TIERS: dict[str, int] = {
    "blocks": 0,
    "config": 1,
    "losses": 1,
    "protocols": 1,
    "segmentation_detector": 1,
    "registry": REGISTRY_TIER,
}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 460, 80


def module_name(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """Package modules that ``node`` (in ``module``) imports; ``from a import b`` counts module ``a.b``."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = module.split(".") if is_package else module.split(".")[:-1]
        if node.level:
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != module:
            found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, bool]]:
    """``{module: {imported module: imported inside a function}}`` for every module under ``root``."""
    files = {module_name(path, root): path for path in root.rglob("*.py")}
    known = set(files)
    graph: dict[str, dict[str, bool]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {
            id(node)
            for func in ast.walk(tree)
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(func)
        }
        edges: dict[str, bool] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _resolve(module, path.name == "__init__.py", node, known):
                    edges[target] = edges.get(target, True) and id(node) in nested
        graph[module] = edges
    return graph


def layer_rank(module: str) -> tuple[int, int]:
    """``(layer index, tier inside models)`` of a module; the package root ranks below every layer."""
    parts = module.split(".")[1:]
    if not parts:
        return (-1, 0)
    if parts[0] not in LAYERS:
        raise AssertionError(f"{module}: not in a layer; add its folder to LAYERS and docs/architecture.md")
    tier = 0
    if parts[0] == "models":
        tier = REGISTRY_TIER if len(parts) == 1 else MODEL_TIERS.get(parts[1], ARCHITECTURE_TIER)
    return (LAYERS.index(parts[0]), tier)


def _architecture(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] == "models" and layer_rank(module)[1] == ARCHITECTURE_TIER:
        return parts[2]
    return None


def _drops_reexports(graph: dict[str, dict[str, bool]]) -> dict[str, set[str]]:
    """Edges without a package ``__init__``'s imports of its own children (re-exports are not circles)."""
    return {m: {t for t in edges if not t.startswith(m + ".")} for m, edges in graph.items()}


def upward_imports(graph: dict[str, dict[str, bool]]) -> list[str]:
    """Every import of a higher layer (or tier), and every import between two architecture packages."""
    bad = []
    for module, targets in _drops_reexports(graph).items():
        for target in targets:
            if layer_rank(target) > layer_rank(module):
                bad.append(f"{module} imports the higher {target}")
            elif None is not _architecture(module) != _architecture(target) is not None:
                bad.append(f"{module} imports another architecture's {target}")
    return sorted(bad)


def import_cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    edges = _drops_reexports(graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return cycles


def test_layers_import_only_downward():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert import_cycles(import_graph()) == []


def test_internal_imports_at_module_level_outside_cli():
    nested = [
        f"{module} imports {target} inside a function"
        for module, edges in import_graph().items()
        if not module.startswith("organdetr.cli")
        for target, inside in edges.items()
        if inside
    ]
    assert nested == []


def test_modules_and_functions_stay_small():
    too_big = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        module = module_name(path)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{module}: {len(text.splitlines())} lines")
        if module.startswith("organdetr.cli"):
            continue  # option declarations
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_big.append(f"{module}.{node.name}: {length} lines")
    assert too_big == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "organdetr" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "organdetr"


@pytest.mark.parametrize("inside_function", [False, True])
def test_checks_find_an_upward_import_and_a_cycle(tmp_path, inside_function):
    indent = "def f():\n    " if inside_function else ""
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/a.py": f"{indent}from organdetr.training.b import x\n",
            "training/__init__.py": "",
            "training/b.py": "from organdetr.core import a\n",
            "models/__init__.py": "",
            "models/maskmed/net.py": "from organdetr.models.organdetr.net import y\n",
            "models/organdetr/net.py": "from organdetr.models.blocks import z\n",
            "models/blocks.py": "",
        },
    )
    graph = import_graph(root)
    assert graph["organdetr.core.a"] == {"organdetr.training.b": inside_function}
    assert upward_imports(graph) == [
        "organdetr.core.a imports the higher organdetr.training.b",
        "organdetr.models.maskmed.net imports another architecture's organdetr.models.organdetr.net",
    ]
    assert import_cycles(graph) == [["organdetr.core.a", "organdetr.training.b"]]


def test_package_reexports_are_not_cycles(tmp_path):
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "io/__init__.py": "from organdetr.io.images import read\n",
            "io/images.py": "from organdetr.io.headers import check\n",
            "io/headers.py": "",
        },
    )
    graph = import_graph(root)
    assert import_cycles(graph) == [] and upward_imports(graph) == []
