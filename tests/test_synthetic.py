"""Synthetic faces: records, determinism, geometry, drawing order, mirror symmetry, learnability."""

import cv2
import numpy as np
import pytest

from asmnet_jax.data import face3d, pose, synthetic
from asmnet_jax.landmarks import FLIP_ORDERS

SIZE = 96


def _fixed_scene(seed=0, **changes):
    """Parameters of one face with a plain, noise-free look (for pixel comparisons)."""
    rng = np.random.default_rng(seed)
    identity = synthetic.sample_identity(rng, symmetric=True)
    appearance = synthetic.sample_appearance(rng)
    appearance.update(clutter=0, noise=0.0, blur=0.0, light=np.array([0.0, 0.0, 1.0]), hair_style=1,
                      shoulders=True, ears=True)
    appearance.update(changes)
    return dict(identity=identity, expression=dict(synthetic.NEUTRAL_EXPRESSION),
                appearance=appearance, face_fraction=0.55, offset=(0.0, 0.0))


def _polygon_mask(points, size, shrink=0.0):
    """Filled convex hull of ``points`` (n, 2), shrunk toward its centre by ``shrink`` (fraction)."""
    hull = cv2.convexHull(np.asarray(points, np.float32)).reshape(-1, 2)
    hull = hull.mean(0) + (hull - hull.mean(0)) * (1 - shrink)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(hull).astype(np.int32)], 1)
    return mask.astype(bool)


@pytest.mark.parametrize("num_landmarks", [68, 98])
def test_record_shapes_and_types(num_landmarks):
    record = synthetic.face_record(0, 1, SIZE, num_landmarks)
    assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
    assert record["landmarks"].shape == (num_landmarks, 2) and record["landmarks"].dtype == np.float32
    assert record["pose"].shape == (3,) and record["pose"].dtype == np.float32
    assert record["landmarks_3d"].shape == (num_landmarks, 3)
    assert record["index"] == 1
    assert np.all(np.abs(record["pose"]) <= synthetic.POSE_RANGE)
    data = synthetic.make_dataset(3, seed=0, size=SIZE, num_landmarks=num_landmarks)
    assert data["images"].shape == (3, SIZE, SIZE, 3) and data["landmarks"].shape == (3, num_landmarks, 2)
    assert data["poses"].shape == (3, 3) and list(data["indices"]) == [0, 1, 2]


def test_each_face_depends_only_on_seed_and_index():
    a = synthetic.face_record(7, 5, SIZE)
    b = synthetic.face_record(7, 5, SIZE)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    data = synthetic.make_dataset(3, seed=7, size=SIZE, start=4)  # indices 4, 5, 6
    np.testing.assert_array_equal(data["images"][1], a["image"])
    np.testing.assert_array_equal(data["poses"][1], a["pose"])
    other_index = synthetic.face_record(7, 6, SIZE)
    other_seed = synthetic.face_record(8, 5, SIZE)
    assert not np.array_equal(other_index["landmarks"], a["landmarks"])
    assert not np.array_equal(other_seed["landmarks"], a["landmarks"])


def test_landmarks_are_the_exact_projections_and_the_pose_is_exact():
    record = synthetic.face_record(3, 0, SIZE)
    uv, depth = pose.project(record["landmarks_3d"], record["rotation"], record["translation"],
                             record["camera"])
    np.testing.assert_allclose(uv, record["landmarks"], atol=1e-3)
    assert np.all(depth > 0)
    np.testing.assert_allclose(record["rotation"], pose.rotation_matrix(*record["pose"]), atol=1e-6)
    # The template face (no identity change, neutral expression, centred) gives the pose back by PnP.
    rng = np.random.default_rng(0)
    template = synthetic.sample_identity(rng, strength=0.0, symmetric=True)
    for angles in [(50, -20, 10), (-35, 25, -25), (0, 0, 0)]:
        record = synthetic.render_face(rng, SIZE, 98, pose=angles, identity=template,
                                       expression=synthetic.NEUTRAL_EXPRESSION, offset=(0, 0))
        np.testing.assert_allclose(record["landmarks_3d"], face3d.mean_face(98), atol=1e-6)
        est = pose.pose_from_landmarks(record["landmarks"], SIZE, 98, focal=record["camera"][0, 0])
        np.testing.assert_allclose(est, angles, atol=0.05)


