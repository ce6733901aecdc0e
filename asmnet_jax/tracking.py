"""Faces tracked through the frames of a video: tracks, IoU matching, One Euro smoothing.

:class:`Tracker` turns frames into faces with stable ids (``asmnet-predict`` on a video,
:mod:`asmnet_jax.video`):

* **Detection** (the face detector of :mod:`asmnet_jax.detection`, or the ``--box`` boxes on the
  first frame) runs on the first frame, every ``detect_every`` frames after the last detection,
  and on the frame after one where a track's ``shape_score`` fell below ``min_track_score`` or a
  track was lost (its face box left the image or shrank to nothing) or there was no track at all.
* **Between detections** a face's crop box comes from its previous frame's (raw, unsmoothed)
  landmarks: their bounding box made square (:func:`asmnet_jax.data.crop.landmark_box`, no
  margin: the training face box), which the crop grows by the model's margin as in training.
  With ``predict_motion`` (the default) the box is moved on by the face's last motion (constant
  velocity of its centre, constant rate of its size: :func:`extrapolate`), measured between the
  landmark boxes of two consecutive frames of which the second was cropped from the first (not
  across a detection, whose other framing would read as motion): a face that moves 7 pixels a
  frame is otherwise cropped 7 pixels behind, which cost 0.6 points of NME on the benchmark's
  moving face (experiments/bench_predict.py).
* **Ids**: at a detection frame, the detections are matched to the tracks greedily by the IoU of
  their face boxes with the tracks' (highest first, IoU >= :data:`MATCH_IOU`); a matched track
  keeps its id (and its smoothing state), a new detection starts a track with a new id, a track
  not matched ends.
* **Smoothing** (unless ``smooth`` is off), with the One Euro filter (Casiez, Roussel and Vogel,
  CHI 2012) in two parts (:class:`ShapeSmoother`): a face's landmarks are split into where the
  face is (a similarity transform: centre, scale, in-plane angle, fitted to the track's first
  shape by least squares) and what shape it has in that frame (the landmarks with the transform
  undone). The transform is filtered lightly and follows motion (a high speed coefficient); the
  shape, which does not change when the head or camera moves, is filtered strongly. So a moving
  face is not dragged behind (the lag of one filter over pixel coordinates, which must choose
  between jitter and lag), and a still one does not wobble. The pose (degrees) has its own filter.
  The output is the smoothed values; the crop box of the next frame uses the raw ones (no lag fed
  back into the crops). ``shape_score`` is the raw prediction's.

The One Euro filter is implemented here, vectorised over NumPy arrays: PyPI's ``OneEuroFilter``
0.2.1 (Casiez's reference) works on one float at a time (its low-pass filter converts ``alpha`` to
a float), so a face would need 139 filter objects and a Python loop per frame.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from asmnet_jax.data import crop
from asmnet_jax.detection import GIVEN_BOXES, BoxCalibration, Detector
from asmnet_jax.errors import PredictError
from asmnet_jax.predict import ImageInput, predict_images

#: Smallest IoU of a detection's face box with a track's for them to be the same face.
MATCH_IOU = 0.3
DEFAULT_DETECT_EVERY = 10
DEFAULT_MIN_TRACK_SCORE = 0.3
#: One Euro defaults of the face's motion (its similarity transform: centre and log scale in face
#: units, the radius of the track's first shape; angle in radians): the cutoff frequency (Hz) at
#: rest, the speed coefficient (per face unit per second) and the cutoff of the speed estimate
#: (Hz). Chosen on experiments/bench_predict.py's videos (experiments/RESULTS.md): they halve the
#: per-frame jitter and keep the NME of a face moving about a face width a second.
DEFAULT_MIN_CUTOFF = 1.0
DEFAULT_BETA = 16.0
MOTION_D_CUTOFF = 3.0
#: The face's shape in its own frame (face units): cutoff at rest (Hz) and speed coefficient. The
#: speed term lets expressions through: a mouth opening by a third of the face radius in a fifth
#: of a second is followed to 90 % within 0.03 s of its end (1.1 s without it; tests/test_video.py).
DEFAULT_SHAPE_CUTOFF = 0.3
DEFAULT_SHAPE_BETA = 5.0
#: The pose (degrees): cutoff at rest (Hz), speed coefficient (per degree per second).
POSE_MIN_CUTOFF = 1.0
POSE_BETA = 0.02
#: The cutoff of the speed estimate (Hz) of the shape and pose filters, as in the paper.
D_CUTOFF = 1.0
#: A tracked face box smaller than this (pixels) is lost.
MIN_TRACK_SIDE = 4.0


# --------------------------------------------------------------------------------------------------
# The One Euro filter


class OneEuroFilter:
    """The One Euro filter (Casiez et al. 2012) over an array of values, element-wise.

    An exponential low-pass filter whose cutoff frequency grows with the (low-passed) speed of the
    signal: ``cutoff = min_cutoff + beta * |speed|``, so slow motion is smoothed strongly (less
    jitter) and fast motion little (less lag). ``min_cutoff`` (Hz): lower, smoother at rest;
    ``beta`` (per unit of the signal per second): higher, less lag when moving; ``d_cutoff`` (Hz):
    the cutoff of the speed estimate. Call with the values and their time in seconds; returns the
    filtered values (the first call returns its input).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = D_CUTOFF):
        if not (min_cutoff > 0 and d_cutoff > 0 and beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"One Euro filter needs min_cutoff > 0, d_cutoff > 0, beta >= 0; got "
                             f"{min_cutoff}, {d_cutoff}, {beta}")
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.value: Optional[np.ndarray] = None
        self.speed: Optional[np.ndarray] = None
        self.time: Optional[float] = None

    @staticmethod
    def alpha(cutoff, dt: float):
        """The smoothing factor of an exponential filter of ``cutoff`` Hz sampled every ``dt`` s."""
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, values, time: float) -> np.ndarray:
        x = np.asarray(values, np.float64)
        if self.value is None or x.shape != self.value.shape:
            self.value, self.speed, self.time = x.copy(), np.zeros_like(x), float(time)
            return x.copy()
        dt = float(time) - self.time
        if not dt > 0:  # the same (or an earlier) time stamp: nothing to filter over
            return self.value.copy()
        speed = (x - self.value) / dt
        self.speed = self.speed + self.alpha(self.d_cutoff, dt) * (speed - self.speed)
        a = self.alpha(self.min_cutoff + self.beta * np.abs(self.speed), dt)
        self.value = self.value + a * (x - self.value)
        self.time = float(time)
        return self.value.copy()


