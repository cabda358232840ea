"""The synthetic abdomen's labelled organs and great vessels: where each sits (LPS mm), its shape, and how
much it varies per case (:class:`Variation`).

Positions follow adult anatomy (see :mod:`organdetr.datasets.synthetic.anatomy`): liver on the patient's
right under the right hemidiaphragm, spleen posterolateral left, stomach left upper anterior, kidneys
posterior beside the spine (right one lower), pancreas across the midline in front of the aorta,
gallbladder under the liver, bladder low and anterior in the pelvis; the aorta left-anterior of the spine
down to its bifurcation at L4, the IVC to its right. :func:`keep_largest_components` leaves one piece per
organ once everything is painted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from organdetr.datasets.synthetic.canvas import Body, Canvas
from organdetr.datasets.synthetic.shapes import Superquadric, Tube, frame, polyline, random_rotation
from organdetr.datasets.synthetic.tissues import LABEL_IDS, Tissue


def _jitter(rng, centre, semi, *, shift_mm: float, scale_jitter: float, body_scale: float):
    """Per-case position (+- ``shift_mm``) and size (+- ``scale_jitter``) of an organ, body-scaled."""
    offset = np.clip(rng.normal(0.0, shift_mm / 2.0, size=3), -shift_mm, shift_mm)
    size = rng.uniform(1 - scale_jitter, 1 + scale_jitter) * rng.uniform(0.93, 1.07, size=3)
    return np.asarray(centre) * body_scale + offset, np.asarray(semi) * body_scale * size


@dataclass(frozen=True)
class Variation:
    """How much a case differs from the template: organ shift (mm), organ size (relative), rotation (deg)."""

    shift_mm: float = 15.0
    scale_jitter: float = 0.15
    rotation_deg: float = 12.0


def _organ(
    canvas, present, name, centre, semi, axis, body, variation, *, exponent=2.0, deform=0.12, roll=0.0
):
    """Sample an organ's superquadric (None if the organ is absent in this case)."""
    rng = canvas.rng
    rotation = random_rotation(rng, variation.rotation_deg) @ frame(axis, roll)
    centre, semi = _jitter(
        rng,
        centre,
        semi,
        shift_mm=variation.shift_mm,
        scale_jitter=variation.scale_jitter,
        body_scale=body.scale,
    )
    if not present.get(name, True):
        return None
    return Superquadric(centre, semi, rotation, exponent=exponent, deform=deform)


def paint_organs(canvas: Canvas, body: Body, present: dict[str, bool], variation: Variation) -> None:
    """The ten labelled organs, lowest priority first (later ones win where they overlap)."""
    s, cavity = body.scale, canvas.cavity
    z_axis = np.array([0.0, 0.0, 1.0])
    # liver: a big right lobe plus a left lobe reaching across the midline in front of the stomach
    right = _organ(
        canvas, present, "liver", (-72, 5, 105), (72, 82, 68), z_axis, body, variation, exponent=2.4
    )
    left = _organ(canvas, present, "liver", (5, -45, 122), (62, 32, 38), (0.35, 0, 1), body, variation)
    if right is not None and left is not None:
        left.centre = left.centre + (right.centre - np.array([-72.0, 5.0, 105.0]) * s)  # lobes move together
        for lobe in (right, left):
            canvas.paint_shape(lobe, Tissue.LIVER, LABEL_IDS["liver"], within=cavity)

    stomach = _organ(
        canvas, present, "stomach", (52, -30, 100), (42, 34, 58), (0.5, -0.2, 1), body, variation, deform=0.15
    )
    if stomach is not None:
        gas_level = stomach.centre[1] - stomach.semi_axes[1] * canvas.rng.uniform(0.1, 0.7)
        for patch in canvas.paint_shape(stomach, Tissue.STOMACH, LABEL_IDS["stomach"], within=cavity):
            gas = (patch.f < 0.85) & (patch.y < gas_level) & cavity[patch.slices]  # air-fluid level, supine
            canvas.paint(patch.slices, gas, Tissue.GAS, LABEL_IDS["stomach"])

    _paint_pancreas(canvas, body, present, variation)

    spleen = _organ(
        canvas, present, "spleen", (95, 32, 108), (24, 52, 44), (0.25, -0.6, 1), body, variation, deform=0.1
    )
    if spleen is not None:
        canvas.paint_shape(spleen, Tissue.SPLEEN, LABEL_IDS["spleen"], within=cavity)

    gallbladder = _organ(
        canvas,
        present,
        "gallbladder",
        (-48, -42, 58),
        (15, 15, 34),
        (0.1, 0.5, 1),
        body,
        variation,
        deform=0.1,
    )
    if gallbladder is not None:
        canvas.paint_shape(gallbladder, Tissue.BILE, LABEL_IDS["gallbladder"], within=cavity)

    for name, side, z in (("kidney_right", -1.0, -12.0), ("kidney_left", 1.0, 4.0)):
        kidney = _organ(
            canvas,
            present,
            name,
            (side * 70, 40, z),
            (26, 22, 54),
            (-side * 0.25, 0.2, 1),
            body,
            variation,
            deform=0.08,
            roll=side * 30.0,
        )
        if kidney is None:
            continue
        for patch in canvas.paint_shape(kidney, Tissue.KIDNEY_CORTEX, LABEL_IDS[name], within=cavity):
            medulla = (patch.f < 0.62) & cavity[patch.slices]
            canvas.paint(patch.slices, medulla, Tissue.KIDNEY_MEDULLA, LABEL_IDS[name])

    bladder_fill = canvas.rng.uniform(0.7, 1.2)
    bladder = _organ(
        canvas,
        present,
        "urinary_bladder",
        (0, -35, -150),
        np.array([44, 34, 34]) * bladder_fill,
        z_axis,
        body,
        variation,
        exponent=2.5,
        deform=0.1,
    )
    if bladder is not None:
        canvas.paint_shape(bladder, Tissue.URINE, LABEL_IDS["urinary_bladder"], within=canvas.body)


