"""Square face crops in 0-based pixel-centre coordinates.

A square box is ``(cx, cy, side)`` in source pixels: it covers ``[cx - side/2, cx + side/2]`` in
x and the same in y, in continuous coordinates (a pixel centre at integer ``i`` covers
``[i - 0.5, i + 0.5]``). Cropping maps the box edges onto the crop's edges ``-0.5`` and
``out_size - 0.5``, so the crop is the box resampled, points and pixels moving together exactly
(:mod:`asmnet_jax.data.geometry`). Outside the source image the crop is black (constant 0): the
padding is visibly not face, unlike replicated edge pixels that smear texture into it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data import geometry

#: Margin on each side, as a fraction of the box's longer side, when none is given.
DEFAULT_MARGIN = 0.1


class SquareBox(NamedTuple):
    """A square box in source pixels: centre ``(cx, cy)`` and ``side`` length."""

    cx: float
    cy: float
    side: float


def grown_side(side: float, margin: float) -> float:
    """The side of a square box grown by ``margin`` of its side on each side: the one rule by
    which training crops, evaluation crops and photos in ``asmnet-predict`` frame a face."""
    if not margin > -0.5:
        raise ValueError(f"margin must be > -0.5, got {margin}")
    return side * (1.0 + 2.0 * margin)


def _square(x_min, y_min, x_max, y_max, margin: float) -> SquareBox:
    values = np.array([x_min, y_min, x_max, y_max], np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"box has non-finite values: {values}")
    side = grown_side(max(values[2] - values[0], values[3] - values[1]), margin)
    if not side > 0:
        raise ValueError(f"box {values} has no extent")
    return SquareBox(float((values[0] + values[2]) / 2), float((values[1] + values[3]) / 2),
                     float(side))


def landmark_box(points, margin: float = DEFAULT_MARGIN) -> SquareBox:
    """Square box around landmarks (n, 2) in pixels.

    Centred on the landmarks' bounding box, ``side = max(w, h) * (1 + 2 * margin)`` where ``w``,
    ``h`` are the bounding box's extents (``max - min`` of the coordinates): ``margin`` of the
    longer side is added on each side.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    if pts.shape[0] == 0:
        raise ValueError("no points")
    (x_min, y_min), (x_max, y_max) = pts.min(axis=0), pts.max(axis=0)
    return _square(x_min, y_min, x_max, y_max, margin)


def detection_box(x_min, y_min, x_max, y_max, margin: float = DEFAULT_MARGIN) -> SquareBox:
    """Square box from a detection box (e.g. WFLW's ``x_min y_min x_max y_max``), pixels.

    Same rule as :func:`landmark_box`: the box's centre, ``side = max(w, h) * (1 + 2 * margin)``
    with ``w = x_max - x_min``, ``h = y_max - y_min``.
    """
    return _square(x_min, y_min, x_max, y_max, margin)


def crop_transform(box, out_size: int) -> np.ndarray:
    """(2, 3) float64 affine matrix: source pixel coordinates -> ``out_size`` x ``out_size`` crop.

    The box ``(cx, cy, side)`` edges ``cx -+ side/2`` map to ``-0.5`` and ``out_size - 0.5``:
    ``x_crop = (x - cx + side/2) * out_size / side - 0.5`` (y alike).
    """
    cx, cy, side = (float(v) for v in box)
    if not side > 0:
        raise ValueError(f"box side must be positive, got {side}")
    if int(out_size) != out_size or out_size < 1:
        raise ValueError(f"out_size must be a positive integer, got {out_size}")
    scale = out_size / side
    return np.array([[scale, 0.0, (side / 2 - cx) * scale - 0.5],
                     [0.0, scale, (side / 2 - cy) * scale - 0.5]], np.float64)


def base_matrix(box, margin: float, input_size: int) -> np.ndarray:
    """(2, 3) transform from stored-crop pixels to the model input: the face box ``(cx, cy,
    side)`` grown by ``margin`` on each side (so its side is ``side * (1 + 2 margin)``) fills the
    S x S input. Training, validation and ``asmnet-eval`` frame every face by it."""
    cx, cy, side = (float(v) for v in box)
    return crop_transform((cx, cy, grown_side(side, margin)), input_size)


def base_matrices(boxes, margin: float, input_size: int) -> np.ndarray:
    """(N, 2, 3) float32: :func:`base_matrix` of each box of ``boxes`` (N, 3)."""
    return np.stack([base_matrix(box, margin, input_size)
                     for box in np.asarray(boxes)]).astype(np.float32)


def base_labels(source, margin: float, input_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Ground-truth landmark vectors (N, 2n) and poses (N, 3) of every example of ``source`` in
    model units, for the base crop (no augmentation): what the ASM, the mean-initialised heads and
    every evaluation compare with."""
    shapes, poses = [], []
    for index in range(len(source)):
        example = source[index]
        matrix = base_matrix(example["box"], margin, input_size)
        points = geometry.transform_points(example["landmarks"], matrix)
        shapes.append(lm.pixels_to_model(points, input_size))
        poses.append(lm.degrees_to_model_pose(example["pose"]))
    return np.stack(shapes), np.stack(poses)


def crop_face(image, points, box, out_size: int
              ) -> Tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """Crops the square ``box`` out of ``image`` (H, W[, C]) uint8 and resamples it to
    ``out_size`` x ``out_size`` (bilinear; black outside the image).

    Returns ``(crop (out_size, out_size[, C]) uint8, points (n, 2) float32 in crop pixels or None
    when ``points`` is None, matrix (2, 3))``; :func:`uncrop_points` maps crop points back.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    matrix = crop_transform(box, out_size)
    crop = geometry.warp(image, matrix, int(out_size), border_value=0)
    mapped = None if points is None else geometry.transform_points(points, matrix)
    return crop, mapped, matrix


def uncrop_points(points, matrix) -> np.ndarray:
    """Crop pixel coordinates (..., 2) -> source pixel coordinates (float32), the inverse of the
    ``matrix`` that :func:`crop_transform` / :func:`crop_face` returned."""
    return geometry.transform_points(points, geometry.invert(matrix))