def test_landmarks_stay_inside_the_image():
    for index in range(40):
        points = synthetic.face_record(11, index, SIZE)["landmarks"]
        assert points.min() >= 0 and points.max() <= SIZE - 1, index
    rng = np.random.default_rng(5)
    for _ in range(20):  # moderate poses, any placement the default allows
        angles = synthetic.sample_pose(rng, (30, 15, 15))
        points = synthetic.render_face(rng, SIZE, 68, pose=angles)["landmarks"]
        assert points.min() >= 0.02 * SIZE - 1e-3 and points.max() <= 0.98 * SIZE - 1 + 1e-3


def test_face_is_painted_over_the_background():
    scene = _fixed_scene()
    a = synthetic.render_face(np.random.default_rng(1), SIZE, pose=(20, 10, -5), **scene)
    b = synthetic.render_face(np.random.default_rng(2), SIZE, pose=(20, 10, -5), **scene)
    np.testing.assert_array_equal(a["landmarks"], b["landmarks"])
    inside = _polygon_mask(a["landmarks"][17:], SIZE, shrink=0.1)  # brows, eyes, nose, mouth
    # Only the background differs between the two: the face pixels are the same ...
    np.testing.assert_array_equal(a["image"][inside], b["image"][inside])
    # ... the corners (background) are not, and the face is not a flat blob.
    corners = np.zeros((SIZE, SIZE), bool)
    corners[:8, :8] = corners[:8, -8:] = True
    assert np.abs(a["image"][corners].astype(int) - b["image"][corners]).mean() > 3
    assert a["image"][inside].std(axis=0).mean() > 8


def test_far_eye_is_hidden_at_large_yaw():
    scene = _fixed_scene(seed=3, sclera=np.array([255.0, 255.0, 255.0]), skin=np.array([210.0, 120, 70]),
                         hair=np.array([40.0, 30, 20]), lips=np.array([180.0, 60, 60]))
    size = 256
    counts = {}
    for yaw in (-60, 0, 60):
        record = synthetic.render_face(np.random.default_rng(0), size, pose=(yaw, 0, 0), **scene)
        white = np.all(record["image"] > 140, axis=-1)  # the only bright grey colour is the sclera
        counts[yaw] = [int((white & _polygon_mask(record["landmarks"][eye], size)).sum())
                       for eye in (slice(36, 42), slice(42, 48))]
    right, left = 0, 1  # the image-left eye (36-41) and the image-right eye (42-47)
    assert min(counts[0]) > 10
    # +yaw turns the face toward the image right: the image-right eye goes behind the nose.
    assert counts[60][left] < 0.25 * counts[60][right]
    assert counts[-60][right] < 0.25 * counts[-60][left]


@pytest.mark.parametrize("num_landmarks", [68, 98])
def test_mirrored_pose_gives_mirrored_landmarks_and_image(num_landmarks):
    scene = _fixed_scene(seed=4, hair_style=0)
    order = FLIP_ORDERS[num_landmarks]
    for yaw, pitch, roll in [(35, 10, 20), (-55, -20, 5), (10, 25, -30)]:
        a = synthetic.render_face(np.random.default_rng(1), SIZE, num_landmarks, pose=(yaw, pitch, roll), **scene)
        b = synthetic.render_face(np.random.default_rng(1), SIZE, num_landmarks, pose=(-yaw, pitch, -roll), **scene)
        mirrored = a["landmarks"][order].copy()
        mirrored[:, 0] = SIZE - 1 - mirrored[:, 0]
        np.testing.assert_allclose(b["landmarks"], mirrored, atol=1e-3)
        inside = _polygon_mask(b["landmarks"], SIZE, shrink=0.05)
        difference = np.abs(b["image"].astype(int) - a["image"][:, ::-1])[inside]
        assert difference.mean() < 6, (yaw, pitch, roll, difference.mean())


