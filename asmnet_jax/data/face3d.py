"""The project's own 3D face template (68-point iBUG and 98-point WFLW markups).

The template is designed here from textbook facial proportions (adult averages of the usual
anthropometric distances, rounded), not fitted to any data set:

* outer eye corners 90 mm apart, inner corners 32 mm apart, eye fissure about 9 mm high;
* nasion 40 mm above the nose tip, subnasale 10 mm below it, lip line 31 mm below it, chin
  (menton) 80 mm below it; nose tip 22 mm in front of the nasion;
* mouth 50 mm wide, nostrils 26 mm wide, brows 14-58 mm from the midline with a lifted arch;
* the jaw outline is a smooth curve over an ellipsoid-like head, from the cheek in front of the
  ear (140 mm apart at eye level) through the jaw angle (about 104 mm apart) to the chin, sampled
  evenly by arc length;
* depth grows from the nose tip backwards over a rounded face: eye corners 32-50 mm behind the
  nose tip, mouth corners 36 mm, the jaw outline near the ears about 95 mm.

The design puts the Frankfort plane (ear canal to lower orbit rim) level. The template is then
turned chin-down by 4 degrees (``TEMPLATE_PITCH_DEG = -4``) about the ear-to-ear axis through the
nose tip (:func:`design_to_template`), and pitch zero is that of the turned template. The turn makes
the pitch fitted to real 300W faces agree on average with the one from the 3D mean face that was
measured at 1.2-1.5 degrees error against published labels (docs/method.md section 5.3; without
the turn the mean pitch differs by 4 degrees; see ``tests/test_pose.py``). It is the one number
calibrated by comparison; the shape is not fitted to anything.

Coordinates: units of the outer inter-ocular distance (1 unit = 90 mm), x toward the image right
for a frontal face (the subject's left), y up, +z toward the viewer, nose tip at the origin.
Point 0 of the 68 markup (the jaw start) is on the image-left side (x < 0). The template is exactly
symmetric: ``mean_face(68)[FLIP_68] == mean_face(68) * (-1, 1, 1)``.

The 98-point template is derived from the 68-point one by :func:`to_98`, which interpolates along
the contours (Catmull-Rom) and adds the lower brow edges and the pupils; it works on any 68-point
3D shape (the synthetic faces use it after their identity and expression deformations).
"""

from __future__ import annotations

import functools

import numpy as np

from asmnet_jax.landmarks import check_num_landmarks

#: Millimetres per template unit (the outer inter-ocular distance of an average adult).
MM_PER_UNIT = 90.0

#: Points used for PnP: eyebrows, the four eye corners and the nose (rigid under expression).
RIGID_INDICES = {
    68: np.array(list(range(17, 27)) + [36, 39, 42, 45] + list(range(27, 36)), dtype=np.int64),
    98: np.array(list(range(33, 51)) + [60, 64, 68, 72] + list(range(51, 60)), dtype=np.int64),
}

# Brow thickness (mm) below the 68-point brow line, from the outer end to the inner end; used for
# the lower brow edge of the 98 markup.
_BROW_THICKNESS_MM = (4.5, 8.0)
#: Brow thickness (outer end, inner end) in template units.
BROW_THICKNESS = tuple(t / MM_PER_UNIT for t in _BROW_THICKNESS_MM)
# How far the pupils (98 markup) sit in front of the mean of the eye contour (the cornea bulges), mm.
_PUPIL_FORWARD_MM = 4.0


#: Pitch (degrees, :mod:`asmnet_jax.data.pose` convention) of the design frame in the template frame.
TEMPLATE_PITCH_DEG = -4.0


def design_to_template() -> np.ndarray:
    """Rotation (3, 3) from the design frame (Frankfort plane level) to the template frame:
    ``template = R @ design`` (a pitch of ``TEMPLATE_PITCH_DEG``, i.e. ``Rx(-pitch)``)."""
    a = np.deg2rad(-TEMPLATE_PITCH_DEG)
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rigid_indices(num_landmarks: int) -> np.ndarray:
    """Indices (k,) of the rigid points (brows, eye corners, nose) used for PnP."""
    return RIGID_INDICES[check_num_landmarks(num_landmarks)].copy()


def catmull_rom(p0, p1, p2, p3, t):
    """Uniform Catmull-Rom point between ``p1`` (t=0) and ``p2`` (t=1); points (..., d), t scalar."""
    p0, p1, p2, p3 = (np.asarray(p, np.float64) for p in (p0, p1, p2, p3))
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)


