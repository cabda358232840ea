"""The synthetic abdomen's anatomy: where each structure sits (LPS mm) and its CT number (HU).

Coordinates: x -> patient Left, y -> Posterior, z -> Superior, millimetres, (0, 0, 0) near the
middle of the abdomen (z = 0 at about L2, the renal hila). Positions follow adult anatomy: liver on
the patient's right (x < 0) under the right hemidiaphragm, spleen posterolateral left, stomach left
upper anterior, kidneys posterior beside the spine (right one lower), aorta left-anterior of the
spine down to its bifurcation at L4, IVC to its right, pancreas across the midline in front of the
aorta, gallbladder under the liver, bladder low and anterior in the pelvis.

:func:`render` paints, in a fixed priority order (later wins where shapes overlap), into a *tissue*
map (which CT number) and a *label* map (which organ id, 0 for unlabelled tissue such as bowel,
muscle and bone), so organs touch where they meet, as in a real scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from organdetr.datasets.synthetic.shapes import (
    Grid,
    Superquadric,
    Tube,
    frame,
    polyline,
    random_rotation,
    smooth_field,
)

LABEL_IDS = {
    "spleen": 1,
    "kidney_right": 2,
    "kidney_left": 3,
    "gallbladder": 4,
    "liver": 5,
    "stomach": 6,
    "pancreas": 7,
    "urinary_bladder": 21,
    "aorta": 52,
    "inferior_vena_cava": 63,
}
"""Organ name -> label id of TotalSegmentator's "total" map."""


class Tissue(IntEnum):
    """What a voxel is made of (decides its CT number); not the organ label."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    BOWEL = 3
    GAS = 4
    LUNG = 5
    CORTICAL_BONE = 6
    MARROW = 7
    DISC = 8
    CSF = 9
    STOOL = 10
    ARTERY = 11
    VEIN = 12
    LIVER = 13
    SPLEEN = 14
    KIDNEY_CORTEX = 15
    KIDNEY_MEDULLA = 16
    BILE = 17
    STOMACH = 18
    PANCREAS = 19
    URINE = 20


PHASES = ("native", "arterial", "portal")

# Mean HU ranges (low, high); a case draws one mean per tissue. Entries missing in a phase use "native".
_HU = {
    "native": {
        Tissue.AIR: (-1000, -1000),
        Tissue.FAT: (-115, -85),
        Tissue.MUSCLE: (40, 55),
        Tissue.BOWEL: (15, 40),
        Tissue.GAS: (-1000, -950),
        Tissue.LUNG: (-860, -760),
        Tissue.CORTICAL_BONE: (650, 1000),
        Tissue.MARROW: (170, 280),
        Tissue.DISC: (70, 100),
        Tissue.CSF: (5, 15),
        Tissue.STOOL: (-20, 60),
        Tissue.ARTERY: (35, 45),
        Tissue.VEIN: (35, 45),
        Tissue.LIVER: (55, 65),
        Tissue.SPLEEN: (44, 52),
        Tissue.KIDNEY_CORTEX: (30, 40),
        Tissue.KIDNEY_MEDULLA: (26, 36),
        Tissue.BILE: (0, 20),
        Tissue.STOMACH: (15, 35),
        Tissue.PANCREAS: (35, 48),
        Tissue.URINE: (0, 15),
    },
    "arterial": {
        Tissue.MUSCLE: (45, 60),
        Tissue.BOWEL: (30, 60),
        Tissue.ARTERY: (230, 330),
        Tissue.VEIN: (60, 100),
        Tissue.LIVER: (65, 85),
        Tissue.SPLEEN: (95, 135),
        Tissue.KIDNEY_CORTEX: (150, 220),
        Tissue.KIDNEY_MEDULLA: (60, 95),
        Tissue.STOMACH: (30, 50),
        Tissue.PANCREAS: (100, 130),
    },
    "portal": {
        Tissue.MUSCLE: (50, 65),
        Tissue.BOWEL: (40, 70),
        Tissue.ARTERY: (150, 200),
        Tissue.VEIN: (130, 170),
        Tissue.LIVER: (100, 125),
        Tissue.SPLEEN: (105, 125),
        Tissue.KIDNEY_CORTEX: (150, 190),
        Tissue.KIDNEY_MEDULLA: (130, 170),
        Tissue.STOMACH: (35, 55),
        Tissue.PANCREAS: (85, 110),
    },
}

# Amplitude (HU) of the slow texture inside each tissue (heterogeneity); arterial spleen is mottled.
_TEXTURE = {
    Tissue.FAT: 8,
    Tissue.MUSCLE: 5,
    Tissue.BOWEL: 15,
    Tissue.STOOL: 60,
    Tissue.LIVER: 6,
    Tissue.SPLEEN: 6,
    Tissue.KIDNEY_CORTEX: 6,
    Tissue.STOMACH: 8,
    Tissue.PANCREAS: 10,
    Tissue.MARROW: 40,
    Tissue.LUNG: 40,
}


def tissue_hu(rng: np.random.Generator, phase: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-case ``(mean HU [T], texture amplitude HU [T])`` lookup tables indexed by :class:`Tissue`."""
    table = _HU["native"] | _HU[phase]
    means = np.array([rng.uniform(*table[t]) for t in Tissue], dtype=np.float32)
    texture = np.array([_TEXTURE.get(t, 0.0) for t in Tissue], dtype=np.float32)
    if phase == "arterial":
        texture[Tissue.SPLEEN] = 25.0
    return means, texture