def fit_similarity(template: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """The least-squares similarity ``points ~ scale * R(angle) @ template + centre``.

    ``template`` (n, 2) is centred (mean 0); returns (centre (2,), scale, angle in radians, counter-
    clockwise in x-right, y-down pixel coordinates: the rotation that takes +x towards +y)."""
    centre = points.mean(axis=0)
    q = points - centre
    dot = float((template * q).sum())
    cross = float((template[:, 0] * q[:, 1] - template[:, 1] * q[:, 0]).sum())
    return centre, math.hypot(dot, cross) / float((template ** 2).sum()), math.atan2(cross, dot)


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


class ShapeSmoother:
    """One Euro smoothing of a face's landmarks split into motion and shape (see the module doc).

    The first call's landmarks, centred and scaled to unit radius (root mean square distance from
    their centre), are the track's template, and their radius in pixels its face unit. Each call
    fits the similarity from the template to the landmarks (:func:`fit_similarity`), filters the
    motion ``(centre / unit, log scale, angle)`` with ``min_cutoff``, ``beta`` (per face unit per
    second) and ``d_cutoff`` = :data:`MOTION_D_CUTOFF`, filters the shape (the landmarks mapped
    back by the inverse transform, in template units) with ``shape_cutoff``, ``shape_beta``, and
    returns the filtered shape put through the filtered transform: (n, 2) pixels.
    """

    def __init__(self, min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 shape_cutoff: float = DEFAULT_SHAPE_CUTOFF,
                 shape_beta: float = DEFAULT_SHAPE_BETA):
        self.motion = OneEuroFilter(min_cutoff, beta, MOTION_D_CUTOFF)
        self.shape = OneEuroFilter(shape_cutoff, shape_beta)
        self.template: Optional[np.ndarray] = None
        self.unit = 1.0

    def __call__(self, points, time: float) -> np.ndarray:
        points = np.asarray(points, np.float64)
        if self.template is None or points.shape != self.template.shape:
            centred = points - points.mean(axis=0)
            radius = float(np.sqrt((centred ** 2).sum(axis=1).mean()))
            if not radius > 0:  # all points in one place: nothing to fit a frame to
                return points.copy()
            self.template, self.unit = centred / radius, radius
            self.motion = OneEuroFilter(self.motion.min_cutoff, self.motion.beta,
                                        self.motion.d_cutoff)
            self.shape = OneEuroFilter(self.shape.min_cutoff, self.shape.beta, self.shape.d_cutoff)
        centre, scale, angle = fit_similarity(self.template, points)
        if not scale > 0:
            return points.copy()
        shape = (points - centre) @ _rotation(angle) / scale  # row vectors: R^T applied
        motion = self.motion(np.array([centre[0] / self.unit, centre[1] / self.unit,
                                       math.log(scale), angle]), time)
        shape = self.shape(shape, time)
        return math.exp(motion[2]) * shape @ _rotation(motion[3]).T + motion[:2] * self.unit


# --------------------------------------------------------------------------------------------------
# Matching


def square_corners(box: crop.SquareBox) -> np.ndarray:
    """``[x_min, y_min, x_max, y_max]`` of a square box."""
    half = box.side / 2
    return np.array([box.cx - half, box.cy - half, box.cx + half, box.cy + half], np.float64)


def iou_matrix(a: Sequence[crop.SquareBox], b: Sequence[crop.SquareBox]) -> np.ndarray:
    """IoU (len(a), len(b)) of two lists of square boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    ca = np.stack([square_corners(s) for s in a])[:, None]
    cb = np.stack([square_corners(s) for s in b])[None]
    w = np.clip(np.minimum(ca[..., 2], cb[..., 2]) - np.maximum(ca[..., 0], cb[..., 0]), 0, None)
    h = np.clip(np.minimum(ca[..., 3], cb[..., 3]) - np.maximum(ca[..., 1], cb[..., 1]), 0, None)
    inter = w * h
    area_a = (ca[..., 2] - ca[..., 0]) * (ca[..., 3] - ca[..., 1])
    area_b = (cb[..., 2] - cb[..., 0]) * (cb[..., 3] - cb[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-12)


def greedy_match(iou: np.ndarray, threshold: float = MATCH_IOU) -> List[Tuple[int, int]]:
    """Pairs ``(row, column)`` of an IoU matrix, the highest IoU first, each row and column used
    once, only pairs with IoU >= ``threshold``."""
    pairs, rows, cols = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] < threshold:
            break
        if i not in rows and j not in cols:
            pairs.append((int(i), int(j)))
            rows.add(i)
            cols.add(j)
    return pairs


# --------------------------------------------------------------------------------------------------
# Tracks


@dataclasses.dataclass
class Track:
    """One face followed through frames: ``id``, ``next_box`` (the face box of the next frame,
    from this frame's raw landmarks), the last frame's landmark box and index (for the motion
    prediction) and its smoothing filters."""

    id: int
    next_box: crop.SquareBox
    landmark_filter: Optional[ShapeSmoother] = None
    pose_filter: Optional[OneEuroFilter] = None
    last_box: Optional[crop.SquareBox] = None
    last_index: Optional[int] = None
    motion: Optional[Tuple[float, float, float]] = None


def motion_between(previous: crop.SquareBox, box: crop.SquareBox) -> Tuple[float, float, float]:
    """A box's motion over one frame: (dx, dy) of its centre, in pixels, and its side's ratio."""
    return box.cx - previous.cx, box.cy - previous.cy, box.side / previous.side


def extrapolate(box: crop.SquareBox, motion: Tuple[float, float, float]) -> crop.SquareBox:
    """``box`` one frame on, moved by ``motion`` (:func:`motion_between`)."""
    dx, dy, ratio = motion
    return crop.SquareBox(box.cx + dx, box.cy + dy, box.side * ratio)


class Tracker:
    """Frames -> faces with track ids (see the module doc).

    Args:
      predict: ``predict(images uint8 (B, S, S, 3)) -> (landmarks (B, 2n), pose (B, 3))``.
      input_size, margin: the model's.
      detect: the face detector, or None (then only ``initial_boxes`` start tracks).
      calibration: ``detect``'s box calibration.
      detect_every: K, frames between detections while every track is fine.
      min_track_score: a track whose ``shape_score`` is below this asks for a detection.
      smooth, min_cutoff, beta, shape_cutoff, shape_beta: the smoothing of the landmarks
        (:class:`ShapeSmoother`); the pose's is :data:`POSE_MIN_CUTOFF`, :data:`POSE_BETA`.
      predict_motion: move the next frame's crop box on by the last frame's motion.
      initial_boxes: ``[[x_min, y_min, x_max, y_max], ...]`` face boxes of the first frame,
        taken instead of the detector there (``box_source`` ``"given"``).
      batch_size, batch_multiple, plausibility: as in :func:`asmnet_jax.predict.predict_images`.

    :meth:`step` gives each frame's faces as dicts: ``id``, ``box`` (the detector's or given box
    at a detection frame; the square face box otherwise), ``source`` (``"detector"``, ``"given"``
    or ``"tracked"``), ``score`` (the detector's at a detection frame, else None), ``face_box``,
    ``landmarks`` (n, 2) pixels and ``pose`` (3,) degrees (smoothed), ``raw_landmarks``,
    ``raw_pose``, and ``plausibility`` with a shape model. ``detections`` counts detector runs.
    """

    def __init__(self, predict, input_size: int, margin: float, *,
                 detect: Optional[Detector] = None, calibration: BoxCalibration = GIVEN_BOXES,
                 detect_every: int = DEFAULT_DETECT_EVERY,
                 min_track_score: float = DEFAULT_MIN_TRACK_SCORE, smooth: bool = True,
                 min_cutoff: float = DEFAULT_MIN_CUTOFF, beta: float = DEFAULT_BETA,
                 shape_cutoff: float = DEFAULT_SHAPE_CUTOFF,
                 shape_beta: float = DEFAULT_SHAPE_BETA, predict_motion: bool = True,
                 initial_boxes: Optional[Sequence[Sequence[float]]] = None, batch_size: int = 16,
                 batch_multiple: int = 1, plausibility: Optional[Callable] = None):
        if detect_every < 1:
            raise PredictError(f"--detect-every must be at least 1, got {detect_every}")
        if smooth:
            ShapeSmoother(min_cutoff, beta, shape_cutoff, shape_beta)  # raises on bad parameters
        self.predict, self.input_size, self.margin = predict, input_size, margin
        self.detect, self.calibration = detect, calibration
        self.detect_every, self.min_track_score = detect_every, min_track_score
        self.smooth, self.min_cutoff, self.beta = smooth, min_cutoff, beta
        self.shape_cutoff, self.shape_beta = shape_cutoff, shape_beta
        self.predict_motion = predict_motion
        self.initial_boxes = [list(map(float, b)) for b in initial_boxes or []]
        self.batch_size, self.batch_multiple = batch_size, batch_multiple
        self.plausibility = plausibility
        self.tracks: List[Track] = []
        self.next_id = 0
        self.last_detection: Optional[int] = None
        self.wants_detection = True
        self.detections = 0

    def _detection_due(self, index: int) -> bool:
        if self.last_detection is None:
            return True
        if self.detect is None:
            return False
        return self.wants_detection or index - self.last_detection >= self.detect_every

    def _candidates(self, image, first: bool) -> List[tuple]:
        """(box, score, source, face_box) of this frame's detections (or given boxes)."""
        if first and self.initial_boxes:
            return [(np.asarray(b, np.float64), None, "given", GIVEN_BOXES.face_box(b))
                    for b in self.initial_boxes]
        if self.detect is None:
            return []
        self.detections += 1
        rows = np.asarray(self.detect(image), np.float32).reshape(-1, 5)
        return [(row[:4].astype(np.float64), float(row[4]), "detector",
                 self.calibration.face_box(row[:4])) for row in rows]

    def _new_track(self, box: crop.SquareBox) -> Track:
        track = Track(self.next_id, box)
        self.next_id += 1
        if self.smooth:
            track.landmark_filter = ShapeSmoother(self.min_cutoff, self.beta, self.shape_cutoff,
                                                  self.shape_beta)
            track.pose_filter = OneEuroFilter(POSE_MIN_CUTOFF, POSE_BETA)
        return track

    def step(self, image: np.ndarray, index: int, time: float) -> List[dict]:
        """The faces of frame ``index`` (``time`` seconds), (H, W, 3) uint8 RGB."""
        planned: List[Tuple[Track, dict]] = []
        if self._detection_due(index):
            found = self._candidates(image, self.last_detection is None)
            self.last_detection = index
            pairs = greedy_match(iou_matrix([t.next_box for t in self.tracks],
                                            [c[3] for c in found]))
            matched = {j: self.tracks[i] for i, j in pairs}
            tracks = []
            for j, (box, score, source, face_box) in enumerate(found):
                track = matched.get(j) or self._new_track(face_box)
                tracks.append(track)
                planned.append((track, {"box": box, "source": source, "score": score,
                                        "face_box": face_box}))
            self.tracks = tracks  # tracks not matched end here
        else:
            for track in self.tracks:
                planned.append((track, {"box": square_corners(track.next_box),
                                        "source": "tracked", "score": None,
                                        "face_box": track.next_box}))
        self.wants_detection = False
        if not planned:
            self.wants_detection = True  # no face: look again on the next frame
            return []

        key = "frame"
        result = next(iter(predict_images(
            [ImageInput(key, key)], self.predict, self.input_size, self.margin, self.batch_size,
            boxes={key: [square_corners(face["face_box"]).tolist() for _, face in planned]},
            batch_multiple=self.batch_multiple, read=lambda _: image,
            plausibility=self.plausibility)))
        height, width = image.shape[:2]
        faces, alive = [], []
        for (track, face), predicted in zip(planned, result.faces):
            raw_points = np.asarray(predicted["landmarks"], np.float64)
            raw_pose = np.asarray(predicted["pose"], np.float64)
            face.update(id=track.id, raw_landmarks=raw_points, raw_pose=raw_pose)
            if "plausibility" in predicted:
                face["plausibility"] = predicted["plausibility"]
            if self.smooth:
                face["landmarks"] = track.landmark_filter(raw_points, time).astype(np.float32)
                face["pose"] = track.pose_filter(raw_pose, time).astype(np.float32)
            else:
                face["landmarks"] = raw_points.astype(np.float32)
                face["pose"] = raw_pose.astype(np.float32)
            faces.append(face)
            score = face.get("plausibility", {}).get("score")
            if score is not None and score < self.min_track_score:
                self.wants_detection = True
            box = crop.landmark_box(raw_points, 0.0)
            if track.last_index != index - 1:
                track.motion = None
            elif face["source"] == "tracked" and track.last_box.side > 0:
                track.motion = motion_between(track.last_box, box)
            track.next_box = box
            if self.predict_motion and track.motion is not None:
                track.next_box = extrapolate(box, track.motion)
            track.last_box, track.last_index = box, index
            inside = 0 <= track.next_box.cx < width and 0 <= track.next_box.cy < height
            if inside and track.next_box.side >= MIN_TRACK_SIDE and np.isfinite(raw_points).all():
                alive.append(track)
            else:
                self.wants_detection = True  # lost
        self.tracks = alive
        return faces
