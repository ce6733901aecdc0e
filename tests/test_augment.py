"""Tests of asmnet_jax.data.augment: geometry moves pixels and points together, flips permute the
markup, pose follows the warp, seeding, switches and config parsing. Small images, seconds."""

import dataclasses

import numpy as np
import pytest

from asmnet_jax.data import geometry
from asmnet_jax.data.augment import (AugmentConfig, add_noise, adjust_pose, augment,
                                     color_jitter, eval_transform, flip_matrix, rotation_of)
from asmnet_jax.landmarks import FLIP_ORDERS

SRC = 160  # stored crop side
OUT = 128  # model input side
POSE = np.array([12.0, -7.0, 21.0], np.float32)

GEOMETRIC_SWITCHES = ("rotation_enabled", "scale_enabled", "translation_enabled", "flip_enabled")
PHOTOMETRIC_SWITCHES = ("color_enabled", "blur_enabled", "occlusion_enabled", "noise_enabled")
ALL_SWITCHES = GEOMETRIC_SWITCHES + PHOTOMETRIC_SWITCHES


def base_matrix(src=SRC, out=OUT, scale=0.8):
    """Stored crop centre -> output centre, scaled by ``scale``."""
    c_src, c_out = (src - 1) / 2.0, (out - 1) / 2.0
    return geometry.similarity(scale, 0.0, (c_src, c_src), (c_out - c_src, c_out - c_src))


def only(*switches, **overrides):
    """A config with only the named parts on."""
    flags = {name: name in switches for name in ALL_SWITCHES}
    return dataclasses.replace(AugmentConfig(), **flags, **overrides)


def random_image(rng, size=SRC):
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def random_landmarks(rng, n, low=25.0, high=135.0, min_dist=8.0):
    """n points in [low, high)^2 at least ``min_dist`` apart."""
    points = []
    while len(points) < n:
        p = rng.uniform(low, high, 2)
        if all(np.hypot(*(p - q)) >= min_dist for q in points):
            points.append(p)
    return np.array(points, np.float32)