@dataclass
class Body:
    """Elliptic body cross-section (mm): semi-axes ``width`` (x), ``depth_front``/``depth_back`` (y),
    subcutaneous ``fat`` and abdominal-wall ``wall`` thickness, and the spine's centre line."""

    width: float
    depth_front: float
    depth_back: float
    fat: float
    wall: float
    spine_y: float
    scale: float

    def spine_centre_y(self, z: np.ndarray) -> np.ndarray:
        """y (mm) of the vertebral bodies' centre at height ``z``: lumbar lordosis pushes L3-L4 forward."""
        return self.spine_y - 10.0 * self.scale * np.exp(
            -(((z + 40.0 * self.scale) / (90.0 * self.scale)) ** 2)
        )


class Canvas:
    """The tissue and label maps being painted, with the grid and the body masks."""

    def __init__(self, grid: Grid, rng: np.random.Generator):
        self.grid = grid
        self.rng = rng
        self.tissue = np.zeros(grid.size, dtype=np.uint8)
        self.labels = np.zeros(grid.size, dtype=np.uint8)
        self.cavity = np.zeros(grid.size, dtype=bool)
        self.body = np.zeros(grid.size, dtype=bool)

    def paint(self, slices, mask: np.ndarray, tissue: Tissue, label: int = 0) -> None:
        """Set ``tissue`` and ``label`` where ``mask`` (a boolean array on the block ``slices``)."""
        self.tissue[slices][mask] = tissue
        self.labels[slices][mask] = label

    def paint_shape(self, shape, tissue: Tissue, label: int = 0, *, within: np.ndarray | None = None) -> list:
        """Paint ``f < 1`` of each patch of ``shape`` (only where ``within``, if given); return patches."""
        patches = shape.patches(self.grid, self.rng)
        for patch in patches:
            mask = patch.f < 1.0
            if within is not None:
                mask &= within[patch.slices]
            self.paint(patch.slices, mask, tissue, label)
        return patches


# ----------------------------------------------------------------------------- sampling helpers


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


# ----------------------------------------------------------------------------- painting, in order


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
    vessels = _sample_vessels(rng, body)
    _paint_iliac_vessels(canvas, body, vessels)
    _paint_organs(canvas, body, present, variation)
    _paint_great_vessels(canvas, vessels, present)
    _paint_skeleton(canvas, body)
    _keep_largest_components(canvas.labels)
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


def _paint_organs(canvas: Canvas, body: Body, present: dict[str, bool], variation: Variation) -> None:
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


def _sample_vessels(rng: np.random.Generator, body: Body) -> Vessels:
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


def _paint_iliac_vessels(canvas: Canvas, body: Body, vessels: Vessels) -> None:
    """Iliac arteries and veins (unlabelled) from the aortic bifurcation / IVC confluence into the pelvis."""
    s = body.scale
    for side in (-1.0, 1.0):
        controls = np.array([[0, 0, 0], [side * 30, 8, -45], [side * 58, 5, -130]]) * s + vessels.aorta[-1]
        pts, _ = polyline(controls, step_mm=3.0)
        canvas.paint_shape(Tube(pts, np.full(len(pts), 7.0 * s)), Tissue.ARTERY, within=canvas.body)
        controls = np.array([[0, 0, -8], [side * 28, 12, -50], [side * 54, 10, -135]]) * s + vessels.ivc[-1]
        pts, _ = polyline(controls, step_mm=3.0)
        canvas.paint_shape(Tube(pts, np.full(len(pts), 8.0 * s)), Tissue.VEIN, within=canvas.body)


def _paint_great_vessels(canvas: Canvas, vessels: Vessels, present: dict[str, bool]) -> None:
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


def _keep_largest_components(labels: np.ndarray) -> None:
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
