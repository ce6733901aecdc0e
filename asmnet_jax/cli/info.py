"""``asmnet-info``: parameters, MACs and GFLOPs of the architectures (:mod:`asmnet_jax.info`).

    asmnet-info                          # asmnet and mnv2, 68 points, 224 px
    asmnet-info --arch asmnet --num-landmarks 98 --input-size 96
"""

from __future__ import annotations

import argparse
import json
import sys

from asmnet_jax.cli import make_parser, run
from asmnet_jax.models import MODELS

PROG = "asmnet-info"


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Parameter counts (trainable, BN statistics, total), multiply-accumulates and "
                    "GFLOPs (2 x MACs of conv, depthwise and dense layers) at batch 1. Prints a "
                    "table, then the rows as one JSON line.")
    parser.add_argument("--arch", nargs="+", choices=sorted(MODELS), default=["asmnet", "mnv2"],
                        help="architectures (default: asmnet mnv2)")
    parser.add_argument("--num-landmarks", type=int, default=68, choices=(68, 98))
    parser.add_argument("--input-size", type=int, default=224,
                        help="square input size in pixels, divisible by 32 (default 224)")
    return parser


def _info(args: argparse.Namespace) -> int:
    from asmnet_jax.info import format_table, model_info

    rows = [model_info(name, args.num_landmarks, args.input_size) for name in args.arch]
    print(format_table(rows))
    print(json.dumps(rows))
    return 0


def main(argv=None) -> int:
    """``asmnet-info``; returns the exit status (2 for bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input_size <= 0 or args.input_size % 32:
        parser.error(f"--input-size must be a positive multiple of 32, got {args.input_size}")
    return run(PROG, _info, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
