"""Tiny brain-tumour data for the tests: phantom datasets, their caches and BraTS-style source trees."""

from __future__ import annotations

from pathlib import Path

from organdetr.datasets.synthetic.brain import BrainPhantomConfig, generate_brain_case, write_brain_dataset
from organdetr.io.images import write_image
from organdetr.preprocessing.plans import PreprocessConfig
from organdetr.preprocessing.run import preprocess_dataset

# 32^3 at 6 mm: a 192 mm head, tumour cores large enough that a 32^3 model grid resolves the rim
SMALL = BrainPhantomConfig(size=(32, 32, 32), spacing=(6.0, 6.0, 6.0), core_mm=(28.0, 34.0))
BRATS_2018_SUFFIXES = ("t1", "t1ce", "t2", "flair")
BRATS_2023_SUFFIXES = ("t1n", "t1c", "t2w", "t2f")


def brain_dataset(root: Path, cases: int = 2, seed: int = 3, cfg: BrainPhantomConfig = SMALL) -> Path:
    """A four-channel phantom dataset (seed 3 gives one LGG and one HGG case first)."""
    return write_brain_dataset(root, cases, seed=seed, cfg=cfg)


def brain_cache(root: Path, cases: int = 2, seed: int = 3, size: int = 32) -> Path:
    """``root/raw`` (phantom dataset) preprocessed to ``root/cache`` on a ``size^3`` grid."""
    raw = brain_dataset(root / "raw", cases, seed)
    summary = preprocess_dataset(
        raw, root / "cache", PreprocessConfig(input_size=(size,) * 3), progress=False
    )
    assert not summary.failed, summary.failed
    return root / "cache"


def brats_tree(root: Path, layout: str = "2018", cases: int = 2, seed: int = 5) -> dict[str, str]:
    """A BraTS source tree of ``cases`` phantom cases; returns case id -> grade.

    ``layout``: ``2018`` (HGG/ and LGG/ folders), ``2020`` (flat folders + name_mapping.csv), ``2021``
    (flat, no grade) or ``2023`` (BraTS-GLI names, label ids 1, 2, 3). Labels are written with the
    release's official ids (2018-2021: 1, 2, 4).
    """
    grades = {}
    rows = ["Grade,BraTS_2017_subject_ID,BraTS_2020_subject_ID"]
    for n in range(cases):
        channels, labels, geometry, info = generate_brain_case(seed + n, SMALL)
        if layout != "2023":
            labels = labels.copy()
            labels[labels == 3] = 4  # dense 3 -> official ET id 4
        case_id = {
            "2018": f"Brats18_TST_{n}_1",
            "2020": f"BraTS20_Training_{n + 1:03d}",
            "2021": f"BraTS2021_{n:05d}",
            "2023": f"BraTS-GLI-{n:05d}-000",
        }[layout]
        folder = root / (info.grade if layout == "2018" else "") / case_id
        separator, suffixes = ("-", BRATS_2023_SUFFIXES) if layout == "2023" else ("_", BRATS_2018_SUFFIXES)
        for c, suffix in enumerate(suffixes):
            write_image(folder / f"{case_id}{separator}{suffix}.nii.gz", channels[c], geometry)
        write_image(folder / f"{case_id}{separator}seg.nii.gz", labels, geometry)
        grades[case_id] = info.grade
        rows.append(f"{info.grade},NA,{case_id}")
    if layout == "2020":
        (root / "name_mapping.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return grades
