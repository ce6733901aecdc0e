"""Head pose (yaw, pitch, roll) in degrees: convention, PnP fitting from 2D landmarks, pose CSVs.

Convention
----------
Angles are in degrees, ``(yaw, pitch, roll)``, and describe the rotation of the head relative to
the camera axes, in the template frame of :mod:`asmnet_jax.data.face3d` (x toward the image right,
y up, +z toward the viewer; the camera looks along -z). A frontal, upright face is (0, 0, 0).

* **+yaw** turns the face toward the image right: the nose tip moves right on screen.
  ``Ry(yaw)``, a right-handed rotation about +y (up).
* **+pitch** lifts the chin (the face looks up): the nose tip moves up on screen.
  ``Rx(-pitch)``, a right-handed rotation about +x by ``-pitch``.
* **+roll** tilts the head clockwise on screen (the top of the head moves right).
  ``Rz(-roll)``, a right-handed rotation about +z (toward the viewer) by ``-roll``.

The head rotation is ``R = Ry(yaw) @ Rx(-pitch) @ Rz(-roll)``: applied to template points, roll
first, then pitch, then yaw, about the fixed axes (equivalently: yaw, then pitch about the turned
head's ear-to-ear axis, then roll about its nose axis). A template point ``p`` is seen at
``R @ p`` (template frame, relative to the head). :func:`euler_angles` inverts
:func:`rotation_matrix` with yaw and roll in (-180, 180] and pitch in [-90, 90] (every rotation has
such a triple; it is unique away from pitch = +-90).

In OpenCV's camera frame (x right, y down, z forward) the same rotation is ``F @ R`` with
``F = diag(1, -1, -1)``, so ``X_cam = F @ R @ p + t``; :func:`pose_from_landmarks` converts the
``solvePnP`` rotation back with ``R = F @ R_cv``.
"""

from __future__ import annotations

import csv
import math
import os

import cv2
import numpy as np

from asmnet_jax.data import face3d
from asmnet_jax.data.errors import DataError
from asmnet_jax.errors import AsmnetError
from asmnet_jax.landmarks import check_num_landmarks

#: Template frame (y up, z toward the viewer) <-> OpenCV camera frame (y down, z forward).
CAMERA_FLIP = np.diag([1.0, -1.0, -1.0])


class PoseFitError(AsmnetError, ValueError):
    """The landmarks could not be fitted (bad input or no solution in front of the camera)."""


