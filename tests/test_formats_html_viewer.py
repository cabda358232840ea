"""organdetr.formats.html_viewer: the payload, the self-contained page, and the page in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
import zlib

import numpy as np
import pytest

from organdetr.core.boxes.labels import boxes_from_labels
from organdetr.core.boxes.world import world_box_to_voxel
from organdetr.core.colours import window_image
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume, reorient_to_lps
from organdetr.formats.html_viewer import RunViewer, case_payload, display_grid

# RAS-stored scan: the page must show it reoriented to LPS
GEOMETRY = Geometry((48, 40, 24), (1.0, 1.2, 2.5), (30.0, 20.0, -50.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
NAMES = {5: "liver", 1: "spleen", 3: "kidney_left"}


def _scan(geometry: Geometry = GEOMETRY, seed: int = 0) -> tuple[Volume, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros(geometry.size, np.uint8)
    labels[4:24, 5:25, 2:14] = 5
    labels[28:40, 8:20, 6:16] = 1
    labels[12:18, 12:18, 10:20] = 3
    image = rng.normal(-100, 20, geometry.size) + np.select(
        [labels == 5, labels == 1, labels == 3], [60, 120, 200]
    )
    return Volume(image.astype(np.int16), geometry), labels


def _prediction(volume: Volume, labels: np.ndarray, case_id: str = "scan_a") -> dict:
    boxes = boxes_from_labels(labels, volume.geometry, NAMES)
    detections = [
        {
            "label": b.name,
            "label_id": b.label_id,
            "score": round(0.95 - 0.2 * n, 2),
            "box_mm": b.box_mm.tolist(),
            "box_voxel": b.box_voxel.tolist(),
        }
        for n, b in enumerate(boxes)
    ]
    return {"case_id": case_id, "image": f"/data/{case_id}.nii.gz", "detections": detections}


def _decode(b64: str, shape, dtype=np.uint8) -> np.ndarray:
    flat = np.frombuffer(zlib.decompress(base64.b64decode(b64)), dtype=dtype)
    return np.transpose(flat.reshape(shape[::-1]), (2, 1, 0))  # stored (k, j, i), i fastest


def test_payload_holds_the_scan_in_lps_and_the_boxes():
    volume, labels = _scan()
    payload = case_payload(_prediction(volume, labels), volume, seg=labels)
    canonical = reorient_to_lps(volume)
    assert payload["size"] == list(canonical.geometry.size) and payload["orientation"] == "RAS"
    image = _decode(payload["volume"], payload["size"])
    expected = np.round(window_image(canonical.array) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    seg = _decode(payload["labels"], payload["size"])
    np.testing.assert_array_equal(seg, reorient_to_lps(Volume(labels, volume.geometry)).array)
    liver = next(o for o in payload["organs"] if o["name"] == "liver")
    lps = boxes_from_labels(seg, canonical.geometry, NAMES)
    np.testing.assert_allclose(liver["box"], next(b.box_voxel for b in lps if b.name == "liver"), atol=1e-3)
    assert liver["mask_ml"] == pytest.approx((labels == 5).sum() * 1.0 * 1.2 * 2.5 / 1000, abs=0.01)
    assert liver["box_ml"] == pytest.approx(20 * 20 * 1.2 * 12 * 2.5 / 1000, abs=0.01)
    assert liver["color"] == "#2ca02c"  # label_colour(5): tab20's fifth colour


def test_large_scans_are_shown_on_a_smaller_grid():
    geometry = Geometry((300, 64, 20), (0.7, 0.7, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert display_grid(geometry, 256).size == (256, 64, 20)
    assert display_grid(geometry, 300) is None
    volume = Volume(np.zeros(geometry.size, np.int16), geometry)
    box_mm = [10.0, 5.0, 3.0, 100.0, 30.0, 40.0]
    prediction = {"case_id": "big", "detections": [{"label": "liver", "label_id": 5, "box_mm": box_mm}]}
    payload = case_payload(prediction, volume, max_size=128)
    shown = display_grid(geometry, 128)
    assert payload["size"] == [128, 64, 20]
    np.testing.assert_allclose(payload["organs"][0]["box"], world_box_to_voxel(box_mm, shown), atol=1e-3)
    assert payload["organs"][0]["size_mm"] == [90.0, 25.0, 37.0]


def test_page_is_self_contained_and_escapes_names(tmp_path):
    volume, labels = _scan()
    prediction = _prediction(volume, labels, case_id="x</script><b>y")
    viewer = RunViewer(title="T <i>", notes="n")
    viewer.add(prediction, volume)
    text = viewer.write(tmp_path / "viewer.html").read_text(encoding="utf-8")
    assert text.count("</script>") == 2  # the data and the code; nothing from the JSON closes an element
    assert "<title>T &lt;i&gt;</title>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # no network resource at all
    data = json.loads(
        re.search(r'<script id="viewer-data" type="application/json">(.*?)</script>', text, re.S)[1]
    )
    assert data["cases"][0]["case_id"] == "x</script><b>y"


# ----------------------------------------------------------------------------- in a real browser


def _browser_paths() -> tuple[str, str] | None:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium driven by selenium (no browser download); skips where it is missing."""
    webdriver = pytest.importorskip("selenium.webdriver")
    paths = _browser_paths()
    if paths is None:
        pytest.skip(
            "chromium and chromedriver not installed (Debian: apt-get install chromium chromium-driver)"
        )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    yield driver
    driver.quit()


