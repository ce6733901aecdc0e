"""``asmnet-predict``: landmarks and head pose of the faces in photos (:mod:`asmnet_jax.predict`).

    asmnet-predict photo.jpg                       # the shipped default model, a face detector
    asmnet-predict photos/ --model runs/x --out predictions --boxes boxes.json
    asmnet-predict clip.mp4                        # a video: tracked faces, one JSON line a frame
    asmnet-predict --webcam 0 --max-frames 300     # a camera

Writes ``OUT/predictions.json`` (``--format csv``: ``OUT/predictions.csv``, a row a face) and a
drawing ``OUT/<image>.png`` per image; the last stdout line is a JSON summary. A video (by its
ending, or ``--video``) or ``--webcam N`` goes to :func:`asmnet_jax.video.predict_video` instead:
``OUT/predictions.jsonl`` (or ``.csv``) and ``OUT/<video>.annotated.mp4``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from asmnet_jax.cli import (add_batch_size_argument, add_model_arguments, add_out_argument,
                            check_output_dir, load_model, make_parser, run)
from asmnet_jax.inference import DEFAULT_MODEL
from asmnet_jax.detection import AUTO_ORDER, DETECTORS, choose_detector
from asmnet_jax.errors import PredictError
from asmnet_jax import tracking
from asmnet_jax.predict import (IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, OUTPUT_FORMATS, check_format,
                                predict_files)
from asmnet_jax.video import VIDEO_EXTENSIONS, is_video, predict_video

PROG = "asmnet-predict"
DEFAULT_OUT = "predictions"
DEFAULT_BATCH_SIZE = 16


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Facial landmarks and head pose for the faces in photos. Writes "
                    "OUT/predictions.json (or .csv) and a drawing OUT/<image>.png per image; "
                    "the last stdout line is a JSON summary.",
        epilog="Coordinates are 0-based pixels of the original image (pixel centres at "
               "integers); angles are degrees: +yaw face toward the image right, +pitch chin up, "
               f"+roll clockwise. Images of more than {MAX_IMAGE_PIXELS // 10**6} megapixels "
               "are refused (downscale them first). The default model, "
               f"{DEFAULT_MODEL}, is ASMNet trained on 300W faces: for non-commercial research "
               "only.")
    parser.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR",
                        help="image files and directories (walked recursively for "
                             + "/".join(e[1:] for e in IMAGE_EXTENSIONS) + " files), or one "
                             "video file (" + "/".join(e[1:] for e in VIDEO_EXTENSIONS)
                             + ", or any with --video)")
    add_model_arguments(parser, default=DEFAULT_MODEL)
    add_out_argument(parser, "where predictions.json and the drawings go (default: "
                             f"{DEFAULT_OUT})", default=DEFAULT_OUT)
    add_batch_size_argument(parser, DEFAULT_BATCH_SIZE, "faces per model call")
    parser.add_argument("--boxes", metavar="FILE.json",
                        help="face boxes {image: [[x_min, y_min, x_max, y_max], ...]} (pixels, the "
                             "landmarks' bounding box); keys are image paths or file names")
    parser.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1",
                        help="a face box for the single input image (repeatable)")
    parser.add_argument("--detector", default="auto",
                        help="face detector for images without given boxes: auto, none, or one of "
                             + ", ".join(sorted(DETECTORS)) + " (default auto: "
                             + " else ".join(AUTO_ORDER) + ")")
    parser.add_argument("--min-score", type=float, metavar="S",
                        help="detector score threshold (default: the detector's): a probability "
                             "in [0, 1] for the blazeface detectors, the number of merged "
                             "neighbour detections (at least 1) for haar")
    parser.add_argument("--flip", action="store_true",
                        help="test-time flip averaging: each face is also predicted mirrored "
                             "left to right and the two predictions averaged")
    parser.add_argument("--format", default="json", metavar="|".join(OUTPUT_FORMATS),
                        help="json (default): OUT/predictions.json, every image and its faces; "
                             "csv: OUT/predictions.csv, one row a face with named columns (image, "
                             "face, box_x0..box_y1, box_source, score (the detector's), "
                             "shape_score, asm_residual, asm_mahalanobis, yaw, pitch, roll, x0, "
                             "y0, ...)")
    parser.add_argument("--no-draw", action="store_true",
                        help="write predictions.json / .csv only")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report unreadable images instead of stopping at the first")
    video = parser.add_argument_group(
        "video", "A video file or a camera is read frame by frame; faces are tracked (ids kept "
                 "across frames) and smoothed. Output: OUT/predictions.jsonl, one JSON line a "
                 "frame (frame, time in s, faces with id, box, landmarks, yaw/pitch/roll, score, "
                 "shape_score), or with --format csv OUT/predictions.csv (a row a frame and face), "
                 "and unless --no-draw OUT/<video>.annotated.mp4. --box gives the faces of the "
                 "first frame.")
    video.add_argument("--video", action="store_true",
                       help="take the single input as a video whatever its ending")
    video.add_argument("--webcam", type=int, metavar="N",
                       help="read camera N (OpenCV's index, 0: the first) instead of a file; "
                            "stop with Ctrl-C or --max-frames")
    video.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    video.add_argument("--detect-every", type=int, default=tracking.DEFAULT_DETECT_EVERY,
                       metavar="K",
                       help="run the face detector every K frames (default "
                            f"{tracking.DEFAULT_DETECT_EVERY}); in between, a face's crop comes "
                            "from its previous landmarks. It also runs on the first frame and "
                            "after a frame with a lost track, no face or a low shape_score")
    video.add_argument("--min-track-score", type=float,
                       default=tracking.DEFAULT_MIN_TRACK_SCORE, metavar="S",
                       help="a track whose shape_score falls below S (models with a shape model) "
                            "makes the detector run on the next frame (default "
                            f"{tracking.DEFAULT_MIN_TRACK_SCORE})")
    video.add_argument("--no-smooth", action="store_true",
                       help="output the raw landmarks and pose of each frame (default: smoothed "
                            "over time per face by One Euro filters, the face's motion and its "
                            "shape apart)")
    video.add_argument("--smooth-min-cutoff", type=float, default=tracking.DEFAULT_MIN_CUTOFF,
                       metavar="HZ",
                       help="the face's motion (centre, scale, angle): the One Euro cutoff at "
                            f"rest, in Hz (default {tracking.DEFAULT_MIN_CUTOFF:g}); lower: less "
                            "jitter when the face is still, more lag")
    video.add_argument("--smooth-beta", type=float, default=tracking.DEFAULT_BETA, metavar="B",
                       help="the face's motion: how fast the cutoff rises with speed, in Hz per "
                            "face unit (the radius of its landmarks) per second (default "
                            f"{tracking.DEFAULT_BETA:g}); higher: less lag when the face moves, "
                            "more jitter")
    video.add_argument("--smooth-shape-cutoff", type=float, default=tracking.DEFAULT_SHAPE_CUTOFF,
                       metavar="HZ",
                       help="the face's shape in its own frame (expression): the One Euro cutoff "
                            f"at rest, in Hz (default {tracking.DEFAULT_SHAPE_CUTOFF:g})")
    video.add_argument("--smooth-shape-beta", type=float, default=tracking.DEFAULT_SHAPE_BETA,
                       metavar="B",
                       help="the face's shape: how fast its cutoff rises with the speed of an "
                            f"expression change, per face unit per second (default "
                            f"{tracking.DEFAULT_SHAPE_BETA:g})")
    return parser


def _min_score_problem(min_score: float, detector: str):
    """Why ``--min-score`` is out of the range of the scores of ``detector`` (``auto``: the one it
    picks here), so that it would pass no face or every candidate; None when it is in range."""
    if not math.isfinite(min_score) or min_score < 0:
        return "is not a finite number >= 0"
    if detector == "auto":
        try:
            detector = choose_detector("auto").name
        except PredictError:
            return None  # no detector runs here: the run says so where a face needs one
    if detector.startswith("blazeface") and min_score > 1:
        return f"is not in [0, 1]: the scores of the {detector} detector are probabilities"
    if detector == "haar" and min_score < 1:
        return ("is below 1: the score of the haar detector is the number of merged neighbour "
                "detections (OpenCV's minNeighbors, default 5)")
    return None


def check_options(args: argparse.Namespace) -> None:
    """Refuses option values out of range before any work (the model is not loaded yet):
    :class:`PredictError`, one line and exit status 1 like the other bad values."""
    check_format(args.format)
    if args.min_score is not None:
        problem = _min_score_problem(args.min_score, args.detector)
        if problem:
            raise PredictError(f"--min-score {args.min_score:g} {problem}")
    check_output_dir("--out", args.out)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _video_input(args: argparse.Namespace):
    """The video to read (a path, or None for ``--webcam``), or False for photos."""
    videos = [p for p in args.inputs if args.video or is_video(p)]
    if args.webcam is None and not videos:
        if not args.inputs:
            raise PredictError("give image files, directories, a video file or --webcam N")
        return False
    if args.webcam is not None and args.inputs:
        raise PredictError("--webcam reads a camera: give no input files with it")
    if args.webcam is None and len(args.inputs) != 1:
        raise PredictError(f"a video is read on its own: got {len(args.inputs)} inputs with "
                           f"{videos[0]}")
    for flag, value in (("--boxes", args.boxes), ("--skip-bad", args.skip_bad)):
        if value:
            raise PredictError(f"{flag} is for photos; for a video use --box (its first frame)")
    return None if args.webcam is not None else args.inputs[0]


def _predict(args: argparse.Namespace) -> int:
    check_options(args)
    video = _video_input(args)
    if video is not False:
        summary = predict_video(
            video, lambda: load_model(args), args.out, camera=args.webcam,
            batch_size=args.batch_size, box=args.box, detector=args.detector,
            min_score=args.min_score, flip=args.flip, draw=not args.no_draw,
            output_format=args.format, detect_every=args.detect_every,
            min_track_score=args.min_track_score, smooth=not args.no_smooth,
            smooth_min_cutoff=args.smooth_min_cutoff, smooth_beta=args.smooth_beta,
            smooth_shape_cutoff=args.smooth_shape_cutoff,
            smooth_shape_beta=args.smooth_shape_beta, max_frames=args.max_frames, warn=_warn)
        print(json.dumps(summary))
        return 0
    summary = predict_files(args.inputs, lambda: load_model(args), args.out,
                            batch_size=args.batch_size, boxes_file=args.boxes, box=args.box,
                            detector=args.detector, min_score=args.min_score, flip=args.flip,
                            draw=not args.no_draw, skip_bad=args.skip_bad, warn=_warn,
                            output_format=args.format)
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    """``asmnet-predict``; returns the exit status."""
    return run(PROG, _predict, build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