def test_expression_and_identity_move_the_right_points():
    rng = np.random.default_rng(0)
    template = synthetic.sample_identity(rng, strength=0.0, symmetric=True)
    neutral = synthetic.face_geometry(template, synthetic.NEUTRAL_EXPRESSION)["landmarks68"]
    np.testing.assert_allclose(neutral, face3d.mean_face(68, design_frame=True), atol=1e-12)
    opened = synthetic.face_geometry(template, dict(synthetic.NEUTRAL_EXPRESSION, mouth_open=0.2))["landmarks68"]
    assert opened[66, 1] < neutral[66, 1] - 0.15 and opened[57, 1] < neutral[57, 1] - 0.15
    assert opened[8, 1] < neutral[8, 1] - 0.15  # the jaw drops with the lower lip
    np.testing.assert_allclose(opened[17:48], neutral[17:48], atol=1e-12)  # brows, nose, eyes stay
    closed = synthetic.face_geometry(template, dict(synthetic.NEUTRAL_EXPRESSION, eye_closure=(1.0, 0.0)))["landmarks68"]
    assert abs(closed[37, 1] - closed[41, 1]) < 0.01 < abs(closed[43, 1] - closed[47, 1])
    for _ in range(10):  # identities stay face-like
        shape = synthetic.face_geometry(synthetic.sample_identity(rng), synthetic.sample_expression(rng))
        difference = np.linalg.norm(shape["landmarks68"] - neutral, axis=1)
        assert 0.005 < difference.mean() < 0.15


def test_draw_landmarks():
    image = np.zeros((32, 32, 3), np.uint8)
    out = synthetic.draw_landmarks(image, np.array([[5.0, 6.0], [20.25, 10.75]]), (0, 255, 0), 1.5)
    assert image.max() == 0 and out.shape == image.shape and out.dtype == np.uint8
    assert tuple(out[6, 5]) == (0, 255, 0) and out[10:12, 20].max() > 200
    assert out[25, 25].max() == 0


def test_image_grid():
    images = np.zeros((5, 8, 10, 3), np.uint8) + np.arange(5, dtype=np.uint8)[:, None, None, None]
    grid = synthetic.image_grid(images, columns=3, pad=1)
    assert grid.shape == (2 * 9 + 1, 3 * 11 + 1, 3)
    assert grid[1, 1, 0] == 0 and grid[10, 1, 0] == 3


def _orientation_features(images):
    """Pooled gradient-orientation energies (8 x 8 cells x 3) of each image."""
    out = []
    for image in images:
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
        magnitude = np.sqrt(gx * gx + gy * gy) + 1e-3
        out.append(np.concatenate([
            cv2.resize(c, (8, 8), interpolation=cv2.INTER_AREA).ravel()
            for c in (gx * gx / magnitude, gy * gy / magnitude, gx * gy / magnitude)]))
    return np.array(out, np.float64)


def test_landmarks_are_learnable_by_a_linear_probe():
    """A ridge regression on crude image features predicts held-out landmarks clearly better
    than the mean shape: the images carry the landmark information."""
    size, train, test = 48, 240, 60
    data = synthetic.make_dataset(train + test, seed=21, size=size)
    x = _orientation_features(data["images"])
    y = data["landmarks"].reshape(train + test, -1) / size
    mean, scale = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = (x - mean) / scale
    y_mean = y[:train].mean(0)
    weights = np.linalg.solve(x[:train].T @ x[:train] + 100.0 * np.eye(x.shape[1]),
                              x[:train].T @ (y[:train] - y_mean))
    probe = np.abs(x[train:] @ weights + y_mean - y[train:]).mean()
    baseline = np.abs(y_mean - y[train:]).mean()
    print(f"linear probe error {probe:.4f} vs mean shape {baseline:.4f} (ratio {probe / baseline:.2f})")
    assert probe < 0.85 * baseline
