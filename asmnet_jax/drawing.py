"""Drawings of predictions on photos: the landmarks and the head's 3-D axes (red x, green y,
blue z), for ``asmnet-predict`` and the README figures."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from asmnet_jax.data.pose import rotation_matrix
from asmnet_jax.data.synthetic import draw_landmarks


# --------------------------------------------------------------------------------------------------
# Drawing

#: Axis colours (RGB): x (toward the face's left ear, image right when frontal) red, y (up) green,
#: z (out of the face, along the nose) blue.
AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (40, 90, 255))


def pose_axes_2d(pose_deg, length: float) -> np.ndarray:
    """Screen directions (3, 2) of the head's x, y, z axes, ``length`` pixels long when parallel
    to the image (orthographic view, y down).

    The head rotation is :func:`asmnet_jax.data.pose.rotation_matrix` (template frame: x right,
    y up, z toward the viewer); axis k is column k, drawn as ``(R[0, k], -R[1, k]) * length``.
    """
    rotation = rotation_matrix(*np.asarray(pose_deg, np.float64).reshape(3))
    return np.stack([rotation[0], -rotation[1]], axis=1) * float(length)


def draw_pose_axes(image, centre, pose_deg, length: float, thickness: int = 2) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) uint8 RGB with the head's axes drawn from ``centre`` (x, y)
    pixels: x red, y green, z blue (:data:`AXIS_COLOURS`), the axis nearest the viewer last."""
    out = np.ascontiguousarray(np.array(image, np.uint8, copy=True))
    directions = pose_axes_2d(pose_deg, length)
    depth = rotation_matrix(*np.asarray(pose_deg, np.float64).reshape(3))[2]  # toward the viewer
    start = np.asarray(centre, np.float64)
    shift = 4
    for k in np.argsort(depth):
        a = tuple(int(v) for v in np.round(start * (1 << shift)))
        b = tuple(int(v) for v in np.round((start + directions[k]) * (1 << shift)))
        cv2.arrowedLine(out, a, b, AXIS_COLOURS[k], int(thickness), cv2.LINE_AA, shift, 0.15)
    return out


def draw_faces(image, faces: Sequence[dict]) -> np.ndarray:
    """Copy of ``image`` (H, W, 3) uint8 RGB with each face of :func:`predict_images` drawn: the
    box (thin, yellow), the landmarks (green dots) and the pose axes at the centre of the
    landmarks' bounding box, half the face box long."""
    out = np.ascontiguousarray(np.array(image, np.uint8, copy=True))
    for face in faces:
        side = float(face["face_box"].side)
        x0, y0, x1, y1 = (int(round(v)) for v in face["box"])
        cv2.rectangle(out, (x0, y0), (x1, y1), (240, 220, 40), max(1, round(side / 200)),
                      cv2.LINE_AA)
        points = face["landmarks"]
        out = draw_landmarks(out, points, (60, 255, 60), radius=max(1.0, side / 120))
        centre = (points.min(axis=0) + points.max(axis=0)) / 2
        out = draw_pose_axes(out, centre, face["pose"], 0.5 * side,
                             thickness=max(1, round(side / 80)))
    return out
