"""`predict --dicomweb URL --study UID [--series UID]`: fetch a CT series from a DICOMweb server (PACS),
predict, and store the DICOM SEG and SR back into the same study.

Steps: :func:`~organdetr.formats.dicomweb.find_series` picks the CT series (QIDO-RS);
:func:`~organdetr.formats.dicomweb.download_series` streams its instances as stored (WADO-RS) into a
temporary folder inside ``OUT``; :func:`organdetr.inference.predict.predict_scans` runs with ``dicom_out``;
:func:`~organdetr.formats.dicomweb.store_instances` stores ``<case>_seg.dcm`` and ``<case>_sr.dcm``
(and ``<case>_rtstruct.dcm`` with ``--format rtstruct``) (STOW-RS). The temporary copy of the series is
removed afterwards; ``OUT/<case>.json`` names the series by its DICOMweb URL.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from organdetr.formats.dicomweb import RemoteSeries, download_series, store_instances
from organdetr.formats.run_outputs import RunOutputs
from organdetr.inference.predict import load_prediction, predict_scans
from organdetr.inference.predictor import Predictor
from organdetr.io.discovery import ScanInput
from organdetr.runtime.atomic import write_json
from organdetr.runtime.workers import BatchSummary


@dataclass
class DicomWebResult:
    """What ``predict --dicomweb`` did: the series predicted, the local outputs, the UIDs stored back."""

    series: RemoteSeries
    case_id: str
    summary: BatchSummary
    stored: list[str]


def predict_dicomweb(
    predictor: Predictor,
    client,
    series: RemoteSeries,
    out_dir: str | Path,
    *,
    score_threshold: float | None = None,
    overlay: bool = True,
    progress: bool = True,
    formats: Sequence[str] = (),
) -> DicomWebResult:
    """Fetch ``series`` (from :func:`~organdetr.formats.dicomweb.find_series`) with ``client`` (from
    :func:`~organdetr.formats.dicomweb.connect`), predict it into ``out_dir`` with DICOM outputs, store the
    SEG + SR (and, with ``formats`` ``rtstruct``, the RT Structure Set) back into its study.

    Outputs in ``out_dir`` are those of ``organdetr predict --dicom-out`` for case id = the series UID.
    Nothing is stored when the prediction fails (the failure is in the returned summary).
    """
    url = series.url
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    case_id = series.series_uid
    outputs = RunOutputs(out_dir, formats) if formats else None  # checks the formats before the download
    folder = Path(tempfile.mkdtemp(prefix=".dicomweb-", dir=out_dir))
    try:
        download_series(client, series, folder, progress=progress)
        summary = predict_scans(
            predictor,
            [ScanInput(folder, case_id)],
            out_dir,
            score_threshold=score_threshold,
            overlay=overlay,
            dicom_out=True,
            progress=progress,
            outputs=outputs,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    summary.failed = [
        (series.wado_url, reason.replace(str(folder), series.wado_url)) for _, reason in summary.failed
    ]
    stored: list[str] = []
    if summary.done:
        json_path = out_dir / f"{case_id}.json"
        prediction = load_prediction(json_path)
        prediction["image"] = series.wado_url
        objects = prediction.get("dicom", {})
        files = [out_dir / o["file"] for o in objects.values()]
        stored = store_instances(client, url, files, series.study_uid) if files else []  # none: no organ
        prediction["dicomweb"] = {
            "url": url,
            "study_uid": series.study_uid,
            "series_uid": series.series_uid,
            "stored": stored,
        }
        write_json(json_path, prediction)
    return DicomWebResult(series, case_id, summary, stored)


__all__ = ["DicomWebResult", "predict_dicomweb"]
