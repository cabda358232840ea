"""nnU-Net v2 raw dataset format: read (:func:`load_dataset`) and write (:func:`write_dataset_json`).

Layout (see docs/conventions.md)::

    DatasetXXX_Name/
      dataset.json   {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, ...},
                      "numTraining": N, "file_ending": ".nii.gz", ...}
      imagesTr/<case>_0000<ending>  labelsTr/<case><ending>
      imagesTs/<case>_0000<ending>  labelsTs/<case><ending>   (optional)

Case ids are taken from ``imagesTr/<case>_0000<ending>`` (nnU-Net v2 convention) unless dataset.json
lists them explicitly under ``"dataset"``. Several ``channel_names`` (e.g. BraTS' ``{"0": "T1", "1":
"T1ce", "2": "T2", "3": "FLAIR"}``) mean one file per channel, ``<case>_0000`` .. ``<case>_000{C-1}``, all
on one grid.

Two optional dataset properties (organdetr's, kept as data beside the nnU-Net keys):

* ``"regions"``: region-based segmentation labels, region name -> the label ids it unites (BraTS 2018-2021
  after conversion: ``{"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}``); training of segmenting models and the
  segmentation metrics use them. nnU-Net's own spelling (lists inside ``"labels"``) is rejected with a
  pointer to this key, so that every label id keeps one class name.
* ``"case_classes"``: case-level class names -> index (``{"LGG": 0, "HGG": 1}``), with the label of each case
  in ``case_labels.json`` beside dataset.json (``{case_id: class name}``; a case left out has no label).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from organdetr.runtime.atomic import write_json
from organdetr.runtime.errors import InputError
from organdetr.runtime.json_files import read_json
from organdetr.runtime.text import brief

CHANNEL = "_0000"
CASE_LABELS_FILE = "case_labels.json"


@dataclass(frozen=True)
class NnUNetCase:
    """One case: its id, channel-0 image file and label file (``None`` for unlabelled test cases).

    ``channels``: every channel's image file in channel order (``channels[0] == image``); empty for a
    single-channel dataset (then ``image`` is the only one). ``case_label``: its case-level class name.
    """

    case_id: str
    image: Path
    label: Path | None
    channels: tuple[Path, ...] = ()
    case_label: str | None = None

    @property
    def images(self) -> tuple[Path, ...]:
        """The image file of every channel, in channel order."""
        return self.channels or (self.image,)


@dataclass
class NnUNetDataset:
    """A validated nnU-Net v2 raw dataset.

    ``classes``: label id (>= 1) -> class name, sorted by id (background excluded).
    ``cases``: the training cases (imagesTr + labelsTr); ``test_cases``: imagesTs (+ labelsTs if present).
    """

    root: Path
    name: str
    classes: dict[int, str]
    file_ending: str
    cases: list[NnUNetCase]
    test_cases: list[NnUNetCase] = field(default_factory=list)
    channel_names: dict[str, str] = field(default_factory=lambda: {"0": "CT"})
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    case_classes: list[str] = field(default_factory=list)

    @property
    def channels(self) -> list[str]:
        """Channel names in channel order (``channel_names`` sorted by index)."""
        return [self.channel_names[k] for k in sorted(self.channel_names, key=int)]


def image_path(
    root: str | Path, case_id: str, split: str = "Tr", file_ending: str = ".nii.gz", channel: int = 0
) -> Path:
    """``root/images<split>/<case_id>_<channel:04d><file_ending>`` (``split`` is ``"Tr"`` or ``"Ts"``)."""
    return Path(root) / f"images{split}" / f"{case_id}_{channel:04d}{file_ending}"


def label_path(root: str | Path, case_id: str, split: str = "Tr", file_ending: str = ".nii.gz") -> Path:
    """``root/labels<split>/<case_id><file_ending>``."""
    return Path(root) / f"labels{split}" / f"{case_id}{file_ending}"


def write_dataset_json(
    root: str | Path,
    classes: dict[int, str],
    num_training: int,
    *,
    name: str,
    file_ending: str = ".nii.gz",
    channel_names: dict[str, str] | None = None,
    **extra: Any,
) -> Path:
    """Write ``root/dataset.json`` atomically (the one writer of this file); returns its path.

    ``classes``: label id (>= 1) -> unique name; written as nnU-Net's ``{"background": 0, name: id}``
    in id order. ``extra`` keys (e.g. ``source``, ``class_source``) are stored as given.
    """
    root = Path(root)
    path = root / "dataset.json"
    _check_classes(path, classes)
    if not file_ending.startswith("."):
        raise InputError(path, f"file_ending must start with '.', got {brief(file_ending)}")
    labels = {"background": 0} | {classes[i]: int(i) for i in sorted(classes)}
    content = {
        "name": name,
        "channel_names": dict(channel_names or {"0": "CT"}),
        "labels": labels,
        "numTraining": int(num_training),
        "file_ending": file_ending,
        **extra,
    }
    write_json(path, content)
    return path


def write_case_labels(root: str | Path, labels: dict[str, str]) -> Path:
    """Write ``root/case_labels.json`` (``{case_id: case-level class name}``, sorted) atomically."""
    path = Path(root) / CASE_LABELS_FILE
    write_json(path, {k: labels[k] for k in sorted(labels)})
    return path


def parse_regions(path: Path, regions: Any, classes: dict[int, str]) -> dict[str, tuple[int, ...]]:
    """dataset.json ``"regions"`` (name -> label ids) validated against the class map."""
    if not isinstance(regions, dict) or not regions:
        raise InputError(path, "'regions' must map a region name to a non-empty list of label ids")
    out: dict[str, tuple[int, ...]] = {}
    for name, ids in regions.items():
        if not isinstance(ids, list | tuple) or not ids:
            raise InputError(path, f"region {brief(name)} must list label ids, got {brief(ids)}")
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise InputError(path, f"region {brief(name)} has non-integer label ids {brief(ids)}")
        unknown = sorted(set(ids) - set(classes))
        if unknown:
            raise InputError(
                path, f"region {brief(name)} names label ids {unknown} that 'labels' does not have"
            )
        if len(set(ids)) != len(ids):
            raise InputError(path, f"region {brief(name)} repeats a label id: {brief(ids)}")
        out[str(name)] = tuple(sorted(int(i) for i in ids))
    if len(set(out.values())) != len(out):
        raise InputError(path, "two regions unite the same label ids")
    return out


def parse_case_classes(path: Path, case_classes: Any) -> list[str]:
    """dataset.json ``"case_classes"`` (name -> index 0..C-1) -> names in index order."""
    if not isinstance(case_classes, dict) or len(case_classes) < 2:
        raise InputError(path, "'case_classes' must map at least two class names to indices 0..C-1")
    indices = sorted(case_classes.values(), key=lambda v: (not isinstance(v, int), v))
    if any(isinstance(v, bool) or not isinstance(v, int) for v in indices) or indices != list(
        range(len(case_classes))
    ):
        raise InputError(path, f"'case_classes' indices must be 0..{len(case_classes) - 1}, got {indices}")
    return [name for name, _ in sorted(case_classes.items(), key=lambda kv: kv[1])]


def read_case_labels(root: Path, case_classes: list[str], case_ids: list[str]) -> dict[str, str]:
    """``root/case_labels.json`` checked against ``case_classes``; cases not in ``case_ids`` are errors."""
    path = root / CASE_LABELS_FILE
    content = _read_json_object(
        path,
        missing="dataset.json declares 'case_classes' but this file is missing",
        not_object="expected a JSON object {case_id: class name}",
    )
    known = set(case_ids)
    for case_id, name in content.items():
        if case_id not in known:
            raise InputError(path, f"case {brief(case_id)} is not a case of the dataset")
        if name not in case_classes:
            raise InputError(
                path, f"case {brief(case_id)} has class {brief(name)}, not one of {case_classes}"
            )
    return {str(k): str(v) for k, v in content.items()}


def _check_classes(path: Path, classes: dict[int, str]) -> None:
    names = list(classes.values())
    if any(int(i) < 1 for i in classes):
        raise InputError(path, "label ids must be >= 1 (0 is background)")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(path, f"class names must be unique; repeated: {', '.join(duplicates)}")
    if "background" in names:
        raise InputError(path, "'background' is reserved for label 0")


def read_dataset_json(root: str | Path) -> dict:
    """Parse ``root/dataset.json``; InputError if missing or not a JSON object."""
    return _read_json_object(
        Path(root) / "dataset.json",
        missing="dataset.json not found (is this an nnU-Net v2 raw dataset folder?)",
        not_object="expected a JSON object at the top level",
    )


def _read_json_object(path: Path, *, missing: str, not_object: str) -> dict:
    """The JSON object in ``path``; InputError(``missing``) if absent, (``not_object``) if not an object."""
    if not path.is_file():
        raise InputError(path, missing)
    return read_json(path, "not valid JSON", not_object=not_object)


def parse_labels(path: Path, labels: Any) -> dict[int, str]:
    """nnU-Net ``"labels"`` (name -> id) -> class map id -> name (background dropped), validated."""
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, "'labels' must be a non-empty object mapping class name -> label id")
    classes: dict[int, str] = {}
    seen: dict[int, str] = {}
    for name, value in labels.items():
        if isinstance(value, list | tuple):
            raise InputError(
                path,
                f"region-based label {brief(name)}: {list(value)} is not supported; give one "
                f"integer id per class "
                'and declare regions under "regions": {name: [label ids]}',
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InputError(
                path, f"label {brief(name)} has id {brief(value)}; expected a non-negative integer"
            )
        if value in seen:
            raise InputError(path, f"label id {value} is used twice ({brief(seen[value])} and {brief(name)})")
        seen[value] = name
        if value != 0:
            classes[value] = name
    if labels.get("background") != 0:
        raise InputError(path, "'labels' must contain \"background\": 0")
    return dict(sorted(classes.items()))


def load_dataset(root: str | Path) -> NnUNetDataset:
    """Read and validate an nnU-Net v2 raw dataset folder.

    Checks: dataset.json present and well formed (``labels``, ``file_ending``, ``numTraining``,
    ``channel_names``); every training case has its image and label; ``numTraining`` equals the number
    of cases found. Raises :class:`InputError` naming the offending file.
    """
    root = Path(root)
    json_path = root / "dataset.json"
    content = read_dataset_json(root)
    for key in ("labels", "file_ending", "numTraining"):
        if key not in content:
            raise InputError(json_path, f"missing required key {brief(key)}")
    classes = parse_labels(json_path, content["labels"])
    file_ending = content["file_ending"]
    if not isinstance(file_ending, str) or not file_ending.startswith("."):
        raise InputError(
            json_path, f"'file_ending' must be a string starting with '.', got {brief(file_ending)}"
        )
    num_training = content["numTraining"]
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 0:
        raise InputError(
            json_path, f"'numTraining' must be a non-negative integer, got {brief(num_training)}"
        )
    channel_names = content.get("channel_names", content.get("modality", {"0": "CT"}))
    if not isinstance(channel_names, dict) or "0" not in channel_names:
        raise InputError(json_path, "'channel_names' must be an object with channel \"0\"")
    if sorted(channel_names, key=str) != sorted(str(i) for i in range(len(channel_names))):
        raise InputError(json_path, f"'channel_names' keys must be 0..{len(channel_names) - 1}")
    num_channels = len(channel_names)
    regions = parse_regions(json_path, content["regions"], classes) if "regions" in content else {}
    case_classes = parse_case_classes(json_path, content["case_classes"]) if "case_classes" in content else []

    if "dataset" in content:
        cases = _explicit_cases(root, json_path, content["dataset"], num_channels)
    else:
        cases = _discover_cases(root, "Tr", file_ending, require_labels=True, num_channels=num_channels)
    if len(cases) != num_training:
        raise InputError(
            json_path, f"numTraining is {num_training} but {len(cases)} training cases were found in {root}"
        )
    if not cases:
        raise InputError(json_path, "the dataset has no training cases")
    test_cases = _discover_cases(root, "Ts", file_ending, require_labels=False, num_channels=num_channels)
    if case_classes:
        all_ids = [c.case_id for c in cases + test_cases]
        labels = read_case_labels(root, case_classes, all_ids)
        cases = [replace(c, case_label=labels.get(c.case_id)) for c in cases]
        test_cases = [replace(c, case_label=labels.get(c.case_id)) for c in test_cases]
    return NnUNetDataset(
        root=root,
        name=str(content.get("name", root.name)),
        classes=classes,
        file_ending=file_ending,
        cases=cases,
        test_cases=test_cases,
        channel_names={str(k): str(v) for k, v in channel_names.items()},
        regions=regions,
        case_classes=case_classes,
    )


def _discover_cases(
    root: Path, split: str, file_ending: str, *, require_labels: bool, num_channels: int = 1
) -> list[NnUNetCase]:
    """Cases of ``images<split>/<case>_0000<ending>``; labels from ``labels<split>/<case><ending>``;
    with several channels every ``<case>_000c<ending>`` must exist."""
    image_dir = root / f"images{split}"
    if not image_dir.is_dir():
        if require_labels:
            raise InputError(image_dir, "folder not found (nnU-Net v2 needs imagesTr/)")
        return []
    suffix = f"{CHANNEL}{file_ending}"
    cases = []
    for image in sorted(image_dir.iterdir()):
        if not image.name.endswith(suffix) or image.name.startswith("."):
            continue
        case_id = image.name[: -len(suffix)]
        label = label_path(root, case_id, split, file_ending)
        if not label.is_file():
            if require_labels:
                raise InputError(label, f"label file of case {brief(case_id)} is missing")
            label = None
        channels = _channel_files(root, case_id, split, file_ending, num_channels)
        cases.append(NnUNetCase(case_id, image, label, channels))
    return cases


def _channel_files(
    root: Path, case_id: str, split: str, file_ending: str, num_channels: int
) -> tuple[Path, ...]:
    """Every channel file of a multi-channel case (``()`` for one channel); InputError for a missing one."""
    if num_channels == 1:
        return ()
    files = tuple(image_path(root, case_id, split, file_ending, c) for c in range(num_channels))
    for channel, path in enumerate(files):
        if not path.is_file():
            raise InputError(path, f"channel {channel} of case {brief(case_id)} is missing")
    return files


def _explicit_cases(root: Path, json_path: Path, listing: Any, num_channels: int = 1) -> list[NnUNetCase]:
    """nnU-Net v2's optional ``"dataset": {case_id: {"images": [...], "label": ...}}`` listing."""
    if not isinstance(listing, dict):
        raise InputError(json_path, "'dataset' must map case id -> {'images': [...], 'label': ...}")
    cases = []
    for case_id, entry in sorted(listing.items()):
        try:
            image = root / entry["images"][0]
            label = root / entry["label"]
        except (KeyError, IndexError, TypeError):
            raise InputError(
                json_path, f"case {brief(case_id)}: expected 'images' (list) and 'label'"
            ) from None
        for path, what in ((image, "image"), (label, "label")):
            if not path.is_file():
                raise InputError(path, f"{what} of case {brief(case_id)} named in dataset.json is missing")
        channels: tuple[Path, ...] = ()
        if num_channels > 1:
            if len(entry["images"]) != num_channels:
                given = len(entry["images"])
                raise InputError(
                    json_path, f"case {brief(case_id)}: {given} images for {num_channels} channels"
                )
            channels = tuple(root / p for p in entry["images"])
            for c, path in enumerate(channels):
                if not path.is_file():
                    raise InputError(path, f"channel {c} of case {brief(case_id)} (dataset.json) is missing")
        cases.append(NnUNetCase(str(case_id), image, label, channels))
    return cases
