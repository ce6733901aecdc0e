"""Tests of asmnet_jax.data.device_augment against the host augmentation (asmnet_jax.data.augment).

The same parameters go through the jnp ops and through the host's building blocks (OpenCV/NumPy):
points and pose must agree to 1e-4; images within bounds derived from how OpenCV rounds (see the
tests and the module docstring). Then the drawn distributions, the switches, and jit/determinism.
64-pixel outputs, batches of 2-4 (4096 for the distributions, which only draw numbers).
"""

import dataclasses
import math

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asmnet_jax.data import device_augment as da
from asmnet_jax.data import geometry
from asmnet_jax.data.augment import (AugmentConfig, add_noise, adjust_pose, color_jitter,
                                     eval_transform, gaussian_blur, occlude, rotation_of)
from asmnet_jax.landmarks import FLIP_ORDERS

SRC = 80  # stored crop side
OUT = 64  # output side
SWITCHES = ("rotation_enabled", "scale_enabled", "translation_enabled", "flip_enabled",
            "color_enabled", "blur_enabled", "occlusion_enabled", "noise_enabled")
PHOTOMETRIC = {"color_enabled": False, "blur_enabled": False, "occlusion_enabled": False,
               "noise_enabled": False}
GEOMETRY_ONLY = AugmentConfig(border_value=23, **PHOTOMETRIC)
EVERYTHING = AugmentConfig(border_value=40, blur_prob=1.0, occlusion_prob=1.0, noise_prob=1.0,
                           occlusion_num_range=(1, 3))


def base_matrix(angle, scale=0.9, offset=(0.0, 0.0)):
    """Stored crop centre -> output centre, rotated, scaled and shifted (a non-trivial base)."""
    c_src, c_out = (SRC - 1) / 2.0, (OUT - 1) / 2.0
    shift = (c_out - c_src + offset[0], c_out - c_src + offset[1])
    return geometry.similarity(scale, angle, (c_src, c_src), shift)


def batch(rng, size, n=68):
    images = rng.integers(0, 256, (size, SRC, SRC, 3), dtype=np.uint8)
    landmarks = rng.uniform(5.0, SRC - 5.0, (size, n, 2)).astype(np.float32)
    pose = rng.uniform([-70, -50, -60], [70, 50, 60], (size, 3)).astype(np.float32)
    return images, landmarks, pose


def stats(device, host):
    diff = np.abs(np.asarray(device, np.float64) - np.asarray(host, np.float64))
    return float(diff.max()), float(diff.mean())


class Replay:
    """Stands in for the ``numpy.random.Generator`` of ``augment.occlude`` / ``add_noise`` and
    returns given values, checking that the host asks for them in the expected order."""

    def __init__(self, values):
        self.values = list(values)

    def _next(self, kind):
        expected, value = self.values.pop(0)
        assert expected == kind, f"host asked for {kind}, replay has {expected}"
        return value

    def integers(self, *args, **kwargs):
        return self._next("integers")

    def uniform(self, *args, **kwargs):
        return np.array(self._next("uniform"))

    def random(self, *args, **kwargs):
        return self._next("random")

    def bytes(self, n):
        value = self._next("bytes")
        assert value.size == n
        return value.tobytes()


def occlusion_replay(patches):
    """The draws of ``augment.occlude`` that reproduce ``host_inputs``'s patches."""
    values = [("integers", len(patches))]
    for patch in patches:
        values += [("uniform", patch["frac"]), ("integers", patch["centre"][0]),
                   ("integers", patch["centre"][1]), ("random", 0.0 if patch["noise"] else 1.0),
                   ("integers", patch["fill"])]
    return Replay(values)


