"""The DICOMweb client of `predict --dicomweb`: connect to a server (PACS), find a study's CT series, fetch
it, store derived instances back (dicomweb-client: QIDO-RS, WADO-RS, STOW-RS).

:func:`find_series` lists the study's series (QIDO-RS) and picks the CT series (``--series``, or the CT series
with the most instances), refusing a series that is not CT before anything is downloaded;
:func:`download_series` streams its instances as stored (WADO-RS, ``transfer-syntax=*``: no server-side
transcoding, so JPEG 2000 series work with servers that cannot decode them); :func:`store_instances` stores
DICOM files into a study (STOW-RS). The workflow around them (predict, store the SEG and SR back) is
:func:`organdetr.inference.dicomweb.predict_dicomweb`.

Every server failure (HTTP error, timeout, refused connection, unknown study, a series that is not CT, an
instance the server refuses to store) is an :class:`~organdetr.runtime.errors.InputError`: one line naming
the URL.
Credentials come from the environment, never the command line: ``ORGANDETR_DICOMWEB_TOKEN`` (bearer
token) or ``ORGANDETR_DICOMWEB_USER`` + ``ORGANDETR_DICOMWEB_PASSWORD`` (HTTP basic).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from tqdm.auto import tqdm

from organdetr.formats.dicom_source import SOURCE_MODALITIES
from organdetr.formats.optional import require
from organdetr.runtime.atomic import atomic_path
from organdetr.runtime.errors import InputError
from organdetr.runtime.text import brief, collapse

DEFAULT_TIMEOUT_S = 60.0
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# DICOM JSON tags (PS3.18 F.2) of the QIDO-RS answers read here
_MODALITY, _SERIES_UID, _SERIES_DESCRIPTION, _SERIES_INSTANCES = (
    "00080060",
    "0020000E",
    "0008103E",
    "00201209",
)


@dataclass(frozen=True)
class RemoteSeries:
    """A series on a DICOMweb server, as QIDO-RS describes it."""

    url: str
    study_uid: str
    series_uid: str
    modality: str
    instances: int | None
    description: str = ""

    @property
    def wado_url(self) -> str:
        return f"{self.url.rstrip('/')}/studies/{self.study_uid}/series/{self.series_uid}"


def connect(url: str, timeout: float = DEFAULT_TIMEOUT_S):
    """A ``dicomweb_client.DICOMwebClient`` for ``url`` (credentials from the environment, see module doc).

    ``timeout`` (seconds) bounds connecting and each read; a server that does not answer in time is an
    :class:`InputError`, not a hang.
    """
    require("dicomweb_client", "--dicomweb")
    require("highdicom", "--dicomweb")
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session, create_session_from_user_pass

    if not re.match(r"^https?://", url):
        raise InputError(
            None, f"--dicomweb {brief(url)}: not an http(s) URL (e.g. http://pacs:8042/dicom-web)"
        )
    token = os.environ.get("ORGANDETR_DICOMWEB_TOKEN")
    user = os.environ.get("ORGANDETR_DICOMWEB_USER")
    if user:
        session = create_session_from_user_pass(user, os.environ.get("ORGANDETR_DICOMWEB_PASSWORD", ""))
    else:
        session = create_session()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    client = DICOMwebClient(url.rstrip("/"), session=session, headers=headers, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client


@contextlib.contextmanager
def server_errors(url: str, action: str) -> Iterator[None]:
    """Turn what ``requests`` / dicomweb-client raise during ``action`` into one-line :class:`InputError`."""
    import requests

    try:
        yield
    except requests.HTTPError as err:
        response = err.response
        status = f"HTTP {response.status_code} {response.reason}" if response is not None else str(err)
        raise InputError(None, f"{url}: {action} failed: {status}") from None
    except requests.Timeout:
        raise InputError(
            None, f"{url}: {action} failed: the server did not answer in time (timeout)"
        ) from None
    except requests.ConnectionError as err:
        raise InputError(
            None, f"{url}: {action} failed: cannot connect ({_connection_reason(err)})"
        ) from None
    except (requests.RequestException, ValueError, KeyError) as err:
        reason = collapse(str(err), 200)
        raise InputError(None, f"{url}: {action} failed: {type(err).__name__}: {reason}") from None


def _connection_reason(err: Exception) -> str:
    text = collapse(str(err))
    for needle, reason in (
        ("refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("No route to host", "no route to host"),
        ("reset by peer", "connection reset by the server"),
        ("RemoteDisconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return text[:160]


def find_series(client, url: str, study_uid: str, series_uid: str | None = None) -> RemoteSeries:
    """The CT series to predict: ``series_uid`` of ``study_uid``, else the study's largest CT series.

    Raises :class:`InputError` for malformed UIDs, an unknown study or series, or a series that is not CT.
    """
    for flag, uid in (("--study", study_uid), ("--series", series_uid)):
        if uid is not None and not _UID.match(uid):
            raise InputError(None, f"{flag} {brief(uid)} is not a DICOM UID (digits and dots)")
    with server_errors(url, f"QIDO-RS search for the series of study {study_uid}"):
        answers = client.search_for_series(study_instance_uid=study_uid)
    found = [_remote_series(url, study_uid, a) for a in answers or []]
    if not found:
        raise InputError(None, f"{url}: study {study_uid} not found (the server lists no series for it)")
    if series_uid is not None:
        match = [s for s in found if s.series_uid == series_uid]
        if not match:
            raise InputError(None, f"{url}: series {series_uid} not found in study {study_uid}")
        chosen = match[0]
        if chosen.modality not in SOURCE_MODALITIES:
            raise InputError(
                None, f"{url}: series {series_uid} is {chosen.modality or 'of unknown modality'}, not CT"
            )
        return chosen
    ct = [s for s in found if s.modality in SOURCE_MODALITIES]
    if not ct:
        modalities = ", ".join(sorted({s.modality or "?" for s in found}))
        raise InputError(None, f"{url}: study {study_uid} has no CT series (only {modalities})")
    return max(ct, key=lambda s: s.instances or 0)


def _remote_series(url: str, study_uid: str, answer: dict) -> RemoteSeries:
    def first(tag: str):
        values = (answer.get(tag) or {}).get("Value") or []
        return values[0] if values else None

    count = first(_SERIES_INSTANCES)
    return RemoteSeries(
        url=url,
        study_uid=study_uid,
        series_uid=str(first(_SERIES_UID) or ""),
        modality=str(first(_MODALITY) or ""),
        instances=int(count) if count is not None else None,
        description=str(first(_SERIES_DESCRIPTION) or ""),
    )


def download_series(client, series: RemoteSeries, folder: str | Path, *, progress: bool = True) -> int:
    """WADO-RS: every instance of ``series`` into ``folder`` as ``<SOPInstanceUID>.dcm``, as stored
    (no transcoding). Returns the number of instances."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with (
        server_errors(series.url, f"WADO-RS retrieve of series {series.series_uid}"),
        tqdm(
            total=series.instances, desc="fetch", unit="instance", disable=not progress, dynamic_ncols=True
        ) as bar,
    ):
        for dataset in client.iter_series(
            series.study_uid, series.series_uid, media_types=(("application/dicom", "*"),)
        ):
            name = str(dataset.get("SOPInstanceUID", "") or f"instance_{count:05d}")
            with atomic_path(folder / f"{name}.dcm") as tmp:
                dataset.save_as(tmp, enforce_file_format=True)
            count += 1
            bar.update(1)
    if count == 0:
        raise InputError(None, f"{series.url}: series {series.series_uid} has no instances to retrieve")
    return count


def store_instances(client, url: str, paths: Sequence[str | Path], study_uid: str) -> list[str]:
    """STOW-RS ``paths`` into ``study_uid``; returns the stored SOP instance UIDs.

    Raises :class:`InputError` when the server refuses any of them.
    """
    datasets = [pydicom.dcmread(p) for p in paths]
    with server_errors(url, f"STOW-RS store into study {study_uid}"):
        response = client.store_instances(datasets, study_instance_uid=study_uid)
    failed = list(response.get("FailedSOPSequence", []) or []) if response is not None else []
    if failed:
        reasons = ", ".join(
            f"{item.get('ReferencedSOPInstanceUID', '?')} (reason {item.get('FailureReason', '?')})"
            for item in failed
        )
        raise InputError(
            None, f"{url}: the server refused {len(failed)} of {len(datasets)} instance(s): {reasons}"
        )
    stored = [str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", []) or []]
    return stored or [str(ds.SOPInstanceUID) for ds in datasets]


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "RemoteSeries",
    "connect",
    "download_series",
    "find_series",
    "server_errors",
    "store_instances",
]
