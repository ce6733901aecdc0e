import cv2
import numpy as np
import pytest

from asmnet_jax.data import geometry
from asmnet_jax.data.crop import (SquareBox, crop_face, crop_transform, detection_box,
                                  landmark_box, uncrop_points)


def _centroid(image):
    """Intensity-weighted centroid (x, y) of a single-channel image, pixel-centre coordinates."""
    weights = image.astype(np.float64)
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    return np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()


def _gaussian_dot(shape, centre, sigma):
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    d2 = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2
    return np.round(255 * np.exp(-d2 / (2 * sigma ** 2))).astype(np.uint8)


def test_landmark_box_is_square_around_the_bounding_box_with_margin():
    points = np.array([[10.0, 20.0], [30.0, 60.0], [25.0, 40.0]])
    box = landmark_box(points, margin=0.25)
    assert isinstance(box, SquareBox)
    np.testing.assert_allclose(box, (20.0, 40.0, 40.0 * 1.5))
    np.testing.assert_allclose(landmark_box(points, margin=0.0), (20.0, 40.0, 40.0))
    np.testing.assert_allclose(detection_box(10, 20, 30, 60, margin=0.25), box)
    # A wide box: the side follows the width.
    np.testing.assert_allclose(detection_box(0, 0, 50, 10, margin=0.1), (25.0, 5.0, 60.0))


@pytest.mark.parametrize("call", [
    lambda: landmark_box(np.zeros((5, 2)), margin=0.1),          # no extent
    lambda: landmark_box(np.array([[0, 0], [np.nan, 1]]), 0.1),   # non-finite
    lambda: detection_box(0, 0, 10, 10, margin=-0.5),             # margin eats the box
    lambda: crop_transform((5, 5, 0), 10),
    lambda: crop_transform((5, 5, 10), 0),
    lambda: crop_face(np.zeros((8, 8), np.float32), None, (4, 4, 8), 8),
])
def test_degenerate_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


def test_box_edges_map_to_crop_edges():
    box = SquareBox(37.25, -4.5, 19.0)
    matrix = crop_transform(box, 56)
    corners = np.array([[box.cx - box.side / 2, box.cy - box.side / 2],
                        [box.cx + box.side / 2, box.cy + box.side / 2],
                        [box.cx, box.cy]])
    np.testing.assert_allclose(geometry.transform_points(corners, matrix),
                               [[-0.5, -0.5], [55.5, 55.5], [27.5, 27.5]], atol=1e-5)


def test_whole_image_box_is_identity_and_half_size_matches_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    whole = SquareBox(15.5, 15.5, 32.0)  # spans [-0.5, 31.5]
    np.testing.assert_allclose(crop_transform(whole, 32), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    crop, _, _ = crop_face(image, None, whole, 32)
    np.testing.assert_array_equal(crop, image)
    half, _, _ = crop_face(image, None, whole, 16)
    resized = cv2.resize(image, (16, 16), interpolation=cv2.INTER_LINEAR)
    assert np.abs(half.astype(int) - resized.astype(int)).max() <= 1


def test_crop_then_uncrop_returns_the_original_points():
    rng = np.random.default_rng(1)
    for _ in range(20):
        points = rng.uniform(-50, 3000, size=(98, 2)).astype(np.float32)
        box = landmark_box(points[:68], margin=rng.uniform(0, 0.5))
        out_size = int(rng.integers(16, 300))
        matrix = crop_transform(box, out_size)
        back = uncrop_points(geometry.transform_points(points, matrix), matrix)
        np.testing.assert_allclose(back, points, atol=1e-3)
    image = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    points = rng.uniform(0, 39, size=(68, 2)).astype(np.float32)
    crop, mapped, matrix = crop_face(image, points, landmark_box(points, 0.2), 24)
    assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
    assert mapped.shape == (68, 2) and mapped.dtype == np.float32
    np.testing.assert_allclose(uncrop_points(mapped, matrix), points, atol=1e-3)


@pytest.mark.parametrize("scale", [4.0, 1.0, 0.5])
def test_a_dot_at_a_landmark_lands_under_the_mapped_landmark(scale):
    landmark = np.array([[41.3, 27.8]], np.float32)
    # A blob of 2.5 crop pixels sigma whatever the scale, so that it fits inside the crop.
    source = _gaussian_dot((80, 96), landmark[0], sigma=2.5 / scale)
    out_size = 48
    # Off-centre box (the landmark falls at crop pixel (20.3, 27.6)); at scale 0.5 it reaches
    # outside the image, which the mapping must not mind.
    side = out_size / scale
    box = SquareBox(landmark[0, 0] - 20.8 / scale + side / 2,
                    landmark[0, 1] - 28.1 / scale + side / 2, side)
    crop, mapped, _ = crop_face(source, landmark, box, out_size)
    assert crop.shape == (out_size, out_size)
    np.testing.assert_allclose(mapped[0], (20.3, 27.6), atol=1e-4)
    np.testing.assert_allclose(_centroid(crop), mapped[0], atol=0.05)


def test_a_single_bright_pixel_lands_under_its_mapped_position():
    image = np.zeros((30, 30, 3), np.uint8)
    image[12, 7] = (255, 255, 255)  # the pixel centred at x=7, y=12
    crop, mapped, _ = crop_face(image, np.array([[7.0, 12.0]]), SquareBox(9.0, 10.0, 8.0), 32)
    np.testing.assert_allclose(_centroid(crop[..., 0]), mapped[0], atol=0.05)


def test_outside_the_image_is_black():
    image = np.full((20, 20, 3), 200, np.uint8)
    crop, _, _ = crop_face(image, None, SquareBox(0.0, 0.0, 20.0), 20)
    # The box spans [-10, 10]: its top-left quarter lies outside the image.
    assert (crop[:9, :9] == 0).all() and (crop[11:, 11:] == 200).all()