def host_pipeline(image, landmarks, pose, inputs, config):
    """The host's augmentation with the explicit inputs of ``da.host_inputs`` (same order and
    building blocks as ``augment.augment``)."""
    out = geometry.warp(image, inputs["matrix"], OUT, border_value=(config.border_value,) * 3)
    points = geometry.transform_points(landmarks, inputs["matrix"])
    if inputs["flipped"]:
        points = points[FLIP_ORDERS[landmarks.shape[0]]]
    pose = adjust_pose(pose, rotation_of(inputs["unflipped"]), inputs["flipped"])
    if inputs["factors"] is not None:
        out = color_jitter(out, *inputs["factors"])
    if inputs["sigma"] is not None:
        out = gaussian_blur(out, inputs["sigma"], config.blur_max_kernel)
    if inputs["patches"] is not None:
        out = occlude(out, occlusion_replay(inputs["patches"]), config.occlusion_num_range,
                      config.occlusion_size_range, config.occlusion_noise_prob)
    if inputs["noise_std"] is not None:
        out = add_noise(out, inputs["noise_std"], Replay([("bytes", inputs["noise_bytes"])]))
    return out, points, pose


# ---------------------------------------------------------------------------------------------
# Same parameters: points and pose


@pytest.mark.parametrize("n", [68, 98])
def test_landmarks_and_pose_equal_the_host(n):
    rng = np.random.default_rng(n)
    images, landmarks, pose = batch(rng, 4, n)
    base = np.stack([base_matrix(a, s, o) for a, s, o in
                     [(0.0, 0.9, (0, 0)), (14.0, 1.1, (3, -2)), (-25.0, 0.75, (-4, 5)),
                      (7.5, 0.8, (1, 1))]])
    params = dict(da.draw(jax.random.key(n), 4, GEOMETRY_ONLY, OUT))
    # Cover the extremes and both flip states whatever the draw gave.
    params["angle"] = jnp.array([30.0, -30.0, 12.3, 0.0], jnp.float32)
    params["flip"] = jnp.array([True, False, True, False])
    out, points, new_pose = da.apply(images, landmarks, pose, base.astype(np.float32), params,
                                     OUT, GEOMETRY_ONLY)
    assert out.shape == (4, OUT, OUT, 3) and out.dtype == jnp.float32
    assert points.shape == (4, n, 2) and new_pose.shape == (4, 3)
    for i in range(4):
        inputs = da.host_inputs(params, i, base[i], OUT, GEOMETRY_ONLY)
        assert inputs["flipped"] == bool(params["flip"][i])
        _, host_points, host_pose = host_pipeline(images[i], landmarks[i], pose[i], inputs,
                                                  GEOMETRY_ONLY)
        np.testing.assert_allclose(points[i], host_points, rtol=0, atol=1e-4)
        np.testing.assert_allclose(new_pose[i], host_pose, rtol=0, atol=1e-4)
    # Not trivially equal: rotations moved the roll, flips negated the yaw.
    assert np.abs(np.asarray(new_pose) - pose).max() > 5.0


# ---------------------------------------------------------------------------------------------
# Same parameters: images, op by op


