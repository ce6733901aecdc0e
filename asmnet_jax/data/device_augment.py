"""The training augmentation of :mod:`asmnet_jax.data.augment` in ``jax.numpy``, for a jitted step.

Two jittable functions split the work the way a train step needs it:

* :func:`draw` turns one PRNG key into the random parameters of a batch (a dict of arrays with
  static shapes). The caller derives the key from ``(seed, step)`` with ``jax.random.fold_in``, so
  a resumed run draws the same parameters.
* :func:`apply` applies them to the stored crops: one affine warp (one bilinear gather per image)
  for the geometry, then colour, blur, occluding patches and pixel noise, and moves the landmarks
  and the pose with the same matrix.

For the same parameters the result equals the host's :func:`~asmnet_jax.data.augment.augment`
(NumPy/OpenCV). :func:`host_inputs` turns one example's parameters into the host's explicit inputs
(matrix, flip, factors, sigma, patches, noise) so that the host's building blocks can be run with
exactly those values; ``tests/test_device_augment.py`` does that.

Conventions (the host's, see :mod:`asmnet_jax.data.augment` and :mod:`asmnet_jax.data.geometry`)
-------------------------------------------------------------------------------------------------
* Pixel coordinates are 0-based with pixel centres at integers; a (2, 3) matrix maps stored-crop
  pixels to output pixels, ``dst = M[:, :2] @ src + M[:, 2]``.
* The whole warp is ``flip o similarity o base``: the caller's base matrix, then the random
  similarity (rotation counter-clockwise on screen, scale, shift) about the output centre
  ``((S - 1) / 2, (S - 1) / 2)``, then on a coin toss the flip ``x -> (S - 1) - x``. The landmarks
  move with that matrix and, when flipped, are permuted with ``FLIP_ORDERS[n]``.
* Pose ``(yaw, pitch, roll)`` in degrees: the head rotation is turned by the rotation of the
  un-flipped warp about the camera axis (``R' = Rz(theta) @ R``, as ``augment.adjust_pose``), a flip
  negates yaw and roll; angles are wrapped to ``(-180, 180]``.

Images and rounding
-------------------
:func:`apply` returns **float32 images in [0, 255], not rounded**. The host works in uint8 and so
rounds (and saturates) after every op; here every op works on the float result of the previous one
and is clipped to [0, 255] where the host saturates (after the colour matrix and after the noise;
the warp, the blur and the patches cannot leave the range). ``jnp.round(x).astype(jnp.uint8)``
gives bytes if a caller wants them. Differences from the host for the same parameters, per op on
the same uint8 input (measured with OpenCV 5.1; the tests assert these bounds):

* warp: OpenCV 5's ``warpAffine`` interpolates in floating point and rounds, so the difference is
  the rounding, <= 0.5 (+ float32 coordinate error, ~1e-3). Older OpenCV (< 4.11) snaps source
  coordinates to 1/32 pixel and uses 15-bit weights: up to ~8 grey levels at a 0 -> 255 edge.
* colour: ``cv2.transform`` on uint8 uses the matrix in 10-bit fixed point (each coefficient and
  the offset rounded to 1/1024) and rounds: <= 0.5 + 255 * 3 / 2048 + 1 / 2048 ~ 0.87.
* blur: ``cv2.GaussianBlur`` on uint8 uses the kernel quantised to 1/256 (error diffusion, sum
  exactly 1) and rounds: <= 0.5 + 255 * sum|k_q (x) k_q - k (x) k| / 2, ~1.5 at sigma 1.5 on noise.
* patches: exact (the same integer fills in the same pixels; see :func:`patch_sides`).
* pixel noise: the same bytes; ``cv2.addWeighted`` rounds: <= 0.5.

Random parameters (:func:`draw`) have the host's distributions: the same ranges and probabilities,
the switches of :class:`~asmnet_jax.data.augment.AugmentConfig` respected, ``enabled=False`` gives
the identity (so :func:`apply` gives ``eval_transform``'s output). Like the host, every call draws
the same values whatever the config says, so switching one part off does not change what the other
parts get. The values come from ``jax.random``, not from the host's NumPy generator: the same seed
gives a different (equally distributed) augmentation on the host and here.

All arithmetic is float32 with element-wise ops or ``Precision.HIGHEST`` contractions, so the
result does not depend on an accelerator's default (bfloat16 / TF32) matmul precision.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from asmnet_jax.data import geometry
from asmnet_jax.data.augment import AugmentConfig, flip_matrix
from asmnet_jax.landmarks import FLIP_ORDERS, check_num_landmarks

_HIGHEST = jax.lax.Precision.HIGHEST
# ITU-R BT.601 luma weights for RGB (augment._GREY_WEIGHTS).
_GREY = (0.299, 0.587, 0.114)
# Uniform random bytes have standard deviation 256 / sqrt(12) (augment._BYTE_STD).
_BYTE_STD = 256.0 / math.sqrt(12.0)
# Columns of the per-example uniform draw (the host's slots, one uniform in [0, 1) each).
(_U_ROT, _U_SCALE, _U_TX, _U_TY, _U_FLIP, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_BLUR_ON, _U_BLUR_SIGMA,
 _U_OCC_ON, _U_NOISE_ON, _U_NOISE_STD) = range(13)
_NUM_UNIFORMS = 13


# ---------------------------------------------------------------------------------------------
# Random parameters


def can_flip(config: AugmentConfig) -> bool:
    """Whether ``config`` can flip at all (then the landmark count must be 68 or 98)."""
    return bool(config.enabled and config.flip_enabled and config.flip_prob > 0)


@functools.partial(jax.jit, static_argnames=("batch_size", "config", "out_size"))
def draw(key, batch_size: int, config: AugmentConfig, out_size: int) -> Dict[str, jax.Array]:
    """The random parameters of ``batch_size`` examples, drawn from ``key``.

    Args:
      key: a ``jax.random`` key (typed or raw uint32); derive it from ``(seed, step)`` with
        ``jax.random.fold_in`` so that a resumed run draws the same values.
      batch_size: B (static).
      config: the :class:`AugmentConfig` (static, hashable).
      out_size: S, the output side in pixels (static): the shift and the patches are in its pixels.
    Returns:
      A dict of arrays, leading axis B, ``P = config.occlusion_num_range[1]`` patch slots:

      * ``angle`` (B,) float32: rotation in degrees, counter-clockwise on screen, uniform in
        ``[-rotation_deg, rotation_deg]``; ``scale`` (B,) float32 uniform in ``scale_range``;
        ``shift`` (B, 2) float32 pixels, each uniform in ``[-t S, t S]``; ``flip`` (B,) bool,
        true with probability ``flip_prob``.
      * ``factors`` (B, 3) float32: brightness, contrast, saturation, each uniform in
        ``[1 - f, 1 + f]`` clipped at 0 (all 1 when colour is off).
      * ``blur`` (B,) bool with probability ``blur_prob``; ``sigma`` (B,) float32 uniform in
        ``[0.1, blur_max_sigma]`` (drawn even when ``blur`` is false).
      * ``occlusion`` (B,) bool with probability ``occlusion_prob``; ``patch_active`` (B, P) bool,
        the first ``count`` slots with ``count`` uniform in ``occlusion_num_range`` (inclusive);
        ``patch_frac`` (B, P, 2) float32 width and height as fractions of S, each uniform in
        ``occlusion_size_range``; ``patch_centre`` (B, P, 2) int32 (x, y), uniform over the
        pixels; ``patch_noise`` (B, P) bool (uniform-noise fill, probability
        ``occlusion_noise_prob``, else one colour); ``patch_colour`` (B, P, 3) int32 in [0, 255].
      * ``noise`` (B,) bool with probability ``noise_prob``; ``noise_std`` (B,) float32 uniform
        in ``[0, noise_max_std]`` grey levels.
      * ``seed`` (B, 2) uint32: the seed of the per-pixel random bytes (patch fills and noise),
        expanded by :func:`random_bytes`.

      A switched-off part (or ``enabled=False``) gets its identity values: angle 0, scale 1,
      shift 0, no flip, factors 1, and false ``blur``, ``occlusion``, ``noise``.
    """
    cfg = config
    b, s = int(batch_size), int(out_size)
    lo_n, hi_n = (int(v) for v in cfg.occlusion_num_range)
    k_u, k_count, k_frac, k_centre, k_fill, k_colour, k_seed = jax.random.split(key, 7)
    u = jax.random.uniform(k_u, (b, _NUM_UNIFORMS), jnp.float32)
    count = jax.random.randint(k_count, (b,), lo_n, hi_n + 1)
    lo_f, hi_f = cfg.occlusion_size_range
    frac = jax.random.uniform(k_frac, (b, hi_n, 2), jnp.float32, lo_f, hi_f)
    centre = jax.random.randint(k_centre, (b, hi_n, 2), 0, s)
    patch_noise = jax.random.uniform(k_fill, (b, hi_n)) < cfg.occlusion_noise_prob
    colour = jax.random.randint(k_colour, (b, hi_n, 3), 0, 256)
    seed = jax.random.bits(k_seed, (b, 2), jnp.uint32)

    on = cfg.enabled
    ones, zeros = jnp.ones((b,), jnp.float32), jnp.zeros((b,), jnp.float32)
    false = jnp.zeros((b,), bool)
    angle = cfg.rotation_deg * (2.0 * u[:, _U_ROT] - 1.0) if on and cfg.rotation_enabled else zeros
    lo, hi = cfg.scale_range
    scale = lo + (hi - lo) * u[:, _U_SCALE] if on and cfg.scale_enabled else ones
    if on and cfg.translation_enabled:
        shift = cfg.translation * s * (2.0 * u[:, _U_TX:_U_TY + 1] - 1.0)
    else:
        shift = jnp.zeros((b, 2), jnp.float32)
    flip = u[:, _U_FLIP] < cfg.flip_prob if can_flip(cfg) else false
    if on and cfg.color_enabled and (cfg.brightness or cfg.contrast or cfg.saturation):
        spread = jnp.array([cfg.brightness, cfg.contrast, cfg.saturation], jnp.float32)
        factors = jnp.maximum(0.0, 1.0 + spread * (2.0 * u[:, _U_BRIGHT:_U_SAT + 1] - 1.0))
    else:
        factors = jnp.ones((b, 3), jnp.float32)
    return {
        "angle": angle.astype(jnp.float32),
        "scale": scale.astype(jnp.float32),
        "shift": shift.astype(jnp.float32),
        "flip": flip,
        "factors": factors.astype(jnp.float32),
        "blur": u[:, _U_BLUR_ON] < cfg.blur_prob if on and cfg.blur_enabled else false,
        "sigma": (0.1 + (cfg.blur_max_sigma - 0.1) * u[:, _U_BLUR_SIGMA]).astype(jnp.float32),
        "occlusion": (u[:, _U_OCC_ON] < cfg.occlusion_prob if on and cfg.occlusion_enabled
                      else false),
        "patch_active": jnp.arange(hi_n)[None, :] < count[:, None],
        "patch_frac": frac,
        "patch_centre": centre.astype(jnp.int32),
        "patch_noise": patch_noise,
        "patch_colour": colour.astype(jnp.int32),
        "noise": u[:, _U_NOISE_ON] < cfg.noise_prob if on and cfg.noise_enabled else false,
        "noise_std": (cfg.noise_max_std * u[:, _U_NOISE_STD]).astype(jnp.float32),
        "seed": seed,
    }


def _mix32(x):
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 that spreads every input bit over
    the output (avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


@functools.partial(jax.jit, static_argnames=("out_size",))
def random_bytes(seed, out_size: int):
    """The per-pixel random bytes of one example: ``(2, S, S, 3)`` uint8 from its ``seed`` (2,).

    ``[0]`` fills the noise patches (every patch takes the bytes under it: each pixel's final value
    is still an independent uniform byte, as on the host where each patch draws fresh bytes),
    ``[1]`` is the pixel noise.

    A counter-based hash, not ``jax.random``: each 32-bit word is two rounds of
    :func:`_mix32` over its index and the seed, cut into four bytes. The bytes are uniform and
    independent for augmentation's purposes (not for cryptography), and on a CPU they cost a
    tenth of threefry's (13 against 133 ms for a batch of 32 at 224 px): the noise of every
    example is made in every step, so this is most of the augmentation's randomness cost.
    """
    seed = jnp.asarray(seed, jnp.uint32)
    words = (2 * out_size * out_size * 3 + 3) // 4
    index = jnp.arange(words, dtype=jnp.uint32)
    x = _mix32(index * jnp.uint32(0x9E3779B1) + seed[0])
    x = _mix32(x ^ seed[1])
    data = jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(-1)
    return data[:2 * out_size * out_size * 3].reshape(2, out_size, out_size, 3)


# ---------------------------------------------------------------------------------------------
# Geometry


def _matmul(a, b):
    return jnp.einsum("...ij,...jk->...ik", a, b, precision=_HIGHEST)


def similarity(scale, angle_deg, center, shift):
    """Batched :func:`geometry.similarity`: (B,) scale and angle, (2,) centre, (B, 2) shift ->
    (B, 2, 3) float32."""
    theta = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
    c, s = scale * jnp.cos(theta), scale * jnp.sin(theta)
    cx, cy = center
    tx = cx - (c * cx + s * cy) + shift[:, 0]
    ty = cy - (-s * cx + c * cy) + shift[:, 1]
    return jnp.stack([jnp.stack([c, s, tx], -1), jnp.stack([-s, c, ty], -1)], -2)


def compose(first, then):
    """Batched :func:`geometry.compose`: ``first`` (B, 2, 3) applied first, then ``then``."""
    a = _matmul(then[:, :, :2], first[:, :, :2])
    t = _matmul(then[:, :, :2], first[:, :, 2:])[..., 0] + then[:, :, 2]
    return jnp.concatenate([a, t[..., None]], -1)


def flip(matrices, out_size: int, flipped):
    """``matrices`` (B, 2, 3) followed by the flip ``x -> (S - 1) - x`` where ``flipped`` (B,)."""
    flipped_rows = jnp.concatenate(
        [jnp.concatenate([-matrices[:, :1, :2], (out_size - 1.0) - matrices[:, :1, 2:]], -1),
         matrices[:, 1:]], 1)
    return jnp.where(flipped[:, None, None], flipped_rows, matrices)


def warp_matrices(base_matrices, params, out_size: int):
    """The whole warp of each example (base, random similarity, flip): ``(matrix, unflipped)``,
    both (B, 2, 3) float32, as ``augment.augment`` composes them."""
    base = jnp.asarray(base_matrices, jnp.float32)
    centre = ((out_size - 1) / 2.0, (out_size - 1) / 2.0)
    random_part = similarity(params["scale"], params["angle"], centre, params["shift"])
    unflipped = compose(base, random_part)
    return flip(unflipped, out_size, params["flip"]), unflipped


def invert(matrices):
    """Inverse of (B, 2, 3) affine matrices (float32, closed form)."""
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    row0 = jnp.stack([ia, ib, -(ia * tx + ib * ty)], -1)
    row1 = jnp.stack([ic, id_, -(ic * tx + id_ * ty)], -1)
    return jnp.stack([row0, row1], 1)


def transform_points(points, matrices):
    """Points (B, n, 2) -> the matrices (B, 2, 3) applied: float32 (as
    :func:`geometry.transform_points`)."""
    pts = jnp.asarray(points, jnp.float32)
    m = jnp.asarray(matrices, jnp.float32)
    x, y = pts[..., 0], pts[..., 1]
    out_x = m[:, None, 0, 0] * x + m[:, None, 0, 1] * y + m[:, None, 0, 2]
    out_y = m[:, None, 1, 0] * x + m[:, None, 1, 1] * y + m[:, None, 1, 2]
    return jnp.stack([out_x, out_y], -1)


def warp(images, matrices, out_size: int, border_value=0.0):
    """Bilinear affine warp of a batch, the equivalent of :func:`geometry.warp` (``cv2.warpAffine``
    with ``INTER_LINEAR`` and ``BORDER_CONSTANT``).

    Output pixel ``(x, y)`` samples the stored image at ``M^-1 (x, y)`` with one gather of the four
    neighbouring pixels; each neighbour outside the image counts as ``border_value`` (OpenCV's
    per-tap rule for a constant border, so the image fades into the border over one pixel).

    Args:
      images: (B, H, W, C) values in [0, 255] (uint8 or float).
      matrices: (B, 2, 3) from stored pixels to output pixels.
      out_size: S.
      border_value: grey level of pixels outside the image (every channel).
    Returns:
      (B, S, S, C) float32, not rounded.
    """
    images = jnp.asarray(images)
    b, h, w, ch = images.shape
    inv = invert(jnp.asarray(matrices, jnp.float32))
    grid = jnp.arange(out_size, dtype=jnp.float32)
    xs, ys = grid[None, None, :], grid[None, :, None]
    src_x = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]
    src_y = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    # Beyond one pixel outside, all four taps are border: clipping there changes nothing and
    # keeps the integer conversion in range.
    src_x = jnp.clip(src_x, -2.0, w + 1.0)
    src_y = jnp.clip(src_y, -2.0, h + 1.0)
    x0f, y0f = jnp.floor(src_x), jnp.floor(src_y)
    fx, fy = (src_x - x0f)[..., None], (src_y - y0f)[..., None]
    x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
    flat = images.reshape(b, h * w, ch)
    border = jnp.float32(border_value)

    def tap(dx, dy):
        xi, yi = x0 + dx, y0 + dy
        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        index = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).reshape(b, -1)
        values = jax.vmap(lambda f, i: f[i])(flat, index).reshape(b, out_size, out_size, ch)
        return jnp.where(inside[..., None], values.astype(jnp.float32), border)

    top = tap(0, 0) * (1.0 - fx) + tap(1, 0) * fx
    bottom = tap(0, 1) * (1.0 - fx) + tap(1, 1) * fx
    return top * (1.0 - fy) + bottom * fy


def rotation_of(matrices):
    """Batched ``augment.rotation_of``: (B, 2, 3) -> (B,) degrees counter-clockwise."""
    m = jnp.asarray(matrices, jnp.float32)
    return jnp.rad2deg(jnp.arctan2(m[:, 0, 1] - m[:, 1, 0], m[:, 0, 0] + m[:, 1, 1]))


# ---------------------------------------------------------------------------------------------
# Pose


def _rot(axis: str, angle):
    c, s = jnp.cos(angle), jnp.sin(angle)
    one, zero = jnp.ones_like(angle), jnp.zeros_like(angle)
    rows = {"x": [[one, zero, zero], [zero, c, -s], [zero, s, c]],
            "y": [[c, zero, s], [zero, one, zero], [-s, zero, c]],
            "z": [[c, -s, zero], [s, c, zero], [zero, zero, one]]}[axis]
    return jnp.stack([jnp.stack(row, -1) for row in rows], -2)


def rotation_matrix(pose_deg):
    """Batched :func:`asmnet_jax.data.pose.rotation_matrix`: (B, 3) degrees -> (B, 3, 3)."""
    yaw, pitch, roll = jnp.moveaxis(jnp.deg2rad(jnp.asarray(pose_deg, jnp.float32)), -1, 0)
    return _matmul(_matmul(_rot("y", yaw), _rot("x", -pitch)), _rot("z", -roll))


def wrap_degrees(angles):
    """Angles wrapped to (-180, 180] (the formula of ``augment.adjust_pose``)."""
    return -(jnp.mod(-angles + 180.0, 360.0) - 180.0)


def euler_angles(rotation):
    """Batched :func:`asmnet_jax.data.pose.euler_angles`: (B, 3, 3) -> (B, 3) degrees.

    Pitch is ``atan2(-R[1, 2], hypot(R[0, 2], R[2, 2]))``, equal to the host's ``asin(-R[1, 2])``
    but accurate in float32 near +-90 degrees. At gimbal lock (``cos(pitch) <= 1e-6`` here, 1e-9 on
    the host) all of yaw +- roll goes to yaw, as on the host; between the two thresholds (pitch
    within 6e-5 degrees of +-90) the split of yaw and roll can differ.
    """
    m = rotation
    cos_b = jnp.hypot(m[:, 0, 2], m[:, 2, 2])
    b = jnp.arctan2(-m[:, 1, 2], cos_b)
    regular = cos_b > 1e-6
    a = jnp.where(regular, jnp.arctan2(m[:, 0, 2], m[:, 2, 2]),
                  jnp.arctan2(-m[:, 2, 0], m[:, 0, 0]))
    c = jnp.where(regular, jnp.arctan2(m[:, 1, 0], m[:, 1, 1]), 0.0)
    return wrap_degrees(jnp.rad2deg(jnp.stack([a, -b, -c], -1)))


def adjust_pose(pose_deg, rotation_deg, flipped):
    """Batched ``augment.adjust_pose``: pose (B, 3) degrees after rotating the image
    counter-clockwise by ``rotation_deg`` (B,) and flipping where ``flipped`` (B,): (B, 3) float32.

    A rotation of exactly 0 leaves the angles as they are (only wrapped), as on the host.
    """
    pose = jnp.asarray(pose_deg, jnp.float32)
    theta = jnp.deg2rad(jnp.asarray(rotation_deg, jnp.float32))
    turned = euler_angles(_matmul(_rot("z", theta), rotation_matrix(pose)))
    out = jnp.where((rotation_deg != 0)[:, None], turned, pose)
    sign = jnp.where(jnp.asarray(flipped)[:, None], jnp.array([-1.0, 1.0, -1.0]), 1.0)
    return wrap_degrees(out * sign).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Photometric ops (float32 images (B, S, S, 3) in [0, 255])


def mean_grey(images):
    """The mean grey level (BT.601 RGB weights) of each image: (B,) (as ``cv2.mean`` dotted with
    the weights; averaged rows first so float32 sums stay short)."""
    channel_means = jnp.mean(jnp.mean(images, axis=2), axis=1)  # (B, 3)
    return (channel_means[:, 0] * _GREY[0] + channel_means[:, 1] * _GREY[1]
            + channel_means[:, 2] * _GREY[2])


def color_jitter(images, factors):
    """Batched ``augment.color_jitter``: brightness, contrast, saturation ``factors`` (B, 3) as one
    colour matrix and offset per image (the offset uses the image's mean grey); clipped to
    [0, 255], not rounded. Factors (1, 1, 1) give the image exactly."""
    bright, contrast, sat = (factors[:, i, None, None] for i in range(3))
    grey_row = jnp.broadcast_to(jnp.array(_GREY, jnp.float32), (3, 3))
    sat_matrix = sat * jnp.eye(3, dtype=jnp.float32) + (1.0 - sat) * grey_row  # (B, 3, 3)
    colour = contrast * bright * sat_matrix
    offset = (1.0 - factors[:, 1]) * factors[:, 0] * mean_grey(images)  # (B,)
    # out[..., d] = sum_c colour[d, c] x[..., c], element-wise (exact float32 on any backend).
    out = sum(images[..., c, None] * colour[:, None, None, :, c] for c in range(3))
    return jnp.clip(out + offset[:, None, None, None], 0.0, 255.0)


def blur_kernels(sigma, max_kernel: int):
    """Normalised 1-D Gaussian kernels (B, max_kernel): the side of example ``i`` is
    ``min(max_kernel, 2 ceil(3 sigma_i) + 1)`` (as ``augment.gaussian_blur``), taps outside it 0.
    (``3 sigma`` in float32 can round onto an integer the host's float64 product just exceeds,
    giving a side 2 smaller, only for sigma within ~1e-7 relative of a multiple of 1/3.)"""
    radius = (int(max_kernel) - 1) // 2
    taps = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    sigma = jnp.asarray(sigma, jnp.float32)[:, None]
    side = jnp.minimum(float(max_kernel), 2.0 * jnp.ceil(3.0 * sigma) + 1.0)
    weights = jnp.where(jnp.abs(taps) <= (side - 1.0) / 2.0,
                        jnp.exp(-taps ** 2 / (2.0 * sigma ** 2)), 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def gaussian_blur(images, sigma, max_kernel: int = 7):
    """Batched ``augment.gaussian_blur``: separable Gaussian blur with each image's ``sigma``
    (B,), reflect-101 border (``cv2.BORDER_REFLECT_101``, NumPy's ``reflect``). The image side must
    exceed ``(max_kernel - 1) / 2``."""
    kernels = blur_kernels(sigma, max_kernel)
    radius = (int(max_kernel) - 1) // 2
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    # Columns and channels as one axis: a shift by one pixel is a contiguous slice (a quarter
    # less time on the CPU than slicing the 4-D array; the same sums).
    padded = padded.reshape(b, h + 2 * radius, (w + 2 * radius) * c)
    taps = range(2 * radius + 1)
    rows = sum(kernels[:, k, None, None] * padded[:, k:k + h] for k in taps)
    out = sum(kernels[:, k, None, None] * rows[:, :, k * c:k * c + w * c] for k in taps)
    return out.reshape(b, h, w, c)


def patch_sides(frac, out_size: int):
    """Patch sides in pixels (..., 2) int32 from the drawn fractions: ``max(1, round(f S))``
    (round half to even, as Python's ``round`` on the host). ``f S`` is a float32 product here and
    a float64 one on the host: exact for S a power of two, otherwise the two can round apart only
    when ``f S`` lies within ~1e-6 of a half-integer."""
    return jnp.maximum(1, jnp.round(frac * float(out_size)).astype(jnp.int32))


def occlude(images, params, fill_bytes):
    """Pastes each image's active patches in slot order (later ones on top), as
    ``augment.occlude``: a patch of sides ``(pw, ph)`` centred at ``(cx, cy)`` covers
    ``[cx - pw // 2, cx - pw // 2 + pw) x [cy - ph // 2, cy - ph // 2 + ph)`` cut at the border, and
    is filled with ``fill_bytes`` (B, S, S, 3) under it or with its one colour.

    Only images with ``params["occlusion"]`` change.
    """
    _, s, _, _ = images.shape
    sides = patch_sides(params["patch_frac"], s)  # (B, P, 2)
    start = params["patch_centre"] - sides // 2
    grid = jnp.arange(s)
    fill_noise = fill_bytes.astype(jnp.float32)
    out = images
    for i in range(params["patch_active"].shape[1]):
        x0, y0 = start[:, i, 0, None], start[:, i, 1, None]
        in_x = (grid[None] >= x0) & (grid[None] < x0 + sides[:, i, 0, None])  # (B, S)
        in_y = (grid[None] >= y0) & (grid[None] < y0 + sides[:, i, 1, None])
        on = params["occlusion"] & params["patch_active"][:, i]
        mask = in_y[:, :, None] & in_x[:, None, :] & on[:, None, None]
        colour = params["patch_colour"][:, i].astype(jnp.float32)[:, None, None, :]
        fill = jnp.where(params["patch_noise"][:, i, None, None, None], fill_noise, colour)
        out = jnp.where(mask[..., None], fill, out)
    return out


def add_noise(images, std, noise_bytes):
    """Batched ``augment.add_noise``: ``x + std / (256 / sqrt 12) * (byte - 127.5)`` with the
    given random bytes (B, S, S, 3), clipped to [0, 255], not rounded. Std 0 leaves the image."""
    alpha = (jnp.asarray(std, jnp.float32) / _BYTE_STD)[:, None, None, None]
    return jnp.clip(images + alpha * (noise_bytes.astype(jnp.float32) - 127.5), 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# The whole augmentation


@functools.partial(jax.jit, static_argnames=("out_size", "config"))
def apply(images, landmarks, pose, base_matrices, params, out_size: int, config: AugmentConfig):
    """Applies the parameters drawn by :func:`draw` (with the same ``config`` and ``out_size``).

    Args:
      images: (B, H, W, 3) uint8 RGB, the stored crops (one size for the batch).
      landmarks: (B, n, 2) pixel coordinates in the stored crops; n must be 68 or 98 when
        ``config`` can flip.
      pose: (B, 3) yaw, pitch, roll in degrees.
      base_matrices: (B, 2, 3) from stored pixels to output pixels, orientation-preserving (as
        for the host's ``augment``).
      params: the dict from :func:`draw`.
      out_size: S (static).
      config: the :class:`AugmentConfig` (static); a part it switches off is skipped here
        (``draw`` gave it identity values anyway).
    Returns:
      ``(images (B, S, S, 3) float32 in [0, 255] (not rounded: see the module docstring),
      landmarks (B, n, 2) float32 output pixels, pose (B, 3) float32 degrees)``.
    """
    cfg = config
    s = int(out_size)
    images = jnp.asarray(images)
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3), got {images.shape}")
    if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks must be (B, n, 2), got {landmarks.shape}")
    num_points = landmarks.shape[1]
    if can_flip(cfg):
        check_num_landmarks(num_points)

    matrix, unflipped = warp_matrices(base_matrices, params, s)
    out = warp(images, matrix, s, cfg.border_value)
    points = transform_points(landmarks, matrix)
    if can_flip(cfg):
        order = jnp.asarray(FLIP_ORDERS[num_points])
        points = jnp.where(params["flip"][:, None, None], points[:, order], points)
    pose_out = adjust_pose(pose, rotation_of(unflipped), params["flip"])

    if not cfg.enabled:
        return out, points, pose_out
    if cfg.color_enabled and (cfg.brightness or cfg.contrast or cfg.saturation):
        out = color_jitter(out, params["factors"])
    if cfg.blur_enabled and cfg.blur_prob > 0:
        blurred = gaussian_blur(out, params["sigma"], cfg.blur_max_kernel)
        out = jnp.where(params["blur"][:, None, None, None], blurred, out)
    occlusion = cfg.occlusion_enabled and cfg.occlusion_prob > 0 and cfg.occlusion_num_range[1] > 0
    noise = cfg.noise_enabled and cfg.noise_prob > 0
    if occlusion or noise:
        random = jax.vmap(functools.partial(random_bytes, out_size=s))(params["seed"])
        if occlusion:
            out = occlude(out, params, random[:, 0])
        if noise:
            noisy = add_noise(out, params["noise_std"], random[:, 1])
            out = jnp.where(params["noise"][:, None, None, None], noisy, out)
    return out, points, pose_out


# ---------------------------------------------------------------------------------------------
# The host's explicit inputs, for tests and debugging


def host_inputs(params, index: int, base_matrix, out_size: int,
                config: AugmentConfig) -> Dict[str, Any]:
    """One example's drawn parameters as the explicit inputs of the host's building blocks.

    The geometry is recomposed in float64 with :func:`geometry.similarity`, :func:`geometry.compose`
    and ``augment.flip_matrix`` from the drawn (float32) angle, scale and shift; the patch
    rectangles follow ``augment.occlude``'s rules in Python integers. Parts the host would skip
    (switched off, or not drawn for this example) are ``None``.

    Returns a dict: ``matrix`` and ``unflipped`` (2, 3) float64, ``flipped`` bool,
    ``rotation_deg``, ``scale``, ``translate_px`` (as the host's ``info``); ``factors``
    (brightness, contrast, saturation) or None; ``sigma`` or None; ``patches``: None, or a list of
    the active patches in paint order, each a dict with ``frac`` (w, h), ``centre`` (cx, cy),
    ``size`` (pw, ph), ``rect`` (x0, y0, x1, y1) (``image[y0:y1, x0:x1]``), ``noise`` bool and
    ``fill`` uint8, (y1 - y0, x1 - x0, 3) for noise or (3,) for a colour; ``noise_std`` or None
    and ``noise_bytes`` (S, S, 3) uint8 (the bytes ``augment.add_noise`` would draw) or None.
    """
    cfg = config
    p = {key: np.asarray(value[index]) for key, value in params.items()}
    s = int(out_size)
    angle, scale = float(p["angle"]), float(p["scale"])
    shift = tuple(float(v) for v in p["shift"])
    flipped = bool(p["flip"])
    centre = ((s - 1) / 2.0, (s - 1) / 2.0)
    unflipped = geometry.compose(np.asarray(base_matrix, np.float64),
                                 geometry.similarity(scale, angle, centre, shift))
    matrix = geometry.compose(unflipped, flip_matrix(s)) if flipped else unflipped
    on = cfg.enabled
    colour_on = on and cfg.color_enabled and bool(cfg.brightness or cfg.contrast or cfg.saturation)
    out: Dict[str, Any] = {
        "matrix": matrix, "unflipped": unflipped, "flipped": flipped, "rotation_deg": angle,
        "scale": scale, "translate_px": shift,
        "factors": tuple(float(f) for f in p["factors"]) if colour_on else None,
        "sigma": float(p["sigma"]) if on and cfg.blur_enabled and bool(p["blur"]) else None,
        "patches": None, "noise_std": None, "noise_bytes": None,
    }
    need_bytes = bool(on and (p["occlusion"] or p["noise"]))
    random = np.asarray(random_bytes(p["seed"], s)) if need_bytes else None
    if on and cfg.occlusion_enabled and bool(p["occlusion"]):
        patches = []
        for i in np.flatnonzero(p["patch_active"]):
            frac_w, frac_h = (float(v) for v in p["patch_frac"][i])
            pw, ph = max(1, int(round(frac_w * s))), max(1, int(round(frac_h * s)))
            cx, cy = (int(v) for v in p["patch_centre"][i])
            x0, y0 = max(0, cx - pw // 2), max(0, cy - ph // 2)
            x1, y1 = min(s, cx - pw // 2 + pw), min(s, cy - ph // 2 + ph)
            noise = bool(p["patch_noise"][i])
            fill = (random[0, y0:y1, x0:x1].copy() if noise
                    else p["patch_colour"][i].astype(np.uint8))
            patches.append({"frac": (frac_w, frac_h), "centre": (cx, cy), "size": (pw, ph),
                            "rect": (x0, y0, x1, y1), "noise": noise, "fill": fill})
        out["patches"] = patches
    if on and cfg.noise_enabled and bool(p["noise"]):
        out["noise_std"] = float(p["noise_std"])
        out["noise_bytes"] = random[1].copy()
    return out