def _paint_pancreas(canvas: Canvas, body: Body, present: dict[str, bool], variation: Variation) -> None:
    """Head by the duodenum right of midline, body in front of the aorta, tail up to the splenic hilum."""
    rng, s = canvas.rng, body.scale
    controls = np.array([[-38, -32, 18], [-8, -40, 32], [30, -28, 40], [72, 5, 55]], dtype=np.float64) * s
    controls += rng.normal(0.0, variation.shift_mm / 3.0, size=3) + rng.normal(0.0, 5.0, size=controls.shape)
    points, t = polyline(controls, step_mm=3.0)
    radii = np.interp(t, [0.0, 0.25, 0.6, 1.0], [17.0, 11.0, 11.0, 9.0]) * s * rng.uniform(0.85, 1.15)
    if present.get("pancreas", True):
        canvas.paint_shape(Tube(points, radii), Tissue.PANCREAS, LABEL_IDS["pancreas"], within=canvas.cavity)


@dataclass
class Vessels:
    """Centrelines ``[N, 3]`` (mm) and radii (mm) of the aorta (down to its bifurcation) and the IVC."""

    aorta: np.ndarray
    aorta_radii: np.ndarray
    ivc: np.ndarray
    ivc_radii: np.ndarray


def sample_vessels(rng: np.random.Generator, body: Body) -> Vessels:
    """Aorta left-anterior of the spine, split at L4; IVC to its right, swinging forward into the liver."""
    s = body.scale
    z_split = rng.uniform(-85, -60) * s
    z = np.arange(240.0 * s, z_split, -3.0)
    front = body.spine_centre_y(z) - 18.0 * s  # anterior surface of the vertebral bodies
    wobble = rng.uniform(0, 6.3)
    aorta_r = np.interp(z, [z_split, 240 * s], [9.0, 13.0]) * s * rng.uniform(0.9, 1.15)
    aorta = np.stack([(12 + 4 * np.sin(z / 60 + wobble)) * s, front - aorta_r - 2.0, z], 1)
    ivc_r = 11.0 * s * rng.uniform(0.85, 1.15)
    ivc_y = front - ivc_r - 4.0 * s - np.clip(z - 90 * s, 0, None) * 0.35
    top = z < 185 * s  # the IVC enters the right atrium above the liver
    ivc = np.stack([np.full_like(z, -24.0 * s), ivc_y, z], 1)[top]
    return Vessels(aorta, aorta_r, ivc, np.full(len(ivc), ivc_r))


def paint_iliac_vessels(canvas: Canvas, body: Body, vessels: Vessels) -> None:
    """Iliac arteries and veins (unlabelled) from the aortic bifurcation / IVC confluence into the pelvis."""
    s = body.scale
    for side in (-1.0, 1.0):
        controls = np.array([[0, 0, 0], [side * 30, 8, -45], [side * 58, 5, -130]]) * s + vessels.aorta[-1]
        pts, _ = polyline(controls, step_mm=3.0)
        canvas.paint_shape(Tube(pts, np.full(len(pts), 7.0 * s)), Tissue.ARTERY, within=canvas.body)
        controls = np.array([[0, 0, -8], [side * 28, 12, -50], [side * 54, 10, -135]]) * s + vessels.ivc[-1]
        pts, _ = polyline(controls, step_mm=3.0)
        canvas.paint_shape(Tube(pts, np.full(len(pts), 8.0 * s)), Tissue.VEIN, within=canvas.body)


def paint_great_vessels(canvas: Canvas, vessels: Vessels, present: dict[str, bool]) -> None:
    """The labelled IVC and aorta (highest priority of the organs: they run through everything)."""
    if present.get("inferior_vena_cava", True):
        canvas.paint_shape(
            Tube(vessels.ivc, vessels.ivc_radii),
            Tissue.VEIN,
            LABEL_IDS["inferior_vena_cava"],
            within=canvas.cavity,
        )
    if present.get("aorta", True):
        canvas.paint_shape(
            Tube(vessels.aorta, vessels.aorta_radii), Tissue.ARTERY, LABEL_IDS["aorta"], within=canvas.cavity
        )


def keep_largest_components(labels: np.ndarray) -> None:
    """Unlabel small fragments cut off an organ by later structures (ribs, vessels): one piece per organ."""
    for label_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        block = labels[box]
        pieces, count = ndimage.label(block == label_id)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            block[(pieces != 0) & (pieces != int(np.argmax(sizes)))] = 0


__all__ = [
    "Variation",
    "Vessels",
    "keep_largest_components",
    "paint_great_vessels",
    "paint_iliac_vessels",
    "paint_organs",
    "sample_vessels",
]
