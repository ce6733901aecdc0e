"""asmnet-predict on a video: frames per second, landmark jitter and accuracy, per-frame detection
against tracking, with and without smoothing and drawing (issue 26, item 6).

    python -m experiments.bench_predict        # 640 x 480, 300 frames, 1 (fast, slow) and 3 faces
    python -m experiments.bench_predict --figure docs/predict_video_frame.jpg

The videos are made from one public-domain photo (scikit-image's ``astronaut``, Eileen Collins,
NASA: ``skimage.data.astronaut()`` when scikit-image is installed, else the copy in
``experiments/data/astronaut.jpg``, or ``--photo``) moved by a known affine transform per frame:
shifts, zoom and rotation along smooth sinusoids. "one" is the whole photo moved in the frame
(the face up to about 200 pixels a second at 640 x 480); "one-slow" the same path 4 times slower;
"three" pastes three smaller copies of its face (feathered discs), each on its own path. As the
photo is still, the prediction on the photo itself (detector box, :mod:`asmnet_jax.predict`) mapped
through a frame's known transform is that frame's reference ("ground truth" of a still photo).

Each condition runs :func:`asmnet_jax.video.predict_video` in this process on the video file, as
``asmnet-predict VIDEO`` does (JSON lines written; the annotated video too with drawing):

* ``detect every frame``: ``--detect-every 1`` (the detector's box for every frame: per-frame
  prediction); ``tracking``: the default K (crops from the previous frame's landmarks);
* smoothing on (One Euro, the defaults) or off (``--no-smooth``); drawing on or off
  (``--no-draw``).

Speed: the frames' wall time is stamped as the video reader hands out each frame, so a frame's
time covers reading, detection, prediction, smoothing, the JSON line and (with drawing) drawing
and encoding. ``fps`` is over the frames after the first ``--warmup`` (compilation and the first
detection excluded); ``ms`` its median and 95th percentile per frame.

Accuracy, per face and frame (a prediction is matched to the nearest reference face):

* ``jitter %``: each frame's predicted landmarks are mapped back into the photo's coordinates by
  the inverse of the frame's known transform (undoing the motion); jitter is the mean over
  consecutive frame pairs and points of ``|p_t - p_(t-1)|``, divided by the inter-ocular distance
  (outer eye corners 36 and 45) of the reference in the photo, in %. A perfectly still prediction
  has 0.
* ``roughness %``: the same with the second difference ``|p_t - (p_(t-1) + p_(t+1)) / 2|``: the
  wobble without the smooth drift that a filter's lag under motion adds to the jitter (a lagging
  prediction, mapped back with the true motion, moves in the photo).
* ``NME %``: the mean point error against the reference mapped into the frame, divided by the
  reference's inter-ocular distance in the frame, in %. Lag under motion shows here.

Writes ``--out``.json and .md (default ``experiments/results/bench_predict``), with ``--figure``
one annotated frame (JPEG, at most 100 KB) of the tracking run with drawing; prints the Markdown
table and a last line of JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import cv2
import numpy as np

from experiments.common import ROOT, write_json, write_text

OUTER_EYES = (36, 45)
PHOTO_COPY = os.path.join(ROOT, "experiments", "data", "astronaut.jpg")
#: How many times slower the motion of the ``-slow`` videos is.
SLOW = 4.0
#: Which run's annotated video gives the figure: (video, mode); its first run with drawing.
FIGURE_RUN = ("three", "tracking")


# --------------------------------------------------------------------------------------------------
# Geometry and the measures


def affine(scale: float, angle_deg: float, centre_from, centre_to) -> np.ndarray:
    """(2, 3) matrix: rotate by ``angle_deg`` (counter-clockwise on screen) and scale by ``scale``
    about ``centre_from`` (photo pixels), which lands at ``centre_to`` (frame pixels)."""
    a = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    shift = np.asarray(centre_to, np.float64) - rot @ np.asarray(centre_from, np.float64)
    return np.concatenate([rot, shift[:, None]], axis=1)


def apply(matrix: np.ndarray, points) -> np.ndarray:
    """Points (..., 2) through a (2, 3) affine matrix."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def inter_ocular(points) -> float:
    points = np.asarray(points, np.float64)
    return float(np.linalg.norm(points[OUTER_EYES[0]] - points[OUTER_EYES[1]]))


