"""2D affine transforms on images and points, in 0-based pixel-centre coordinates.

A transform is a (2, 3) float64 matrix M mapping source pixel coordinates to destination pixel
coordinates: ``dst = M[:, :2] @ src + M[:, 2]``. ``cv2.warpAffine`` samples destination pixel
centres at integer coordinates, the same convention, so points and pixels move together exactly.
"""

from __future__ import annotations

import numpy as np


def as_3x3(matrix) -> np.ndarray:
    m = np.asarray(matrix, np.float64)
    return np.vstack([m, [0.0, 0.0, 1.0]])


def compose(*matrices) -> np.ndarray:
    """``compose(A, B)`` applies A first, then B (both (2, 3)); returns (2, 3)."""
    out = np.eye(3)
    for m in matrices:
        out = as_3x3(m) @ out
    return out[:2]


def invert(matrix) -> np.ndarray:
    """Inverse of a (2, 3) affine transform."""
    return np.linalg.inv(as_3x3(matrix))[:2]


def transform_points(points, matrix) -> np.ndarray:
    """Points (..., 2) -> M applied, float32."""
    pts = np.asarray(points, np.float64)
    m = np.asarray(matrix, np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def similarity(scale: float = 1.0, angle_deg: float = 0.0, center=(0.0, 0.0),
               translate=(0.0, 0.0)) -> np.ndarray:
    """Rotation by ``angle_deg`` (counter-clockwise on screen, y down) and scaling about
    ``center``, then a translation: (2, 3)."""
    theta = np.deg2rad(angle_deg)
    c, s = scale * np.cos(theta), scale * np.sin(theta)
    cx, cy = center
    # On screen (y down) a counter-clockwise rotation is [[c, s], [-s, c]].
    m = np.array([[c, s, 0.0], [-s, c, 0.0]])
    m[:, 2] = np.array([cx, cy]) - m[:, :2] @ np.array([cx, cy]) + np.asarray(translate)
    return m


def warp(image, matrix, size, border_value=0, interpolation=None) -> np.ndarray:
    """Warps ``image`` (H, W[, C]) by M into a (size, size) or (W, H)=size output
    (``interpolation``: an OpenCV flag, default ``cv2.INTER_LINEAR``)."""
    import cv2  # here, so that the device input path runs without OpenCV

    if interpolation is None:
        interpolation = cv2.INTER_LINEAR
    w, h = (size, size) if np.isscalar(size) else size
    if np.isscalar(border_value):  # OpenCV reads a scalar as (v, 0, 0, 0): fill every channel
        border_value = (border_value,) * 4
    return cv2.warpAffine(image, np.asarray(matrix, np.float64), (int(w), int(h)),
                          flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=border_value)
