"""``asmnet-predict``: landmarks and head pose of the faces in photos (:mod:`asmnet_jax.predict`).

    asmnet-predict photo.jpg                       # the shipped default model, a face detector
    asmnet-predict photos/ --model runs/x --out predictions --boxes boxes.json

Writes ``OUT/predictions.json`` (``--format csv``: ``OUT/predictions.csv``, a row a face) and a
drawing ``OUT/<image>.png`` per image; the last stdout line is a JSON summary.
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
from asmnet_jax.predict import (IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, OUTPUT_FORMATS, check_format,
                                predict_files)

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
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                        help="image files and directories (walked recursively for "
                             + "/".join(e[1:] for e in IMAGE_EXTENSIONS) + " files)")
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


def _predict(args: argparse.Namespace) -> int:
    check_options(args)
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
