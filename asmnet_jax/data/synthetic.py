"""Procedural cartoon faces rendered with OpenCV: the offline default data set and the test workhorse.

Each face is the project's 3D template (:mod:`asmnet_jax.data.face3d`) deformed by a random
identity (face and jaw width, chin length, eye spacing and size, nose length/width/depth, mouth
width, lips, brows, a small smooth asymmetry) and expression (mouth opening that drops the lower lip
and the jaw, smile, eye closure, brow raise), turned by a random head pose (yaw +-60, pitch +-30,
roll +-30 degrees, :mod:`asmnet_jax.data.pose` convention) and projected by a pinhole camera. The
landmarks are the exact projections of the 3D points in 0-based pixel-centre coordinates (also where
the face hides them, as in 300W), and the pose label is exactly the rendering pose.

Drawing, back to front, with anti-aliased filled polygons and ellipses: background (gradient,
texture, clutter), shoulders, long hair behind the head, neck, ears that point away, the face (skin
silhouette = convex hull of the projected head, eyes with sclera/iris/pupil under eyelids that follow
the closure, brows, mouth interior and teeth, lips), shaded by a directional light on a head
ellipsoid, then the nose sides (each shaded by its own normal, the far side first and only when it
faces the camera), nostrils, the near ear and the hair cap (back-facing parts culled), then blur and
noise. Self-occluded parts are not painted: features are clipped to the face silhouette and the
protruding nose is drawn over the far eye.

Camera: a pinhole with focal length ``focal_factor * size`` pixels (default 4 S, a mild
perspective); the head is placed on the optical axis at the distance that gives the chosen face
size, and the principal point is moved to put the face at a random place in the frame, so a face
looks the same wherever it lands. A record's template landmarks ``p`` (the pose frame of
:mod:`asmnet_jax.data.face3d`) are seen at ``X_cam = F @ rotation @ p + translation`` with
``F = diag(1, -1, -1)`` and ``rotation = pose.rotation_matrix(*pose)``, through the record's
``camera`` intrinsics. The drawing geometry is built in the template's design frame
(:func:`asmnet_jax.data.face3d.design_to_template`).

Every face depends only on ``(seed, index)`` (:func:`face_record`), so any index can be generated on
its own, in any order or process.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, Optional

import cv2
import numpy as np

from asmnet_jax.data import face3d
from asmnet_jax.data.pose import CAMERA_FLIP, rotation_matrix
from asmnet_jax.landmarks import check_num_landmarks

MM = 1.0 / face3d.MM_PER_UNIT  # one millimetre in template units

#: Default pose ranges (degrees): yaw, pitch, roll are uniform in +-these.
POSE_RANGE = (60.0, 30.0, 30.0)

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT

# Template heights (units) used by the identity and expression deformations.
_EYE_Y, _BROW_Y, _MOUTH_Y, _CHIN_Y = 34 * MM, 56 * MM, -31 * MM, -81 * MM
# Head reference point (design frame, units): the head is placed with it on the optical axis.
_REFERENCE = np.array([0.0, -10 * MM, -45 * MM])

# Cranium ellipsoid (mm): centre and semi-axes, before the identity's width/height/depth.
_CRANIUM_CENTRE_MM = np.array([0.0, 45.0, -112.0])
_CRANIUM_AXES_MM = np.array([76.0, 108.0, 98.0])

_SKIN_TONES = np.array([
    [250, 222, 200], [236, 192, 160], [224, 172, 135], [198, 140, 100], [168, 112, 78],
    [134, 86, 58], [100, 64, 44], [244, 204, 170], [215, 160, 120]], np.float64)
_HAIR_COLOURS = np.array([
    [25, 20, 18], [60, 40, 28], [100, 66, 40], [150, 105, 60], [205, 170, 110], [160, 70, 35],
    [140, 140, 140], [225, 220, 210], [45, 30, 25]], np.float64)
_IRIS_COLOURS = np.array([
    [90, 55, 30], [60, 40, 25], [70, 110, 160], [90, 130, 100], [110, 110, 120], [130, 90, 50]],
    np.float64)


# --------------------------------------------------------------------------------------------------
# Parameters


def sample_identity(rng: np.random.Generator, strength: float = 1.0, symmetric: bool = False) -> dict:
    """Random identity shape parameters (template units or relative factors; 0 = the template).

    ``strength`` scales all deformations; ``symmetric=True`` leaves out the random asymmetry, so
    the face is exactly mirror-symmetric.
    """
    def u(a):
        return float(rng.uniform(-a, a) * strength)

    identity = dict(
        face_width=u(0.07), jaw_width=u(0.12), chin_length=u(0.09), head_height=u(0.08),
        head_depth=u(0.06), eye_spacing=u(0.035), eye_size=u(0.15), eye_height=u(0.03),
        nose_length=u(0.08), nose_width=u(0.2), nose_depth=u(0.3), mouth_width=u(0.12),
        mouth_height=u(0.03), lip_upper=u(0.4), lip_lower=u(0.4), brow_height=u(0.04),
        brow_thickness=u(0.35))
    amp = 0.0 if symmetric else 0.012 * strength
    identity["asymmetry"] = np.concatenate(
        [rng.normal(0.0, 1.0, (3, 3, 1)) * amp, rng.uniform(0, 2 * np.pi, (3, 3, 1))], axis=2)
    return identity


def sample_expression(rng: np.random.Generator) -> dict:
    """Random expression: ``mouth_open`` (units of lower-lip drop, 0-0.3), ``smile`` (-0.4-1),
    ``eye_closure`` (right, left) each 0 (open) - 1 (closed), ``brow_raise`` (units)."""
    mouth_open = float(rng.uniform(0.0, 0.3) if rng.random() < 0.45 else rng.uniform(0.0, 0.02))
    smile = float(rng.uniform(-0.4, 1.0))
    if rng.random() < 0.12:
        closure = rng.uniform(0.7, 1.0) * np.ones(2)
    else:
        closure = np.clip(rng.uniform(-0.25, 0.35) + rng.normal(0, 0.04, 2), 0.0, 1.0)
    return dict(mouth_open=mouth_open, smile=smile, eye_closure=tuple(float(c) for c in closure),
                brow_raise=float(rng.uniform(-0.02, 0.05)))


NEUTRAL_EXPRESSION = dict(mouth_open=0.0, smile=0.0, eye_closure=(0.0, 0.0), brow_raise=0.0)


def sample_pose(rng: np.random.Generator, pose_range=POSE_RANGE) -> np.ndarray:
    """(yaw, pitch, roll) degrees (3,), uniform in +-``pose_range``."""
    r = np.asarray(pose_range, np.float64)
    return rng.uniform(-r, r)


def sample_appearance(rng: np.random.Generator) -> dict:
    """Random look: colours ``skin``, ``hair``, ``lips``, ``iris``, ``sclera``, ``clothes`` (RGB
    0-255, (3,)), ``light`` (unit direction (3,) in the view frame: x right, y up, z toward the
    viewer) and ``ambient`` (0-1), ``hair_style`` (0 bald, 1 short, 2 fringe, 3 long),
    ``hairline`` (mm), ``ears`` and ``shoulders`` (drawn or not), ``background`` (two RGB colours
    (2, 3) of a gradient), ``clutter`` (number of random shapes), ``blur`` (Gaussian sigma, px at
    256) and ``noise`` (pixel noise standard deviation, grey levels)."""
    def mix(table):
        i, j = rng.integers(0, len(table), 2)
        t = rng.random()
        return (1 - t) * table[i] + t * table[j]

    skin = np.clip(mix(_SKIN_TONES) * rng.uniform(0.9, 1.08, 3), 0, 255)
    hair = np.clip(mix(_HAIR_COLOURS) * rng.uniform(0.85, 1.15), 0, 255)
    lips = np.clip(skin * np.array([0.85, 0.55, 0.55]) + np.array([25, 0, 5]) * rng.uniform(0.3, 1.2),
                   0, 255)
    light = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.3, 0.9), rng.uniform(0.5, 1.0)])
    return dict(
        skin=skin, hair=hair, lips=lips, iris=mix(_IRIS_COLOURS),
        sclera=np.array([240, 238, 232], np.float64) * rng.uniform(0.85, 1.0),
        light=light / np.linalg.norm(light), ambient=float(rng.uniform(0.35, 0.6)),
        hair_style=int(rng.choice(4, p=[0.08, 0.42, 0.3, 0.2])),  # bald, short, fringe, long
        hairline=float(rng.uniform(-12, 8)),  # mm, relative to the template hairline
        ears=bool(rng.random() < 0.85),
        clothes=mix(np.array([[30, 30, 40], [200, 200, 205], [40, 70, 140], [140, 30, 40],
                              [60, 110, 60], [120, 100, 80]], np.float64)),
        shoulders=bool(rng.random() < 0.9),
        background=rng.uniform(0, 255, (2, 3)),
        clutter=int(rng.integers(0, 14)),
        blur=float(rng.uniform(0.0, 1.1)),
        noise=float(rng.uniform(0.0, 8.0)),
    )


# --------------------------------------------------------------------------------------------------
# 3D geometry


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _gauss(v, sigma):
    return np.exp(-0.5 * (v / sigma) ** 2)


def _identity_warp(points, identity: dict) -> np.ndarray:
    """Smooth identity deformation of template points (m, 3) (units) -> (m, 3)."""
    p = np.asarray(points, np.float64)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    out = p.copy()
    low = _smoothstep((_EYE_Y - y) / (_EYE_Y - _CHIN_Y))
    sx = (1 + identity["face_width"]) * (1 + identity["jaw_width"] * low)
    sx = sx * (1 + identity["mouth_width"] * _gauss(y - _MOUTH_Y, 0.13) * _gauss(x, 0.4))
    nose = _gauss(x, 0.16) * np.clip((0.45 - y) / 0.45, 0, 1) * np.where(
        y > -0.12, 1.0, _gauss(y + 0.12, 0.05))
    sx = sx * (1 + identity["nose_width"] * _gauss(y + 0.06, 0.1) * _gauss(x, 0.22) * (z > -0.35))
    out[:, 0] = x * sx + identity["eye_spacing"] * np.tanh(x / 0.06) * _gauss(y - _EYE_Y, 0.15)
    dy = -identity["nose_length"] * nose
    dy += identity["brow_height"] * _gauss(y - _BROW_Y, 0.1) * (1 - _gauss(x, 0.1))
    dy += identity["eye_height"] * _gauss(y - _EYE_Y, 0.1) * (1 - _gauss(x, 0.12))
    dy += identity["mouth_height"] * _gauss(y - _MOUTH_Y, 0.12) * _gauss(x, 0.45)
    dy -= identity["chin_length"] * np.clip((_MOUTH_Y - y) / (_MOUTH_Y - _CHIN_Y), 0, 1.2)
    out[:, 1] = y + dy
    out[:, 2] = z + identity["nose_depth"] * nose * np.clip(z + 0.3, 0, None)
    asym = np.asarray(identity.get("asymmetry", np.zeros((3, 3, 2))))
    if np.any(asym[..., 0]):
        freqs = np.array([[2.1, 0.7, 0.3], [0.5, 2.3, 0.9], [1.3, -1.1, 1.7]])
        phase = p @ freqs.T  # (m, 3)
        for k in range(3):
            out[:, k] += np.sum(asym[k, :, 0] * np.sin(phase + asym[k, :, 1]), axis=1)
    return out


def _mouth_open_weight(points):
    p = np.asarray(points, np.float64)
    return np.clip((_MOUTH_Y - 0.05 - p[:, 1]) / 0.25, 0, 1) * _gauss(p[:, 0], 0.45)


@functools.lru_cache(maxsize=None)
def _aux_template() -> dict:
    """Extra 3D points of the template used only for drawing (units), symmetric pairs."""
    def pair(points_mm):
        half = np.asarray(points_mm, np.float64) * MM
        return np.concatenate([half, half * np.array([-1.0, 1.0, 1.0])])

    cheeks = np.concatenate([pair([
        [-58, 35, -64], [-54, 8, -60], [-50, -20, -55], [-40, -48, -47], [-22, -64, -36],
        [-38, 12, -44], [-30, -12, -34], [-42, 48, -44], [-20, 70, -30]]),
        np.array([[0, -64, -22], [0, -74, -26], [0, 72, -24], [0, 52, -19]]) * MM])
    # Nose: left/right side outline (bridge side, alar crease) and the alar wing centres.
    nose_side = pair([[-7, 36, -25], [-9, 25, -20], [-10, 13, -15], [-15, 3, -18], [-18, -4, -22]])
    alar = pair([[-14.5, -3.5, -18]])
    nostrils = pair([[-7.5, -7.5, -11]])
    ears = pair([[-79, 20, -102]])
    return dict(cheeks=cheeks, nose_side=nose_side, alar=alar, nostrils=nostrils, ears=ears)


def face_geometry(identity: dict, expression: dict) -> dict:
    """The deformed 3D face in the template's design frame (units): ``landmarks68`` (68, 3),
    ``brow_thickness`` (outer, inner), the cranium ellipsoid (``cranium_centre``, ``cranium_axes``)
    and extra drawing points (``cheeks``, ``nose_side``, ``alar``, ``nostrils``, ``ears``)."""
    base = face3d.mean_face(68, design_frame=True)
    aux = {k: np.array(v) for k, v in _aux_template().items()}
    keys = sorted(aux)
    warped = _identity_warp(np.concatenate([base] + [aux[k] for k in keys]), identity)
    lm, start = warped[:68], 68
    for key in keys:
        aux[key], start = warped[start:start + len(aux[key])], start + len(aux[key])

    # Eye size (about each eye's centre) and lip thickness, on the landmarks.
    for eye in (slice(36, 42), slice(42, 48)):
        centre = lm[eye].mean(axis=0)
        lm[eye] = centre + (lm[eye] - centre) * (1 + identity["eye_size"])
    inner_y = lm[60:68, 1].mean()
    lm[49:54, 1] = inner_y + (lm[49:54, 1] - inner_y) * (1 + identity["lip_upper"])
    lm[55:60, 1] = inner_y + (lm[55:60, 1] - inner_y) * (1 + identity["lip_lower"])

    # Expression.
    o = expression.get("mouth_open", 0.0)
    s = expression.get("smile", 0.0)
    jaw_w = _mouth_open_weight(lm[:17])
    lm[:17, 1] -= o * jaw_w
    lm[:17, 2] -= 0.25 * o * jaw_w
    cw = _mouth_open_weight(aux["cheeks"])
    aux["cheeks"][:, 1] -= o * cw
    aux["cheeks"][:, 2] -= 0.25 * o * cw
    lower = {55: 0.8, 56: 1.0, 57: 1.0, 58: 1.0, 59: 0.8, 65: 0.92, 66: 1.0, 67: 0.92,
             48: 0.3, 54: 0.3, 60: 0.3, 64: 0.3, 61: -0.08, 62: -0.08, 63: -0.08}
    for i, w in lower.items():
        lm[i, 1] -= o * w
    for i, w in {48: 1.0, 54: 1.0, 60: 1.0, 64: 1.0, 49: 0.4, 53: 0.4, 59: 0.5, 55: 0.5,
                 61: 0.4, 63: 0.4, 65: 0.4, 67: 0.4}.items():
        lm[i, 0] += np.sign(lm[i, 0]) * 0.03 * s * w
        lm[i, 1] += 0.045 * s * w
        lm[i, 2] -= 0.02 * s * w
    for (upper, lower_pts), c in zip((((37, 38), (41, 40)), ((43, 44), (47, 46))),
                                     expression.get("eye_closure", (0.0, 0.0))):
        for u, l in zip(upper, lower_pts):
            h = lm[u, 1] - lm[l, 1]
            lm[u, 1] -= c * 0.78 * h
            lm[l, 1] += c * 0.22 * h
    raise_ = expression.get("brow_raise", 0.0)
    lm[17:27, 1] += raise_

    thickness = np.array(face3d.BROW_THICKNESS) * (1 + identity["brow_thickness"])
    cranium_axes = _CRANIUM_AXES_MM * MM * np.array(
        [1 + identity["face_width"], 1 + identity["head_height"], 1 + identity["head_depth"]])
    cranium_centre = _CRANIUM_CENTRE_MM * MM
    return dict(landmarks68=lm, brow_thickness=thickness, cranium_centre=cranium_centre,
                cranium_axes=cranium_axes, **aux)


def landmarks_3d(geometry: dict, num_landmarks: int) -> np.ndarray:
    """The face's 3D landmarks (n, 3) in the markup ``num_landmarks`` (design frame, see
    :func:`asmnet_jax.data.face3d.design_to_template`)."""
    lm = geometry["landmarks68"]
    if check_num_landmarks(num_landmarks) == 68:
        return lm.copy()
    return face3d.to_98(lm, brow_thickness=geometry["brow_thickness"])


@functools.lru_cache(maxsize=None)
def _unit_sphere_grid(n_theta: int = 24, n_phi: int = 12):
    """Unit-sphere lat-long grid: points (n_phi, n_theta, 3), theta=0 toward +z (front)."""
    theta = np.linspace(-np.pi, np.pi, n_theta, endpoint=False)
    phi = np.linspace(-np.pi / 2, np.pi / 2, n_phi)
    t, f = np.meshgrid(theta, phi)
    return np.stack([np.sin(t) * np.cos(f), np.sin(f), np.cos(t) * np.cos(f)], axis=-1)


# --------------------------------------------------------------------------------------------------
# Drawing helpers


def _fix(points) -> np.ndarray:
    """Pixel coordinates (..., 2) -> OpenCV fixed point int32 for ``shift=_SHIFT``."""
    return np.round(np.asarray(points, np.float64) * _ONE).astype(np.int32)


def _colour(c) -> tuple:
    values = c.tolist() if isinstance(c, np.ndarray) else c
    if not isinstance(values, (list, tuple)):
        values = [values]
    return tuple(min(255.0, max(0.0, float(v))) for v in values)


def _fill(image, polygons, colour, aa=True):
    """Fills polygons (each (k, 2) float pixels, or int32 already in fixed point) in one call."""
    polys = [p if p.dtype == np.int32 else _fix(p) for p in polygons if len(p) >= 3]
    if polys:
        cv2.fillPoly(image, polys, _colour(colour), cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def _polyline(image, points, colour, thickness, closed=False):
    t = max(1, int(round(thickness)))
    cv2.polylines(image, [_fix(points).reshape(-1, 1, 2)], closed, _colour(colour), t, cv2.LINE_AA,
                  _SHIFT)


def _cross(a, b):
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _disc(centre, normal, radius, up=(0.0, 1.0, 0.0), count=16, aspect=1.0):
    """3D circle (count, 3) of ``radius`` (``aspect * radius`` along ``up``) about ``centre`` in the
    plane normal to ``normal``."""
    n = np.asarray(normal, np.float64)
    n = n / math.sqrt(n @ n)
    u = _cross(np.asarray(up, np.float64), n)
    u = u / math.sqrt(u @ u)
    v = _cross(n, u)
    cos_a, sin_a = _unit_circle(count)
    return np.asarray(centre) + radius * (cos_a * u + aspect * sin_a * v)


def draw_landmarks(image, points, color=(0, 255, 0), radius: float = 1.5) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) uint8 with anti-aliased filled dots at ``points`` (n, 2), 0-based
    pixel coordinates (sub-pixel accurate). ``color`` is in the image's channel order."""
    out = np.ascontiguousarray(np.array(image, np.uint8, copy=True))
    r = max(1, int(round(radius * _ONE)))
    for x, y in _fix(np.asarray(points, np.float64).reshape(-1, 2)):
        cv2.circle(out, (int(x), int(y)), r, tuple(int(c) for c in color), -1, cv2.LINE_AA, _SHIFT)
    return out


