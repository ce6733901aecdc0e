"""``asmnet-predict``: landmarks and head pose of the faces in photos (:mod:`asmnet_jax.predict`).

    asmnet-predict photo.jpg                       # the shipped default model, a face detector
    asmnet-predict photos/ --model runs/x --out predictions --boxes boxes.json

Writes ``OUT/predictions.json`` and a drawing ``OUT/<image>.png`` per image; the last stdout line
is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys

from asmnet_jax.cli import (add_batch_size_argument, add_model_arguments, add_out_argument,
                            load_model, make_parser, run)
from asmnet_jax.inference import DEFAULT_MODEL
from asmnet_jax.detection import AUTO_ORDER, DETECTORS
from asmnet_jax.predict import IMAGE_EXTENSIONS, MAX_IMAGE_PIXELS, predict_files

PROG = "asmnet-predict"
DEFAULT_OUT = "predictions"
DEFAULT_BATCH_SIZE = 16


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Facial landmarks and head pose for the faces in photos. Writes "
                    "OUT/predictions.json and a drawing OUT/<image>.png per image; the last "
                    "stdout line is a JSON summary.",
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
    parser.add_argument("--min-score", type=float,
                        help="detector score threshold (default: the detector's)")
    parser.add_argument("--flip", action="store_true",
                        help="test-time flip averaging: each face is also predicted mirrored "
                             "left to right and the two predictions averaged")
    parser.add_argument("--no-draw", action="store_true", help="write the JSON only")
    parser.add_argument("--skip-bad", action="store_true",
                        help="report unreadable images instead of stopping at the first")
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _predict(args: argparse.Namespace) -> int:
    summary = predict_files(args.inputs, lambda: load_model(args), args.out,
                            batch_size=args.batch_size, boxes_file=args.boxes, box=args.box,
                            detector=args.detector, min_score=args.min_score, flip=args.flip,
                            draw=not args.no_draw, skip_bad=args.skip_bad, warn=_warn)
    print(json.dumps(summary))
    return 0


def main(argv=None) -> int:
    """``asmnet-predict``; returns the exit status."""
    return run(PROG, _predict, build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
