"""The synthetic abdomen's anatomy: where each structure sits (LPS mm), painted in order by :func:`render`.

Coordinates: x -> patient Left, y -> Posterior, z -> Superior, millimetres, (0, 0, 0) near the
middle of the abdomen (z = 0 at about L2, the renal hila). Positions follow adult anatomy: liver on
the patient's right (x < 0) under the right hemidiaphragm, spleen posterolateral left, stomach left
upper anterior, kidneys posterior beside the spine (right one lower), aorta left-anterior of the
spine down to its bifurcation at L4, IVC to its right, pancreas across the midline in front of the
aorta, gallbladder under the liver, bladder low and anterior in the pelvis.

:func:`render` paints, in a fixed priority order (later wins where shapes overlap), into a *tissue*
map (which CT number) and a *label* map (which organ id, 0 for unlabelled tissue such as bowel,
muscle and bone), so organs touch where they meet, as in a real scan. This module paints the body,
lungs, colon, psoas and skeleton; the labelled organs and vessels are in
:mod:`organdetr.datasets.synthetic.organs`, tissues and their CT numbers in
:mod:`organdetr.datasets.synthetic.tissues`.
"""

from __future__ import annotations

import numpy as np

from organdetr.datasets.synthetic.canvas import Body, Canvas
from organdetr.datasets.synthetic.organs import (
    Variation,
    keep_largest_components,
    paint_great_vessels,
    paint_iliac_vessels,
    paint_organs,
    sample_vessels,
)
from organdetr.datasets.synthetic.shapes import Grid, Superquadric, Tube, frame, polyline, smooth_field
from organdetr.datasets.synthetic.tissues import Tissue


def render(
    grid: Grid,
    rng: np.random.Generator,
    *,
    present: dict[str, bool],
    variation: Variation,
    body_scale: float | None = None,
):
    """Paint one abdomen onto ``grid``: ``(tissue uint8 [I,J,K], labels uint8 [I,J,K], body Body)``.

    ``present[name]`` is False for organs this case lacks (e.g. after cholecystectomy). ``body_scale``
    scales the whole anatomy (patient size); ``None`` draws it in ``[0.92, 1.08]``.
    """
    canvas = Canvas(grid, rng)
    scale = rng.uniform(0.92, 1.08) if body_scale is None else float(body_scale)
    body = Body(
        width=rng.uniform(150, 178) * scale,
        depth_front=rng.uniform(105, 130) * scale,
        depth_back=rng.uniform(100, 118) * scale,
        fat=rng.uniform(8, 35) * scale,
        wall=rng.uniform(8, 14) * scale,
        spine_y=rng.uniform(12, 22) * scale,
        scale=scale,
    )
    _paint_body(canvas, body)
    _paint_lungs(canvas, body)
    _paint_colon(canvas, body)
    _paint_psoas(canvas, body)
    vessels = sample_vessels(rng, body)
    paint_iliac_vessels(canvas, body, vessels)
    paint_organs(canvas, body, present, variation)
    paint_great_vessels(canvas, vessels, present)
    _paint_skeleton(canvas, body)
    keep_largest_components(canvas.labels)
    return canvas.tissue, canvas.labels, body


