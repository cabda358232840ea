"""The label maps that from-label synthesis starts from, and their class names mapped onto the model's organs.

A :class:`LabelSource` is one multi-label map in canonical LPS (``(i, j, k)`` array, identity direction) with
its id -> structure name table. Sources are read from files (:func:`read_label_source`: a NIfTI with
TotalSegmentator's ``<CaretExtension>`` table, a map beside an nnU-Net ``dataset.json``, else the 117-class
TotalSegmentator ``total`` map) or drawn from the procedural phantom (:func:`phantom_label_source`: its
organs plus its unlabelled tissues as ``tissue_<name>`` structures).

Class mapping (:func:`map_classes`): a structure whose name (or alias, :data:`ALIASES`) is one of the
model's organs (:data:`TARGET_CLASSES`, the demo's ten organs with TotalSegmentator ids) becomes that organ's
label; any other *known* structure (a name of one of organdetr's official class lists, ``datasets/labels``,
or a phantom tissue) stays as labelled background, which the synthesis paints with its own random
intensity; an unknown name is refused in one line (:class:`UnknownStructureError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume, reorient_to_lps
from organdetr.datasets.labels import CLASS_MAP_NAMES, load_class_map
from organdetr.datasets.nnunet import parse_labels, read_dataset_json
from organdetr.datasets.synthetic.phantom import PHANTOM_CLASSES, PhantomConfig, phantom_maps
from organdetr.datasets.synthetic.tissues import Tissue
from organdetr.io.images import read_label_map, read_label_table
from organdetr.runtime.atomic import visible_files
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief

TARGET_CLASSES: dict[int, str] = dict(PHANTOM_CLASSES)
"""The model's organs: label id (TotalSegmentator ``total`` ids) -> name; synthesised labels use these ids."""

ALIASES = {"bladder": "urinary_bladder", "postcava": "inferior_vena_cava", "ivc": "inferior_vena_cava"}
"""Other datasets' names of the model's organs (AMOS / WORD ``bladder``, ...)."""

AMBIGUOUS = {
    "kidney": "both kidneys in one label (AbdomenCT-1K); the model tells kidney_left from kidney_right"
}
"""Known names that cannot be mapped onto one organ: refused like unknown ones, with the reason."""

TISSUE_PREFIX = "tissue_"
PHANTOM_TISSUE_OFFSET = 100
"""Phantom tissue ``t`` (:class:`Tissue`, air excepted) is structure id ``100 + t`` of a phantom source."""


class UnknownStructureError(InputError):
    """A label map names a structure that no known class list has (or one that maps onto no single organ)."""


@cache
def known_structure_names() -> frozenset[str]:
    """Every name of organdetr's official class lists, the aliases and the phantom's tissues."""
    names = {name for dataset in CLASS_MAP_NAMES for name in load_class_map(dataset).values()}
    names |= set(ALIASES) | {TISSUE_PREFIX + t.name.lower() for t in Tissue}
    return frozenset(names)


@dataclass(frozen=True)
class ClassMapping:
    """Where each source structure goes: ``target`` source id -> model organ id (0 = labelled background)."""

    target: dict[int, int]
    target_classes: dict[int, str]

    def lookup(self, max_id: int) -> np.ndarray:
        """``[max_id + 1]`` array: source id -> model organ id (0 for background structures and gaps)."""
        table = np.zeros(max_id + 1, dtype=np.uint8)
        for source_id, organ_id in self.target.items():
            if source_id <= max_id:
                table[source_id] = organ_id
        return table


def map_classes(
    classes: dict[int, str], path: str | Path | None = None, target_classes: dict[int, str] | None = None
) -> ClassMapping:
    """Map a source's ``classes`` (id -> structure name) onto ``target_classes`` (default
    :data:`TARGET_CLASSES`) by name; :class:`UnknownStructureError` naming ``path`` for the first unknown or
    ambiguous name."""
    target_classes = dict(TARGET_CLASSES if target_classes is None else target_classes)
    by_name = {name: organ_id for organ_id, name in target_classes.items()}
    known = known_structure_names() | set(by_name)
    target: dict[int, int] = {}
    for source_id, name in sorted(classes.items()):
        if name in AMBIGUOUS:
            raise UnknownStructureError(path, f"label {source_id} {brief(name)}: {AMBIGUOUS[name]}")
        if name not in known:
            raise UnknownStructureError(
                path,
                f"label {source_id} names an unknown structure {brief(name)} (in none of organdetr's "
                "class lists, datasets/labels/*.json); rename it to a known name",
            )
        target[int(source_id)] = by_name.get(ALIASES.get(name, name), 0)
    return ClassMapping(target, target_classes)


