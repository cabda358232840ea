"""Size and speed of the HTML viewer (`organdetr predict --html`) per scan, and its screenshot for the docs.

For each scan: the time to build its payload (reorient, window, resample to the display grid, compress),
the bytes it adds to the page, and (with Chromium installed) the time until the page has decoded and
drawn it in headless Chromium. Scans: the real CTs of ``../shared/data`` (when present; boxes and masks
from their TotalSegmentator labels, shown as if they were detections) and a synthetic 512 x 512 x N CT.

    .venv/bin/python benchmarks/bench_html_viewer.py
    .venv/bin/python benchmarks/bench_html_viewer.py --screenshot docs/images/html_viewer.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "gallbladder", "aorta",
          "inferior_vena_cava", "duodenum", "colon", "small_bowel", "urinary_bladder")  # fmt: skip
REAL = {
    "example_ct (TS-A, RAS, 3 mm)": ("example_ct.nii.gz", "example_seg_fast_force_split.nii.gz"),
    "example_ct_dicom (TS-B, 512x512x20)": ("example_ct_dicom", "example_seg_dicom.nii.gz"),
}


def real_case(shared: Path, image: str, labels: str):
    from organdetr.core.boxes.labels import boxes_from_labels
    from organdetr.datasets.labels import load_class_map
    from organdetr.io.images import read_image, read_label_map

    folder = shared / "totalsegmentator"
    volume = read_image(folder / image)
    seg = read_label_map(folder / labels)
    classes = {i: n for i, n in load_class_map("totalsegmentator").items() if n in ORGANS}
    organs = np.where(np.isin(seg.array, list(classes)), seg.array, 0).astype(np.uint8)
    rng = np.random.default_rng(0)
    detections = [
        {"label": b.name, "label_id": b.label_id, "score": round(float(rng.uniform(0.6, 0.99)), 3),
         "box_mm": b.box_mm.tolist()}
        for b in boxes_from_labels(organs, seg.geometry, classes, allow_empty=True)
    ]  # fmt: skip
    return (
        {"case_id": Path(image).name.split(".")[0], "image": image, "detections": detections},
        volume,
        organs,
    )


def synthetic_case(slices: int):
    from organdetr.core.geometry import Geometry
    from organdetr.core.volume import Volume

    rng = np.random.default_rng(0)
    array = np.full((512, 512, slices), -1000.0, dtype=np.float32)
    array[96:416, 128:400, :] = 30
    array[150:260, 180:300, slices // 4 : slices // 2] = 60
    array += rng.normal(0, 15, array.shape).astype(np.float32)  # CT-like noise: the page's worst case
    array = array.astype(np.int16)
    geometry = Geometry(
        (512, 512, slices), (0.8, 0.8, 1.0), (-200.0, -200.0, -500.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)
    )
    box = [
        -200 + 150 * 0.8,
        -200 + 180 * 0.8,
        -500 + slices // 4,
        -200 + 260 * 0.8,
        -200 + 300 * 0.8,
        -500 + slices // 2,
    ]
    prediction = {"case_id": f"synthetic_512x512x{slices}", "image": "synthetic",
                  "detections": [{"label": "liver", "label_id": 5, "score": 0.9, "box_mm": box}]}  # fmt: skip
    return prediction, Volume(array, geometry), None


def chromium():
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1500,1120",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def time_to_ready(driver, page: Path) -> float:
    start = time.perf_counter()
    driver.get(page.as_uri())
    while driver.execute_script("return document.body.dataset.ready") != "1":
        if time.perf_counter() - start > 60:
            raise RuntimeError("page not ready after 60 s")
        time.sleep(0.01)
    return time.perf_counter() - start


def main() -> None:
    from organdetr.experiments.demo import find_shared_data
    from organdetr.formats.html_viewer import RunViewer

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slices", type=int, default=300, help="slices of the synthetic 512x512 CT")
    parser.add_argument("--screenshot", type=Path, help="write the viewer of example_ct as a PNG here")
    args = parser.parse_args()
    shared = find_shared_data()
    cases = (
        {name: (lambda i=i, lab=lab: real_case(shared, i, lab)) for name, (i, lab) in REAL.items()}
        if shared
        else {}
    )
    cases[f"synthetic 512x512x{args.slices} (0.8 x 0.8 x 1 mm)"] = lambda: synthetic_case(args.slices)
    driver = chromium()
    print("| scan | display grid | build payload (s) | page bytes | Chromium: decoded and drawn (s) |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in cases.items():
            prediction, volume, seg = make()
            viewer = RunViewer(title=name)
            start = time.perf_counter()
            viewer.add(prediction, volume, seg=seg)
            build = time.perf_counter() - start
            page = viewer.write(Path(tmp) / "viewer.html")
            ready = f"{time_to_ready(driver, page):.2f}" if driver else "-"
            grid = "x".join(map(str, viewer.cases[0]["size"]))
            print(f"| {name} | {grid} | {build:.2f} | {page.stat().st_size:,} | {ready} |")
        if args.screenshot and driver and shared:
            prediction, volume, seg = real_case(shared, *REAL["example_ct (TS-A, RAS, 3 mm)"])
            viewer = RunViewer(
                title="example_ct.nii.gz: TotalSegmentator organ boxes and masks shown as detections"
            )
            viewer.add(prediction, volume, seg=seg)
            page = viewer.write(Path(tmp) / "shot.html")
            time_to_ready(driver, page)
            driver.execute_script("document.querySelector('tr[data-organ=liver]').click()")
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.screenshot))
            print(f"screenshot -> {args.screenshot}")
    if driver:
        driver.quit()
    print(f"\nmachine: {sys.platform}, numpy {np.__version__}; shared CPU (2 cores, other jobs running)")


if __name__ == "__main__":
    main()