def _paint_body(canvas: Canvas, body: Body) -> None:
    """Air, subcutaneous fat, abdominal wall muscle, then bowel loops / fat / gas filling the cavity."""
    x, y, z = canvas.grid.axes()
    s = body.scale
    widen = 1.0 + 0.06 * np.exp(-(((z + 150 * s) / (60 * s)) ** 2))  # hips widen the pelvis a little

    def radius(shrink: float) -> np.ndarray:
        rx = (body.width - shrink) * widen
        ry_front, ry_back = body.depth_front - shrink, body.depth_back - shrink
        yn = np.where(y < 0, y / ry_front, y / ry_back)
        return (x / rx) ** 2 + yn**2  # squared normalised radius, [I, J, K]

    canvas.body = radius(0.0) < 1.0
    inner = radius(body.fat) < 1.0
    canvas.cavity = radius(body.fat + body.wall) < 1.0
    canvas.tissue[canvas.body] = Tissue.FAT
    canvas.tissue[inner] = Tissue.MUSCLE
    # the retroperitoneum and bowel: a mesh of soft-tissue loops in fat with gas pockets
    size, spacing = canvas.grid.size, np.asarray(canvas.grid.spacing)
    nodes = tuple(max(int(n * sp / 28.0), 2) for n, sp in zip(size, spacing, strict=True))
    loops = smooth_field(canvas.rng, size, nodes, order=1)
    gas = smooth_field(canvas.rng, size, nodes, order=1)
    contents = np.where(loops > -0.15, Tissue.BOWEL, Tissue.FAT).astype(np.uint8)
    contents[(gas > 0.55) & (loops > 0.1)] = Tissue.GAS
    canvas.tissue[canvas.cavity] = contents[canvas.cavity]


def _paint_lungs(canvas: Canvas, body: Body) -> None:
    """Lung bases under the domes of the diaphragm (top of the field of view)."""
    s = body.scale
    for side in (-1.0, 1.0):
        centre = np.array([side * 80.0, 10.0, 235.0]) * s
        semi = np.array([75.0, 95.0, 95.0]) * s
        shape = Superquadric(centre, semi, np.eye(3), deform=0.05)
        canvas.paint_shape(shape, Tissue.LUNG, within=canvas.cavity)


def _paint_colon(canvas: Canvas, body: Body) -> None:
    """Ascending, transverse, descending colon and rectum: stool mottled with gas (unlabelled)."""
    rng, s = canvas.rng, body.scale
    controls = (
        np.array(
            [
                [-95, 10, -90],
                [-105, 0, -20],
                [-100, -10, 45],
                [-60, -60, 55],
                [0, -75, 45],
                [60, -65, 60],
                [100, -10, 65],
                [110, 10, 0],
                [100, 0, -70],
                [40, -20, -110],
                [0, 40, -130],
                [0, 45, -200],
            ],
            dtype=np.float64,
        )
        * s
    )
    controls += rng.normal(0.0, 8.0, size=controls.shape)
    points, t = polyline(controls, step_mm=4.0)
    radii = (22.0 - 6.0 * t + 4.0 * np.sin(t * 40.0 + rng.uniform(0, 6))) * s
    for patch in Tube(points, radii).patches(canvas.grid):
        inside = (patch.f < 1.0) & canvas.cavity[patch.slices]
        canvas.paint(patch.slices, inside, Tissue.STOOL)
        bubbles = smooth_field(rng, patch.f.shape, 3) > 0.2
        canvas.paint(patch.slices, inside & bubbles & (patch.f < 0.8), Tissue.GAS)


def _paint_psoas(canvas: Canvas, body: Body) -> None:
    """Psoas muscles from L1 down into the pelvis, thickening as they descend beside the spine."""
    s = body.scale
    for side in (-1.0, 1.0):
        z = np.linspace(40.0, -200.0, 61) * s
        y = body.spine_centre_y(z) + np.linspace(0.0, -45.0, z.size) * s
        x = side * (28.0 + np.linspace(0.0, 30.0, z.size)) * s
        radii = (8.0 + 16.0 * np.sin(np.linspace(0.15, 2.4, z.size))) * s
        canvas.paint_shape(Tube(np.stack([x, y, z], 1), radii), Tissue.MUSCLE, within=canvas.body)