def cv2_warp_is_fixed_point():
    """True for OpenCV builds whose bilinear warpAffine snaps source coordinates to 1/32 pixel
    (before 4.11); OpenCV 5 interpolates in floating point. A 0.01-pixel shift of a 0 -> 255 step
    gives 2.55 -> 3 in floating point and 0 when snapped."""
    step = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    out = cv2.warpAffine(step, np.array([[1.0, 0.0, -0.01], [0.0, 1.0, 0.0]]), (1, 1),
                         flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return int(out[0, 0, 0]) == 0


def test_warp_equals_cv2_warp_affine():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, SRC, SRC, 3), dtype=np.uint8)
    images[1, 20:50, 10:60] = 250  # flat areas and hard edges as well as noise
    centre = ((OUT - 1) / 2.0,) * 2
    flip = np.array([[-1.0, 0.0, OUT - 1.0], [0.0, 1.0, 0.0]])
    matrices = np.stack([
        base_matrix(0.0, 0.7),  # zoomed out: a border ring of constant pixels
        geometry.compose(base_matrix(20.0, 1.0), geometry.similarity(1.2, -30.0, centre, (5, -3))),
        geometry.compose(base_matrix(-10.0, 0.85, (2.3, -1.7)), flip)])
    border = 31
    out = jax.jit(da.warp, static_argnums=(2, 3))(images, matrices.astype(np.float32), OUT, border)
    host = np.stack([geometry.warp(images[i], matrices[i], OUT, border_value=(border,) * 3)
                     for i in range(3)])
    max_diff, mean_diff = stats(out, host)
    print(f"warp vs cv2.warpAffine: max {max_diff:.4f}, mean {mean_diff:.4f}")
    assert np.sum(host == border) > 3 * 4 * OUT  # the border is really exercised
    if cv2_warp_is_fixed_point():
        # Coordinates off by <= 1/64 + 1/1024 px in x and y, 15-bit weights, rounding: at a
        # 0 -> 255 step that is up to 0.5 + 2 * 255 * (1/64 + 1/1024) + 0.05 ~ 8.6.
        assert max_diff <= 0.5 + 2 * 255 * (1 / 64 + 1 / 1024) + 0.05
        assert mean_diff < 1.5
    else:
        # Floating-point bilinear in OpenCV as here: the difference is OpenCV's rounding to uint8
        # (<= 0.5; mean 0.25 for uniform fractions, less where both are exactly integral) plus
        # float32 coordinate error (~1e-5 px, times a gradient <= 255).
        assert max_diff <= 0.5 + 0.01
        assert mean_diff < 0.26


def test_color_matrix_equals_color_jitter():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (4, OUT, OUT, 3), dtype=np.uint8)
    images[0, :, :, 0] = 240  # saturates under a brightness > 1
    factors = np.array([[1.3, 0.7, 1.3], [0.7, 1.3, 0.0], [1.0, 1.0, 1.0], [0.85, 1.2, 0.75]],
                       np.float32)
    out = np.asarray(jax.jit(da.color_jitter)(images.astype(np.float32), factors))
    grey = np.array([0.299, 0.587, 0.114])
    for i in range(4):
        host = color_jitter(images[i], *factors[i].astype(np.float64))
        max_diff, mean_diff = stats(out[i], host)
        # cv2.transform on uint8 rounds each coefficient and the offset to 1/1024 (10-bit fixed
        # point), then rounds the result: the bound is 0.5 + the coefficient error on [0, 255].
        b, c, s = factors[i].astype(np.float64)
        sat = s * np.eye(3) + (1.0 - s) * np.outer(np.ones(3), grey)
        matrix = np.empty((3, 4))
        matrix[:, :3] = c * b * sat
        matrix[:, 3] = (1.0 - c) * b * float(np.dot(cv2.mean(images[i])[:3], grey))
        err = np.abs(np.round(matrix.astype(np.float32) * 1024) / 1024 - matrix)
        bound = 0.5 + float(np.max(err[:, :3].sum(1) * 255 + err[:, 3])) + 1e-3
        print(f"colour {factors[i]}: max {max_diff:.4f}, mean {mean_diff:.4f}, bound {bound:.3f}")
        assert max_diff <= bound
        assert mean_diff < 0.3
    np.testing.assert_array_equal(out[2], images[2])  # factors 1: the image, exactly