def nme_percent(predicted, reference) -> float:
    """Mean point distance / the reference's outer-eye-corner distance, in %."""
    predicted, reference = np.asarray(predicted, np.float64), np.asarray(reference, np.float64)
    return 100.0 * float(np.linalg.norm(predicted - reference, axis=-1).mean()
                         / inter_ocular(reference))


def jitter_percent(predicted: Sequence[Optional[np.ndarray]], matrices: Sequence[np.ndarray],
                   photo_reference) -> float:
    """The frame-to-frame wobble left after undoing the known motion, in % of the inter-ocular
    distance of ``photo_reference`` (the landmarks in the photo): each frame's ``predicted``
    landmarks (n, 2) frame pixels, or None where the face was missed, are mapped into the photo by
    the inverse of that frame's ``matrices`` (photo -> frame); the mean over the pairs of
    consecutive frames with both predictions, and over points, of the distance moved. NaN when no
    such pair."""
    moves, previous = [], None
    for points, matrix in zip(predicted, matrices):
        current = None if points is None else apply(invert(matrix), points)
        if current is not None and previous is not None:
            moves.append(np.linalg.norm(current - previous, axis=-1).mean())
        previous = current
    if not moves:
        return float("nan")
    return 100.0 * float(np.mean(moves)) / inter_ocular(photo_reference)


def roughness_percent(predicted: Sequence[Optional[np.ndarray]], matrices: Sequence[np.ndarray],
                      photo_reference) -> float:
    """Like :func:`jitter_percent`, but of ``|p_t - (p_(t-1) + p_(t+1)) / 2|`` over the runs of
    three consecutive frames with predictions: the wobble that a smooth drift (a filter's lag
    under motion, undone with the motion's exact transform) does not count. NaN when no run."""
    back = [None if p is None else apply(invert(m), p) for p, m in zip(predicted, matrices)]
    moves = [np.linalg.norm(b - (a + c) / 2, axis=-1).mean()
             for a, b, c in zip(back, back[1:], back[2:])
             if a is not None and b is not None and c is not None]
    if not moves:
        return float("nan")
    return 100.0 * float(np.mean(moves)) / inter_ocular(photo_reference)


def match_faces(faces: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> List:
    """For each reference face (n, 2), the predicted face (n, 2) nearest it (mean point distance
    under one inter-ocular distance, each prediction used once), or None."""
    out: List = [None] * len(references)
    if not faces:
        return out
    cost = np.array([[np.linalg.norm(np.asarray(f) - r, axis=-1).mean() / inter_ocular(r)
                      for f in faces] for r in references])
    used = set()
    for flat in np.argsort(cost, axis=None):
        i, j = np.unravel_index(flat, cost.shape)
        if cost[i, j] >= 1.0:
            break
        if out[i] is None and j not in used:
            out[i] = np.asarray(faces[j], np.float64)
            used.add(j)
    return out


# --------------------------------------------------------------------------------------------------
# The videos


def load_photo(path: Optional[str] = None) -> tuple:
    """(the photo (H, W, 3) uint8 RGB, where it came from)."""
    if path:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"bench_predict: error: {path}: not a readable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), path
    try:
        from skimage import data

        return np.ascontiguousarray(data.astronaut()[..., :3]), "skimage.data.astronaut()"
    except ImportError:
        image = cv2.imread(PHOTO_COPY, cv2.IMREAD_COLOR)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), os.path.relpath(PHOTO_COPY, ROOT)