def _wait_ready(driver, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if driver.execute_script("return document.body.dataset.ready") == "1":
            return
        time.sleep(0.05)
    raise AssertionError(f"page never became ready; console: {driver.get_log('browser')}")


def _canvas(driver, view: str) -> str:
    return driver.execute_script(f"return document.getElementById('canvas-{view}').toDataURL()")


def test_viewer_in_headless_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    volume, labels = _scan()
    viewer = RunViewer(title="two scans")
    viewer.add(_prediction(volume, labels, "scan_a"), volume, seg=labels)
    other, other_labels = _scan(seed=1)
    prediction_b = _prediction(other, other_labels, "scan_b")
    prediction_b["detections"] = prediction_b["detections"][:2]
    viewer.add(
        prediction_b,
        other,
        ground_truth=[{"label": "liver", "box_mm": prediction_b["detections"][0]["box_mm"]}],
    )
    page = viewer.write(tmp_path / "viewer.html")

    browser.get(page.as_uri())
    _wait_ready(browser)
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    rows = browser.find_elements(By.CSS_SELECTOR, "#organ-table tbody tr.organ-row")
    assert sorted(r.get_attribute("data-organ") for r in rows) == sorted(NAMES.values())

    # the slider changes the slice: its label and the picture
    label, before = browser.find_element(By.ID, "slice-axial").text, _canvas(browser, "axial")
    browser.find_element(By.ID, "slider-axial").send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    k = browser.execute_script("return window.viewerState.slices[2]")
    assert browser.find_element(By.ID, "slice-axial").text == f"k = {k} / 23" != label
    assert _canvas(browser, "axial") != before

    # an organ's toggle removes its box and outline from the views
    before = _canvas(browser, "coronal")
    browser.find_element(By.CSS_SELECTOR, "tr[data-organ='liver'] input.organ-toggle").click()
    assert browser.execute_script("return window.viewerState.on[5]") is False
    assert _canvas(browser, "coronal") != before

    # the second scan: its own rows
    browser.execute_script(
        "const s = document.getElementById('case-select');"
        "s.value = '1'; s.dispatchEvent(new Event('change'));"
    )
    _wait_ready(browser)
    rows = browser.find_elements(By.CSS_SELECTOR, "#organ-table tbody tr.organ-row")
    assert [r.get_attribute("data-organ") for r in rows] == [d["label"] for d in prediction_b["detections"]]
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_viewer_of_a_real_ct_in_chromium(browser, tmp_path, shared_data):
    """The real TotalSegmentator CT (RAS NIfTI, 3 mm) with its label boxes: loads, no console errors."""
    from selenium.webdriver.common.by import By

    from organdetr.datasets.labels import load_class_map
    from organdetr.io.images import read_image, read_label_map

    ct = read_image(shared_data / "totalsegmentator" / "example_ct.nii.gz")
    seg = read_label_map(shared_data / "totalsegmentator" / "example_seg_fast_force_split.nii.gz")
    classes = load_class_map("totalsegmentator")
    keep = {
        i: n for i, n in classes.items() if n in ("liver", "spleen", "kidney_left", "kidney_right", "aorta")
    }
    organs = np.where(np.isin(seg.array, list(keep)), seg.array, 0)
    boxes = boxes_from_labels(organs, seg.geometry, keep)
    detections = [
        {"label": b.name, "label_id": b.label_id, "score": 1.0, "box_mm": b.box_mm.tolist()} for b in boxes
    ]
    prediction = {"case_id": "example_ct", "image": "example_ct.nii.gz", "detections": detections}
    viewer = RunViewer(title="real CT")
    viewer.add(prediction, ct, seg=organs)
    browser.get(viewer.write(tmp_path / "viewer.html").as_uri())
    _wait_ready(browser)
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.organ-row")) == len(keep)
    assert browser.find_element(By.ID, "slice-sagittal").text.endswith("/ 121")


def test_thin_series_has_markers_readable_views_and_separate_names(browser, tmp_path):
    """A 20-slice series (2 mm) of four organs through every slice: the coronal and sagittal views are at
    least 190 px tall (stretched, and say so), each view has its R/L/A/P/S/I markers on the right edges,
    and every organ name lies inside its view, clear of the other names and of the markers."""
    geometry = Geometry((200, 180, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = np.zeros(geometry.size, np.uint8)
    names = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver"}
    for n, label_id in enumerate(names):  # side by side, all from the first slice to the last
        labels[20 + 40 * n : 50 + 40 * n, 30 + 10 * n : 120, :] = label_id
    volume = Volume(np.where(labels > 0, 60, -100).astype(np.int16), geometry)
    boxes = boxes_from_labels(labels, geometry, names)
    detections = [
        {"label": b.name, "label_id": b.label_id, "score": 0.9, "box_mm": b.box_mm.tolist()} for b in boxes
    ]
    viewer = RunViewer(title="thin series")
    viewer.add({"case_id": "thin", "image": "thin.nii.gz", "detections": detections}, volume)
    browser.get(viewer.write(tmp_path / "viewer.html").as_uri())
    _wait_ready(browser)
    layout = browser.execute_script("return window.viewerState.layout")
    expected = {
        "axial": {"left": "R", "right": "L", "top": "A", "bottom": "P"},
        "coronal": {"left": "R", "right": "L", "top": "S", "bottom": "I"},
        "sagittal": {"left": "A", "right": "P", "top": "S", "bottom": "I"},
    }
    for view, markers in expected.items():
        shown = layout[view]
        assert shown["markers"] == markers and len(shown["markerRects"]) == 4
        rects = shown["labels"] + shown["markerRects"]
        for r in rects:  # inside the canvas: nothing clipped at an edge
            assert r["x"] >= 0 and r["y"] >= 0, (view, r)
            assert r["x"] + r["w"] <= shown["width"] + 0.5 and r["y"] + r["h"] <= shown["height"] + 0.5, (
                view,
                r,
            )
        for n, a in enumerate(rects):
            for b in rects[n + 1 :]:
                apart = (a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"]
                         or b["y"] + b["h"] <= a["y"])  # fmt: skip
                assert apart, (view, a, b)
    assert sorted(r["name"] for r in layout["coronal"]["labels"]) == sorted(names.values())
    assert sorted(r["name"] for r in layout["axial"]["labels"]) == sorted(names.values())
    # 40 mm of slices beside 200 mm (coronal) and 180 mm (sagittal): physically 76 and 84 px tall, shown 190
    for view, physical in (("coronal", round(40 / 200 * 380)), ("sagittal", round(40 / 180 * 380))):
        assert layout[view]["height"] == 190 and layout[view]["stretch"] == pytest.approx(190 / physical)
        assert "vertical \u00d7" in browser.find_element("id", f"name-{view}").text
    assert (
        layout["axial"]["stretch"] == 1 and layout["axial"]["height"] == 342
    )  # 180 / 200 * 380, true aspect
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