@functools.lru_cache(maxsize=256)
def _curve_weights(m: int, positions: tuple, closed: bool) -> np.ndarray:
    """(k, m) matrix W with ``W @ points`` = the Catmull-Rom curve at ``positions``."""
    weights = np.zeros((len(positions), m))
    for row, pos in enumerate(positions):
        if closed:
            pos = pos % m
            i = int(np.floor(pos))
            t = pos - i
            idx = [(i - 1) % m, i % m, (i + 1) % m, (i + 2) % m]
            basis = [np.eye(m)[j] for j in idx]
        else:
            i = min(int(np.floor(pos)), m - 2)
            t = pos - i

            def at(j):
                if j < 0:  # reflected end point
                    return 2 * np.eye(m)[0] - np.eye(m)[1]
                if j > m - 1:
                    return 2 * np.eye(m)[m - 1] - np.eye(m)[m - 2]
                return np.eye(m)[j]

            basis = [at(i - 1), at(i), at(i + 1), at(i + 2)]
        weights[row] = catmull_rom(*basis, t)
    weights.setflags(write=False)
    return weights


def sample_curve(points, positions, closed: bool = False) -> np.ndarray:
    """Catmull-Rom curve through ``points`` (..., m, d) evaluated at fractional indices.

    ``positions`` (k,) are in ``[0, m - 1]`` (open) or any real (closed, taken modulo m). An open
    curve is extended by reflecting its end points. Returns (..., k, d).
    """
    pts = np.asarray(points, np.float64)
    key = tuple(float(v) for v in np.asarray(positions, np.float64).ravel())
    return np.matmul(_curve_weights(pts.shape[-2], key, bool(closed)), pts)


