"""What a model needs to know about its data beyond the organ classes, read from a cache's ``plans.json``.

``DataProperties.from_plans(plans)`` gives the input channels (``model.in_channels`` comes from the data,
not the config), the declared segmentation regions (as dense class indices, the model's class order) and
the case-level class names. The engine builds detectors with it and ``checkpoint.load_detector`` rebuilds
them from the ``plans.json`` stored beside the weights, so a checkpoint folder alone is still enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from organdetr.preprocessing.plans import case_classes_from_plans, dense_regions_from_plans, num_channels


@dataclass(frozen=True)
class DataProperties:
    """``in_channels``: image channels; ``regions``: region name -> dense class indices (0..K-1) it unites;
    ``case_classes``: case-level class names in index order (empty: no case labels)."""

    in_channels: int = 1
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    case_classes: tuple[str, ...] = ()

    @classmethod
    def from_plans(cls, plans: dict) -> DataProperties:
        regions = dense_regions_from_plans(plans)
        return cls(num_channels(plans), regions, tuple(case_classes_from_plans(plans)))


__all__ = ["DataProperties"]
