"""``asmnet-eval``: a trained model's NME, failure rate, AUC, CED and pose MAE on dataset splits.

    asmnet-eval --model runs/asmnet_300w          # best checkpoint; common, challenging, full
    asmnet-eval --model runs/x --which latest --split validation test
    asmnet-eval --model runs/x/checkpoints/3000 --split common,challenging
    asmnet-eval --model models/authors_wflw --dataset wflw --data-dir ~/tensorflow_datasets

Prints the report (markdown), then the results JSON as the last line; the files written to
``--out`` are described in :mod:`asmnet_jax.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

from asmnet_jax import metrics
from asmnet_jax.cli import (add_batch_size_argument, add_model_arguments, add_out_argument,
                            check_output_dir, load_model, make_parser, quiet_logs, run)
from asmnet_jax.errors import EvalError
from asmnet_jax.evaluate import DATASETS, DEFAULT_BATCH_SIZE
from asmnet_jax.reports import GRID_FACES

PROG = "asmnet-eval"


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG, description="Evaluates a model: NME, failure rate, AUC, CED and pose MAE "
        "per split, with paper-style tables, plots and per-face results.")
    add_model_arguments(parser)
    add_out_argument(parser, "output directory (default WORKDIR/eval/STEP, or ./eval_NAME for a "
                             "model directory)")
    add_batch_size_argument(parser, DEFAULT_BATCH_SIZE,
                            "faces per step, a multiple of the local device count")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="default: the run's config.json (required for a model directory "
                             "without one)")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the run's data_dir, "
                                           "else TFDS's)")
    parser.add_argument("--tfds-config", help="TFDS builder config (synthetic_faces: default, "
                                              "small, wflw98; wflw: default, detection)")
    parser.add_argument("--arrays-dir", help="read the splits from the .npz exports of "
                                             "asmnet-build-data --npz (DIR/DATASET/SPLIT.npz) "
                                             "instead of TFDS (default: the run's arrays_dir)")
    parser.add_argument("--split", nargs="+", metavar="SPLIT",
                        help="splits, space- or comma-separated (default: 300W common "
                             "challenging (+ full), WFLW test and its attribute subsets, "
                             "synthetic validation)")
    parser.add_argument("--normaliser", choices=metrics.NORMALISERS, default="inter_ocular",
                        help="NME normaliser of the headline numbers (default inter_ocular; "
                             "98-point data also reports inter-ocular and inter-pupil)")
    parser.add_argument("--threshold", type=float, default=metrics.DEFAULT_THRESHOLD,
                        help="failure / AUC threshold on the NME, a fraction in (0, 1] "
                             "(default 0.1: 10 %% of the normaliser)")
    parser.add_argument("--grid", type=int, default=GRID_FACES,
                        help=f"faces in predictions.png (default {GRID_FACES}; 0: none)")
    parser.add_argument("--flip", action="store_true",
                        help="test-time flip averaging: each face is also predicted mirrored "
                             "left to right, mapped back with the markup's mirror order, and "
                             "the two predictions averaged")
    return parser


def check_options(args: argparse.Namespace) -> None:
    """Refuses option values out of range before any work (the model is not loaded yet):
    :class:`EvalError`, one line and exit status 1 like the other bad values."""
    threshold = args.threshold
    if not (math.isfinite(threshold) and 0 < threshold <= 1):
        hint = f" (for {threshold:g} %, write {threshold / 100:g})" if 1 < threshold <= 100 else ""
        raise EvalError(f"--threshold {threshold:g} is not in (0, 1]: the threshold is a fraction "
                        f"of the normaliser{hint}")
    if args.out is not None:
        check_output_dir("--out", args.out)


def _evaluate(args: argparse.Namespace) -> int:
    from asmnet_jax.evaluate import evaluate_checkpoint

    check_options(args)
    output = evaluate_checkpoint(
        load_model(args), dataset=args.dataset, splits=args.split, data_dir=args.data_dir,
        tfds_config=args.tfds_config, arrays_dir=args.arrays_dir, normaliser=args.normaliser,
        threshold=args.threshold, batch_size=args.batch_size, out=args.out, grid_faces=args.grid, flip=args.flip)
    print(output.pop("report"))
    print(json.dumps(output))
    return 0


def main(argv=None) -> int:
    """``asmnet-eval``; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet_logs()
    return run(PROG, _evaluate, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
