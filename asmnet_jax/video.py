"""``asmnet-predict`` on a video file or a camera: frames -> tracked faces -> JSON lines, CSV and an
annotated video.

:func:`predict_video` reads the frames with OpenCV's ``cv2.VideoCapture``, follows the faces with
:class:`asmnet_jax.tracking.Tracker` (detection every K frames, crops from the previous
landmarks in between, ids kept by IoU matching, One Euro smoothing) and writes, frame by frame:

* ``OUT/predictions.jsonl``: one JSON object a line and a frame: ``frame`` (0-based index),
  ``time`` (seconds: index / fps for a file, since the start for a camera) and ``faces``, each
  with ``id`` (the track's), ``box``, ``box_source`` (``detector``, ``given`` or ``tracked``),
  ``score`` (the detector's, at detection frames), ``face_box``, ``landmarks``, ``yaw``,
  ``pitch``, ``roll`` and, with a shape model, ``shape_score``, ``asm_residual``,
  ``asm_mahalanobis``; a frame without a face has ``faces: []``. Or, with ``--format csv``,
  ``OUT/predictions.csv``: one row a frame and face (:func:`video_csv_columns`).
* unless ``--no-draw``, ``OUT/<video name>.annotated.mp4`` (mp4v, the input's frame rate): every
  frame with its faces drawn (:func:`asmnet_jax.drawing.draw_faces`) and their ids.

Each line is flushed as it is written, and the files are closed in ``finally``: a run stopped by
Ctrl-C, or a video that breaks off, leaves valid files up to the last frame written.
Coordinates and angles are those of :mod:`asmnet_jax.predict`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple

import cv2
import numpy as np

from asmnet_jax import tracking
from asmnet_jax.detection import DETECTORS, GIVEN_BOXES, choose_detector
from asmnet_jax.drawing import draw_faces
from asmnet_jax.errors import PredictError
from asmnet_jax.predict import (check_format, csv_columns, face_csv_row, face_json,
                                load_predictor, parse_box)

#: File endings taken as videos by ``asmnet-predict`` (case-insensitive; ``--video`` for others).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
PREDICTIONS_JSONL = "predictions.jsonl"
PREDICTIONS_CSV = "predictions.csv"
#: Frame rate assumed when the file or camera reports none.
FALLBACK_FPS = 30.0


def is_video(path) -> bool:
    """Whether ``path`` ends like a video file (:data:`VIDEO_EXTENSIONS`)."""
    return os.fspath(path).lower().endswith(VIDEO_EXTENSIONS)


class VideoSource:
    """Frames of a video file or a camera: iterate for ``(index, time s, (H, W, 3) uint8 RGB)``.

    ``name``: the file, or ``camera N``. Opening raises :class:`PredictError` naming it when it
    cannot be opened or has no frame. ``expected``: the frame count the file reports (0 if none);
    ``read``: frames read so far.
    """

    def __init__(self, path: Optional[str] = None, camera: Optional[int] = None):
        if (path is None) == (camera is None):
            raise ValueError("give a path or a camera")
        self.is_camera = camera is not None
        self.name = f"camera {camera}" if self.is_camera else os.fspath(path)
        if not self.is_camera:
            if not os.path.exists(self.name):
                raise PredictError(f"{self.name}: no such file or directory")
            if os.path.isdir(self.name):
                raise PredictError(f"{self.name}: is a directory, not a video")
        self.capture = cv2.VideoCapture(camera if self.is_camera else self.name)
        if not self.capture.isOpened():
            self.capture.release()
            if self.is_camera:
                raise PredictError(f"--webcam {camera}: cannot open camera {camera}")
            raise PredictError(f"{self.name}: not a readable video (empty, truncated or unknown "
                               "format)")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else FALLBACK_FPS
        count = self.capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.expected = int(count) if not self.is_camera and count and count > 0 else 0
        self.read = 0
        ok, frame = self.capture.read()
        if not ok or frame is None:
            self.capture.release()
            raise PredictError(f"{self.name}: " + ("no frame from the camera" if self.is_camera
                                                   else "no frames (an empty or unreadable video)"))
        self._first = frame

    def __iter__(self) -> Iterator[Tuple[int, float, np.ndarray]]:
        start = time.monotonic()
        frame = self._first
        self._first = None
        while frame is not None:
            index = self.read
            self.read += 1
            stamp = time.monotonic() - start if self.is_camera else index / self.fps
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            yield index, stamp, cv2.cvtColor(frame[..., :3], cv2.COLOR_BGR2RGB)
            ok, frame = self.capture.read()
            if not ok:
                frame = None

    def close(self) -> None:
        self.capture.release()


# --------------------------------------------------------------------------------------------------
# Output


def _r(values, digits=4):
    return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


def face_record(face: dict) -> dict:
    """A tracked face (:meth:`asmnet_jax.tracking.Tracker.step`) -> its JSON object."""
    return {"id": face["id"], **face_json(face)}


def video_csv_columns(num_landmarks: int) -> list:
    """The columns of a video's ``predictions.csv``: ``frame, time, id``, then those of the photos'
    (:func:`asmnet_jax.predict.csv_columns`) after ``image, face``."""
    return ["frame", "time", "id"] + csv_columns(num_landmarks)[2:]


def _csv_rows(record: dict):
    for face in record["faces"]:
        yield face_csv_row(face, frame=record["frame"], time=record["time"], id=face["id"])


def draw_tracked(image: np.ndarray, faces) -> np.ndarray:
    """:func:`asmnet_jax.drawing.draw_faces` plus each face's id above its box."""
    out = draw_faces(image, faces)
    for face in faces:
        x0, y0 = (int(round(v)) for v in np.asarray(face["box"])[:2])
        scale = max(0.4, face["face_box"].side / 250)
        cv2.putText(out, f"#{face['id']}", (x0, max(0, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (240, 220, 40), max(1, round(scale * 2)), cv2.LINE_AA)
    return out


def annotated_path(out: str, name: str) -> str:
    """``OUT/<video name>.annotated.mp4`` (``camera-N`` for a camera)."""
    stem = os.path.splitext(os.path.basename(name))[0].replace(" ", "-") or "video"
    return os.path.join(out, stem + ".annotated.mp4")


# --------------------------------------------------------------------------------------------------
# The command


def predict_video(video: Optional[str], model, out: str, *, camera: Optional[int] = None,
                  batch_size: int = 16, box: Optional[Sequence[str]] = None,
                  detector: str = "auto", min_score: Optional[float] = None, flip: bool = False,
                  draw: bool = True, output_format: str = "json",
                  detect_every: int = tracking.DEFAULT_DETECT_EVERY,
                  min_track_score: float = tracking.DEFAULT_MIN_TRACK_SCORE, smooth: bool = True,
                  smooth_min_cutoff: float = tracking.DEFAULT_MIN_CUTOFF,
                  smooth_beta: float = tracking.DEFAULT_BETA,
                  smooth_shape_cutoff: float = tracking.DEFAULT_SHAPE_CUTOFF,
                  smooth_shape_beta: float = tracking.DEFAULT_SHAPE_BETA,
                  predict_motion: bool = True, max_frames: Optional[int] = None,
                  warn: Callable[[str], None] = lambda message: None) -> dict:
    """Tracks the faces of a video file (``video``) or a camera (``camera``); writes
    ``out/predictions.jsonl`` (or ``.csv``) and, with ``draw``, the annotated video; returns the
    summary.

    ``model``: a :class:`asmnet_jax.inference.LoadedModel` or a function returning one (called
    once the video opened and the detector is found). ``box``: ``"x0,y0,x1,y1"`` faces of the
    first frame (instead of the detector there). ``max_frames``: stop after this many frames.
    The other arguments are :func:`asmnet_jax.predict.predict_files`' and
    :class:`asmnet_jax.tracking.Tracker`'s.

    Raises :class:`PredictError` for bad input: a video that cannot be opened or has no frame, a
    camera that cannot be opened, a video that breaks off before the frame count it reports
    (after writing the frames read), and a run stopped with Ctrl-C (after closing the files).
    """
    start = time.perf_counter()
    check_format(output_format)
    if batch_size < 1:
        raise PredictError(f"--batch-size must be positive, got {batch_size}")
    if detect_every < 1:
        raise PredictError(f"--detect-every must be at least 1, got {detect_every}")
    for name, cutoff, beta in (("", smooth_min_cutoff, smooth_beta),
                               ("-shape", smooth_shape_cutoff, smooth_shape_beta)):
        if smooth and not (0 < cutoff < math.inf and 0 <= beta < math.inf):
            raise PredictError(f"--smooth{name}-{'cutoff' if name else 'min-cutoff'} must be > 0 "
                               f"and --smooth{name}-beta >= 0 (finite), got {cutoff:g} and "
                               f"{beta:g}")
    if max_frames is not None and max_frames < 1:
        raise PredictError(f"--max-frames must be at least 1, got {max_frames}")
    if detector not in ("auto", "none") and detector not in DETECTORS:
        choose_detector(detector)
    boxes = [parse_box(text) for text in box or []]
    if detector == "none" and not boxes:
        raise PredictError("a video needs a face detector or --box boxes of its first frame")

    source = VideoSource(video, camera)
    try:
        detector_name, detect, calibration = "none", None, GIVEN_BOXES
        if detector != "none":
            spec = choose_detector(detector)
            detector_name, calibration = spec.name, spec.calibration
            detect = spec.build(min_score)

        import jax

        loaded, predict, plausibility = load_predictor(model, flip)
        tracker = tracking.Tracker(
            predict, loaded.input_size, loaded.margin, detect=detect, calibration=calibration,
            detect_every=detect_every, min_track_score=min_track_score, smooth=smooth,
            min_cutoff=smooth_min_cutoff, beta=smooth_beta, shape_cutoff=smooth_shape_cutoff,
            shape_beta=smooth_shape_beta, predict_motion=predict_motion, initial_boxes=boxes,
            batch_size=batch_size, batch_multiple=jax.local_device_count(),
            plausibility=plausibility)
        os.makedirs(out, exist_ok=True)
        summary = _run(source, tracker, loaded, out, draw, output_format, max_frames, warn)
    finally:
        source.close()
    summary.update(detector=detector_name, model=loaded.path,
                   seconds=round(time.perf_counter() - start, 3))
    return summary


def _run(source: VideoSource, tracker: tracking.Tracker, loaded, out: str, draw: bool,
         output_format: str, max_frames: Optional[int], warn) -> dict:
    output_path = os.path.join(out, PREDICTIONS_CSV if output_format == "csv"
                               else PREDICTIONS_JSONL)
    drawing_path = annotated_path(out, source.name) if draw else None
    handle = open(output_path, "w", encoding="utf-8", newline="")
    writer = csv_writer = None
    frames = faces = no_face_frames = 0
    ids: set = set()
    interrupted = False
    try:
        if output_format == "csv":
            csv_writer = csv.DictWriter(handle, fieldnames=video_csv_columns(loaded.num_landmarks),
                                        restval="")
            csv_writer.writeheader()
            handle.flush()
        for index, stamp, image in source:
            found = tracker.step(image, index, stamp)
            record = {"frame": index, "time": round(stamp, 4),
                      "faces": [face_record(f) for f in found]}
            if csv_writer is not None:
                csv_writer.writerows(_csv_rows(record))
            else:
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            if drawing_path is not None:
                if writer is None:
                    height, width = image.shape[:2]
                    writer = cv2.VideoWriter(drawing_path, cv2.VideoWriter_fourcc(*"mp4v"),
                                             source.fps, (width, height))
                    if not writer.isOpened():
                        raise PredictError(f"{drawing_path}: cannot write the annotated video "
                                           "(OpenCV has no mp4v encoder here?); use --no-draw")
                writer.write(cv2.cvtColor(draw_tracked(image, found), cv2.COLOR_RGB2BGR))
            frames += 1
            faces += len(found)
            no_face_frames += not found
            ids.update(f["id"] for f in found)
            if max_frames is not None and frames >= max_frames:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        handle.close()
        if writer is not None:
            writer.release()
    kept = f"{output_path} holds the {frames} frames written"
    if interrupted:
        raise PredictError(f"{source.name}: interrupted after {frames} frames; {kept}")
    # (a container's frame count can be an estimate: a few frames short is no truncation)
    short = source.expected - frames
    if short > max(2, 0.05 * source.expected) and (max_frames is None or frames < max_frames):
        raise PredictError(f"{source.name}: truncated or unreadable after frame {frames} of the "
                           f"{source.expected} it reports; {kept}")
    if faces == 0:
        warn(f"{source.name}: no face found in {frames} frames")
    return {"video": source.name, "frames": frames, "fps": round(source.fps, 3), "faces": faces,
            "tracks": len(ids), "frames_without_faces": no_face_frames,
            "detections": tracker.detections, output_format: output_path,
            "annotated_video": drawing_path if drawing_path and frames else None}