def _paint_skeleton(canvas: Canvas, body: Body) -> None:
    """Paraspinal muscles, lumbar vertebrae with discs and canal, ribs, iliac wings (all unlabelled)."""
    grid, s = canvas.grid, body.scale
    x0 = 55.0 * s
    slices = grid.slices_for(np.array([-x0, body.spine_y - 60 * s, -1e4]), np.array([x0, 1e4, 1e4]))
    if slices is None:
        return
    x, y, z = grid.block(slices)
    yc = body.spine_centre_y(z)
    in_body = canvas.body[slices]
    for side in (-1.0, 1.0):  # erector spinae
        muscle = ((x - side * 30 * s) / (24 * s)) ** 2 + ((y - yc - 58 * s) / (24 * s)) ** 2 < 1.0
        canvas.paint(slices, muscle & in_body, Tissue.MUSCLE)
    ax, ay = 24.0 * s, 17.0 * s
    level = np.mod(z - canvas.rng.uniform(0, 36), 36.0 * s) / s  # position within one vertebra + disc (mm)
    disc = level < 8.0
    r_body = (x / ax) ** 2 + ((y - yc) / ay) ** 2
    vertebral_body = r_body < 1.0
    canvas.paint(slices, vertebral_body & ~disc, Tissue.CORTICAL_BONE)
    canvas.paint(slices, (r_body < 0.7) & ~disc, Tissue.MARROW)
    canvas.paint(slices, vertebral_body & disc, Tissue.DISC)
    canal_y = yc + ay + 9.0 * s
    r_canal = (x / (9.0 * s)) ** 2 + ((y - canal_y) / (8.0 * s)) ** 2
    arch = (r_canal < 2.6) & ~disc
    spinous = (np.abs(x) < 4.5 * s) & (y > canal_y) & (y < canal_y + 42 * s) & ~disc
    transverse = (np.abs(y - canal_y + 4 * s) < 5 * s) & (np.abs(x) < 45 * s) & (level > 14) & (level < 26)
    canvas.paint(slices, (arch | spinous | transverse) & in_body, Tissue.CORTICAL_BONE)
    canvas.paint(slices, r_canal < 1.0, Tissue.CSF)
    _paint_ribs(canvas, body)
    _paint_pelvis(canvas, body)


def _paint_ribs(canvas: Canvas, body: Body) -> None:
    """Lower ribs: arcs just inside the abdominal wall, sloping down toward the front."""
    s = body.scale
    for z0 in np.arange(60.0, 300.0, 24.0) * s:
        for side in (-1.0, 1.0):
            theta = np.linspace(np.deg2rad(70), np.deg2rad(-40 if z0 > 110 * s else 10), 24)  # from the back
            rx = body.width - body.fat - body.wall * 0.5
            x = side * rx * np.cos(theta) * np.sqrt(np.clip(1 - (np.sin(theta)) ** 2 * 0.2, 0.2, 1))
            y = np.where(theta > 0, body.depth_back, body.depth_front) - body.fat - body.wall * 0.5
            y = y * np.sin(theta)
            z = z0 - 90.0 * s * (1 - np.sin(theta)) / 2.0
            patches = Tube(np.stack([x, y, z], 1), np.full(theta.size, 5.0 * s)).patches(canvas.grid)
            for patch in patches:
                inside = (patch.f < 1.0) & canvas.body[patch.slices]
                canvas.paint(patch.slices, inside, Tissue.CORTICAL_BONE)
                canvas.paint(patch.slices, inside & (patch.f < 0.5), Tissue.MARROW)


def _paint_pelvis(canvas: Canvas, body: Body) -> None:
    """Iliac wings: curved bony plates low and lateral, opening forward."""
    s = body.scale
    for side in (-1.0, 1.0):
        centre = np.array([side * 88.0, 25.0, -145.0]) * s
        rotation = frame(np.array([side * 0.35, -0.1, 1.0]), roll_deg=side * 50.0)
        shape = Superquadric(centre, np.array([10.0, 52.0, 55.0]) * s, rotation, deform=0.1)
        for patch in shape.patches(canvas.grid, canvas.rng):
            inside = (patch.f < 1.0) & canvas.body[patch.slices]
            canvas.paint(patch.slices, inside, Tissue.CORTICAL_BONE)
            canvas.paint(patch.slices, inside & (patch.f < 0.7), Tissue.MARROW)


__all__ = ["render"]
