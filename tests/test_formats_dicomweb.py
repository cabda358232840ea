"""`predict --dicomweb`: a real Orthanc (with its DICOMweb plugin) on a free 127.0.0.1 port, started and
stopped here; plus stub servers for a 500 answer and a server that never answers. Network: 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, generate_uid
from typer.testing import CliRunner

from _cache_factory import save_random_checkpoint
from organdetr.cli import app
from organdetr.formats.dicom_sr import read_measurement_report
from organdetr.runtime.errors import InputError

ORTHANC = next(
    (
        p
        for p in (shutil.which("Orthanc"), "/usr/sbin/Orthanc", "/usr/bin/Orthanc")
        if p and os.access(p, os.X_OK)
    ),
    None,
)  # Debian puts it in /usr/sbin, which a normal user's PATH may lack
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
CLASSES = {1: "liver", 2: "kidney_right", 3: "spleen"}
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """requests must not send 127.0.0.1 traffic to a proxy from the environment."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("run"), CLASSES, (32, 32, 32))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[dict]:
    """A running Orthanc with DICOMweb at ``url``: basic auth with a generated password, temporary storage."""
    if ORTHANC is None:
        pytest.skip("Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb)")
    plugin = next((p for d in PLUGIN_DIRS for p in sorted(d.glob("libOrthancDicomWeb.so*"))), None)
    assert plugin is not None, (
        "Orthanc is installed but its DICOMweb plugin is not (apt-get install orthanc-dicomweb)"
    )
    root = tmp_path_factory.mktemp("orthanc")
    port, password = _free_port(), secrets.token_hex(16)
    config = {
        "Name": "organdetr-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,  # loopback clients only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"organdetr": password},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "wb")  # noqa: SIM115 (closed at teardown)
    proc = subprocess.Popen([ORTHANC, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/dicom-web"
    import requests

    session = requests.Session()
    session.trust_env = False
    session.auth = ("organdetr", password)
    try:
        for _ in range(150):
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited: {(root / 'orthanc.log').read_text(errors='replace')[-2000:]}")
            try:
                if session.get(f"{url}/studies", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("Orthanc did not start within 30 s")
        yield {"url": url, "user": "organdetr", "password": password, "session": session, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def credentials(orthanc, monkeypatch) -> dict:
    monkeypatch.setenv("ORGANDETR_DICOMWEB_USER", orthanc["user"])
    monkeypatch.setenv("ORGANDETR_DICOMWEB_PASSWORD", orthanc["password"])
    return orthanc


def _client(server: dict):
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(server["url"], session=server["session"])


@pytest.fixture(scope="module")
def study(orthanc, shared_data) -> dict:
    """The real JPEG 2000 CT series (TotalSegmentator example, its empty UIDs filled in) and an MR copy of the
    3-slice CT (new series) uploaded into one study; returns the UIDs."""
    study_uid, ct_uid, mr_uid = generate_uid(), generate_uid(), generate_uid()
    datasets = []
    for path in sorted((shared_data / "totalsegmentator" / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID, ds.SeriesNumber = (
            study_uid,
            ct_uid,
            "TS-B",
            2,
        )
        datasets.append(ds)
    for path in sorted((shared_data / "dcmqi" / "ct-3slice").iterdir()):
        ds = pydicom.dcmread(path)
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.PatientID = "MR", study_uid, mr_uid, "TS-B"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    response = _client(orthanc).store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 23 and not response.get("FailedSOPSequence")
    return {"study": study_uid, "ct": ct_uid, "mr": mr_uid, "ct_instances": 20}


def _predict(checkpoint, url, *options):
    args = ["predict", str(checkpoint), "--dicomweb", url, "--device", "cpu", "--no-progress", "--no-overlay"]
    return runner.invoke(app, [*args, *options])


@pytest.mark.shared_data
def test_fetch_predict_and_store_back(tmp_path, checkpoint, credentials, study):
    out = tmp_path / "out"
    result = _predict(
        checkpoint, credentials["url"], "--study", study["study"], "-o", str(out), "--format", "rtstruct"
    )
    assert result.exit_code == 0, result.output
    assert f"CT series {study['ct']} (20 instances" in result.output  # the CT series, not the MR one
    prediction = json.loads((out / f"{study['ct']}.json").read_text())
    assert prediction["image"].endswith(f"/studies/{study['study']}/series/{study['ct']}")
    assert not list(out.glob(".dicomweb-*"))  # the temporary copy of the series is gone
    created = {prediction["dicom"][k]["sop_instance_uid"] for k in ("seg", "sr", "rtstruct")}
    assert set(prediction["dicomweb"]["stored"]) == created

    # what Orthanc now holds: the source series untouched, plus one SEG, one SR and one RT-STRUCT series
    client = _client(credentials)
    series = {
        s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in client.search_for_series(study["study"])
    }
    assert sorted(series.values()) == ["CT", "MR", "RTSTRUCT", "SEG", "SR"]
    instances = {
        i["00080018"]["Value"][0]
        for i in client.search_for_instances(study["study"])
        if i["00080060"]["Value"][0] in ("SEG", "SR", "RTSTRUCT")
    }
    assert instances == created
    assert len(client.search_for_instances(study["study"], study["ct"])) == study["ct_instances"]

    # the stored SR, fetched back from the server, has the predicted boxes
    sr_series = next(uid for uid, modality in series.items() if modality == "SR")
    (stored_sr,) = client.retrieve_series(study["study"], sr_series)
    stored_sr.save_as(tmp_path / "stored_sr.dcm", enforce_file_format=True)
    entries = {e["name"]: e for e in read_measurement_report(tmp_path / "stored_sr.dcm")}
    assert set(entries) == set(CLASSES.values())
    for det in prediction["detections"]:
        np.testing.assert_allclose(entries[det["label"]]["box_mm"], det["box_mm"], atol=1e-3)
    seg_series = next(uid for uid, modality in series.items() if modality == "SEG")
    (stored_seg,) = client.retrieve_series(study["study"], seg_series)
    assert stored_seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study["ct"]
    rt_series = next(uid for uid, modality in series.items() if modality == "RTSTRUCT")
    (stored_rt,) = client.retrieve_series(study["study"], rt_series)
    referenced = stored_rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert referenced.RTReferencedSeriesSequence[0].SeriesInstanceUID == study["ct"]
    assert len(stored_rt.StructureSetROISequence) == len(prediction["detections"])


@pytest.mark.shared_data
def test_series_that_is_not_ct_is_refused(tmp_path, checkpoint, credentials, study):
    result = _predict(
        checkpoint,
        credentials["url"],
        "--study",
        study["study"],
        "--series",
        study["mr"],
        "-o",
        str(tmp_path),
    )
    assert isinstance(result.exception, InputError)
    assert f"series {study['mr']} is MR, not CT" in str(result.exception)
    assert not any(tmp_path.iterdir())


def test_unknown_study_is_a_one_line_error_with_exit_2(tmp_path, checkpoint, credentials):
    env = {**os.environ, "ORGANDETR_DICOMWEB_USER": credentials["user"]}
    env["ORGANDETR_DICOMWEB_PASSWORD"] = credentials["password"]
    proc = subprocess.run(
        [sys.executable, "-c", "from organdetr.cli import main; main()", "predict", str(checkpoint),
         "--dicomweb", credentials["url"], "--study", "1.2.3.4.5", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"error: {credentials['url']}: study 1.2.3.4.5 not found (the server lists no series for it)"
    )


def test_wrong_password_and_bad_uid(tmp_path, checkpoint, orthanc, monkeypatch):
    monkeypatch.setenv("ORGANDETR_DICOMWEB_USER", orthanc["user"])
    monkeypatch.setenv("ORGANDETR_DICOMWEB_PASSWORD", "wrong")
    result = _predict(checkpoint, orthanc["url"], "--study", "1.2.3", "-o", str(tmp_path))
    assert isinstance(result.exception, InputError) and "HTTP 401" in str(result.exception)
    result = _predict(checkpoint, orthanc["url"], "--study", "not-a-uid", "-o", str(tmp_path))
    assert isinstance(result.exception, InputError) and "is not a DICOM UID" in str(result.exception)


class _Answer500(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500, "Internal Server Error")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_server_error_500(tmp_path, checkpoint):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        result = _predict(checkpoint, url, "--study", "1.2.3", "-o", str(tmp_path))
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(result.exception, InputError)
    assert str(result.exception) == (
        f"{url}: QIDO-RS search for the series of study 1.2.3 failed: HTTP 500 Internal Server Error"
    )


def test_server_that_never_answers_times_out(tmp_path, checkpoint):
    """A server that accepts the connection and says nothing: a timeout error, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
    try:
        start = time.monotonic()
        result = _predict(
            checkpoint, url, "--study", "1.2.3", "--dicomweb-timeout", "0.5", "-o", str(tmp_path)
        )
        elapsed = time.monotonic() - start
    finally:
        listener.close()
    assert isinstance(result.exception, InputError) and "did not answer in time (timeout)" in str(
        result.exception
    )
    assert elapsed < 30


def test_connection_refused_and_not_a_url(tmp_path, checkpoint):
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    result = _predict(checkpoint, url, "--study", "1.2.3", "-o", str(tmp_path))
    assert isinstance(result.exception, InputError) and "cannot connect (connection refused)" in str(
        result.exception
    )
    result = _predict(checkpoint, "127.0.0.1:8042", "--study", "1.2.3", "-o", str(tmp_path))
    assert isinstance(result.exception, InputError) and "not an http(s) URL" in str(result.exception)
    both = runner.invoke(
        app, ["predict", str(checkpoint), str(tmp_path), "--dicomweb", url, "--study", "1.2", "-o", "x"]
    )
    assert isinstance(both.exception, InputError) and "not both" in str(both.exception)