def image_grid(images, columns: int, pad: int = 2, value: int = 255) -> np.ndarray:
    """Tiles equally sized images (N, H, W, 3) into one (rows * (H + pad) + pad, ...) uint8 image."""
    images = np.asarray(images, np.uint8)
    n, h, w, c = images.shape
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), value, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, columns)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = im
    return out


_NOISE_TILE_SIGMA = 24.0


@functools.lru_cache(maxsize=4)
def _noise_tile(size: int) -> np.ndarray:
    """A fixed (2 size, 2 size, 3) uint8 tile of Gaussian noise, mean 128 and standard deviation
    ``_NOISE_TILE_SIGMA``; crops of it make the pixel noise."""
    normal = np.random.default_rng(20240611).standard_normal((2 * size, 2 * size, 3), np.float32)
    tile = np.clip(np.round(128 + _NOISE_TILE_SIGMA * normal), 0, 255).astype(np.uint8)
    tile.setflags(write=False)
    return tile


def _background(rng, size, appearance) -> np.ndarray:
    a, b = appearance["background"]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * np.linspace(-1, 1, 8)[None, :] + np.sin(angle) * np.linspace(-1, 1, 8)[:, None])
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    small = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
    small = small + rng.normal(0, 18, (8, 8, 1)) + rng.normal(0, 8, (8, 8, 3))
    small = np.clip(small, 0, 255).astype(np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(appearance["clutter"]):
        colour = rng.uniform(0, 255, 3)
        kind = rng.integers(0, 4)
        c = rng.uniform(-0.1, 1.1, 2) * size
        if kind == 0:
            wh = rng.uniform(0.05, 0.5, 2) * size
            box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(wh[0]), float(wh[1])),
                                 float(rng.uniform(0, 90))))
            _fill(image, [box], colour)
        elif kind == 1:
            axes = rng.uniform(0.03, 0.25, 2) * size
            cv2.ellipse(image, (_fix(c)[0], _fix(c)[1]), (int(axes[0] * _ONE), int(axes[1] * _ONE)),
                        float(rng.uniform(0, 180)), 0, 360, _colour(colour), -1, cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            end = c + rng.normal(0, 0.4, 2) * size
            _polyline(image, [c, end], colour, rng.uniform(1, 0.03 * size))
        else:
            pts = c + rng.normal(0, 0.12, (int(rng.integers(3, 6)), 2)) * size
            _fill(image, [pts], colour)
    return image


# --------------------------------------------------------------------------------------------------
# Rendering


def render_face(rng: np.random.Generator, size: int = 256, num_landmarks: int = 68, pose=None,
                identity: Optional[dict] = None, expression: Optional[dict] = None,
                appearance: Optional[dict] = None, face_fraction: Optional[float] = None,
                offset=None, focal_factor: float = 4.0) -> dict:
    """Renders one random face; any of the parameters may be given to fix it.

    Args:
      rng: the random generator (all randomness comes from it).
      size: output side S in pixels.
      num_landmarks: 68 or 98.
      pose: (yaw, pitch, roll) degrees, default :func:`sample_pose`.
      identity, expression, appearance: dicts as from the ``sample_*`` functions.
      face_fraction: frontal extent of the template's landmarks over S (default U(0.45, 0.65)).
      offset: (dx, dy) pixels of the principal point (and so the face) from the image centre
        (default random within a quarter of the frame's spare room, keeping the landmarks at
        least 2 % of S inside the frame where the face fits).
      focal_factor: focal length in units of S.

    Returns a dict: ``image`` (S, S, 3) uint8 RGB, ``landmarks`` (n, 2) float32 0-based pixel
    coordinates, ``pose`` (3,) float32 degrees, ``landmarks_3d`` (n, 3) float32 (template units),
    ``camera`` (3, 3) float64 intrinsics, ``rotation`` (3, 3) and ``translation`` (3,) with
    ``X_cam = F @ rotation @ p + translation``, and the parameters ``identity``, ``expression``,
    ``appearance``, ``face_fraction``, ``offset``.
    """
    n = check_num_landmarks(num_landmarks)
    size = int(size)
    pose = sample_pose(rng) if pose is None else np.asarray(pose, np.float64)
    identity = sample_identity(rng) if identity is None else identity
    expression = sample_expression(rng) if expression is None else expression
    appearance = sample_appearance(rng) if appearance is None else appearance
    if face_fraction is None:
        face_fraction = float(rng.uniform(0.45, 0.65))
    random_offset = offset is None
    offset = np.zeros(2) if random_offset else np.asarray(offset, np.float64)

    geometry = face_geometry(identity, expression)
    rotation = rotation_matrix(*pose)  # template frame
    design = rotation @ face3d.design_to_template()  # the geometry is in the design frame
    focal = focal_factor * size
    distance = focal * _TEMPLATE_EXTENT / (face_fraction * size)
    principal = np.array([(size - 1) / 2.0, (size - 1) / 2.0]) + offset
    camera = np.array([[focal, 0, principal[0]], [0, focal, principal[1]], [0, 0, 1.0]])
    translation = np.array([0.0, 0.0, distance]) - CAMERA_FLIP @ design @ _REFERENCE
    cam = dict(rotation=design, focal=focal, distance=distance, principal=principal,
               neck_rotation=rotation_matrix(0.5 * pose[0], 0.4 * pose[1], 0.4 * pose[2])
               @ face3d.design_to_template())

    lm3d = landmarks_3d(geometry, n)
    landmarks = _to_pixels(_view(lm3d, cam), cam)
    if random_offset:
        # Up to a quarter of the spare room, keeping the landmarks 2 % inside the frame.
        room = max(0.0, (1.0 - face_fraction) * 0.25) * size
        margin = 0.02 * size
        lo = np.maximum(-room, margin - landmarks.min(axis=0))
        hi = np.minimum(room, size - 1 - margin - landmarks.max(axis=0))
        u = rng.random(2)
        offset = np.where(lo <= hi, lo + u * (hi - lo), 0.5 * (lo + hi))
        landmarks = landmarks + offset
        principal = principal + offset
        camera[:2, 2] = principal
        cam["principal"] = principal
    image = _paint(rng, size, geometry, appearance, cam)
    return dict(image=image, landmarks=landmarks.astype(np.float32),
                pose=np.asarray(pose, np.float32),
                landmarks_3d=(lm3d @ face3d.design_to_template().T).astype(np.float32),
                camera=camera, rotation=rotation, translation=translation, identity=identity,
                expression=expression, appearance=appearance, face_fraction=float(face_fraction),
                offset=offset)


_TEMPLATE_EXTENT = float(np.ptp(face3d.mean_face(68, design_frame=True)[:, :2], axis=0).max())
_NECK_PIVOT = np.array([0.0, -70 * MM, -100 * MM])


def _view(points, cam) -> np.ndarray:
    """Template points (..., 3) -> view frame (x right, y up, z toward the viewer), head-centred."""
    return (np.asarray(points, np.float64) - _REFERENCE) @ cam["rotation"].T


def _to_pixels(v, cam) -> np.ndarray:
    """View-frame points (..., 3) -> pixel coordinates (..., 2) (pinhole, camera at +distance)."""
    depth = cam["distance"] - v[..., 2]
    f = cam["focal"]
    return np.stack([f * v[..., 0] / depth + cam["principal"][0],
                     -f * v[..., 1] / depth + cam["principal"][1]], axis=-1)


@functools.lru_cache(maxsize=16)
def _unit_circle(count: int):
    a = np.linspace(0, 2 * np.pi, count, endpoint=False)
    return np.cos(a)[:, None], np.sin(a)[:, None]


def _identity_width(geometry: dict) -> float:
    """Relative head width of a face geometry (0 for the template)."""
    return float(geometry["cranium_axes"][0] / (_CRANIUM_AXES_MM[0] * MM) - 1.0)


class _Batch:
    """Collects named 3D point sets (template frame) and projects them all in one go."""

    def __init__(self):
        self.names, self.arrays = [], []

    def add(self, name, points):
        self.names.append(name)
        self.arrays.append(np.asarray(points, np.float64).reshape(-1, 3))

    def project(self, cam):
        sizes = [len(a) for a in self.arrays]
        v = _view(np.concatenate(self.arrays), cam)
        pix = _to_pixels(v, cam)
        out_v, out_p, start = {}, {}, 0
        for name, k in zip(self.names, sizes):
            out_v[name], out_p[name] = v[start:start + k], pix[start:start + k]
            start += k
        return out_v, out_p


def _eye_sets(eye):
    """3D drawing geometry of one eye from its 6 landmarks (outer/inner corner at 0 and 3)."""
    contour = face3d.sample_curve(eye, np.arange(16) * (6.0 / 16.0), closed=True)
    width = np.linalg.norm(eye[3] - eye[0])
    iris_c = eye.mean(axis=0) + np.array([0.0, 0.2 * MM, 0.03])
    cos_a, sin_a = _unit_circle(16)
    iris = iris_c + 0.21 * width * np.concatenate([cos_a, sin_a, 0 * cos_a], axis=1)
    pupil = iris_c + [0, 0, 0.002] + 0.09 * width * np.concatenate([cos_a, sin_a, 0 * cos_a], axis=1)
    ring = contour.copy()
    ring[1:8, 1] += 0.11
    ring[9:16, 1] -= 0.09
    direction = np.sign(contour[8, 0] - contour[0, 0])
    ring[0, 0] -= direction * 0.05
    ring[8, 0] += direction * 0.05
    crease = contour[1:8] + np.array([0.0, 0.07, 0.0])
    return dict(contour=contour, iris=iris, pupil=pupil, ring=ring, crease=crease)


def _paint(rng, size, geometry, appearance, cam):
    """Draws the face (see the module docstring for the order); returns (S, S, 3) uint8 RGB."""
    rotation = cam["rotation"]
    scale = size / 256.0
    light, ambient = appearance["light"], appearance["ambient"]
    skin, hair = appearance["skin"], appearance["hair"]
    lm = geometry["landmarks68"]
    centre_c, axes_c = geometry["cranium_centre"], geometry["cranium_axes"]
    hair_style = appearance["hair_style"]

    # ---- Everything that rotates with the head, projected at once.
    batch = _Batch()
    batch.add("cranium", centre_c + _unit_sphere_grid() * axes_c)
    batch.add("jaw", face3d.sample_curve(lm[:17], np.arange(33) / 2.0))
    batch.add("lm", lm)
    for key in ("cheeks", "alar", "ears"):
        batch.add(key, geometry[key])
    eyes = [_eye_sets(lm[36:42]), _eye_sets(lm[42:48])]
    for k, eye in enumerate(eyes):
        for key, pts in eye.items():
            batch.add(f"eye{k}_{key}", pts)
    for k, brow in enumerate((lm[17:22], lm[26:21:-1])):
        top = face3d.sample_curve(brow, np.linspace(0, 4, 12))
        thick = np.linspace(*geometry["brow_thickness"], 12)
        bottom = top - np.stack([np.zeros(12), thick, np.zeros(12)], axis=1)
        batch.add(f"brow{k}", np.concatenate([top, bottom[::-1]]))
    outer_c = face3d.sample_curve(lm[48:60], np.arange(32) * (12.0 / 32.0), closed=True)
    inner_c = face3d.sample_curve(lm[60:68], np.arange(16) * 0.5, closed=True)
    opening = float(np.mean(lm[61:64, 1] - lm[[67, 66, 65], 1]))
    teeth_top = inner_c[0:9]
    teeth = np.concatenate([teeth_top, teeth_top[::-1] - [0, min(0.35 * opening, 0.09), 0]])
    batch.add("upper_lip", np.concatenate([outer_c[0:17], inner_c[8::-1]]))
    batch.add("lower_lip", np.concatenate([outer_c[16:32], outer_c[0:1], inner_c[[0] + list(range(15, 7, -1))]]))
    batch.add("inner", inner_c)
    batch.add("teeth", teeth)
    nose_side = geometry["nose_side"]
    for k, nostril in enumerate((lm[[31, 32, 33]], lm[[35, 34, 33]])):
        batch.add(f"nose{k}", np.concatenate([lm[27:28], nose_side[5 * k:5 * k + 5], nostril, lm[30:26:-1]]))
    side_normals = np.array([[-0.75, 0.1, 0.65], [0.75, 0.1, 0.65]])
    for k in range(2):
        batch.add(f"wing{k}", _disc(geometry["alar"][k], side_normals[k] * [1.0, 1.0, 0.8], 6.5 * MM,
                                    count=12, aspect=0.8))
        batch.add(f"nostril{k}", _disc(geometry["nostrils"][k], [0.0, -0.85, 0.5], 3.8 * MM,
                                       up=(1.0, 0.0, 0.0), count=10, aspect=0.55))
    ear_normals = np.array([[-0.85, 0.0, 0.5], [0.85, 0.0, 0.5]])
    if appearance["ears"]:
        for k, centre in enumerate(geometry["ears"]):
            outline = _disc(centre, ear_normals[k], 30 * MM, count=16)
            outline = centre + (outline - centre) * np.array([0.55, 1.0, 0.55])
            batch.add(f"ear{k}", outline)
            batch.add(f"ear_inner{k}", centre + (outline - centre) * 0.55 + np.array([0, -3 * MM, 0]))
    if hair_style > 0:
        hair_grid = _hair_grid(appearance, centre_c, axes_c)
        batch.add("hair", hair_grid)
        if hair_style == 3:
            back = (centre_c + _unit_sphere_grid(12, 6) * axes_c * 1.12).reshape(-1, 3)
            back = back[back[:, 1] > centre_c[1] - 0.25]
            drop = back * np.array([1.05, 0.0, 1.0]) + np.array([0.0, centre_c[1] - 1.35, 0.0])
            batch.add("long_hair", np.concatenate([back, drop]))
    V, P = batch.project(cam)

    # Normals (template) -> view frame; shade = ambient + diffuse.
    normals = np.array([[-0.35, 0.05, 1.0], [0.35, 0.05, 1.0],      # eyes
                        [-0.3, 0.3, 1.0], [0.3, 0.3, 1.0],          # brows
                        *side_normals, *(side_normals * [1.2, 1.0, 1.0]),  # nose sides, wings
                        [0.0, -0.85, 0.5], *ear_normals])           # nostrils, ears
    normals = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    nv = normals @ rotation.T
    facing = nv[:, 2]
    shades = ambient + (1 - ambient) * np.clip(nv @ light, 0.0, 1.0)

    image = _background(rng, size, appearance)

    # Shoulders (fixed to the camera, below the chin).
    chin = P["lm"][8]
    head_w = cam["focal"] / cam["distance"] * 1.5
    if appearance["shoulders"]:
        c = (cam["principal"][0] + 0.3 * (chin[0] - cam["principal"][0]), chin[1] + 1.2 * head_w)
        cv2.ellipse(image, tuple(int(v) for v in _fix(c)), (int(1.6 * head_w * _ONE), int(0.72 * head_w * _ONE)),
                    0.0, 0, 360, _colour(appearance["clothes"]), -1, cv2.LINE_AA, _SHIFT)
    if "long_hair" in P:
        _fill(image, [_hull(P["long_hair"])], hair * 0.7)

    # Neck: a vertical cylinder under the head, turning half as much as the head.
    cos_a, sin_a = _unit_circle(12)
    ring = np.concatenate([cos_a * 44 * MM * (1 + _identity_width(geometry)), 0 * cos_a,
                           sin_a * 40 * MM], axis=1) + np.array([0.0, 0.0, -100 * MM])
    neck = np.concatenate([ring + [0, -30 * MM, 0], ring + [0, -330 * MM, 0]])
    neck_v = (neck - _NECK_PIVOT) @ cam["neck_rotation"].T + _view(_NECK_PIVOT, cam)
    _fill(image, [_hull(_to_pixels(neck_v, cam))], skin * (0.45 + 0.35 * ambient))

    # Ears that face away or sideways go behind the face.
    ears = [k for k in range(2) if f"ear{k}" in P]
    for k in ears:
        if facing[9 + k] < 0.25:
            _fill(image, [P[f"ear{k}"]], skin * shades[9 + k] * 0.92)

    # ---- The face layer: skin silhouette and features, shaded, clipped to the silhouette.
    cranium_t = (centre_c + _unit_sphere_grid() * axes_c).reshape(-1, 3)
    keep = (cranium_t[:, 1] > 15 * MM) | ((cranium_t[:, 2] < centre_c[2] - 0.3)
                                          & (cranium_t[:, 1] > -25 * MM))
    hull = _hull(np.concatenate([P["cranium"][keep], P["jaw"], P["cheeks"], P["lm"][17:68], P["alar"]]))
    x0, y0 = np.floor(hull.min(0)).astype(int) - 2
    x1, y1 = np.ceil(hull.max(0)).astype(int) + 3
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    if x1 > x0 and y1 > y0:
        origin = np.array([x0, y0], np.float64)
        layer = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        layer[:] = np.clip(skin, 0, 255).astype(np.uint8)
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        _fill(mask, [hull - origin], 255)

        for k in range(2):  # eyes
            if facing[k] <= 0.02:
                continue
            q = {key: P[f"eye{k}_{key}"] - origin for key in eyes[k]}
            _fill(layer, [q["contour"]], appearance["sclera"])
            _fill(layer, [q["iris"]], appearance["iris"])
            _fill(layer, [q["pupil"]], appearance["iris"] * 0.15)
            _fill(layer, [q["ring"], q["contour"]], skin * 0.93)  # eyelids hide the iris outside
            _polyline(layer, q["contour"][0:9], hair * 0.4, 1.4 * scale)
            _polyline(layer, q["crease"], skin * 0.75, 1.0 * scale)
        brow_colour = 0.75 * hair + 0.15 * skin
        for k in range(2):
            if facing[2 + k] > 0.02:
                _fill(layer, [P[f"brow{k}"] - origin], brow_colour)
        lips = appearance["lips"]
        if opening > 0.01:
            _fill(layer, [P["inner"] - origin], np.array([70, 20, 25]))
            _fill(layer, [P["teeth"] - origin], np.array([235, 230, 215]))
        _fill(layer, [P["lower_lip"] - origin], lips)
        _fill(layer, [P["upper_lip"] - origin], lips * 0.88)
        _polyline(layer, P["inner"][0:9] - origin, lips * 0.5, 1.0 * scale)

        shading = _shading_map(layer.shape[:2], origin, cam, centre_c, axes_c, light, ambient)
        lit = (layer * cv2.merge([shading, shading, shading]) + 0.5).astype(np.uint8)
        alpha = mask.astype(np.float32) * (1.0 / 255.0)
        image[y0:y1, x0:x1] = cv2.blendLinear(lit, image[y0:y1, x0:x1], alpha, 1.0 - alpha)

    # ---- Nose: the two sides (far one first, only when facing), alar wings, nostrils.
    for k in np.argsort(facing[4:6]):
        if facing[4 + k] <= -0.05:
            continue
        _fill(image, [P[f"nose{k}"]], skin * shades[4 + k])
        if facing[6 + k] > 0:
            wing = P[f"wing{k}"]
            _fill(image, [wing], skin * shades[6 + k] * 0.97)
            _polyline(image, wing[[6, 7, 8, 9, 10, 11, 0, 1]], skin * shades[6 + k] * 0.7, 1.0 * scale)
    if facing[8] > 0:
        for k in range(2):
            _fill(image, [P[f"nostril{k}"]], skin * 0.25)
    for k in ears:
        if facing[9 + k] >= 0.25:
            _fill(image, [P[f"ear{k}"]], skin * shades[9 + k] * 0.92)
            _fill(image, [P[f"ear_inner{k}"]], skin * shades[9 + k] * 0.7)

    # ---- Hair cap: front-facing quads of a slightly larger cranium.
    if "hair" in P:
        _draw_hair(image, hair, V["hair"], P["hair"], _view(centre_c, cam), light, ambient)
    return _finish(rng, image, appearance, size)


def _hull(points) -> np.ndarray:
    return cv2.convexHull(np.asarray(points, np.float32)).reshape(-1, 2)


def _shading_map(shape, origin, cam, centre, axes, light, ambient, cells: int = 20) -> np.ndarray:
    """Lambert shading (H, W) float32 of the head ellipsoid over an image region (orthographic
    approximation), computed on a ``cells`` x ``cells`` grid and upsampled."""
    h, w = shape
    rotation, focal, principal = cam["rotation"], cam["focal"], cam["principal"]
    us = origin[0] + (np.arange(cells) + 0.5) * (w / cells) - 0.5
    vs = origin[1] + (np.arange(cells) + 0.5) * (h / cells) - 0.5
    c = _view(centre, cam)
    depth = cam["distance"] - c[2]
    sx = ((us - principal[0]) * depth / focal - c[0])[None, :]
    sy = (-(vs - principal[1]) * depth / focal - c[1])[:, None]
    # Ellipsoid d^T M d = 1 in the view frame, M = R D R^T (a little taller to cover the face).
    m = rotation @ np.diag(1.0 / np.square(axes * np.array([1.0, 1.15, 1.0]))) @ rotation.T
    b = m[0, 2] * sx + m[1, 2] * sy
    cc = m[0, 0] * sx * sx + 2 * m[0, 1] * sx * sy + m[1, 1] * sy * sy - 1.0
    sz = (-b + np.sqrt(np.maximum(b * b - m[2, 2] * cc, 0.0))) / m[2, 2]
    d = np.stack(np.broadcast_arrays(sx, sy, sz), axis=-1)
    normal = d @ m.T
    lam = np.clip((normal @ light) / (np.linalg.norm(normal, axis=-1) + 1e-12), 0.0, 1.0)
    small = (ambient + (1 - ambient) * lam).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


_HAIR_THETA, _HAIR_PHI = 28, 8


def _hair_grid(appearance, centre, axes) -> np.ndarray:
    """Hair cap grid (PHI + 1, THETA + 1, 3) on a slightly larger cranium (template units): from
    the hairline (high at the forehead, low behind the ears and at the nape) to the crown."""
    theta = np.linspace(-np.pi, np.pi, _HAIR_THETA + 1)
    front = (95.0 + appearance["hairline"]) * MM - centre[1]
    if appearance["hair_style"] == 2:  # fringe
        front -= 22 * MM
    ct = np.cos(theta)
    line = np.where(ct > 0.35, front - (1 - ct) * 0.25,
                    np.interp(ct, [-1.0, -0.3, 0.35], [-0.55, -0.35, front - 0.65 * 0.25]))
    grow = np.array([1.06, 1.06, 1.07])
    phi_lo = np.arcsin(np.clip(line / (axes[1] * grow[1]), -1, 1))
    t = np.linspace(0, 1, _HAIR_PHI + 1)[:, None]
    phi = phi_lo[None, :] * (1 - t) + (np.pi / 2) * t
    th = np.broadcast_to(theta[None, :], phi.shape)
    unit = np.stack([np.sin(th) * np.cos(phi), np.sin(phi), np.cos(th) * np.cos(phi)], -1)
    return centre + unit * axes * grow


def _draw_hair(image, colour, v, pix, centre_v, light, ambient):
    """Front-facing quads of the hair grid (view frame ``v``, pixels ``pix``), flat-shaded."""
    shape = (_HAIR_PHI + 1, _HAIR_THETA + 1)
    v, pix = v.reshape(*shape, 3), pix.reshape(*shape, 2)
    c00, c01, c11, c10 = v[:-1, :-1], v[:-1, 1:], v[1:, 1:], v[1:, :-1]
    normal = np.cross(c11 - c00, c10 - c01)
    outward = (c00 + c01 + c11 + c10) / 4 - centre_v
    normal *= np.sign(np.sum(normal * outward, axis=-1, keepdims=True) + 1e-12)
    length = np.linalg.norm(normal, axis=-1)
    normal /= np.maximum(length, 1e-12)[..., None]
    visible = (normal[..., 2] > 0.0) & (length > 1e-12)
    s = ambient + (1 - ambient) * np.clip(normal @ light, 0.0, 1.0)
    corners = _fix(np.stack([pix[:-1, :-1], pix[:-1, 1:], pix[1:, 1:], pix[1:, :-1]], axis=2))
    # Front-facing quads of a convex cap do not overlap on screen: fill them by shade level.
    levels = np.round(s * 12).astype(int)
    for level in np.unique(levels[visible]):
        sel = visible & (levels == level)
        _fill(image, list(corners[sel]), colour * level / 12.0, aa=False)


def _finish(rng, image, appearance, size):
    """Blur and pixel noise (a crop of a fixed noise tile at a random place)."""
    if appearance["blur"] > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), appearance["blur"] * size / 256.0)
    tile = _noise_tile(size)
    oy, ox = rng.integers(0, size, 2)
    gain = appearance["noise"] / _NOISE_TILE_SIGMA
    return cv2.addWeighted(image, 1.0, tile[oy:oy + size, ox:ox + size], gain, -128.0 * gain)