@dataclass(eq=False)
class LabelSource:
    """One source label map: ``labels`` integer ``[I, J, K]`` canonical LPS, ``geometry`` (identity direction,
    mm), ``classes`` id -> structure name for every id present. ``body_from_labels``: label 0 is both the air
    around the patient and the unlabelled tissue inside (a TotalSegmentator map), so the synthesis splits it
    into outside / inside the body; False when the map labels its own body tissues (the phantom)."""

    name: str
    labels: np.ndarray
    geometry: Geometry
    classes: dict[int, str]
    body_from_labels: bool = True
    path: Path | None = None
    mapping: ClassMapping = field(init=False)
    _distance: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        present = [int(i) for i in np.unique(self.labels) if i != 0]
        missing = [i for i in present if i not in self.classes]
        if missing:
            raise InputError(
                self.path, f"label ids {missing[:8]} have no name in the label map's class table"
            )
        if not present:
            raise InputError(self.path, "label map is empty (no labelled structure)")
        self.classes = {i: self.classes[i] for i in present}
        self.mapping = map_classes(self.classes, self.path)

    def distance_to_labels_mm(self) -> np.ndarray:
        """float32 ``[I, J, K]``: distance (mm) of every voxel to the nearest labelled one (computed once)."""
        if self._distance is None:
            self._distance = ndimage.distance_transform_edt(
                self.labels == 0, sampling=self.geometry.spacing
            ).astype(np.float32)
        return self._distance.copy()

    @classmethod
    def from_volume(cls, name: str, volume: Volume, classes: dict[int, str], **kwargs) -> LabelSource:
        """A source from a label ``volume`` in any orientation (reoriented to LPS, exactly)."""
        canonical = reorient_to_lps(volume)
        return cls(name, np.ascontiguousarray(canonical.array), canonical.geometry, classes, **kwargs)


def class_table(path: Path) -> dict[int, str]:
    """The id -> name table of the label map ``path``: its TotalSegmentator header table, else the
    ``dataset.json`` of its nnU-Net dataset (``labelsTr/..`` or beside it), else TotalSegmentator's
    117-class ``total`` map."""
    table = read_label_table(path)
    if table:
        return table
    for root in (path.parent.parent, path.parent):
        if (root / "dataset.json").is_file():
            return parse_labels(root / "dataset.json", read_dataset_json(root).get("labels"))
    return load_class_map("totalsegmentator")


def read_label_source(path: str | Path) -> LabelSource:
    """Read one label map file as a :class:`LabelSource` (class names: :func:`class_table`)."""
    path = Path(path)
    volume = read_label_map(path)
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    return LabelSource.from_volume(name, volume, class_table(path), path=path)


def label_map_files(paths: list[Path]) -> list[Path]:
    """The label map files named by ``paths``: a file as given, a folder (an nnU-Net ``labelsTr``) as its
    ``*.nii.gz`` / ``*.nii`` files in name order; InputError for a missing path or a folder without any."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in visible_files(path) if p.name.endswith((".nii.gz", ".nii")))
            if not found:
                raise InputError(path, "folder holds no label maps (*.nii.gz)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "label map not found")
    return files


def phantom_label_source(seed: int, cfg: PhantomConfig | None = None) -> LabelSource:
    """The procedural phantom of ``seed`` as a source: its ten organs (their own ids) and every unlabelled
    tissue as structure ``100 + tissue`` named ``tissue_<name>`` (air is label 0, outside the body)."""
    tissue, labels, geometry = phantom_maps(seed, cfg)
    merged = np.where(
        labels > 0, labels, np.where(tissue > 0, tissue.astype(np.uint8) + PHANTOM_TISSUE_OFFSET, 0)
    ).astype(np.uint8)
    classes = dict(PHANTOM_CLASSES)
    classes |= {PHANTOM_TISSUE_OFFSET + int(t): TISSUE_PREFIX + t.name.lower() for t in Tissue if t}
    return LabelSource(f"phantom_seed{seed}", merged, geometry, classes, body_from_labels=False)


__all__ = [
    "ALIASES",
    "TARGET_CLASSES",
    "ClassMapping",
    "LabelSource",
    "UnknownStructureError",
    "class_table",
    "known_structure_names",
    "label_map_files",
    "map_classes",
    "phantom_label_source",
    "read_label_source",
]
