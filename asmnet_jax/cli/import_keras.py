"""``asmnet-import-keras``: the authors' Keras ``.h5`` weights as a model directory.

    asmnet-import-keras ASMNet_300W.h5 --out models/authors_300w

Reads the file with :func:`asmnet_jax.keras_import.load_keras_h5`, writes the model directory with
:func:`asmnet_jax.model_dir.save_model` and prints one JSON line (model, num_landmarks,
parameter counts, coordinates, output directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from asmnet_jax.cli import add_out_argument, make_parser, run

PROG = "asmnet-import-keras"


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Import the authors' Keras ASMNet / mnv2 .h5 weights as a model directory "
                    "(model.json + variables/), usable as --model of asmnet-eval, asmnet-predict "
                    "and asmnet-export.")
    parser.add_argument("input", help="Keras .h5 file (model.save or save_weights, Keras 2 or 3)")
    add_out_argument(parser, "model directory to write", required=True)
    parser.add_argument("--no-convert", action="store_true",
                        help="keep the authors' output conventions ((112 - x_px) / 224, "
                             "degrees / 65) instead of this project's (crop-centred, radians)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model already in --out")
    return parser


def _import(args: argparse.Namespace) -> int:
    from asmnet_jax.model_dir import save_model
    from asmnet_jax.keras_import import load_keras_h5
    from asmnet_jax.models import MODELS, count_parameters

    convert = not args.no_convert
    model, variables = load_keras_h5(args.input, convert_coordinates=convert)
    model_name = {cls: key for key, cls in MODELS.items()}[type(model)]
    extra = {"source": os.path.abspath(args.input),
             "coordinates": "project" if convert else "authors"}
    output = save_model(args.out, model_name, model.num_landmarks, variables, extra=extra,
                        overwrite=args.overwrite)
    summary = {"model": model_name, "num_landmarks": model.num_landmarks,
               "parameters": count_parameters(variables), "coordinates": extra["coordinates"],
               "output": str(output)}
    print(json.dumps(summary), flush=True)
    return 0


def main(argv=None) -> int:
    """``asmnet-import-keras``; returns the exit status."""
    return run(PROG, _import, build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