def paths(kind: str, frames: int, width: int, height: int, face_centre, face_size: float
          ) -> List[List[np.ndarray]]:
    """Per face copy, the (2, 3) photo -> frame matrix of each frame: smooth sinusoids of shift
    (about a fifth of the frame for one face), zoom (+-15 %) and rotation (+-10 degrees).
    ``face_size``: the face's inter-ocular distance in the photo."""
    fps = 30.0 * (SLOW if kind.endswith("-slow") else 1.0)  # motion time runs SLOW x slower
    if kind.startswith("one"):
        base = 0.3 * height / (2.2 * face_size)
        layout = [((0.5, 0.5), base, (0.2, 0.12), 0.0)]
    else:
        base = 0.3 * height / (3.4 * face_size)
        layout = [((0.2, 0.35), base, (0.06, 0.08), 0.0),
                  ((0.5, 0.65), 0.85 * base, (0.07, 0.06), 2.1),
                  ((0.8, 0.38), 1.1 * base, (0.05, 0.07), 4.2)]
    out = []
    for (cx, cy), scale, (ax, ay), phase in layout:
        matrices = []
        for t in range(frames):
            s = t / fps
            to = (width * (cx + ax * math.sin(2 * math.pi * s / 4.0 + phase)),
                  height * (cy + ay * math.sin(2 * math.pi * s / 3.1 + 1.3 * phase)))
            zoom = scale * (1 + 0.15 * math.sin(2 * math.pi * s / 5.3 + phase))
            angle = 10.0 * math.sin(2 * math.pi * s / 3.7 + 0.7 * phase)
            matrices.append(affine(zoom, angle, face_centre, to))
        out.append(matrices)
    return out