def _rx(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def wrap_degrees(angle):
    """Angles (any shape) wrapped into (-180, 180]."""
    a = np.mod(np.asarray(angle, np.float64) + 180.0, 360.0) - 180.0
    return np.where(a <= -180.0, a + 360.0, a)


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head rotation (3, 3) float64 in the template frame for angles in degrees (see module doc)."""
    y, p, r = np.deg2rad([float(yaw), float(pitch), float(roll)])
    return _ry(y) @ _rx(-p) @ _rz(-r)


def euler_angles(rotation) -> np.ndarray:
    """Rotation matrix (3, 3) in the template frame -> ``(yaw, pitch, roll)`` degrees (3,) float64.

    Inverse of :func:`rotation_matrix`: yaw and roll in (-180, 180], pitch in [-90, 90].
    """
    m = np.asarray(rotation, np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"expected a (3, 3) rotation matrix, got {m.shape}")
    # R = Ry(a) Rx(b) Rz(c): R[1, 2] = -sin b, R[0, 2] / R[2, 2] = tan a, R[1, 0] / R[1, 1] = tan c.
    b = math.asin(float(np.clip(-m[1, 2], -1.0, 1.0)))
    if math.cos(b) > 1e-9:
        a = math.atan2(m[0, 2], m[2, 2])
        c = math.atan2(m[1, 0], m[1, 1])
    else:  # gimbal lock: only a +- c is defined; put it all in yaw
        a = math.atan2(-m[2, 0], m[0, 0])
        c = 0.0
    angles = np.rad2deg([a, -b, -c])
    return wrap_degrees(angles)


def camera_matrix(image_size, focal=None, principal_point=None) -> np.ndarray:
    """Pinhole intrinsics (3, 3) for an image of ``image_size`` (int or (W, H)) pixels.

    Focal length ``focal`` pixels (default: the larger image side); principal point default the
    image centre ``((W - 1) / 2, (H - 1) / 2)`` in 0-based pixel-centre coordinates.
    """
    w, h = (image_size, image_size) if np.isscalar(image_size) else image_size
    f = float(max(w, h)) if focal is None else float(focal)
    cx, cy = ((w - 1) / 2.0, (h - 1) / 2.0) if principal_point is None else principal_point
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def project(points_3d, rotation, translation, camera) -> np.ndarray:
    """Template points (n, 3) -> pixel coordinates (n, 2) float64 and camera depths (n,).

    ``X_cam = F @ rotation @ p + translation`` (F flips y and z into OpenCV's camera frame);
    ``translation`` (3,) is in template units in the camera frame (z > 0 in front of the camera).
    Returns ``(pixels, depth)``.
    """
    p = np.asarray(points_3d, np.float64)
    cam = p @ (CAMERA_FLIP @ np.asarray(rotation, np.float64)).T + np.asarray(translation, np.float64)
    k = np.asarray(camera, np.float64)
    z = cam[:, 2]
    uv = np.stack([k[0, 0] * cam[:, 0] / z + k[0, 2], k[1, 1] * cam[:, 1] / z + k[1, 2]], axis=1)
    return uv, z


def pose_from_landmarks(points_2d, image_size, num_landmarks: int = 68, rigid_only: bool = True,
                        focal=None, return_details: bool = False):
    """Fits the 3D template to 2D landmarks by PnP: ``(yaw, pitch, roll)`` degrees (3,) float64.

    Args:
      points_2d: (n, 2) landmarks in 0-based pixel coordinates of an image of ``image_size``.
      image_size: int or (W, H) pixels; the camera is a pinhole with focal length ``focal``
        (default the larger side) and the principal point at the image centre.
      num_landmarks: 68 or 98 (the markup of ``points_2d``).
      rigid_only: fit the brows, eye corners and nose only (the jaw outline and the mouth move
        with expression and bias pitch); False fits all points.
      return_details: also return a dict with ``rvec``, ``tvec`` (OpenCV camera frame),
        ``rotation`` (template frame) and ``rms`` (reprojection error of the fitted points, px).

    EPnP gives the start and Levenberg-Marquardt (``solvePnPRefineLM``) refines it; a frontal
    start refined the same way is the fallback, kept when it reprojects better. A solution with
    any fitted point behind the camera is rejected.
    Raises :class:`PoseFitError` for non-finite input or when no solution lies in front.
    """
    n = check_num_landmarks(num_landmarks)
    pts = np.asarray(points_2d, np.float64)
    if pts.shape != (n, 2):
        raise PoseFitError(f"expected ({n}, 2) landmarks, got {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise PoseFitError("landmarks contain NaN or infinite values")
    index = face3d.rigid_indices(n) if rigid_only else np.arange(n)
    obj = np.ascontiguousarray(face3d.mean_face(n)[index])
    img = np.ascontiguousarray(pts[index])
    k = camera_matrix(image_size, focal)
    dist = np.zeros(5)

    def in_front(rvec, tvec):
        r_cv, _ = cv2.Rodrigues(rvec)
        depth = (obj @ r_cv.T + tvec.reshape(1, 3))[:, 2]
        return bool(np.all(depth > 0))

    def refine(rvec, tvec):
        rvec, tvec = cv2.solvePnPRefineLM(obj, img, k, dist, rvec.copy(), tvec.copy())
        return rvec, tvec

    candidates = []
    ok, rvec, tvec = cv2.solvePnP(obj, img, k, dist, flags=cv2.SOLVEPNP_EPNP)
    if ok and np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec)):
        candidates.append((rvec, tvec))
    # Frontal start: the template facing the camera at the distance that matches the spread.
    spread_px = np.sqrt(np.mean(np.sum((img - img.mean(0)) ** 2, axis=1)))
    spread_3d = np.sqrt(np.mean(np.sum((obj[:, :2] - obj[:, :2].mean(0)) ** 2, axis=1)))
    depth0 = k[0, 0] * spread_3d / max(spread_px, 1e-6)
    centre = img.mean(0)
    t0 = np.array([(centre[0] - k[0, 2]) * depth0 / k[0, 0], (centre[1] - k[1, 2]) * depth0 / k[1, 1],
                   depth0])
    r0, _ = cv2.Rodrigues(CAMERA_FLIP)
    candidates.append((r0.astype(np.float64), t0.reshape(3, 1)))

    best = None
    for rvec, tvec in candidates:
        rvec, tvec = refine(np.asarray(rvec, np.float64), np.asarray(tvec, np.float64))
        if not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))) or not in_front(rvec, tvec):
            continue
        proj, _ = cv2.projectPoints(obj, rvec, tvec, k, dist)
        rms = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img) ** 2, axis=1))))
        if best is None or rms < best[2] - 1e-9:
            best = (rvec, tvec, rms)
        if best is not None and best[2] < 1e-6:
            break
    if best is None:
        raise PoseFitError("no PnP solution with the face in front of the camera")
    rvec, tvec, rms = best
    r_cv, _ = cv2.Rodrigues(rvec)
    rotation = CAMERA_FLIP @ r_cv
    angles = euler_angles(rotation)
    if return_details:
        return angles, dict(rvec=rvec.ravel(), tvec=tvec.ravel(), rotation=rotation, rms=rms)
    return angles


def read_pose_csv(path) -> dict:
    """Reads a pose CSV ``name,yaw,pitch,roll`` (header line required, degrees) into
    ``{name: np.array([yaw, pitch, roll], float32)}``.

    Raises :class:`DataError` naming the file and line for a missing or wrong header, a wrong
    column count, an empty name, a non-numeric, NaN or infinite value, or a duplicate name.
    Blank lines are ignored.
    """
    path = os.fspath(path)
    poses = {}
    first_line = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = None
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            cells = [cell.strip() for cell in row]
            if header is None:
                header = [cell.lower() for cell in cells]
                if header != ["name", "yaw", "pitch", "roll"]:
                    raise DataError(path, f"header must be 'name,yaw,pitch,roll', got {','.join(cells)!r}",
                                    line)
                continue
            if len(cells) != 4:
                raise DataError(path, f"expected 4 columns (name,yaw,pitch,roll), got {len(cells)}", line)
            name = cells[0]
            if not name:
                raise DataError(path, "empty name", line)
            values = []
            for column, cell in zip(("yaw", "pitch", "roll"), cells[1:]):
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(path, f"{column} is not a number: {cell!r}", line) from None
                if not math.isfinite(value):
                    raise DataError(path, f"{column} is not finite: {cell!r}", line)
                values.append(value)
            if name in poses:
                raise DataError(path, f"duplicate name {name!r} (first on line {first_line[name]})", line)
            poses[name] = np.array(values, np.float32)
            first_line[name] = line
        if header is None:
            raise DataError(path, "empty file: header 'name,yaw,pitch,roll' required")
    return poses
