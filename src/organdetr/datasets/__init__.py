"""Public datasets: the nnU-Net v2 raw format (:mod:`.nnunet`), official class maps (:mod:`.labels`)
and one converter per dataset (``organdetr convert <format> SRC DST``).

Kept light: converters are imported on demand by :func:`get_converter`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from organdetr.runtime.text import brief

if TYPE_CHECKING:
    from organdetr.datasets.conversion import ConversionSummary

# format name -> (module of organdetr.datasets, fixed keyword arguments of its ``convert``)
FORMATS: dict[str, tuple[str, dict]] = {
    "abdomenct1k": ("abdomenct1k", {}),
    "word": ("word", {}),
    "amos": ("amos", {}),
    "verse": ("verse", {}),
    "totalsegmentator": ("totalsegmentator", {"variant": "totalsegmentator"}),
    "totalsegmentator_mr": ("totalsegmentator", {"variant": "totalsegmentator_mr"}),
    "brats": ("brats", {}),
    # sister toolkits' layouts
    "monai-datalist": ("monai_datalist", {}),
    "nndetection": ("nndetection", {}),
}

# format -> label set name (``convert --classes``; the first is the default) -> class map name
# (``labels/<name>.json``; ``None``: chosen from the source tree)
LABEL_SETS: dict[str, dict[str, str | None]] = {
    "abdomenct1k": {"organs4": "abdomenct1k", "organs13": "abdomenct1k_organs13"},
    "totalsegmentator": {"auto": None, "v1": "totalsegmentator_v1", "v2": "totalsegmentator"},
    "brats": {"auto": None, "2018": "brats", "2023": "brats2023"},
}


def get_converter(fmt: str) -> Callable[..., ConversionSummary]:
    """The ``convert(src, dst, **options) -> ConversionSummary`` function of dataset format ``fmt``."""
    if fmt not in FORMATS:
        raise KeyError(f"unknown dataset format {brief(fmt)}; known: {', '.join(FORMATS)}")
    module_name, fixed = FORMATS[fmt]
    module = importlib.import_module(f"organdetr.datasets.{module_name}")
    return partial(module.convert, **fixed)


__all__ = ["FORMATS", "LABEL_SETS", "get_converter"]
