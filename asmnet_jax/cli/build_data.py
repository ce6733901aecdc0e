"""``asmnet-build-data``: builds a TFDS dataset once (:mod:`asmnet_jax.data.tfds_builders`).

    asmnet-build-data w300 --manual-dir /path/to/300W --data-dir ~/tensorflow_datasets
    asmnet-build-data synthetic_faces --tfds-config small

Prints one JSON line: dataset, builder config, data directory and the faces per split.
"""

from __future__ import annotations

import argparse
import json
import sys

from asmnet_jax.cli import make_parser, run

PROG = "asmnet-build-data"
DATASETS = ("w300", "wflw", "synthetic_faces")


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    parser = make_parser(
        PROG,
        description="Builds the TFDS dataset w300, wflw or synthetic_faces (array_record) from the "
                    "official download in --manual-dir (not needed for synthetic_faces).")
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--manual-dir", help="folder holding the official download")
    parser.add_argument("--data-dir", help="TFDS data directory (default: TFDS's, "
                                           "~/tensorflow_datasets)")
    parser.add_argument("--tfds-config", help="TFDS builder config (synthetic_faces: default, "
                                              "small, wflw98; wflw: default, detection)")
    return parser


def _build(args: argparse.Namespace) -> int:
    from asmnet_jax.data import tfds_builders

    builder = tfds_builders.build(args.name, args.manual_dir, args.data_dir, args.tfds_config)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(json.dumps({"dataset": args.name, "config": builder.builder_config.name,
                      "data_dir": str(builder.data_dir), "splits": splits}))
    return 0


def main(argv=None) -> int:
    """``asmnet-build-data``; returns the exit status."""
    return run(PROG, _build, build_parser().parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