def render(photo: np.ndarray, kind: str, matrices: Sequence[np.ndarray], width: int, height: int,
           face_centre, face_size: float) -> np.ndarray:
    """One frame (H, W, 3) uint8 RGB: the photo warped by the one matrix ("one"), or each copy's
    face disc warped by its matrix over a plain background ("three")."""
    if kind.startswith("one"):
        return cv2.warpAffine(photo, matrices[0], (width, height), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    frame = np.full((height, width, 3), 70, np.float32)
    h, w = photo.shape[:2]
    mask = np.zeros((h, w), np.float32)
    cv2.circle(mask, tuple(int(round(v)) for v in face_centre), int(2.0 * face_size), 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.15 * face_size)
    for matrix in matrices:
        warped = cv2.warpAffine(photo, matrix, (width, height), flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_LINEAR)[..., None]
        frame = frame * (1 - alpha) + warped.astype(np.float32) * alpha
    return np.clip(frame + 0.5, 0, 255).astype(np.uint8)


def write_video(path: str, photo, kind, copies, width, height, face_centre, face_size,
                fps: float = 30.0) -> None:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit("bench_predict: error: OpenCV cannot write mp4v videos here")
    try:
        for t in range(len(copies[0])):
            frame = render(photo, kind, [c[t] for c in copies], width, height, face_centre,
                           face_size)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


# --------------------------------------------------------------------------------------------------
# The runs


def reference_face(photo, loaded, detector: str):
    """The prediction on the still photo: (landmarks (n, 2) photo pixels, detector box) of its
    highest-scoring face."""
    from asmnet_jax import inference
    from asmnet_jax import predict as P
    from asmnet_jax.detection import GIVEN_BOXES, choose_detector

    detect, calibration = None, GIVEN_BOXES
    if detector != "none":
        spec = choose_detector(detector)
        detect, calibration = spec.build(None), spec.calibration
    result = next(iter(P.predict_images(
        [P.ImageInput("photo", "photo")], inference.make_predictor(loaded), loaded.input_size,
        loaded.margin, 1, detect=detect, calibration=calibration, read=lambda _: photo)))
    if not result.faces:
        raise SystemExit("bench_predict: error: the detector finds no face in the photo")
    face = max(result.faces, key=lambda f: -1 if f["score"] is None else f["score"])
    return np.asarray(face["landmarks"], np.float64), np.asarray(face["box"], np.float64)


def timed_run(video_path: str, loaded, out: str, *, detect_every: int, smooth: bool, draw: bool,
              detector: str, box=None, min_cutoff: Optional[float] = None,
              beta: Optional[float] = None, predict_motion: bool = True) -> tuple:
    """:func:`asmnet_jax.video.predict_video` with a stamp (``perf_counter``) as each frame is
    handed out and one at the end; returns (summary, stamps, the JSON lines)."""
    from asmnet_jax import tracking
    from asmnet_jax import video as V

    stamps: List[float] = []

    class StampedSource(V.VideoSource):
        def __iter__(self):
            for item in super().__iter__():
                stamps.append(time.perf_counter())
                yield item
            stamps.append(time.perf_counter())

    original = V.VideoSource
    V.VideoSource = StampedSource
    try:
        summary = V.predict_video(video_path, loaded, out, detect_every=detect_every,
                                  smooth=smooth, draw=draw, detector=detector, box=box,
                                  smooth_min_cutoff=(tracking.DEFAULT_MIN_CUTOFF
                                                     if min_cutoff is None else min_cutoff),
                                  smooth_beta=tracking.DEFAULT_BETA if beta is None else beta,
                                  predict_motion=predict_motion)
    finally:
        V.VideoSource = original
    with open(summary["json"]) as f:
        lines = [json.loads(line) for line in f]
    return summary, stamps, lines


def speed(stamps: Sequence[float], warmup: int) -> dict:
    per_frame = np.diff(np.asarray(stamps, np.float64))[warmup:]
    if not len(per_frame):
        return {"fps": float("nan"), "ms_median": float("nan"), "ms_p95": float("nan")}
    return {"fps": float(len(per_frame) / per_frame.sum()),
            "ms_median": float(1000 * np.median(per_frame)),
            "ms_p95": float(1000 * np.percentile(per_frame, 95)),
            "startup_s": float(stamps[min(warmup, len(stamps) - 1)] - stamps[0])}


def accuracy(lines, copies, photo_reference, skip: int) -> dict:
    """Jitter and NME (%) over the faces and the frames from ``skip`` on; missed faces, extra
    predictions and the track ids used."""
    per_copy: List[List] = [[] for _ in copies]
    errors, missed, extra, ids = [], 0, 0, set()
    for record in lines:
        t = record["frame"]
        faces = [np.asarray(f["landmarks"], np.float64) for f in record["faces"]]
        ids.update(f["id"] for f in record["faces"])
        references = [apply(c[t], photo_reference) for c in copies]
        matched = match_faces(faces, references)
        extra += len(faces) - sum(m is not None for m in matched)
        for k, (points, reference) in enumerate(zip(matched, references)):
            if t < skip:
                continue
            per_copy[k].append((points, copies[k][t]))
            if points is None:
                missed += 1
            else:
                errors.append(nme_percent(points, reference))
    jitters = [jitter_percent([p for p, _ in pairs], [m for _, m in pairs], photo_reference)
               for pairs in per_copy]
    rough = [roughness_percent([p for p, _ in pairs], [m for _, m in pairs], photo_reference)
             for pairs in per_copy]
    return {"jitter_pct": float(np.nanmean(jitters)) if jitters else float("nan"),
            "roughness_pct": float(np.nanmean(rough)) if rough else float("nan"),
            "nme_pct": float(np.mean(errors)) if errors else float("nan"),
            "missed": missed, "extra": extra, "tracks": len(ids)}


#: Tracking without moving the crop on by the last frame's motion (the Tracker's predict_motion).
NO_MOTION = "tracking, crop not moved on"
CONDITIONS = [  # (mode, detect_every: None = the default K, smooth, draw, smoothing: None = the
    # defaults, "alt" = --alt-smooth)
    ("detect every frame", 1, False, False, None),
    ("detect every frame", 1, False, True, None),
    ("detect every frame", 1, True, False, None),
    ("tracking", None, False, False, None),
    ("tracking", None, True, False, None),
    ("tracking", None, True, True, None),
    ("tracking", None, False, True, None),
    ("tracking", None, True, False, "alt"),
    (NO_MOTION, None, False, False, None),
]


def save_figure(annotated: str, frame_index: int, path: str, limit: int = 100_000) -> int:
    """Frame ``frame_index`` of the annotated video as a JPEG of at most ``limit`` bytes."""
    capture = cv2.VideoCapture(annotated)
    capture.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
    ok, frame = capture.read()
    capture.release()
    if not ok:
        raise SystemExit(f"bench_predict: error: cannot read frame {frame_index} of {annotated}")
    for quality in range(90, 30, -5):
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if len(data) <= limit:
            break
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.tobytes())
    return len(data)


def _fmt(value, digits):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _smoothing(row: dict, header: dict) -> str:
    if not row["smooth"]:
        return "off"
    params = (row["smooth_min_cutoff"], row["smooth_beta"])
    default = (header["smooth_min_cutoff"], header["smooth_beta"])
    return "on" if params == default else f"on ({params[0]:g} Hz, {params[1]:g})"


