"""organdetr.core.colours and organdetr.inference.overlay: colours, windowing, slice choice and the three-view
PNG on synthetic and real CT."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np

from organdetr.core.boxes.world import voxel_box_to_world
from organdetr.core.colours import label_colour, organ_colours, slice_centre, window_image
from organdetr.core.geometry import Geometry
from organdetr.core.volume import Volume
from organdetr.inference.overlay import render_overlay
from organdetr.io.images import read_image


def test_window_image_soft_tissue():
    out = window_image(np.array([-1000, -160, 40, 240, 3000]))
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def test_slice_centre_is_centre_of_union_or_scan():
    boxes = np.array([[2, 2, 2, 6, 6, 6], [10, 4, 4, 20, 8, 8]], dtype=float)
    np.testing.assert_array_equal(slice_centre(boxes, (30, 30, 30)), [11, 5, 5])
    np.testing.assert_array_equal(slice_centre(np.zeros((0, 6)), (30, 20, 10)), [15, 10, 5])


def test_colours_distinct_per_organ():
    colours = organ_colours(["liver", "spleen", "liver", "aorta"])
    assert len(colours) == 3 and len(set(colours.values())) == 3


def test_palette_is_matplotlibs_tab20_then_tab20b():
    """The stored hex codes give exactly the floats matplotlib holds (colours unchanged in every export)."""
    import matplotlib

    expected = list(matplotlib.colormaps["tab20"].colors) + list(matplotlib.colormaps["tab20b"].colors)
    names = [f"organ_{n}" for n in range(len(expected))]
    palette = [c[:3] for c in organ_colours(names).values()]
    assert palette == [tuple(float(v) for v in c[:3]) for c in expected]
    assert label_colour(1) == organ_colours(["a"])["a"][:3] and label_colour(41) == label_colour(1)


def _box_volume() -> tuple[Volume, list[dict]]:
    """RAS-oriented scan with a bright cube; one detection exactly on it."""
    array = np.full((40, 30, 20), -500, dtype=np.int16)
    array[5:15, 10:20, 4:12] = 60
    geometry = Geometry((40, 30, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    box_mm = voxel_box_to_world(np.array([5, 10, 4, 15, 20, 12], dtype=float), geometry)
    return Volume(array, geometry), [{"label": "liver", "score": 0.9, "box_mm": box_mm.tolist()}]


def test_render_overlay_writes_png_with_coloured_box(tmp_path):
    volume, detections = _box_volume()
    path = render_overlay(volume, detections, tmp_path / "o.png", title="t", ground_truth=detections)
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]
    rgb = image[..., :3]
    colour = np.asarray(organ_colours(["liver"])["liver"][:3])
    # the box's colour (tab20 blue) appears: the box and its legend entry were drawn
    assert np.any(np.all(np.abs(rgb - colour) < 0.05, axis=-1))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_overlay_draws_an_organ_in_its_colour_of_every_export(tmp_path):
    """A detection with a label id is drawn in :func:`label_colour` of that id (the colour of the SEG, the
    RT-STRUCT, the Slicer files and the viewer), not in the colour of its position in the list."""
    volume, detections = _box_volume()
    detections = [{**detections[0], "label": "urinary_bladder", "label_id": 7}]
    rgb = mpimg.imread(render_overlay(volume, detections, tmp_path / "o.png"))[..., :3]
    assert np.any(np.all(np.abs(rgb - np.asarray(label_colour(7))) < 0.02, axis=-1))
    assert not np.any(np.all(np.abs(rgb - np.asarray(label_colour(1))) < 0.02, axis=-1))


def test_render_overlay_without_detections(tmp_path):
    volume, _ = _box_volume()
    assert render_overlay(volume, [], tmp_path / "empty.png").stat().st_size > 5_000


def test_render_overlay_real_ct(tmp_path, shared_data):
    from organdetr.core.boxes.labels import boxes_from_labels
    from organdetr.io.images import read_label_map

    folder = shared_data / "totalsegmentator"
    volume = read_image(folder / "example_ct.nii.gz")
    labels = read_label_map(folder / "example_seg_fast_force_split.nii.gz")
    boxes = [b for b in boxes_from_labels(labels.array, labels.geometry, None) if b.label_id in (1, 2, 3, 5)]
    detections = [{"label": f"organ_{b.label_id}", "box_mm": b.box_mm.tolist()} for b in boxes]
    path = render_overlay(volume, detections, tmp_path / "real.png")
    assert path.stat().st_size > 50_000