def dot_colour(i):
    """A colour per point: red 255, green and blue encode the two decimal digits of i."""
    return np.array([255.0, 30.0 + 22.0 * (i % 10), 30.0 + 22.0 * (i // 10)])


def decode_colour(pixel):
    r, g, b = np.asarray(pixel, np.float64)
    ones, tens = (int(round((c / r * 255.0 - 30.0) / 22.0)) for c in (g, b))
    return ones + 10 * tens


def draw_dots(points, size=SRC, sigma=1.5):
    """Gaussian dots of distinct colours centred on sub-pixel ``points`` on black: uint8."""
    canvas = np.zeros((size, size, 3))
    ys, xs = np.mgrid[-5:6, -5:6]
    for i, (x, y) in enumerate(points):
        cx, cy = int(round(x)), int(round(y))
        blob = np.exp(-((xs + cx - x) ** 2 + (ys + cy - y) ** 2) / (2 * sigma ** 2))
        patch = canvas[cy - 5:cy + 6, cx - 5:cx + 6]
        np.maximum(patch, blob[..., None] * dot_colour(i), out=patch)
    return np.round(canvas).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Shapes, dtypes, inputs


@pytest.mark.parametrize("n", [68, 98])
def test_shapes_and_dtypes(n):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (150, 170, 3), dtype=np.uint8)  # not square
    landmarks = random_landmarks(rng, n, min_dist=0.0).astype(np.float64)
    cfg = dataclasses.replace(AugmentConfig(), blur_prob=1.0, occlusion_prob=1.0, noise_prob=1.0)
    for fn in (lambda: augment(image, landmarks, POSE.tolist(), base_matrix(), OUT, cfg, rng),
               lambda: eval_transform(image, landmarks, POSE, base_matrix(), OUT)):
        out, points, pose, info = fn()
        assert out.shape == (OUT, OUT, 3) and out.dtype == np.uint8
        assert points.shape == (n, 2) and points.dtype == np.float32
        assert pose.shape == (3,) and pose.dtype == np.float32
        assert info["matrix"].shape == (2, 3)
        assert isinstance(info["flipped"], bool)


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    image, lm = random_image(rng), random_landmarks(rng, 68, min_dist=0.0)
    cfg = AugmentConfig()
    with pytest.raises(ValueError, match="image"):
        augment(image[..., 0], lm, POSE, base_matrix(), OUT, cfg, rng)
    with pytest.raises(ValueError, match="image"):
        augment(image.astype(np.float32), lm, POSE, base_matrix(), OUT, cfg, rng)
    with pytest.raises(ValueError, match="landmarks"):
        augment(image, lm.reshape(-1), POSE, base_matrix(), OUT, cfg, rng)
    with pytest.raises(ValueError, match="pose"):
        augment(image, lm, POSE[:2], base_matrix(), OUT, cfg, rng)
    with pytest.raises(ValueError, match="orientation"):
        augment(image, lm, POSE, geometry.compose(base_matrix(), flip_matrix(OUT)), OUT, cfg, rng)
    with pytest.raises(ValueError, match="num_landmarks=5"):  # a flip needs a known markup
        augment(image, lm[:5], POSE, base_matrix(), OUT, cfg, rng)
    # Without flips any point count is fine.
    augment(image, lm[:5], POSE, base_matrix(), OUT, only("rotation_enabled"), rng)


# ---------------------------------------------------------------------------------------------
# Geometry


def test_flip_twice_is_identity():
    rng = np.random.default_rng(1)
    image, lm = random_image(rng, OUT), random_landmarks(rng, 98, 5, OUT - 5, min_dist=0.0)
    cfg = only("flip_enabled", flip_prob=1.0)
    identity = geometry.similarity()
    once = augment(image, lm, POSE, identity, OUT, cfg, rng)
    assert once[3]["flipped"]
    np.testing.assert_array_equal(once[0], image[:, ::-1])
    np.testing.assert_allclose(once[1][FLIP_ORDERS[98]][:, 0], OUT - 1 - lm[:, 0])
    twice = augment(*once[:3], identity, OUT, cfg, rng)
    np.testing.assert_array_equal(twice[0], image)
    # (S - 1) - x rounds to float32 once per flip: equal to within that rounding.
    np.testing.assert_allclose(twice[1], lm, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(twice[2], POSE)


@pytest.mark.parametrize("n", [68, 98])
@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_dots_stay_under_their_landmarks(n, flip_prob):
    """Dot i drawn at landmark i lands under output point i, or under FLIP[i] after a flip."""
    rng = np.random.default_rng(100 * n + int(flip_prob))
    points = random_landmarks(rng, n)
    image = draw_dots(points)
    cfg = only(*GEOMETRIC_SWITCHES, flip_prob=flip_prob, rotation_deg=30.0,
               scale_range=(0.8, 1.2), translation=0.05)
    checked = 0
    for _ in range(3):
        out, moved, _, info = augment(image, points, POSE, base_matrix(), OUT, cfg, rng)
        assert info["flipped"] == bool(flip_prob)
        assert abs(info["rotation_deg"]) > 0 and info["scale"] != 1.0
        slot_of = FLIP_ORDERS[n] if info["flipped"] else np.arange(n)
        red = out[..., 0].astype(np.float64)
        for i in range(n):
            x, y = moved[slot_of[i]]
            cx, cy = int(round(x)), int(round(y))
            if not (4 <= cx < OUT - 4 and 4 <= cy < OUT - 4):
                continue
            window = red[cy - 2:cy + 3, cx - 2:cx + 3]
            py, px = np.unravel_index(np.argmax(window), window.shape)
            assert np.hypot(cx - 2 + px - x, cy - 2 + py - y) <= 1.0, (i, x, y)
            ys, xs = np.mgrid[-2:3, -2:3]
            centroid = np.array([(window * (xs + cx)).sum(), (window * (ys + cy)).sum()])
            assert np.hypot(*(centroid / window.sum() - (x, y))) < 0.35, i
            assert decode_colour(out[cy - 2 + py, cx - 2 + px]) == i
            checked += 1
    assert checked > 2 * n  # most points stay in the frame


def test_matrix_is_base_then_random_then_flip():
    rng = np.random.default_rng(3)
    image, lm = random_image(rng), random_landmarks(rng, 68, min_dist=0.0)
    cfg = only(*GEOMETRIC_SWITCHES, flip_prob=1.0)
    out, moved, _, info = augment(image, lm, POSE, base_matrix(), OUT, cfg, rng)
    c = (OUT - 1) / 2.0
    expected = geometry.compose(
        base_matrix(), geometry.similarity(info["scale"], info["rotation_deg"], (c, c),
                                           info["translate_px"]), flip_matrix(OUT))
    np.testing.assert_allclose(info["matrix"], expected, atol=1e-9)
    np.testing.assert_array_equal(out, geometry.warp(image, expected, OUT))
    np.testing.assert_allclose(moved, geometry.transform_points(lm, expected)[FLIP_ORDERS[68]])
    assert 0.8 <= info["scale"] <= 1.2 and abs(info["rotation_deg"]) <= 30
    assert max(map(abs, info["translate_px"])) <= 0.08 * OUT


# ---------------------------------------------------------------------------------------------
# Pose


def test_flip_negates_yaw_and_roll():
    rng = np.random.default_rng(4)
    image, lm = random_image(rng), random_landmarks(rng, 68, min_dist=0.0)
    _, _, pose, info = augment(image, lm, POSE, base_matrix(), OUT,
                               only("flip_enabled", flip_prob=1.0), rng)
    assert info["flipped"]
    np.testing.assert_allclose(pose, [-POSE[0], POSE[1], -POSE[2]])


def test_rotation_changes_roll_by_minus_theta():
    """+theta is counter-clockwise on screen (a point right of the centre moves up) and a
    counter-clockwise image rotation lowers the clockwise-positive roll of a frontal face by theta
    (for a turned head see test_adjust_pose_is_exact_for_a_turned_head)."""
    frontal = np.array([0.0, 0.0, POSE[2]], np.float32)
    rng = np.random.default_rng(5)
    c = (OUT - 1) / 2.0
    lm = np.array([[c + 20.0, c]] * 68, np.float32)
    image = random_image(rng, OUT)
    identity = geometry.similarity()
    thetas = []
    for _ in range(6):
        _, moved, pose, info = augment(image, lm, frontal, identity, OUT, only("rotation_enabled"),
                                       rng)
        theta = info["rotation_deg"]
        thetas.append(theta)
        t = np.deg2rad(theta)
        np.testing.assert_allclose(moved[0], [c + 20 * np.cos(t), c - 20 * np.sin(t)], atol=1e-4)
        np.testing.assert_allclose(pose, [0.0, 0.0, POSE[2] - theta], atol=1e-4)
    assert min(thetas) < 0 < max(thetas)

    # Rotation then flip: roll' = -(roll - theta).
    _, _, pose, info = augment(image, lm, frontal, identity, OUT,
                               only("rotation_enabled", "flip_enabled", flip_prob=1.0), rng)
    np.testing.assert_allclose(pose, [0.0, 0.0, -(POSE[2] - info["rotation_deg"])],
                               atol=1e-4)


def test_rotating_base_matrix_changes_roll():
    rng = np.random.default_rng(6)
    image, lm = random_image(rng), random_landmarks(rng, 68, min_dist=0.0)
    base = geometry.compose(base_matrix(), geometry.similarity(1.1, 15.0, (OUT / 2, OUT / 2)))
    assert rotation_of(base) == pytest.approx(15.0)
    _, _, pose, _ = eval_transform(image, lm, POSE, base, OUT)
    np.testing.assert_allclose(pose, adjust_pose(POSE, 15.0, False), atol=1e-4)
    _, _, pose, _ = eval_transform(image, lm, [0.0, 0.0, POSE[2]], base, OUT)
    np.testing.assert_allclose(pose, [0.0, 0.0, POSE[2] - 15.0], atol=1e-4)


def test_adjust_pose_wraps():
    np.testing.assert_allclose(adjust_pose([0, 0, 170], -20, False), [0, 0, -170], atol=1e-4)
    np.testing.assert_allclose(adjust_pose([0, 0, -170], 20, False), [0, 0, 170], atol=1e-4)
    np.testing.assert_allclose(adjust_pose([30, 5, 10], 0, True), [-30, 5, -10])


# ---------------------------------------------------------------------------------------------
# Seeding and switches


def run(config, seed, n=68):
    data_rng = np.random.default_rng(1234)
    image, lm = random_image(data_rng), random_landmarks(data_rng, n, min_dist=0.0)
    full = dataclasses.replace(config, blur_prob=1.0, occlusion_prob=1.0, noise_prob=1.0)
    return augment(image, lm, POSE, base_matrix(), OUT, full, np.random.default_rng(seed))


def test_same_seed_same_output_and_seeds_differ():
    a, b, c = run(AugmentConfig(), 7), run(AugmentConfig(), 7), run(AugmentConfig(), 8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3]["matrix"], b[3]["matrix"])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1], c[1])
    assert a[3]["rotation_deg"] != c[3]["rotation_deg"]