# --------------------------------------------------------------------------------------------------
# Data sets


def face_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of face ``index`` of data set ``seed`` (independent streams)."""
    return np.random.default_rng([int(seed), int(index), 0x5EED_FACE])


def face_record(seed: int, index: int, size: int = 256, num_landmarks: int = 68, **kwargs) -> dict:
    """Face ``index`` of the data set ``seed``: :func:`render_face` with :func:`face_rng`."""
    record = render_face(face_rng(seed, index), size=size, num_landmarks=num_landmarks, **kwargs)
    record["index"] = int(index)
    return record


def iter_dataset(count: int, seed: int = 0, size: int = 256, num_landmarks: int = 68,
                 start: int = 0, **kwargs) -> Iterator[dict]:
    """Yields :func:`face_record` for indices ``start .. start + count - 1``."""
    for index in range(start, start + count):
        yield face_record(seed, index, size, num_landmarks, **kwargs)


def make_dataset(count: int, seed: int = 0, size: int = 256, num_landmarks: int = 68,
                 start: int = 0, **kwargs) -> dict:
    """``count`` faces as stacked arrays: ``images`` (N, S, S, 3) uint8 RGB, ``landmarks``
    (N, n, 2) float32 pixels, ``poses`` (N, 3) float32 degrees, ``indices`` (N,) int64.
    Deterministic: face i depends only on (seed, start + i)."""
    images, landmarks, poses = [], [], []
    for record in iter_dataset(count, seed, size, num_landmarks, start, **kwargs):
        images.append(record["image"])
        landmarks.append(record["landmarks"])
        poses.append(record["pose"])
    n = check_num_landmarks(num_landmarks)
    return dict(
        images=np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
        landmarks=np.stack(landmarks) if landmarks else np.zeros((0, n, 2), np.float32),
        poses=np.stack(poses) if poses else np.zeros((0, 3), np.float32),
        indices=np.arange(start, start + count, dtype=np.int64))
