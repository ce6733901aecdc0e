"""Landmark markups and the project's coordinate conventions.

This module is the one place that converts between pixel coordinates, the model's normalised
landmark coordinates and pose units. Everything else calls these functions.

Conventions of this project
---------------------------
* Pixel coordinates are 0-based with pixel centres at integers: the first pixel's centre is
  (0, 0) and a ``W`` pixel wide image spans ``[-0.5, W - 0.5]``. (``.pts`` files are 1-based:
  readers subtract 1.)
* Model landmarks are ``(x_px + 0.5) / W - 0.5`` and ``(y_px + 0.5) / H - 0.5``: the crop spans
  ``[-0.5, 0.5]`` in both axes, x to the right and y down, centre 0. Resizing a crop does not change
  them, and a horizontal flip is ``x -> -x`` (followed by the markup's mirror permutation).
  Landmark vectors are interleaved ``[x0, y0, x1, y1, ...]`` of length ``2n``.
* Pose is ``(yaw, pitch, roll)`` in radians in the model; datasets and reports use degrees.

The authors' Keras models use ``x_a = (112 - x_px) / 224`` (x and y), and pose in degrees / 65.
:func:`authors_to_model_landmarks` and :func:`authors_to_model_pose` convert, treating the authors'
pixel coordinates as this project's 0-based pixel centres in a 224 x 224 crop.
"""

from __future__ import annotations

import numpy as np

#: Outer eye corners used for the inter-ocular normaliser.
INTER_OCULAR = {68: (36, 45), 98: (60, 72)}
#: Points that delimit each eye (for pupil centres in the 68 markup) or the pupils themselves (98).
EYE_POINTS_68 = (tuple(range(36, 42)), tuple(range(42, 48)))
PUPILS_98 = (96, 97)

AUTHORS_CROP_SIZE = 224
AUTHORS_POSE_SCALE_DEG = 65.0

# Mirror orders under a horizontal flip (point i becomes point FLIP[i]); the same orders as the
# usual 68-point (iBUG) and 98-point (WFLW) markups.
FLIP_68 = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65],
    dtype=np.int64)
FLIP_98 = np.array(
    list(range(32, -1, -1)) + [46, 45, 44, 43, 42, 50, 49, 48, 47]
    + [37, 36, 35, 34, 33, 41, 40, 39, 38] + [51, 52, 53, 54] + [59, 58, 57, 56, 55]
    + [72, 71, 70, 69, 68, 75, 74, 73, 64, 63, 62, 61, 60, 67, 66, 65]
    + [82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83, 92, 91, 90, 89, 88, 95, 94, 93, 97, 96],
    dtype=np.int64)
FLIP_ORDERS = {68: FLIP_68, 98: FLIP_98}


def check_num_landmarks(num_landmarks: int) -> int:
    """Returns ``num_landmarks`` if this project knows the markup, else raises ValueError."""
    if num_landmarks not in FLIP_ORDERS:
        raise ValueError(
            f"num_landmarks={num_landmarks} is not a supported markup; use 68 (300W) or 98 (WFLW)")
    return num_landmarks


def _float32(values):
    """float32 values: a NumPy array, or a JAX array (also traced, inside a jitted step) as is."""
    if hasattr(values, "aval"):  # jax.Array or tracer, without importing JAX here
        return values.astype(np.float32)
    return np.asarray(values, dtype=np.float32)


def pixels_to_model(points_px, size):
    """Pixel coordinates (..., n, 2) in a crop of ``size`` (int or (W, H)) -> model vector (..., 2n).
    NumPy in, NumPy out; JAX arrays (also inside ``jit``) stay JAX arrays."""
    w, h = (size, size) if np.isscalar(size) else size
    pts = _float32(points_px)
    scale = np.array([w, h], dtype=np.float32)
    normalised = (pts + 0.5) / scale - 0.5
    return normalised.reshape(*pts.shape[:-2], -1)


def model_to_pixels(vector, size):
    """Model vector (..., 2n) -> pixel coordinates (..., n, 2) in a crop of ``size``."""
    w, h = (size, size) if np.isscalar(size) else size
    vec = np.asarray(vector, dtype=np.float32)
    pts = vec.reshape(*vec.shape[:-1], -1, 2)
    return (pts + 0.5) * np.array([w, h], dtype=np.float32) - 0.5


def degrees_to_model_pose(pose_deg):
    """(yaw, pitch, roll) in degrees (..., 3) -> model pose units (radians); JAX arrays stay
    JAX arrays."""
    pose = _float32(pose_deg)
    return np.deg2rad(pose) if isinstance(pose, np.ndarray) else pose * np.float32(np.pi / 180)


def model_pose_to_degrees(pose):
    """Model pose units (radians) (..., 3) -> degrees."""
    return np.rad2deg(np.asarray(pose, dtype=np.float32))


def authors_to_model_landmarks(vector):
    """The authors' landmark vector ``(112 - x_px) / 224`` (..., 2n) -> this project's convention.

    ``x_px = 112 - 224 * a``; ours ``= (x_px + 0.5) / 224 - 0.5 = -a + 0.5 / 224``. Affine, so it
    also converts a linear head's outputs (kernel * -1, bias * -1 + 0.5 / 224).
    """
    return -np.asarray(vector) + AUTHORS_LANDMARK_OFFSET


AUTHORS_LANDMARK_OFFSET = 0.5 / AUTHORS_CROP_SIZE


def authors_to_model_pose(pose):
    """The authors' pose (degrees / 65) (..., 3) -> radians (scale only; order yaw, pitch, roll)."""
    return np.asarray(pose) * AUTHORS_POSE_SCALE


AUTHORS_POSE_SCALE = float(np.deg2rad(AUTHORS_POSE_SCALE_DEG))


def flip_landmarks_model(vector, num_landmarks: int):
    """Horizontal flip of model landmark vectors (..., 2n): negate x, then mirror-permute points."""
    order = FLIP_ORDERS[check_num_landmarks(num_landmarks)]
    pts = np.asarray(vector).reshape(*np.shape(vector)[:-1], num_landmarks, 2).copy()
    pts[..., 0] = -pts[..., 0]
    return pts[..., order, :].reshape(np.shape(vector))
