"""``asmnet-export``: a model as TF SavedModel, TFLite and ONNX files (:mod:`asmnet_jax.export`).

    asmnet-export --model runs/asmnet_300w --out exported --float16
    asmnet-export --model asmnet-300w --out exported --batch-size 4 --latency-runs 100

Prints progress to stderr, a table and, as the last stdout line, one JSON object (model, sizes in
bytes, max abs differences, latencies in ms of JAX, TFLite and ONNX Runtime, ok). ``model.onnx`` is
written when tf2onnx, onnx and onnxruntime are installed (one-line notice otherwise; ``--no-onnx``
skips it). Exit status 1 on a bad model, missing TensorFlow, or an export that differs from the
JAX model by more than the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from asmnet_jax.cli import (add_batch_size_argument, add_model_arguments, add_out_argument, error,
                            load_model, make_parser, run)

PROG = "asmnet-export"


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Export a trained ASMNet / mnv2 to a TF SavedModel and TFLite (builtin ops "
                    "only) through jax2tf, and to ONNX (tf2onnx from the TFLite model), verify "
                    "them against the JAX model on random images and time JAX, TFLite and ONNX "
                    "Runtime. Needs TensorFlow, and for ONNX tf2onnx, onnx and onnxruntime: pip "
                    "install -e \".[export]\".")
    add_model_arguments(parser)
    add_out_argument(parser, "output directory (saved_model/, model.tflite, model.onnx, "
                             "export.json)",
                     required=True)
    add_batch_size_argument(parser, 1, "fixed batch of the TFLite models")
    parser.add_argument("--float16", action="store_true",
                        help="also write model_fp16.tflite with float16 weights")
    parser.add_argument("--no-tflite", action="store_true", help="write no TFLite files")
    parser.add_argument("--no-onnx", action="store_true",
                        help="do not write model.onnx (written by default when tf2onnx, onnx and "
                             "onnxruntime are installed)")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="timed JAX, TFLite and ONNX Runtime runs after 5 warm-up runs; 0 "
                             "skips timing (default 50)")
    parser.add_argument("--threads", type=int, default=1,
                        help="TFLite interpreter and ONNX Runtime threads (default 1)")
    parser.add_argument("--verify-images", type=int, default=4,
                        help="random images compared with the JAX model (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the verification images")
    return parser


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _export(args: argparse.Namespace) -> int:
    from asmnet_jax import export as export_lib

    export_lib.import_tensorflow()  # before the (slow) model load, so a missing TF fails at once
    loaded = load_model(args)
    _log(f"loaded {loaded.model_name} ({loaded.num_landmarks} landmarks, {loaded.input_size} px) "
         f"from {loaded.path}")
    report = export_lib.export(loaded, args.out, float16=args.float16, tflite=not args.no_tflite,
                               batch=args.batch_size, verify_images=args.verify_images,
                               latency_runs=args.latency_runs, threads=args.threads,
                               seed=args.seed, onnx=False if args.no_onnx else None, log=_log)
    print(export_lib.format_table(report))
    latency = report["latency_ms"]
    summary = {"model": loaded.model_name, "num_landmarks": loaded.num_landmarks,
               "input_size": loaded.input_size, "source": loaded.path,
               "out": os.path.abspath(args.out),
               "bytes": {key: info["bytes"] for key, info in report["files"].items()},
               "max_abs_diff": report["max_abs_diff"], "ok": report["ok"],
               "latency_ms": latency["median"] if latency else None, "latency": latency,
               "latencies_ms": {key: value["median"]
                                for key, value in report["latencies_ms"].items()},
               "latencies": report["latencies_ms"], "onnx_skipped": report["onnx_skipped"]}
    print(json.dumps(summary), flush=True)
    if not report["ok"]:
        return error(PROG, "an exported model differs from the JAX model by more than the "
                           "bound, or uses non-builtin TFLite ops (see the table)")
    return 0


def main(argv=None) -> int:
    """``asmnet-export``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.latency_runs < 0:
        parser.error(f"--latency-runs must be >= 0, got {args.latency_runs}")
    return run(PROG, _export, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