def cv2_blur_kernel(sigma, side):
    """OpenCV's 8-bit Gaussian kernel: exact taps quantised to 1/256 by error diffusion from the
    outside in, the centre taking the rest (smooth.dispatch.cpp, getGaussianKernelFixedPoint_ED)."""
    half = [math.exp(-x * x / (2.0 * sigma * sigma)) for x in range(-(side // 2), 0)]
    total = 2.0 * sum(half) + 1.0
    err, quantised = 0.0, []
    for value in half:
        scaled = value / total * 256.0 + err
        quantised.append(round(scaled))
        err = scaled - quantised[-1]
    return np.array(quantised + [256 - 2 * sum(quantised)] + quantised[::-1]) / 256.0


def test_blur_equals_gaussian_blur():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, OUT, OUT, 3), dtype=np.uint8)  # noise: the worst case
    sigmas = np.array([0.1, 0.6, 1.1, 1.5], np.float32)
    out = np.asarray(jax.jit(da.gaussian_blur, static_argnums=2)(
        images.astype(np.float32), sigmas, 7))
    for i, sigma in enumerate(sigmas.astype(np.float64)):
        host = gaussian_blur(images[i], sigma, 7)
        max_diff, mean_diff = stats(out[i], host)
        # cv2.GaussianBlur on uint8 convolves with the kernel quantised to 1/256 and rounds. Both
        # 2-D kernels sum to 1, so the kernel error moves a result by <= 255 * sum|delta| / 2.
        side = min(7, 2 * math.ceil(3 * sigma) + 1)
        radius = side // 2
        exact = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
        exact /= exact.sum()
        quantised = cv2_blur_kernel(sigma, side)
        delta = np.outer(quantised, quantised) - np.outer(exact, exact)
        bound = 0.5 + 255 * np.abs(delta).sum() / 2 + 1e-3
        print(f"blur sigma {sigma:.2f}: max {max_diff:.4f}, mean {mean_diff:.4f}, "
              f"bound {bound:.3f}")
        assert max_diff <= bound
        assert mean_diff < 0.45
    assert np.abs(out[3] - images[3]).mean() > 20  # sigma 1.5 really blurs


def test_patches_equal_occlude(step_output):
    config = EVERYTHING
    params = step_output["params"]
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (3, OUT, OUT, 3), dtype=np.uint8)
    fills = np.stack([da.random_bytes(seed, OUT)[0] for seed in params["seed"]])
    out = np.asarray(jax.jit(da.occlude)(images.astype(np.float32), params, fills))
    seen_noise = seen_colour = cut = 0
    for i in range(3):
        inputs = da.host_inputs(params, i, base_matrix(0.0), OUT, config)
        patches = inputs["patches"]
        # The host's occlude fed the same draws, and a plain NumPy rendering of the rectangles:
        # both exact (the same integers in the same pixels).
        host = occlude(images[i], occlusion_replay(patches), config.occlusion_num_range,
                       config.occlusion_size_range, config.occlusion_noise_prob)
        np.testing.assert_array_equal(out[i], host)
        rendered = images[i].copy()
        for patch in patches:
            x0, y0, x1, y1 = patch["rect"]
            rendered[y0:y1, x0:x1] = patch["fill"]
            seen_noise += patch["noise"]
            seen_colour += not patch["noise"]
            cut += x0 == 0 or y0 == 0 or x1 == OUT or y1 == OUT
        np.testing.assert_array_equal(out[i], rendered)
        assert np.any(out[i] != images[i])
    assert seen_noise and seen_colour and cut  # both fills and a patch cut by the border


def test_noise_equals_add_noise():
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, OUT, OUT, 3), dtype=np.uint8)
    images[0, :20] = 0  # saturates at both ends
    images[0, 20:40] = 255
    noise_bytes = rng.integers(0, 256, (3, OUT, OUT, 3), dtype=np.uint8)
    stds = np.array([8.0, 3.3, 0.0], np.float32)
    out = np.asarray(jax.jit(da.add_noise)(images.astype(np.float32), stds, noise_bytes))
    for i in range(3):
        host = add_noise(images[i], float(stds[i]), Replay([("bytes", noise_bytes[i])]))
        max_diff, mean_diff = stats(out[i], host)
        print(f"noise std {stds[i]}: max {max_diff:.4f}, mean {mean_diff:.4f}")
        # cv2.addWeighted computes in float and rounds to uint8: <= 0.5 (+ float32 error).
        assert max_diff <= 0.5 + 1e-3
        assert mean_diff < 0.3
    np.testing.assert_array_equal(out[2], images[2])  # std 0: the image


# ---------------------------------------------------------------------------------------------
# The whole augmentation: jit, determinism, end to end