def test_no_global_rng_use():
    state = np.random.get_state()[1].copy()
    run(AugmentConfig(), 9)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_switching_a_part_off_keeps_the_other_draws():
    on = run(AugmentConfig(), 11)
    no_colour = run(dataclasses.replace(AugmentConfig(), color_enabled=False), 11)
    np.testing.assert_array_equal(on[1], no_colour[1])
    no_rotation = run(dataclasses.replace(AugmentConfig(), rotation_enabled=False), 11)
    assert no_rotation[3]["rotation_deg"] == 0.0
    assert no_rotation[3]["scale"] == on[3]["scale"]
    assert no_rotation[3]["flipped"] == on[3]["flipped"]


def reference(seed=0):
    data_rng = np.random.default_rng(1234)
    image, lm = random_image(data_rng), random_landmarks(data_rng, 68, min_dist=0.0)
    return eval_transform(image, lm, POSE, base_matrix(), OUT)


def assert_same(result, expected):
    np.testing.assert_array_equal(result[0], expected[0])
    np.testing.assert_array_equal(result[1], expected[1])
    np.testing.assert_array_equal(result[2], expected[2])
    np.testing.assert_array_equal(result[3]["matrix"], expected[3]["matrix"])


def test_everything_disabled_equals_eval_transform():
    expected = reference()
    for seed in range(3):
        assert_same(run(only(), seed), expected)
        assert_same(run(dataclasses.replace(AugmentConfig(), enabled=False), seed), expected)


