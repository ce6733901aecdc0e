"""Faces in photos -> landmarks and head pose, written as JSON and drawings.

The command is ``asmnet-predict`` (:mod:`asmnet_jax.cli.predict`); :func:`predict_files` does its
work.

The flow for each image (in the order given; a directory is walked for image files):

1. **Faces.** Boxes the user passes (``--boxes FILE.json``, ``--box x0,y0,x1,y1``) or a face
   detector (:mod:`asmnet_jax.detection`, pluggable: ``detection.register_detector``). A detector
   box is mapped to the face box the model was trained with by the detector's calibration.
2. **Crops**, exactly as in training (:func:`asmnet_jax.data.crop.base_matrix`): the face box
   (the landmarks' square bounding box in training) grown by the model's ``margin`` on each side,
   resampled to the model's input size; black outside the image.
3. **Prediction** in batches of ``--batch-size`` faces across images
   (:func:`asmnet_jax.inference.make_predictor`).
4. **Back to the photo**: landmarks from model coordinates to crop pixels
   (:func:`asmnet_jax.landmarks.model_to_pixels`), then through the inverse crop transform
   (:func:`asmnet_jax.data.crop.uncrop_points`) to the original image's pixels; pose to degrees.
5. **Shape plausibility**, when the model carries the shape model of its training shapes
   (:class:`asmnet_jax.asm.ShapeModel`: a run's ``asm.npz``, a model directory's ``asm.npz``, the
   shipped model's): each face's predicted shape (model units, before the mapping back) gets
   ``shape_score`` in (0, 1] (1: the mean training shape; 95 % of the training shapes score at
   least 0.5), ``asm_residual`` (RMS point distance off the shape model's subspace, in
   inter-ocular distances of the mean shape) and ``asm_mahalanobis`` (distance within it, in
   standard deviations): :meth:`asmnet_jax.asm.ShapeModel.plausibility`. A low score flags a
   prediction that is no face shape (a bad box, a non-face, heavy occlusion). Without a shape
   model the fields are absent; a shape model file without the calibration gives the two
   distances but no ``shape_score``.
6. **Output**: ``OUT/predictions.json`` (every image, its faces: box, landmarks, yaw/pitch/roll,
   plausibility) or, with ``--format csv``, ``OUT/predictions.csv`` (:func:`write_csv`: one row a
   face, named columns), and one ``OUT/<image>.png`` per image with the landmarks and the 3-D pose
   axes drawn. The last line printed on stdout is a one-line JSON summary. An image in which no
   face was found is listed there (``no_faces``) and named in a warning.

Images: whatever OpenCV decodes; grey, CMYK and 16-bit images are converted to 8-bit RGB and an
EXIF orientation is applied (the photo is read upright). At most :data:`MAX_IMAGE_PIXELS`
(100 megapixels), checked from the file's header before it is decoded; a larger image is an
error asking to downscale it (with ``--skip-bad``: listed as unreadable).

Coordinates in the output: 0-based pixel coordinates of the original image with pixel centres at
integers (:mod:`asmnet_jax.landmarks`); boxes are ``[x_min, y_min, x_max, y_max]`` in the same
coordinates. Angles are degrees in the convention of :mod:`asmnet_jax.data.pose`: +yaw turns the
face toward the image right, +pitch lifts the chin, +roll tilts the head clockwise on screen.
The face detectors are in :mod:`asmnet_jax.detection`, the drawing in :mod:`asmnet_jax.drawing`.
"""

from __future__ import annotations

import csv
import dataclasses
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
from asmnet_jax.detection import DETECTORS, GIVEN_BOXES, BoxCalibration, Detector, choose_detector
from asmnet_jax.drawing import draw_faces
from asmnet_jax.errors import PredictError
from asmnet_jax.files import atomic_open, temporary_path