@jax.jit
def train_step_like(key, images, landmarks, pose, base):
    """What a train step does: draw with its key, then augment, in one jitted program."""
    params = da.draw(key, images.shape[0], EVERYTHING, OUT)
    return params, da.apply(images, landmarks, pose, base, params, OUT, EVERYTHING)


def step_key(step):
    return jax.random.fold_in(jax.random.key(7), step)  # (seed, step) as a trainer derives it


@pytest.fixture(scope="module")
def step_output():
    """One batch through :func:`train_step_like` (compiled once for the module)."""
    rng = np.random.default_rng(6)
    images, landmarks, pose = batch(rng, 3)
    base = np.stack([base_matrix(a) for a in (0.0, 15.0, -8.0)]).astype(np.float32)
    params, (out, points, new_pose) = train_step_like(step_key(1234), images, landmarks, pose, base)
    return dict(inputs=(images, landmarks, pose, base), params=params, out=out, points=points,
                pose=new_pose)


def test_jit_same_key_same_output_and_matches_the_host(step_output):
    images, landmarks, pose, base = step_output["inputs"]
    params, out = step_output["params"], step_output["out"]
    points, new_pose = step_output["points"], step_output["pose"]
    again = train_step_like(step_key(1234), images, landmarks, pose, base)
    for a, b in zip(jax.tree.leaves((params, (out, points, new_pose))), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = train_step_like(step_key(1235), images, landmarks, pose, base)
    assert not np.array_equal(other[0]["angle"], params["angle"])
    assert not np.array_equal(other[1][0], out)
    assert out.dtype == jnp.float32 and float(out.min()) >= 0.0 and float(out.max()) <= 255.0

    # End to end against the host pipeline with the same parameters. The per-op differences
    # carry through the later ops: warp 0.5, times the colour matrix's gain (row sums of |M| <=
    # 1.3 * 1.3 * 1.6 = 2.7 with the default factors), + 0.87 for the colour's fixed point, + 2.74
    # for the blur's quantised kernel (sigma <= 1.5; the blur's gain is 1), + 0.5 for the noise:
    # <= 5.5 in the worst case (about 2 on noise images); the mean stays near the rounding's.
    for i in range(3):
        inputs = da.host_inputs(params, i, base[i], OUT, EVERYTHING)
        assert inputs["sigma"] is not None and inputs["patches"] and inputs["noise_std"] is not None
        host, host_points, host_pose = host_pipeline(images[i], landmarks[i], pose[i], inputs,
                                                     EVERYTHING)
        np.testing.assert_allclose(points[i], host_points, rtol=0, atol=1e-4)
        np.testing.assert_allclose(new_pose[i], host_pose, rtol=0, atol=1e-4)
        max_diff, mean_diff = stats(out[i], host)
        print(f"end to end {i}: max {max_diff:.4f}, mean {mean_diff:.4f}")
        assert mean_diff < 0.5
        assert max_diff <= 5.5


def test_disabled_equals_eval_transform():
    config = dataclasses.replace(EVERYTHING, enabled=False)
    params = da.draw(jax.random.key(8), 2, config, OUT)
    assert_identity(jax.tree.map(np.asarray, params))
    rng = np.random.default_rng(8)
    images, landmarks, pose = batch(rng, 2, n=21)  # no flips possible: any markup
    base = np.stack([base_matrix(12.0, 0.8), base_matrix(-20.0, 1.1, (2, 3))])
    out, points, new_pose = da.apply(images, landmarks, pose, base.astype(np.float32), params,
                                     OUT, config)
    for i in range(2):
        host, host_points, host_pose, _ = eval_transform(images[i], landmarks[i], pose[i], base[i],
                                                         OUT, config.border_value)
        np.testing.assert_allclose(points[i], host_points, rtol=0, atol=1e-4)
        np.testing.assert_allclose(new_pose[i], host_pose, rtol=0, atol=1e-4)
        max_diff, mean_diff = stats(out[i], host)
        assert max_diff <= (9.0 if cv2_warp_is_fixed_point() else 0.51) and mean_diff < 0.3


# ---------------------------------------------------------------------------------------------
# Distributions and switches


DIST = AugmentConfig(rotation_deg=20.0, scale_range=(0.7, 1.1), translation=0.05, flip_prob=0.25,
                     blur_prob=0.6, blur_max_sigma=2.0, occlusion_prob=0.7,
                     occlusion_num_range=(1, 3), occlusion_size_range=(0.2, 0.4),
                     occlusion_noise_prob=0.3, noise_prob=0.1, noise_max_std=5.0,
                     brightness=0.2, contrast=0.4, saturation=0.1)
BIG = 4096
DIST_KEY = jax.random.key(9)


def near(fraction, p):
    return abs(float(np.mean(fraction)) - p) < 4 * math.sqrt(p * (1 - p) / BIG) + 1e-9


def spans(values, low, high, slack):
    values = np.asarray(values)
    return values.min() >= low and values.max() <= high and values.min() < low + slack and \
        values.max() > high - slack


@pytest.fixture(scope="module")
def drawn():
    return jax.tree.map(np.asarray, da.draw(DIST_KEY, BIG, DIST, OUT))


def assert_identity(p):
    """Parameters of a config with every part off: the identity."""
    assert np.all(p["angle"] == 0) and np.all(p["scale"] == 1) and np.all(p["shift"] == 0)
    assert not p["flip"].any() and np.all(p["factors"] == 1)
    assert not (p["blur"].any() or p["occlusion"].any() or p["noise"].any())


def test_drawn_distributions(drawn):
    p = drawn
    assert all(v.shape[0] == BIG for v in p.values())
    assert near(p["flip"], 0.25) and near(p["blur"], 0.6) and near(p["occlusion"], 0.7)
    assert near(p["noise"], 0.1) and near(p["patch_noise"], 0.3)
    assert spans(p["angle"], -20.0, 20.0, 0.5) and abs(p["angle"].mean()) < 1.0
    assert spans(p["scale"], 0.7, 1.1, 0.01)
    assert spans(p["shift"], -0.05 * OUT, 0.05 * OUT, 0.1)
    for column, f in enumerate((0.2, 0.4, 0.1)):
        assert spans(p["factors"][:, column], 1 - f, 1 + f, 0.01)
    assert spans(p["sigma"], 0.1, 2.0, 0.01) and spans(p["noise_std"], 0.0, 5.0, 0.01)
    count = p["patch_active"].sum(1)
    assert set(np.unique(count)) == {1, 2, 3} and all(near(count == k, 1 / 3) for k in (1, 2, 3))
    assert np.all(p["patch_active"][:, :-1] >= p["patch_active"][:, 1:])  # the first `count` slots
    assert spans(p["patch_frac"], 0.2, 0.4, 0.01)
    assert p["patch_centre"].min() == 0 and p["patch_centre"].max() == OUT - 1
    assert p["patch_colour"].min() == 0 and p["patch_colour"].max() == 255
    assert len(np.unique(p["seed"], axis=0)) == BIG


def test_switches_off_give_identity_and_keep_the_other_draws(drawn):
    off_config = dataclasses.replace(DIST, **{name: False for name in SWITCHES})
    off = jax.tree.map(np.asarray, da.draw(DIST_KEY, BIG, off_config, OUT))
    assert_identity(off)
    for name in ("sigma", "noise_std", "patch_active", "patch_frac", "patch_centre",
                 "patch_noise", "patch_colour", "seed"):
        np.testing.assert_array_equal(off[name], drawn[name])
    # One switch off leaves every other part's draw as it was.
    no_blur = jax.tree.map(np.asarray, da.draw(DIST_KEY, BIG, dataclasses.replace(
        DIST, blur_enabled=False), OUT))
    assert not no_blur["blur"].any()
    for name in ("angle", "scale", "shift", "flip", "factors", "occlusion", "noise"):
        np.testing.assert_array_equal(no_blur[name], drawn[name])
