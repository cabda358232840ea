"""When and as which series one ``predict`` run writes its DICOM objects (SEG, SR, RT Structure Set).

Every object a run writes gets ``SeriesDate`` / ``SeriesTime`` = the moment the run's DICOM outputs were
started (local time, as the source's StudyDate / StudyTime are) and a ``SeriesNumber`` that grows from run
to run, so that two runs on one study can be told apart in a PACS list without opening the objects::

    SeriesNumber = 10 * (whole 10-second ticks since 2024-01-01 00:00) + slot
    slot: 1 = SEG, 2 = SR, 3 = RT Structure Set

e.g. a run at 2026-12-03 16:13:45 writes SEG 92247221, SR 92247222, RT-STRUCT 92247223. Two runs
more than 10 s apart always get different, increasing numbers (runs started within the same 10 s share
them; their SeriesTime and SeriesInstanceUID still differ). The number fits DICOM's IS (``< 2**31``)
until the year 2092.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

SERIES_SLOTS = {"seg": 1, "sr": 2, "rtstruct": 3}
"""The last digit of the SeriesNumber of each DICOM object a run writes."""

_EPOCH = datetime(2024, 1, 1)
_TICK_SECONDS = 10


@dataclass(frozen=True)
class DicomRun:
    """The date / time stamp of one run's DICOM outputs (naive local time, like DICOM DA / TM)."""

    when: datetime = field(default_factory=datetime.now)

    def series_number(self, kind: str) -> int:
        """The SeriesNumber of object ``kind`` (``"seg"``, ``"sr"``, ``"rtstruct"``) of this run."""
        ticks = int((self.when - _EPOCH).total_seconds()) // _TICK_SECONDS
        return 10 * max(ticks, 0) + SERIES_SLOTS[kind]

    @property
    def date(self) -> str:
        """SeriesDate, ``YYYYMMDD``."""
        return self.when.strftime("%Y%m%d")

    @property
    def time(self) -> str:
        """SeriesTime, ``HHMMSS.ffffff``."""
        return self.when.strftime("%H%M%S.%f")

    def highdicom_series(self, kind: str) -> dict:
        """Series number, date and time as keyword arguments of a highdicom SOP class constructor."""
        return {
            "series_number": self.series_number(kind),
            "series_date": self.when.date(),
            "series_time": self.when.time(),
        }


__all__ = ["SERIES_SLOTS", "DicomRun"]
