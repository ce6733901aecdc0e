"""Training-time augmentation of face crops: one affine warp for the geometry, then colour ops.

Coordinates follow :mod:`asmnet_jax.landmarks` (0-based, pixel centres at integers) and
:mod:`asmnet_jax.data.geometry` (a (2, 3) matrix maps source pixels to destination pixels).

Geometry. The caller gives a *base* matrix that maps the stored image (a face crop larger than the
model input) onto the ``S x S`` model input with the face centred. :func:`augment` follows it with a
random similarity about the output centre ``c = ((S - 1) / 2, (S - 1) / 2)`` (rotation, scale,
translation) and, on a coin toss, the horizontal flip ``x -> (S - 1) - x``. The three compose into
ONE matrix; one :func:`~asmnet_jax.data.geometry.warp` makes the image and
:func:`~asmnet_jax.data.geometry.transform_points` moves the landmarks with the same matrix, so
pixels and points cannot drift apart. After a flip the landmark array is permuted with
``FLIP_ORDERS[n]`` (point ``i`` becomes point ``FLIP[i]``), so the eye on the image's left keeps
its index.

Pose (degrees, ``(yaw, pitch, roll)``). This project's convention: +yaw turns the face toward the
image right, +pitch lifts the chin, +roll tilts the head clockwise on screen.
:func:`~asmnet_jax.data.geometry.similarity` rotates counter-clockwise on screen (y down) for a
positive angle, so a warp that rotates the image by ``theta`` degrees counter-clockwise changes roll
by ``-theta``: ``roll' = roll - theta``. A horizontal flip negates yaw and roll and keeps pitch.
The rotation used is that of the whole warp before the flip (base matrix included: the angle of its
closest similarity, 0 for an axis-aligned base). This is exact when roll is the rotation about the
camera axis applied last (``R = Rz(roll) @ ...``) and the image rotates about the principal point;
otherwise it is the usual weak-perspective approximation. Angles are wrapped to ``(-180, 180]``.

Photometric ops touch the image only, in uint8 with OpenCV, in this order: brightness, contrast
and saturation (one 3 x 4 colour matrix, one ``cv2.transform``), Gaussian blur, occluding patches,
pixel noise. Images are RGB (the grey weights of saturation and contrast are the RGB ones).
Cost with the defaults: about 1 ms per 288 -> 224 px image on one core of the 2-core dev machine
(the warp is 0.4 ms of it; every part at probability 1: about 1.7 ms).

Randomness comes only from the ``numpy.random.Generator`` passed in. Each call draws a fixed number
of values from it whatever the config says, so the same seed gives the same output, and switching
one part off does not change what the other parts draw.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from asmnet_jax.data import geometry
from asmnet_jax.landmarks import FLIP_ORDERS, check_num_landmarks

# ITU-R BT.601 luma weights for RGB.
_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float64)
# Uniform random bytes have standard deviation 256 / sqrt(12).
_BYTE_STD = 256.0 / math.sqrt(12.0)
# Slots of the fixed-size parameter draw, one uniform in [0, 1) each.
(_U_ROT, _U_SCALE, _U_TX, _U_TY, _U_FLIP, _U_BRIGHT, _U_CONTRAST, _U_SAT, _U_BLUR_ON, _U_BLUR_SIGMA,
 _U_OCC_ON, _U_NOISE_ON, _U_NOISE_STD) = range(13)
_NUM_UNIFORMS = 13


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What :func:`augment` does; every part has its own switch, ``enabled`` switches all off.

    Geometry (about the output centre, after the caller's base matrix):
      rotation_deg: rotation drawn uniformly from ``[-rotation_deg, rotation_deg]`` degrees
        (positive = counter-clockwise on screen).
      scale_range: ``(low, high)`` zoom factor drawn uniformly, relative to the base crop
        (> 1 makes the face larger).
      translation: shift in x and y, each drawn uniformly from ``[-t, t] * S`` pixels (t is a
        fraction of the output size S).
      flip_prob: probability of a horizontal flip.
      border_value: grey level (0-255) of pixels the warp takes from outside the stored image.
    Colour (each factor drawn uniformly from ``[1 - f, 1 + f]``, clipped at 0):
      brightness: multiplies the pixel values.
      contrast: blends with the image's mean grey level (0 = flat grey, 1 = unchanged).
      saturation: blends each pixel with its own grey level (0 = greyscale).
    Blur:
      blur_prob: probability of a Gaussian blur.
      blur_max_sigma: sigma (pixels of the output) drawn uniformly from ``[0.1, blur_max_sigma]``.
      blur_max_kernel: odd upper limit of the kernel side; the side is ``2 ceil(3 sigma) + 1``.
    Occlusion:
      occlusion_prob: probability that an image gets occluding patches.
      occlusion_num_range: ``(low, high)`` number of patches, both inclusive.
      occlusion_size_range: ``(low, high)`` side of a patch as a fraction of S, drawn per side.
      occlusion_noise_prob: probability that a patch is filled with uniform noise rather than one
        random colour.
    Noise:
      noise_prob: probability of pixel noise.
      noise_max_std: the standard deviation (grey levels) is drawn from ``[0, noise_max_std]``; the
        noise is zero-mean and uniform (box-shaped), independent per pixel and channel.
    """

    enabled: bool = True
    rotation_enabled: bool = True
    rotation_deg: float = 30.0
    scale_enabled: bool = True
    scale_range: Tuple[float, float] = (0.8, 1.2)
    translation_enabled: bool = True
    translation: float = 0.08
    flip_enabled: bool = True
    flip_prob: float = 0.5
    border_value: int = 0
    color_enabled: bool = True
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    blur_enabled: bool = True
    blur_prob: float = 0.2
    blur_max_sigma: float = 1.5
    blur_max_kernel: int = 7
    occlusion_enabled: bool = True
    occlusion_prob: float = 0.3
    occlusion_num_range: Tuple[int, int] = (1, 2)
    occlusion_size_range: Tuple[float, float] = (0.1, 0.35)
    occlusion_noise_prob: float = 0.5
    noise_enabled: bool = True
    noise_prob: float = 0.3
    noise_max_std: float = 8.0

    def __post_init__(self):
        def check(ok, name, what):
            if not ok:
                raise ValueError(f"AugmentConfig.{name}={getattr(self, name)!r}: {what}")

        for name in ("flip_prob", "blur_prob", "occlusion_prob", "occlusion_noise_prob",
                     "noise_prob"):
            check(0.0 <= getattr(self, name) <= 1.0, name, "must be a probability in [0, 1]")
        for name in ("rotation_deg", "translation", "brightness", "contrast", "saturation",
                     "noise_max_std"):
            check(getattr(self, name) >= 0.0, name, "must be >= 0")
        for name in ("scale_range", "occlusion_num_range", "occlusion_size_range"):
            value = getattr(self, name)
            check(len(value) == 2 and value[0] <= value[1], name, "must be a pair (low, high)")
        check(self.scale_range[0] > 0, "scale_range", "must be positive")
        check(self.occlusion_num_range[0] >= 0, "occlusion_num_range", "must be >= 0")
        check(0.0 < self.occlusion_size_range[0] and self.occlusion_size_range[1] <= 1.0,
              "occlusion_size_range", "must lie in (0, 1]")
        check(self.blur_max_sigma >= 0.1, "blur_max_sigma", "must be >= 0.1")
        check(self.blur_max_kernel >= 3 and self.blur_max_kernel % 2 == 1, "blur_max_kernel",
              "must be an odd integer >= 3")
        check(0 <= self.border_value <= 255, "border_value", "must be a grey level in [0, 255]")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "AugmentConfig":
        """Builds a config from a dict or ``ml_collections.ConfigDict``; missing keys keep their
        defaults, an unknown key raises ``ValueError`` naming it."""
        if hasattr(values, "to_dict"):  # ml_collections.ConfigDict
            values = values.to_dict()
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augmentation config key(s) {', '.join(map(repr, unknown))}; "
                             f"known keys: {', '.join(sorted(known))}")
        kwargs = {key: tuple(value) if isinstance(value, list) else value
                  for key, value in values.items()}
        return cls(**kwargs)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (round-trips through :meth:`from_dict`)."""
        return dataclasses.asdict(self)


def flip_matrix(out_size: int) -> np.ndarray:
    """The horizontal flip ``x -> (S - 1) - x`` of an ``S``-pixel-wide image: (2, 3)."""
    return np.array([[-1.0, 0.0, out_size - 1.0], [0.0, 1.0, 0.0]])


def rotation_of(matrix) -> float:
    """Counter-clockwise on-screen rotation in degrees of the closest similarity to a (2, 3)
    orientation-preserving affine matrix (exact for :func:`geometry.similarity`)."""
    a = np.asarray(matrix, np.float64)
    return float(np.degrees(np.arctan2(a[0, 1] - a[1, 0], a[0, 0] + a[1, 1])))


def adjust_pose(pose_deg, rotation_deg: float, flipped: bool) -> np.ndarray:
    """Pose (yaw, pitch, roll) (3,) in degrees after rotating the image counter-clockwise by
    ``rotation_deg`` and then, if ``flipped``, flipping it horizontally: (3,) float32.

    An in-plane rotation turns the head about the camera axis: ``R' = Rz(rotation_deg) @ R`` in
    the convention of :mod:`asmnet_jax.data.pose` (roll is applied first there, about the head's
    own nose axis, so only a frontal face has simply ``roll' = roll - rotation_deg``). A flip
    mirrors the head: yaw and roll change sign, pitch stays.
    """
    from asmnet_jax.data import pose as pose_lib

    yaw, pitch, roll = np.asarray(pose_deg, np.float64)
    if rotation_deg:
        theta = np.deg2rad(rotation_deg)
        c, s = np.cos(theta), np.sin(theta)
        turn = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        yaw, pitch, roll = pose_lib.euler_angles(turn @ pose_lib.rotation_matrix(yaw, pitch, roll))
    if flipped:
        yaw, roll = -yaw, -roll
    out = np.array([yaw, pitch, roll])
    out = -((-out + 180.0) % 360.0 - 180.0)  # to (-180, 180]
    return out.astype(np.float32)


def eval_transform(image, landmarks, pose_deg, base_matrix, out_size: int, border_value: int = 0):
    """The base warp only, with no randomness (evaluation, and :func:`augment` with all parts off).

    Args:
      image: (H, W, 3) uint8, the stored crop.
      landmarks: (n, 2) pixel coordinates in ``image``.
      pose_deg: (3,) yaw, pitch, roll in degrees.
      base_matrix: (2, 3) from ``image`` pixels to output pixels (orientation-preserving).
      out_size: S, the output side in pixels.
      border_value: grey level of pixels taken from outside ``image``.
    Returns:
      ``(image (S, S, 3) uint8, landmarks (n, 2) float32 output pixels, pose_deg (3,) float32,
      info)``; the pose changes only if the base matrix rotates. ``info`` holds ``matrix``
      (2, 3) float64 (the warp), ``flipped`` (False), and ``rotation_deg``, ``scale``,
      ``translate_px`` of the random part (0, 1, (0, 0)).
    """
    image, landmarks, base = _check_inputs(image, landmarks, pose_deg, base_matrix, out_size)
    info = {"matrix": base, "flipped": False, "rotation_deg": 0.0, "scale": 1.0,
            "translate_px": (0.0, 0.0)}
    # A tuple: OpenCV reads a scalar border value as (v, 0, 0, 0), which would tint the border.
    out = geometry.warp(image, base, out_size, border_value=(border_value,) * 3)
    points = geometry.transform_points(landmarks, base)
    return out, points, adjust_pose(pose_deg, rotation_of(base), False), info


def augment(image, landmarks, pose_deg, base_matrix, out_size: int, config: AugmentConfig,
            rng: np.random.Generator):
    """One random augmentation of a face crop.

    Args:
      image: (H, W, 3) uint8 RGB, the stored crop.
      landmarks: (n, 2) pixel coordinates in ``image``; n must be 68 or 98 if flips are possible.
      pose_deg: (3,) yaw, pitch, roll in degrees (convention in the module docstring).
      base_matrix: (2, 3) from ``image`` pixels to output pixels, face centred (orientation-
        preserving: no flip in it).
      out_size: S, the output side in pixels.
      config: what to do (:class:`AugmentConfig`).
      rng: the only source of randomness.
    Returns:
      ``(image (S, S, 3) uint8, landmarks (n, 2) float32 output pixels, pose_deg (3,) float32,
      info)``. ``info``: ``matrix`` (2, 3) float64, the whole warp (base, random similarity, flip)
      from ``image`` pixels to output pixels, applied to the landmarks before the flip
      permutation; ``flipped`` bool; ``rotation_deg`` (counter-clockwise), ``scale`` and
      ``translate_px`` (dx, dy) of the random similarity.
    """
    image, landmarks, base = _check_inputs(image, landmarks, pose_deg, base_matrix, out_size)
    cfg = config
    can_flip = cfg.enabled and cfg.flip_enabled and cfg.flip_prob > 0
    if can_flip:
        check_num_landmarks(landmarks.shape[0])
    u = rng.random(_NUM_UNIFORMS)
    # Seeds of the variable-size draws, taken whether or not they are used.
    occlusion_seed, noise_seed = rng.integers(0, 2 ** 63, size=2)
    if not cfg.enabled:
        return eval_transform(image, landmarks, pose_deg, base, out_size, cfg.border_value)

    angle = cfg.rotation_deg * (2.0 * u[_U_ROT] - 1.0) if cfg.rotation_enabled else 0.0
    lo, hi = cfg.scale_range
    scale = lo + (hi - lo) * u[_U_SCALE] if cfg.scale_enabled else 1.0
    if cfg.translation_enabled:
        shift = cfg.translation * out_size * (2.0 * u[[_U_TX, _U_TY]] - 1.0)
    else:
        shift = np.zeros(2)
    flipped = bool(can_flip and u[_U_FLIP] < cfg.flip_prob)

    centre = ((out_size - 1) / 2.0, (out_size - 1) / 2.0)
    random_part = geometry.similarity(scale, angle, centre, shift)
    unflipped = geometry.compose(base, random_part)
    matrix = geometry.compose(unflipped, flip_matrix(out_size)) if flipped else unflipped

    out = geometry.warp(image, matrix, out_size, border_value=(cfg.border_value,) * 3)
    points = geometry.transform_points(landmarks, matrix)
    if flipped:
        points = points[FLIP_ORDERS[landmarks.shape[0]]]
    pose = adjust_pose(pose_deg, rotation_of(unflipped), flipped)

    if cfg.color_enabled and (cfg.brightness or cfg.contrast or cfg.saturation):
        factors = [max(0.0, 1.0 + f * (2.0 * u[k] - 1.0)) for f, k in (
            (cfg.brightness, _U_BRIGHT), (cfg.contrast, _U_CONTRAST), (cfg.saturation, _U_SAT))]
        out = color_jitter(out, *factors)
    if cfg.blur_enabled and u[_U_BLUR_ON] < cfg.blur_prob:
        sigma = 0.1 + (cfg.blur_max_sigma - 0.1) * u[_U_BLUR_SIGMA]
        out = gaussian_blur(out, sigma, cfg.blur_max_kernel)
    if cfg.occlusion_enabled and u[_U_OCC_ON] < cfg.occlusion_prob:
        out = occlude(out, np.random.default_rng(occlusion_seed), cfg.occlusion_num_range,
                      cfg.occlusion_size_range, cfg.occlusion_noise_prob)
    if cfg.noise_enabled and u[_U_NOISE_ON] < cfg.noise_prob:
        out = add_noise(out, cfg.noise_max_std * u[_U_NOISE_STD], np.random.default_rng(noise_seed))

    info = {"matrix": matrix, "flipped": flipped, "rotation_deg": float(angle),
            "scale": float(scale), "translate_px": (float(shift[0]), float(shift[1]))}
    return out, points, pose, info


def color_jitter(image, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """Brightness, then contrast, then saturation, as one colour matrix: (H, W, 3) uint8 -> same.

    ``x1 = b x``; ``x2 = c x1 + (1 - c) mean_grey(x1)``; ``x3 = s x2 + (1 - s) grey(x2)``, all
    linear, so ``x3 = c b S x + (1 - c) b mean_grey(x)`` with ``S = s I + (1 - s) 1 w^T``. Factors
    of 1 leave the image unchanged; results saturate at 0 and 255.
    """
    import cv2

    mean_grey = float(np.dot(cv2.mean(image)[:3], _GREY_WEIGHTS))
    sat = saturation * np.eye(3) + (1.0 - saturation) * np.outer(np.ones(3), _GREY_WEIGHTS)
    colour = np.empty((3, 4))
    colour[:, :3] = contrast * brightness * sat
    colour[:, 3] = (1.0 - contrast) * brightness * mean_grey
    return cv2.transform(image, colour)


def gaussian_blur(image, sigma: float, max_kernel: int = 7) -> np.ndarray:
    """Gaussian blur with ``sigma`` pixels, kernel side ``min(max_kernel, 2 ceil(3 sigma) + 1)``."""
    side = min(int(max_kernel), 2 * int(math.ceil(3.0 * sigma)) + 1)
    import cv2

    return cv2.GaussianBlur(image, (side, side), sigmaX=sigma, sigmaY=sigma,
                            borderType=cv2.BORDER_REFLECT_101)


def occlude(image, rng: np.random.Generator, num_range=(1, 2), size_range=(0.1, 0.35),
            noise_prob: float = 0.5) -> np.ndarray:
    """Pastes random rectangles over ``image`` (H, W, 3) uint8 (a copy is returned).

    The count is drawn from ``num_range`` (inclusive); each side is ``size_range`` (fractions of
    the image side) drawn independently; the centre lies inside the image (patches may be cut by
    the border); the fill is uniform noise with probability ``noise_prob``, else one random colour.
    """
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(num_range[0], num_range[1] + 1))):
        frac_w, frac_h = rng.uniform(size_range[0], size_range[1], size=2)
        pw, ph = max(1, int(round(frac_w * w))), max(1, int(round(frac_h * h)))
        cx, cy = rng.integers(0, w), rng.integers(0, h)
        x0, y0 = max(0, cx - pw // 2), max(0, cy - ph // 2)
        x1, y1 = min(w, cx - pw // 2 + pw), min(h, cy - ph // 2 + ph)
        if rng.random() < noise_prob:
            out[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
        else:
            out[y0:y1, x0:x1] = rng.integers(0, 256, 3, dtype=np.uint8)
    return out


def add_noise(image, std: float, rng: np.random.Generator) -> np.ndarray:
    """Adds zero-mean uniform noise of standard deviation ``std`` grey levels to each pixel and
    channel of ``image`` (H, W, 3) uint8, saturating: same shape and dtype.

    Uniform noise from random bytes costs a fraction of Gaussian noise in NumPy.
    """
    if std <= 0:
        return image
    noise = np.frombuffer(rng.bytes(image.size), np.uint8).reshape(image.shape)
    alpha = std / _BYTE_STD
    # image + alpha * (noise - 127.5), rounded and saturated in one pass.
    import cv2

    return cv2.addWeighted(image, 1.0, noise, alpha, -127.5 * alpha, dtype=cv2.CV_8U)


def _check_inputs(image, landmarks, pose_deg, base_matrix, out_size):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    landmarks = np.asarray(landmarks, np.float32)
    if landmarks.ndim != 2 or landmarks.shape[1] != 2:
        raise ValueError(f"landmarks must be (n, 2), got {landmarks.shape}")
    if np.shape(pose_deg) != (3,):
        raise ValueError(f"pose_deg must be (3,) yaw, pitch, roll, got shape {np.shape(pose_deg)}")
    base = np.asarray(base_matrix, np.float64)
    if base.shape != (2, 3):
        raise ValueError(f"base_matrix must be (2, 3), got {base.shape}")
    if np.linalg.det(base[:, :2]) <= 0:
        raise ValueError("base_matrix must preserve orientation (positive determinant); "
                         "flips belong to the augmentation, which permutes the landmarks")
    if int(out_size) != out_size or out_size < 1:
        raise ValueError(f"out_size must be a positive integer, got {out_size}")
    return image, landmarks, base