def markdown(rows: Sequence[dict], header: dict) -> str:
    lines = [f"# asmnet-predict on video ({header['width']} x {header['height']}, "
             f"{header['frames']} frames, {header['date']})", "",
             f"Model `{header['model']}`, detector {header['detector']}, {header['cpu_count']} "
             f"CPUs; tracking detects every {header['detect_every']} frames; smoothing \"on\": One "
             f"Euro at {header['smooth_min_cutoff']:g} Hz, beta {header['smooth_beta']:g} (the "
             f"defaults). fps over frames "
             f"{header['warmup']}+; jitter and NME in % of the inter-ocular distance "
             f"(see experiments/bench_predict.py). Photo: {header['photo']}; load average at "
             f"the start: {header['load_average_at_start']}.", "",
             f"Command: `{header['command']}`", "",
             "| video | mode | smoothing | drawing | fps | ms/frame (median, p95) | detections | "
             "jitter % | roughness % | NME % | missed | tracks |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['video']} | {r['mode']} | {_smoothing(r, header)} | "
            f"{'on' if r['draw'] else 'off'} | {_fmt(r['fps'], 1)} | "
            f"{_fmt(r['ms_median'], 1)}, {_fmt(r['ms_p95'], 1)} | {r['detections']} | "
            f"{_fmt(r['jitter_pct'], 3)} | {_fmt(r['roughness_pct'], 3)} | "
            f"{_fmt(r['nme_pct'], 2)} | {r['missed']} | "
            f"{r['tracks']} |")
    return "\n".join(lines) + "\n"


def _row(rows, video, mode, smooth, draw, alt=False):
    """The row of a condition; ``alt``: smoothing other than the defaults."""
    from asmnet_jax import tracking

    default = (tracking.DEFAULT_MIN_CUTOFF, tracking.DEFAULT_BETA)
    for r in rows:
        if (r["video"], r["mode"], r["smooth"], r["draw"]) != (video, mode, smooth, draw):
            continue
        if not smooth or ((r["smooth_min_cutoff"], r["smooth_beta"]) != default) == alt:
            return r
    return None


