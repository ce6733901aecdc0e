"""Console entry points. Each parses its arguments and calls the module that does the work."""

from __future__ import annotations

import argparse
import json
import sys

from asmnet_jax.models import MODELS


def info_main(argv=None) -> int:
    """``asmnet-info``: parameters, MACs and GFLOPs of ASMNet and mnv2."""
    parser = argparse.ArgumentParser(
        prog="asmnet-info",
        description="Parameter counts (trainable, BN statistics, total), multiply-accumulates and "
                    "GFLOPs (2 x MACs of conv, depthwise and dense layers) at batch 1.")
    parser.add_argument("--model", nargs="+", choices=sorted(MODELS), default=["asmnet", "mnv2"])
    parser.add_argument("--num-landmarks", type=int, default=68, choices=(68, 98))
    parser.add_argument("--input-size", type=int, default=224,
                        help="square input size in pixels, divisible by 32 (default 224)")
    args = parser.parse_args(argv)
    if args.input_size <= 0 or args.input_size % 32:
        parser.error(f"--input-size must be a positive multiple of 32, got {args.input_size}")

    from asmnet_jax.info import format_table, model_info

    rows = [model_info(name, args.num_landmarks, args.input_size) for name in args.model]
    print(format_table(rows))
    print(json.dumps(rows))
    return 0


def import_keras_main(argv=None) -> int:
    """``asmnet-import-keras IN.h5 OUT_DIR``: the authors' Keras weights to an orbax checkpoint."""
    from asmnet_jax.keras_import import main

    return main(argv)


def build_data_main(argv=None) -> int:
    """``asmnet-build-data NAME --manual-dir DIR``: builds a TFDS dataset once."""
    parser = argparse.ArgumentParser(
        prog="asmnet-build-data",
        description="Builds the TFDS dataset w300, wflw or synthetic_faces (array_record) from the "
                    "official download in --manual-dir (not needed for synthetic_faces).")
    parser.add_argument("name", choices=["w300", "wflw", "synthetic_faces"])
    parser.add_argument("--manual-dir", help="folder holding the official download")
    parser.add_argument("--data-dir", help="TFDS data directory (default: TFDS's, ~/tensorflow_datasets)")
    parser.add_argument("--config", help="builder config (synthetic_faces: default, small, wflw98; "
                                         "wflw: default, detection)")
    args = parser.parse_args(argv)

    from asmnet_jax.data import tfds_builders
    from asmnet_jax.data.errors import DataError

    try:
        builder = tfds_builders.build(args.name, args.manual_dir, args.data_dir, args.config)
    except (DataError, ValueError) as err:
        print(f"asmnet-build-data: error: {err}", file=sys.stderr)
        return 1
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(json.dumps({"dataset": args.name, "config": builder.builder_config.name,
                      "data_dir": str(builder.data_dir), "splits": splits}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(info_main())