def resample_by_arc_length(points, count: int, dims=(0, 1), dense: int = 400) -> np.ndarray:
    """``count`` points evenly spaced by arc length (measured in ``dims``) along the open
    Catmull-Rom curve through ``points`` (m, d); the end points are kept. Returns (count, d)."""
    pts = np.asarray(points, np.float64)
    fine = sample_curve(pts, np.linspace(0, len(pts) - 1, dense))
    seg = np.linalg.norm(np.diff(fine[:, list(dims)], axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.linspace(0.0, arc[-1], count)
    return np.stack([np.interp(targets, arc, fine[:, k]) for k in range(pts.shape[1])], axis=1)


def _mirror(points):
    """Mirror image (x -> -x) of points (..., 3)."""
    return np.asarray(points, np.float64) * np.array([-1.0, 1.0, 1.0])


def _design_68_mm() -> np.ndarray:
    """The 68-point template in millimetres (68, 3), built from the proportions in the docstring."""
    # Jaw: control points on the image-left half (subject's right), from the cheek in front of the
    # ear down to the chin; the other half is the mirror image.
    jaw_controls = np.array([
        [-70.0, 25.0, -96.0],   # cheek contour at eye level, in front of the ear
        [-68.0, -8.0, -92.0],
        [-61.0, -40.0, -82.0],  # towards the jaw angle
        [-44.0, -64.0, -60.0],
        [-22.0, -77.0, -40.0],
        [0.0, -81.0, -31.0],    # menton (chin)
    ])
    jaw_controls = np.concatenate([jaw_controls, _mirror(jaw_controls[-2::-1])])
    jaw = resample_by_arc_length(jaw_controls, 17)
    jaw[8, 0] = 0.0

    # Right brow (image left), outer (17) to inner (21): arched, higher in its inner two thirds.
    brow = np.array([
        [-58.0, 49.0, -57.0],
        [-49.0, 56.0, -45.0],
        [-38.0, 59.0, -35.0],
        [-26.0, 58.0, -28.0],
        [-15.0, 54.0, -24.0],
    ])
    # Nose bridge (nasion to tip) and the lower nose (nostril outline, image left to right).
    bridge = np.array([[0.0, 40.0, -22.0], [0.0, 27.0, -15.0], [0.0, 13.5, -8.0], [0.0, 0.0, 0.0]])
    nostrils_half = np.array([[-13.0, -6.0, -19.0], [-7.0, -8.5, -15.0]])
    nostrils = np.concatenate([nostrils_half, [[0.0, -10.0, -13.0]], _mirror(nostrils_half[::-1])])
    # Right eye (image left): outer corner, two upper-lid points, inner corner, two lower-lid points.
    eye = np.array([
        [-45.0, 34.0, -50.0],
        [-35.5, 38.5, -41.0],
        [-25.0, 38.5, -36.0],
        [-16.0, 33.0, -32.0],
        [-25.0, 29.5, -36.5],
        [-35.5, 29.5, -41.5],
    ])
    # Left eye (image right): inner corner, upper lid (inner to outer), outer corner, lower lid
    # (outer to inner): the mirror image of the right eye in the iBUG order.
    eye_left = _mirror(eye[[3, 2, 1, 0, 5, 4]])
    # Mouth: outer contour 48-59 from the image-left corner clockwise on screen (upper lip first),
    # inner contour 60-67 the same way; a closed mouth (inner lips almost touching).
    outer_half_upper = np.array([[-25.0, -31.0, -36.0], [-16.0, -25.5, -22.0], [-6.5, -22.5, -16.5]])
    outer_centre_upper = np.array([[0.0, -23.5, -15.5]])
    outer_half_lower = np.array([[-16.5, -37.5, -24.0], [-7.5, -41.0, -19.5]])
    outer_centre_lower = np.array([[0.0, -42.0, -18.5]])
    outer = np.concatenate([
        outer_half_upper, outer_centre_upper, _mirror(outer_half_upper[::-1]),
        _mirror(outer_half_lower), outer_centre_lower, outer_half_lower[::-1]])
    inner_corner = np.array([[-21.5, -31.0, -32.0]])
    inner_upper_half = np.array([[-8.5, -30.0, -19.5]])
    inner_lower_half = np.array([[-8.5, -31.5, -19.5]])
    inner = np.concatenate([
        inner_corner, inner_upper_half, [[0.0, -29.8, -18.0]], _mirror(inner_upper_half),
        _mirror(inner_corner), _mirror(inner_lower_half), [[0.0, -31.8, -18.0]], inner_lower_half])
    face = np.concatenate([
        jaw, brow, _mirror(brow[::-1]), bridge, nostrils, eye, eye_left, outer, inner])
    assert face.shape == (68, 3)
    return face


def to_98(points_68, brow_thickness=None) -> np.ndarray:
    """A 68-point 3D shape (..., 68, 3) in template units -> the 98-point (WFLW) shape (..., 98, 3).

    Jaw: the 17 points become the even points of 33, the odd ones interpolated along the jaw.
    Brows: the upper edges are the 68-point brows; the lower edges lie a brow thickness below
    (thicker at the inner end), under the midpoints of the upper segments. Eyes: corners kept,
    three points per lid interpolated along the eye contour. Nose and mouth: the same points.
    Pupils: the centre of each eye contour, slightly forward. ``brow_thickness`` (outer, inner)
    in template units overrides the template's brow thickness.
    """
    p = np.asarray(points_68, np.float64)
    if p.shape[-2:] != (68, 3):
        raise ValueError(f"expected (..., 68, 3) points, got {p.shape}")
    jaw = sample_curve(p[..., 0:17, :], np.arange(33) / 2.0)
    if brow_thickness is None:
        brow_thickness = np.asarray(_BROW_THICKNESS_MM) / MM_PER_UNIT
    thickness = np.linspace(*brow_thickness, 5)  # outer -> inner

    def brow_lower(upper_outer_to_inner):
        # Below the midpoints of the upper segments, from the inner end to the outer end.
        mids = sample_curve(upper_outer_to_inner, [3.5, 2.5, 1.5, 0.5])
        down = np.interp([3.5, 2.5, 1.5, 0.5], np.arange(5), thickness)
        return mids - np.stack([np.zeros(4), down, np.zeros(4)], axis=-1)

    right_brow = p[..., 17:22, :]                  # outer -> inner
    left_brow = p[..., 22:27, :]                   # inner -> outer
    brows = np.concatenate([
        right_brow, brow_lower(right_brow),
        left_brow, brow_lower(left_brow[..., ::-1, :])[..., ::-1, :]], axis=-2)

    def eye_98(contour):
        # contour: 6 points [corner_a, upper, upper, corner_b, lower, lower] (closed).
        upper = sample_curve(contour, [0.75, 1.5, 2.25], closed=True)
        lower = sample_curve(contour, [3.75, 4.5, 5.25], closed=True)
        return np.concatenate([contour[..., 0:1, :], upper, contour[..., 3:4, :], lower], axis=-2)

    eye_r = eye_98(p[..., 36:42, :])               # outer, upper, inner, lower
    eye_l = eye_98(p[..., 42:48, :])               # inner, upper, outer, lower
    forward = np.array([0.0, 0.0, _PUPIL_FORWARD_MM / MM_PER_UNIT])
    pupils = np.stack([eye_r.mean(axis=-2) + forward, eye_l.mean(axis=-2) + forward], axis=-2)
    out = np.concatenate([
        jaw, brows, p[..., 27:36, :], eye_r, eye_l, p[..., 48:68, :], pupils], axis=-2)
    assert out.shape[-2] == 98
    return out


@functools.lru_cache(maxsize=None)
def _mean_face_cached(num_landmarks: int, design_frame: bool) -> np.ndarray:
    face68 = _design_68_mm() / MM_PER_UNIT
    face = face68 if num_landmarks == 68 else to_98(face68)
    if not design_frame:
        face = face @ design_to_template().T
    face.setflags(write=False)
    return face


def mean_face(num_landmarks: int = 68, design_frame: bool = False) -> np.ndarray:
    """The template (n, 3) float64 in inter-ocular units (x right, y up, +z toward the viewer,
    nose tip at the origin) for the 68 or 98 markup; a fresh writable copy.

    ``design_frame=True`` gives it before the turn to the pose convention (Frankfort plane level;
    ``mean_face(n) == mean_face(n, True) @ design_to_template().T``).
    """
    return np.array(_mean_face_cached(check_num_landmarks(num_landmarks), bool(design_frame)))