@pytest.mark.parametrize("switch", ALL_SWITCHES)
def test_each_part_alone_changes_and_its_switch_removes_it(switch):
    expected = reference()
    alone = only(switch, flip_prob=1.0)
    changed = run(alone, 0)
    if switch in GEOMETRIC_SWITCHES:
        assert not np.array_equal(changed[1], expected[1])
    else:
        np.testing.assert_array_equal(changed[1], expected[1])
    assert not np.array_equal(changed[0], expected[0])
    assert_same(run(dataclasses.replace(alone, **{switch: False}), 0), expected)


# ---------------------------------------------------------------------------------------------
# Photometric ops


def test_color_jitter_identity_and_greyscale():
    image = random_image(np.random.default_rng(12), 32)
    np.testing.assert_array_equal(color_jitter(image, 1.0, 1.0, 1.0), image)
    grey = color_jitter(image, 1.0, 1.0, 0.0).astype(int)
    assert np.abs(grey - grey[..., :1]).max() <= 1
    flat = color_jitter(image, 1.0, 0.0, 1.0).astype(int)
    assert np.ptp(flat) <= 1
    bright = color_jitter(np.full((4, 4, 3), 100, np.uint8), 1.2, 1.0, 1.0)
    assert (bright == 120).all()


def test_noise_std():
    image = np.full((64, 64, 3), 128, np.uint8)
    noisy = add_noise(image, 8.0, np.random.default_rng(13)).astype(np.float64)
    assert abs(noisy.mean() - 128.0) < 0.3
    assert noisy.std() == pytest.approx(8.0, rel=0.05)


# ---------------------------------------------------------------------------------------------
# Config


def test_config_from_dict_and_unknown_keys():
    cfg = AugmentConfig.from_dict({"rotation_deg": 10.0, "scale_range": [0.9, 1.1]})
    assert cfg.rotation_deg == 10.0 and cfg.scale_range == (0.9, 1.1)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig.from_dict({}) == AugmentConfig()
    with pytest.raises(ValueError, match="rotaton_deg"):
        AugmentConfig.from_dict({"rotaton_deg": 10.0})
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig.from_dict({"flip_prob": 1.5})
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="blur_max_kernel"):
        AugmentConfig(blur_max_kernel=4)


def test_config_from_config_dict():
    ml_collections = pytest.importorskip("ml_collections")
    cd = ml_collections.ConfigDict({"flip_prob": 0.0, "occlusion_size_range": (0.2, 0.3)})
    cfg = AugmentConfig.from_dict(cd)
    assert cfg.flip_prob == 0.0 and cfg.occlusion_size_range == (0.2, 0.3)
    cd.unknown_key = 1
    with pytest.raises(ValueError, match="unknown_key"):
        AugmentConfig.from_dict(cd)


def test_adjust_pose_is_exact_for_a_turned_head():
    """Rotating the projected landmarks of a turned head in the image, then fitting the pose by
    PnP, gives the pose adjust_pose predicts (roll alone would be off by degrees here)."""
    from asmnet_jax.data import face3d, pose as pose_lib

    size, theta = 400, 25.0
    truth = (35.0, 20.0, 10.0)
    camera = pose_lib.camera_matrix(size)
    rotation = pose_lib.rotation_matrix(*truth)
    points, _ = pose_lib.project(face3d.mean_face(68), rotation, np.array([0.0, 0.0, 12.0]),
                                 camera)
    centre = camera[:2, 2]
    turn = geometry.similarity(angle_deg=theta, center=centre)
    fitted = pose_lib.pose_from_landmarks(geometry.transform_points(points, turn), size,
                                          rigid_only=False)
    np.testing.assert_allclose(adjust_pose(truth, theta, False), fitted, atol=0.05)
    naive = np.array([truth[0], truth[1], truth[2] - theta])
    assert np.max(np.abs(naive - fitted)) > 1.0