#: File name endings taken from a directory walk (case-insensitive); files named on the command
#: line are read whatever their ending.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PREDICTIONS_JSON = "predictions.json"
PREDICTIONS_CSV = "predictions.csv"
#: ``asmnet-predict --format``: predictions.json (every image) or predictions.csv (a row a face).
OUTPUT_FORMATS = ("json", "csv")
#: The largest image read, in pixels (width x height): 100 megapixels, a medium-format camera's
#: photo. An image is held as about four (H, W, 3) uint8 copies at once (decoded, RGB, drawing,
#: encoding), some 1.2 GB at this size; OpenCV's own bound, 2**30 pixels, would allow 13 GB. A
#: larger image is refused from its header, before it is decoded (a small PNG can hold a huge
#: blank image), with a message asking to downscale it.
MAX_IMAGE_PIXELS = 100_000_000


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
    with temporary_path(path) as temporary:
        data.tofile(temporary)


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
# Crops and the mapping back


def model_crop_box(face_box: crop.SquareBox, margin: float) -> crop.SquareBox:
    """The face box grown by ``margin`` of its side on each side: the square the model sees
    (the same rule as :func:`asmnet_jax.data.crop.base_matrix`)."""
    return crop.SquareBox(face_box.cx, face_box.cy, crop.grown_side(face_box.side, margin))


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
                   batch_multiple: int = 1, read: Optional[Callable[[str], np.ndarray]] = None,
                   plausibility: Optional[Callable] = None) -> Iterator[ImageResult]:
    """Finds, crops and predicts the faces of many images; yields results in the input order.

    Args:
      inputs: the images.
      predict: ``predict(images uint8 (B, S, S, 3)) -> (landmarks (B, 2n), pose (B, 3) radians)``
        (:func:`asmnet_jax.inference.make_predictor`).
      input_size: S; margin: the model's face-box margin (fraction of the side, each side).
      batch_size: faces per call of ``predict``, across images. A batch is padded to a batch
        size already run in this call when one is large enough (the last batch of a folder to the
        full size: padding a few faces costs less than compiling another shape), else to a power
        of two (at most ``batch_size``), so a call compiles one shape or, for fewer faces than
        ``batch_size``, one small one.
      boxes: ``{input.path: [[x_min, y_min, x_max, y_max], ...]}`` for the images whose faces are
        given (:func:`match_boxes`); these images are not run through the detector.
      detect: the detector for the other images (None: they have no faces).
      calibration: ``detect``'s :class:`BoxCalibration`; given boxes use :data:`GIVEN_BOXES`.
      skip_bad: report unreadable images (``error``) instead of raising :class:`PredictError`.
      batch_multiple: batches are padded to a multiple of this (the device count).
      read: ``read(path) -> (H, W, 3) uint8 RGB`` (default :func:`read_image`; e.g. a dict's
        ``__getitem__`` for images in memory), raising :class:`PredictError` when it cannot.
      plausibility: ``plausibility(landmarks (B, 2n) model units) -> {name: (B,)}``
        (:meth:`asmnet_jax.asm.ShapeModel.plausibility`), or None.

    Each face is a dict: ``box`` (4,) float64 as given or detected, ``source`` (``"given"`` or
    ``"detector"``), ``score`` (detector score or None), ``face_box`` (the calibrated
    ``SquareBox``), ``landmarks`` (n, 2) float32 image pixels and ``pose`` (3,) float32 degrees;
    with ``plausibility``, ``plausibility`` ``{name: float}`` of the face's model-unit shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    boxes = boxes or {}
    read = read_image if read is None else read
    waiting: deque = deque()     # results not yet yielded, in input order
    queue: List[tuple] = []      # (result, face, crop, matrix) awaiting prediction

    shapes_run: set = set()  # batch sizes already run (compiled) in this call

    def run(items):
        count = len(items)
        padded = min(batch_size, 1 << max(0, (count - 1).bit_length()))
        padded = -(-max(padded, count) // batch_multiple) * batch_multiple
        padded = min([size for size in shapes_run if size >= count] or [padded])
        shapes_run.add(padded)
        batch = np.zeros((padded, input_size, input_size, 3), np.uint8)
        for i, item in enumerate(items):
            batch[i] = item[2]
        landmarks, pose = predict(batch)
        checks = None
        if plausibility is not None:
            checks = {key: np.asarray(value, np.float64)[:count]  # the padded batch: one shape
                      for key, value in plausibility(np.asarray(landmarks)).items()}
        for i, (result, face, _, matrix) in enumerate(items):
            face["landmarks"], face["pose"] = to_image_coordinates(
                landmarks[i], pose[i], matrix, input_size)
            if checks is not None:
                face["plausibility"] = {key: float(value[i]) for key, value in checks.items()}
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


def face_json(face: dict) -> dict:
    def r(values, digits=4):
        return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]

    yaw, pitch, roll = r(face["pose"], 3)
    square = face["face_box"]
    out = {
        "box": r(face["box"], 2),
        "box_source": face["source"],
        "score": None if face["score"] is None else round(face["score"], 4),
        "face_box": r([square.cx - square.side / 2, square.cy - square.side / 2,
                       square.cx + square.side / 2, square.cy + square.side / 2], 2),
        "landmarks": [r(p) for p in face["landmarks"]],
        "yaw": yaw, "pitch": pitch, "roll": roll,
    }
    checks = face.get("plausibility")
    if checks is not None:
        for name, key, digits in PLAUSIBILITY_FIELDS:
            if key in checks:
                out[name] = round(checks[key], digits)
    return out


#: predictions.json / .csv field, ShapeModel.plausibility key, decimals.
PLAUSIBILITY_FIELDS = (("shape_score", "score", 4), ("asm_residual", "residual", 5),
                       ("asm_mahalanobis", "mahalanobis", 3))


def csv_columns(num_landmarks: int) -> List[str]:
    """The columns of ``predictions.csv`` for a model of ``num_landmarks`` points."""
    return (["image", "face", "box_x0", "box_y0", "box_x1", "box_y1", "box_source", "score"]
            + [name for name, _, _ in PLAUSIBILITY_FIELDS] + ["yaw", "pitch", "roll"]
            + [f"{axis}{i}" for i in range(num_landmarks) for axis in "xy"])


def write_csv(path, records: Sequence[dict], num_landmarks: int) -> None:
    """Writes ``predictions.csv``: a header of :func:`csv_columns`, then one row a face of the
    ``records`` of predictions.json (``face``: its 0-based index in the image; ``score``: the
    detector's, empty for given boxes; the plausibility columns empty without a shape model;
    ``x{i}, y{i}``: the landmarks in image pixels). Images without faces or unreadable ones have
    no rows (they are in the summary)."""
    columns = csv_columns(num_landmarks)
    with atomic_open(path, encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for record in records:
            for index, face in enumerate(record.get("faces", [])):
                writer.writerow(face_csv_row(face, image=record["image"], face=index))


def face_csv_row(prediction: dict, **leading) -> dict:
    """One CSV row of a face of predictions.json (photos) or predictions.jsonl (video): the
    ``leading`` columns (image and face, or frame, time and id), the box, its source, the scores
    that are present, the pose and the landmarks ``x0, y0, ...``."""
    row = {**leading, "box_source": prediction["box_source"], "yaw": prediction["yaw"],
           "pitch": prediction["pitch"], "roll": prediction["roll"]}
    row.update(zip(("box_x0", "box_y0", "box_x1", "box_y1"), prediction["box"]))
    for name in ["score"] + [name for name, _, _ in PLAUSIBILITY_FIELDS]:
        if prediction.get(name) is not None:
            row[name] = prediction[name]
    for i, (x, y) in enumerate(prediction["landmarks"]):
        row[f"x{i}"], row[f"y{i}"] = x, y
    return row


def load_predictor(model, flip: bool):
    """(the loaded model, its batch predictor, its shape model's plausibility as one compiled
    function, or None) for ``model``: a :class:`asmnet_jax.inference.LoadedModel`, or a function
    that loads one (the commands load only once their input has been checked)."""
    import jax  # and the model code, once the input is known good

    from asmnet_jax import inference

    loaded = model if isinstance(model, inference.LoadedModel) else model()
    shape_model = getattr(loaded, "shape_model", None)
    # One compilation per batch shape, instead of one per jnp operation and shape (about 25).
    plausibility = None if shape_model is None else jax.jit(shape_model.plausibility)
    return loaded, inference.make_predictor(loaded, flip=flip), plausibility


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
                  warn: Callable[[str], None] = lambda message: None,
                  output_format: str = "json") -> dict:
    """Predicts the faces in image files and directories; writes ``out/predictions.json`` (or
    ``out/predictions.csv``) and (with ``draw``) one drawing per image; returns the summary.

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
      output_format: ``"json"`` (``predictions.json``) or ``"csv"`` (``predictions.csv``,
        :func:`write_csv`); the summary names the file under that key.

    Raises :class:`PredictError` (naming the file or option) for bad input.
    """
    start = time.perf_counter()
    check_format(output_format)
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

    loaded, predict, plausibility = load_predictor(model, flip)

    os.makedirs(out, exist_ok=True)
    input_paths = {os.path.abspath(image.path) for image in images}
    used: set = set()
    records, drawings, no_faces, unreadable = [], [], [], []
    face_count = 0
    for result in predict_images(images, predict, loaded.input_size, loaded.margin,
                                 batch_size, boxes=boxes, detect=detect,
                                 calibration=calibration, skip_bad=skip_bad,
                                 batch_multiple=jax.local_device_count(),
                                 plausibility=plausibility):
        record = {"image": result.source.path}
        if result.error is not None:
            record["error"] = result.error
            unreadable.append(result.source.path)
            warn(f"skipped {result.error}")
        else:
            h, w = result.image.shape[:2]
            record.update(width=w, height=h, faces=[face_json(f) for f in result.faces])
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

    if output_format == "csv":
        output_path = os.path.join(out, PREDICTIONS_CSV)
        write_csv(output_path, records, loaded.num_landmarks)
    else:
        output_path = os.path.join(out, PREDICTIONS_JSON)
        _write_json(output_path, loaded, detector_name, records, no_faces, unreadable, unused)
    return {"images": len(records), "faces": face_count,
            "no_faces": {"count": len(no_faces), "images": no_faces},
            "unreadable": {"count": len(unreadable), "images": unreadable},
            "detector": detector_name, "model": loaded.path, output_format: output_path,
            "drawings": drawings, "seconds": round(time.perf_counter() - start, 3)}


def check_format(output_format: str) -> None:
    """:class:`PredictError` unless ``output_format`` is one of :data:`OUTPUT_FORMATS`."""
    if output_format not in OUTPUT_FORMATS:
        raise PredictError(f"--format {output_format!r}: expected one of "
                           + ", ".join(OUTPUT_FORMATS))


def _write_json(json_path, loaded, detector_name, records, no_faces, unreadable, unused) -> None:
    document = {
        "model": loaded.describe(), "detector": detector_name,
        "coordinates": "0-based pixels of the original image, pixel centres at integers; "
                       "boxes [x_min, y_min, x_max, y_max]; face_box: the square crop box "
                       "before the model's margin; landmarks [[x, y], ...]",
        "angles": "degrees; +yaw face toward the image right, +pitch chin up, +roll clockwise",
        "plausibility": "with a shape model: shape_score in (0, 1] (1: the mean training shape, "
                        "95 % of the training shapes score at least 0.5), asm_residual (RMS point "
                        "distance off the shape model's subspace, in the mean shape's "
                        "inter-ocular distances), asm_mahalanobis (distance within it, in "
                        "standard deviations); score is the detector's",
        "images": records,
        "no_faces": no_faces, "unreadable": unreadable, "unused_box_keys": unused,
    }
    with atomic_open(json_path, encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")