def targets(rows: Sequence[dict], video: str = "one") -> dict:
    """Issue 26's targets on ``video``: tracking one face >= 60 fps without drawing, >= 30 with
    the annotated video; tracking's (smoothed) jitter <= half of per-frame prediction's (detector
    every frame, no smoothing) and its NME within 0.4 points of it. None where a row is missing."""
    base = _row(rows, video, "detect every frame", False, False)
    out = {}
    for name, smooth, alt in (("tracking", True, False), ("tracking_alt_smooth", True, True),
                              ("tracking_no_smooth", False, False)):
        plain = _row(rows, video, "tracking", smooth, False, alt)
        drawn = _row(rows, video, "tracking", smooth, True, alt)
        entry = {}
        if plain is not None:
            entry["fps_no_draw_ge_60"] = plain["fps"] >= 60
            if base is not None:
                entry["jitter_le_half_per_frame"] = plain["jitter_pct"] <= base["jitter_pct"] / 2
                entry["nme_within_0.4_of_per_frame"] = plain["nme_pct"] <= base["nme_pct"] + 0.4
        if drawn is not None:
            entry["fps_draw_ge_30"] = drawn["fps"] >= 30
        if entry:
            out[name] = entry
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="asmnet-predict --model (default its own)")
    parser.add_argument("--detector", default="auto", help="asmnet-predict --detector")
    parser.add_argument("--photo", default=None, help="the photo (default: the astronaut)")
    parser.add_argument("--frames", type=int, default=300, help="frames a video (30 per second)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--warmup", type=int, default=10,
                        help="frames left out of the speed (compilation, first detection)")
    parser.add_argument("--videos", default="one,one-slow,three",
                        help="which videos: one (a face), one-slow (its motion 4 x slower), "
                             "three (faces); default all")
    parser.add_argument("--conditions", default=None,
                        help="indices into the condition list (default all), e.g. 0,4")
    parser.add_argument("--out", default=os.path.join(ROOT, "experiments", "results",
                                                      "bench_predict"),
                        help="writes OUT.json and OUT.md")
    parser.add_argument("--figure", default=None,
                        help="write one annotated frame of the tracking run with drawing here")
    parser.add_argument("--alt-smooth", default="1.0,64", metavar="MIN_CUTOFF,BETA",
                        help="--smooth-min-cutoff and --smooth-beta of the condition with other "
                             "smoothing than the defaults (tracking; default 1.0,64: less lag, "
                             "more jitter)")
    args = parser.parse_args(argv)
    alt = tuple(float(v) for v in args.alt_smooth.split(","))
    if len(alt) != 2:
        parser.error("--alt-smooth takes MIN_CUTOFF,BETA")

    load = os.getloadavg()
    import jax

    from asmnet_jax import inference, tracking

    loaded = inference.load(args.model or inference.DEFAULT_MODEL)
    photo, photo_source = load_photo(args.photo)
    reference, reference_box = reference_face(photo, loaded, args.detector)
    face_size = inter_ocular(reference)
    face_centre = reference.mean(axis=0)
    conditions = (CONDITIONS if args.conditions is None
                  else [CONDITIONS[int(i)] for i in args.conditions.split(",")])
    kinds = [k for k in args.videos.split(",") if k]
    rows, figure = [], None
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        for kind in kinds:
            copies = paths(kind, args.frames, args.width, args.height, face_centre, face_size)
            video_path = os.path.join(tmp, f"{kind}.mp4")
            write_video(video_path, photo, kind, copies, args.width, args.height, face_centre,
                        face_size)
            for number, (mode, every, smooth, draw, params) in enumerate(conditions):
                every = tracking.DEFAULT_DETECT_EVERY if every is None else every
                min_cutoff, beta = ((tracking.DEFAULT_MIN_CUTOFF, tracking.DEFAULT_BETA)
                                    if params is None else alt)
                out = os.path.join(tmp, f"{kind}-{number}")
                summary, stamps, lines = timed_run(video_path, loaded, out, detect_every=every,
                                                   smooth=smooth, draw=draw,
                                                   detector=args.detector, min_cutoff=min_cutoff,
                                                   beta=beta, predict_motion=mode != NO_MOTION)
                row = {"video": kind, "faces": len(copies), "mode": mode, "detect_every": every,
                       "smooth": smooth, "draw": draw,
                       "smooth_min_cutoff": min_cutoff if smooth else None,
                       "smooth_beta": beta if smooth else None, "frames": summary["frames"],
                       "detections": summary["detections"], **speed(stamps, args.warmup),
                       **accuracy(lines, copies, reference, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                figure_kind = FIGURE_RUN[0] if FIGURE_RUN[0] in kinds else kinds[-1]
                if (args.figure and figure is None and draw and mode == FIGURE_RUN[1]
                        and kind == figure_kind):
                    size = save_figure(summary["annotated_video"], args.frames // 2, args.figure)
                    figure = {"path": os.path.relpath(os.path.abspath(args.figure), ROOT),
                              "video": kind, "frame": args.frames // 2, "bytes": size}
    header = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "model": args.model or inference.DEFAULT_MODEL, "detector": args.detector,
              "photo": photo_source, "width": args.width, "height": args.height,
              "frames": args.frames, "warmup": args.warmup, "cpu_count": os.cpu_count(),
              "platform": jax.default_backend(), "detect_every": tracking.DEFAULT_DETECT_EVERY,
              "smooth_min_cutoff": tracking.DEFAULT_MIN_CUTOFF,
              "smooth_beta": tracking.DEFAULT_BETA,
              "load_average_at_start": [round(v, 2) for v in load],
              "reference_box": [round(float(v), 2) for v in reference_box],
              "reference_inter_ocular_px": round(face_size, 2),
              "command": "python -m experiments.bench_predict " + " ".join(
                  sys.argv[1:] if argv is None else argv)}
    table = markdown(rows, header)
    goals = {video: targets(rows, video) for video in kinds if video.startswith("one")}
    table += "\nIssue 26's targets (one face): " + json.dumps(goals) + "\n"
    print(table)
    payload = {**header, "rows": rows, "targets": goals, "figure": figure}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json(args.out + ".json", payload)
        write_text(args.out + ".md", table)
    print(json.dumps({"rows": rows, "targets": goals, "figure": figure, "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
